"""The accuracy of what ships: a checkpoint or an exported artefact, opened and scored alike.

`open_detector` gives the same (detector, config, classes) for a `.pt` checkpoint and for an
artefact of any export backend (whose record carries the checkpoint's config and class
names), so `podkit eval`, `podkit predict` and the latency report's AP column share one path
from an image file to COCO metrics.
"""

from __future__ import annotations

from pathlib import Path

from podkit.config import Config, config_from_dict
from podkit.evaluation.evaluate import evaluate_on_val
from podkit.export import BACKENDS, backend_of
from podkit.export.detector import ArtefactDetector
from podkit.models.checkpoint import load_detector
from podkit.models.output import Detector


def is_artefact(path: str | Path) -> bool:
    return any(b.owns(Path(path)) for b in BACKENDS.values())


def open_detector(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), threads: int | None = None
) -> tuple[Detector, Config, list[str], str]:
    """(detector, its config with `overrides`, class names, device) for a checkpoint or an
    artefact; a TensorRT engine runs on CUDA, the other artefacts on the CPU."""
    if is_artefact(path):
        device = backend_of(path).device or "cpu"
        detector = ArtefactDetector(path, device, threads)
        cfg = config_from_dict(detector.record["config"], overrides)
        return detector, cfg, detector.record["classes"], "cpu"  # outputs come back on the CPU
    model, cfg, ckpt, device = load_detector(path, overrides)
    return model, cfg, list(ckpt.get("classes") or []), device


def evaluate_path(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), console=None
) -> dict[str, float | None]:
    """`podkit eval`: the metrics of a checkpoint or an artefact on its config's data.val."""
    detector, cfg, classes, device = open_detector(path, overrides)
    metrics = evaluate_on_val(detector, cfg, device, path, console, classes)
    downscaled = getattr(detector, "downscaled", 0)
    if downscaled and console is not None:
        console.print(
            f"note: {downscaled} images were larger than the artefact's static input "
            f"{detector.input_size[0]}x{detector.input_size[1]} and were scaled down to fit "
            "(export with --dynamic, or a larger --input-size, to score at the config's size)"
        )
    return metrics
