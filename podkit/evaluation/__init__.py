"""Scoring and running detectors: COCO metrics (evaluate.py), the test-time image pyramid and
its merging (image_pyramid.py: multi-scale and SNIP tests), tiled inference, checkpoints and
exported artefacts opened alike and scored (artefacts.py), `podkit predict` on images
(predict.py) and videos (video.py)."""
