"""What every export target shares: the runner interface, install lines, the input an
artefact is fed, and parity checks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from podkit.export.wrap import SIZE_MULTIPLE


def _no_sync() -> None:
    pass


@dataclass
class Runner:
    """A loaded artefact or a PyTorch model behind one interface: (N, 3, H, W) float32 images
    in [0, 1] -> the wrapper's outputs, in order. `sync` waits for the device (timing on a
    GPU); `providers` are onnxruntime's, in order of preference; `info` what the backend
    recorded when it built the artefact."""

    run: Callable[[np.ndarray], list[np.ndarray]]
    sync: Callable[[], None] = _no_sync
    providers: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        return self.run(images)


MISSING_TVM = "TVM is not installed: pip install 'apache-tvm>=0.27' 'apache-tvm-ffi==0.1.14.post1'"
MISSING_ORT = "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
MISSING_TENSORRT = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install 'podkit[tensorrt]' "
    "(the tensorrt wheel; CUDA driver required)"
)


def artefact_input(
    image: torch.Tensor, input_size: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """One (3, h, w) image as an artefact is fed: scaled down to fit a static `input_size`
    (aspect kept) when larger, then zero-padded to it, or for a dynamic artefact (None) to
    multiples of 32. Returns the (1, 3, H, W) float32 array, the size of the image inside
    it, and whether it was scaled down."""
    h, w = image.shape[-2:]
    downscaled = False
    if input_size is not None:
        scale = min(input_size[0] / h, input_size[1] / w)
        if scale < 1:
            downscaled = True
            h, w = max(1, int(h * scale)), max(1, int(w * scale))
            image = F.interpolate(image[None], (h, w), mode="bilinear", antialias=True)[0]
        height, width = input_size
    else:
        # the export's smallest side is two blocks (check_input_size)
        height = max(2, -(-h // SIZE_MULTIPLE)) * SIZE_MULTIPLE
        width = max(2, -(-w // SIZE_MULTIPLE)) * SIZE_MULTIPLE
    padded = F.pad(image, (0, width - w, 0, height - h))
    return padded[None].contiguous().numpy(), (int(h), int(w)), downscaled


def stack_inputs(arrays: list[np.ndarray], batch: int) -> np.ndarray:
    """One input of an artefact taking `batch` images: the (1, 3, h, w) arrays padded to a
    common size (a dynamic artefact's may differ), blank images after the last one."""
    height = max(a.shape[2] for a in arrays)
    width = max(a.shape[3] for a in arrays)
    stacked = np.zeros((batch, 3, height, width), np.float32)
    for k, a in enumerate(arrays):
        stacked[k, :, : a.shape[2], : a.shape[3]] = a[0]
    return stacked


def compare_outputs(
    names: list[str],
    reference: list[np.ndarray],
    outputs: list[np.ndarray],
    raw_tol: float = 1e-4,
    box_tol: float = 1e-3,
) -> dict:
    """Compare a backend's outputs with PyTorch's on the same input.

    Raw tensors: max |a - b| / max(1, |a|) <= raw_tol (absolute for small values, relative
    for large). Detections (`num_detections` present), per image of the batch: same count,
    labels and order, boxes within box_tol pixels; two detections whose scores differ by
    < 1e-5 may swap places (a tie that float rounding orders either way), and are counted
    as `reordered_ties`.
    Returns the figures with `ok`.
    """
    got = dict(zip(names, outputs, strict=True))
    ref = dict(zip(names, reference, strict=True))
    report: dict = {"ok": True}
    if "num_detections" not in got:
        worst = 0.0
        for name in names:
            a, b = ref[name].astype(np.float64), got[name].astype(np.float64)
            if a.shape != b.shape:
                report.update(ok=False, error=f"{name}: shape {b.shape} vs PyTorch {a.shape}")
                return report
            if a.size:
                worst = max(worst, float((np.abs(a - b) / np.maximum(1.0, np.abs(a))).max()))
        report.update(max_rel_error=worst, ok=worst <= raw_tol)
        return report
    per_image = [
        _compare_detections(
            {k: v[i] for k, v in ref.items()}, {k: v[i] for k, v in got.items()}, box_tol
        )  # fmt: skip
        for i in range(len(ref["num_detections"]))
    ]
    for i, item in enumerate(per_image):
        if not item["ok"]:
            prefix = f"image {i}: " if len(per_image) > 1 else ""
            return {**item, "error": prefix + item["error"]}
    report.update(
        detections=sum(r["detections"] for r in per_image),
        backend_detections=sum(r["backend_detections"] for r in per_image),
        max_box_error=max(r["max_box_error"] for r in per_image),
        max_score_error=max(r["max_score_error"] for r in per_image),
        reordered_ties=sum(r["reordered_ties"] for r in per_image),
    )
    return report


def _compare_detections(ref: dict, got: dict, box_tol: float) -> dict:
    """One image's detections (see compare_outputs)."""
    report: dict = {"ok": True}
    n_ref, n_got = int(ref["num_detections"]), int(got["num_detections"])
    report.update(detections=n_ref, backend_detections=n_got)
    if n_ref != n_got:
        report.update(ok=False, error=f"{n_got} detections vs PyTorch {n_ref}")
        return report
    boxes_r, boxes_g = ref["boxes"][:n_ref], got["boxes"][:n_ref]
    labels_r, labels_g = ref["labels"][:n_ref], got["labels"][:n_ref]
    scores_r, scores_g = ref["scores"][:n_ref], got["scores"][:n_ref]
    ties, worst_box, worst_score = 0, 0.0, 0.0
    for i in range(n_ref):
        j = i
        same = labels_r[i] == labels_g[i] and np.abs(boxes_r[i] - boxes_g[i]).max() <= box_tol
        if not same:  # a tie ordered the other way: the same detection next to it
            near = [
                k
                for k in range(max(0, i - 3), min(n_ref, i + 4))
                if labels_g[k] == labels_r[i]
                and np.abs(boxes_r[i] - boxes_g[k]).max() <= box_tol
                and abs(float(scores_r[i]) - float(scores_g[k])) < 1e-5
                and abs(float(scores_r[i]) - float(scores_r[k])) < 1e-5
            ]
            if not near:
                report.update(ok=False, error=f"detection {i} differs (label, box or order)")
                return report
            ties += 1
            j = near[0]
        worst_box = max(worst_box, float(np.abs(boxes_r[i] - boxes_g[j]).max(initial=0.0)))
        worst_score = max(worst_score, abs(float(scores_r[i]) - float(scores_g[j])))
    report.update(max_box_error=worst_box, max_score_error=worst_score, reordered_ties=ties)
    return report


def format_parity(report: dict) -> str:
    """One line: what was compared and how close it came."""
    if "error" in report:
        return f"MISMATCH: {report['error']}"
    if "max_rel_error" in report:
        return f"raw outputs max relative error {report['max_rel_error']:.2e}"
    ties = f", {report['reordered_ties']} tied pairs reordered" if report["reordered_ties"] else ""
    return (
        f"{report['detections']} detections identical: boxes within "
        f"{report['max_box_error']:.1e} px, scores within {report['max_score_error']:.1e}{ties}"
    )
