"""Sliced inference: the grid covers an image exactly, an object cut by a tile edge comes
back once, and an image no larger than a tile gives the untiled detections.

The detector of the merging tests is an oracle written here: it reports the bounding box of
the red pixels of each image it is given (one object), so what the tiles see is known."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from podkit.config import load_config
from podkit.data.images import image_records
from podkit.evaluation.evaluate import predict_at, predict_tiled
from podkit.models.output import DetectorOutput, rescale_detections
from podkit.ops.tiles import tile_grid
from tests.conftest import (
    ROOT,
    invoke,
    one_line_error,
    tiny_overrides,
)


@pytest.mark.parametrize("size,overlap,shape", [(160, 0.25, (300, 470)), (64, 0.0, (128, 100)),
                                                (512, 0.2, (300, 200))])  # fmt: skip
def test_tiles_cover_the_image_exactly(size, overlap, shape):
    height, width = shape
    covered = np.zeros(shape, np.int32)
    grid = tile_grid(height, width, size, overlap)
    for x0, y0, x1, y1 in grid:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(size, width), min(size, height))
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    if max(shape) <= size:
        assert grid == [(0, 0, width, height)]


class RedBoxOracle(nn.Module):
    """Detects the bounding box of the red pixels in each image, score 0.9, label 0."""

    def forward(self, images):
        detections = []
        for k, (h, w) in enumerate(images.sizes):
            red = (images.tensor[k, 0, :h, :w] > 0.5) & (images.tensor[k, 1, :h, :w] < 0.5)
            ys, xs = torch.where(red)
            boxes = (
                torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                if len(xs) else torch.zeros((0, 4))
            )  # fmt: skip
            n = len(boxes)
            detections.append({"boxes": boxes, "scores": torch.full((n,), 0.9),
                               "labels": torch.zeros(n, dtype=torch.int64)})  # fmt: skip
        return DetectorOutput({}, rescale_detections(detections, images), {})


def image_with(tmp_path, box, shape=(300, 300)):
    pixels = np.zeros((*shape, 3), np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1, 0] = 255
    Image.fromarray(pixels).save(tmp_path / "red.png")
    return image_records([tmp_path / "red.png"])


def tiled(tmp_path, box, *extra):
    cfg = load_config(
        ROOT / "configs/tiny/faster_rcnn_fpn.yaml",
        ["data.test_min_size=300", "data.max_size=300", "train.workers=0", *extra],
    )
    detections, _ = predict_tiled(RedBoxOracle(), image_with(tmp_path, box), cfg, "cpu")
    return detections[0]


def test_an_object_cut_by_a_tile_edge_comes_back_once_and_whole(tmp_path):
    """Tiles of 160 px at overlap 0.25 start at 0, 120, 140: the object at x 150-170 is cut
    at 160 by the first column and whole in the two others."""
    det = tiled(tmp_path, (150, 40, 170, 60), "eval.tile={size: 160, overlap: 0.25}")
    assert det["boxes"].tolist() == [[150.0, 40.0, 170.0, 60.0]]


def test_an_object_larger_than_the_overlap_comes_back_whole_with_the_whole_image(tmp_path):
    box = (40, 100, 260, 200)  # 220 px wide: every 160 px tile cuts it
    pieces = tiled(tmp_path, box, "eval.tile={size: 160, overlap: 0.25}")
    assert len(pieces["boxes"]) > 1  # without the whole image: pieces (documented)
    det = tiled(tmp_path, box, "eval.tile={size: 160, overlap: 0.25, whole: true}")
    assert det["boxes"].tolist() == [[40.0, 100.0, 260.0, 200.0]]


def test_an_image_within_one_tile_gives_the_untiled_detections(tiny_run, synth_set):
    """Each image fed untiled at its own size (test size = its shorter side) and as one tile."""
    from podkit.models.checkpoint import load_detector

    model, cfg, _, _ = load_detector(tiny_run / "last.pt", tiny_overrides(synth_set)[4:7])
    cfg.eval.tile = load_config(None, ["eval.tile={size: 256}"]).eval.tile
    found = 0
    for record in image_records(sorted((synth_set / "val").iterdir())[:3]):
        side = min(record.width, record.height)
        untiled, _ = predict_at(model, [record], cfg, "cpu", side, max(record.width, record.height))
        tiled_dets, _ = predict_tiled(model, [record], cfg, "cpu")
        torch.testing.assert_close(untiled[0]["boxes"], tiled_dets[0]["boxes"])
        torch.testing.assert_close(untiled[0]["scores"], tiled_dets[0]["scores"])
        found += len(untiled[0]["scores"])
    assert found > 0


def test_tile_options_through_the_cli(tiny_run, synth_set, tmp_path):
    image = next((synth_set / "val").iterdir())
    code, out = invoke("predict", tiny_run / "last.pt", image, "--out", tmp_path / "p",
                       "--tile", 64, "--overlap", 0.25, "--no-draw")  # fmt: skip
    assert code == 0, out
    for args, words in (
        (("--tile", 100), "eval.tile.size: must be a multiple of 32"),
        (("--tile", 64, "--overlap", 1.0), "eval.tile.overlap: must be in [0, 1)"),
        (("--overlap", 0.5), "--overlap and --tile-whole go with --tile SIZE"),
    ):
        code, out = invoke("predict", tiny_run / "last.pt", image, "--out", tmp_path / "q", *args)
        one_line_error(code, out, words)


def test_an_artefact_tiles_as_its_checkpoint(tiny_run, synth_set, tmp_path):
    """A static 64x64 ONNX artefact fed 64 px tiles gives the checkpoint's tiled detections."""
    from podkit.evaluation.artefacts import open_detector
    from podkit.export import ExportOptions, export_checkpoint
    from podkit.export.parity import compare_outputs

    onnx = tmp_path / "m.onnx"
    export_checkpoint(tiny_run / "last.pt", "onnx", onnx, ExportOptions((64, 64)), log=str)
    records = image_records(sorted((synth_set / "val").iterdir())[:1])
    results = []
    for path in (tiny_run / "last.pt", onnx):
        detector, cfg, _, device = open_detector(path, ["eval.tile={size: 64, overlap: 0.25}"])
        results.append(predict_tiled(detector, records, cfg, device)[0][0])
    ours, theirs = results
    assert len(ours["scores"]) > 0
    # the export's own parity check: same detections, near-tied scores may swap places
    names = ["boxes", "scores", "labels", "num_detections"]
    as_batch = [[d[k][None].numpy() for k in names[:3]] + [np.array([len(d["scores"])])]
                for d in (ours, theirs)]  # fmt: skip
    report = compare_outputs(names, *as_batch)
    assert report["ok"], report
