"""Image pyramids and multi-scale inference, shared by evaluation, prediction and SNIP.

A pyramid is a tuple of `Resolution`s: a resize rule and the object sizes it is valid for
(sqrt(area) in ORIGINAL-image pixels; SNIP trains and tests each resolution on its range).
Multi-scale inference runs the detector at every resolution, keeps each one's detections
inside its test range (SNIP) or all of them, and merges them per class with soft-NMS or NMS.

Pyramids: `coco` (the SNIP paper's), `synthetic` (the built-in set), `fit:SIZE` (three
resolutions at 2x, 1x and 0.5x a test size SIZE, ranges putting objects at 20-100 px as fed
at every resolution), `auto` (the default: fit:SIZE at the recipe's data.test_min_size, so a
method switched on with its defaults trains at sizes the recipe was made for), or rows
[min_size, max_size, lo, hi] (optional [rpn_lo, rpn_hi]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from podkit.config import MERGES
from podkit.ops import batched_nms, batched_soft_nms, box_area

INF = math.inf


@dataclass(frozen=True)
class Resolution:
    """One level of the pyramid: resize rule and valid object sizes (original pixels)."""

    min_size: int  # shorter side
    max_size: int  # cap on the longer side
    train_range: tuple[float, float]
    test_range: tuple[float, float]
    rpn_range: tuple[float, float] | None = None  # the RPN's, when not train_range


# The SNIP paper's: train ranges and the RPN's [0, 160] at 800 px from the paper, test ranges
# from its reference implementation's configs (each a little wider than the train range).
COCO_PYRAMID = (
    Resolution(1400, 2000, (0, 80), (0, 90)),
    Resolution(800, 1200, (40, 160), (32, 180), rpn_range=(0, 160)),
    Resolution(480, 800, (120, INF), (75, INF)),
)


def scaled_pyramid(pyramid: tuple[Resolution, ...], factor: float) -> tuple[Resolution, ...]:
    """The same pyramid for images `factor` times the size: every size and range scaled, so
    the ratios between ranges and resolutions stay the paper's."""

    def scale(r: tuple[float, float]) -> tuple[float, float]:
        return (r[0] * factor, r[1] * factor)

    return tuple(
        replace(
            res,
            min_size=round(res.min_size * factor),
            max_size=round(res.max_size * factor),
            train_range=scale(res.train_range),
            test_range=scale(res.test_range),
            rpn_range=None if res.rpn_range is None else scale(res.rpn_range),
        )
        for res in pyramid
    )


def fitted_pyramid(
    size: int, factors: tuple[float, ...] = (2.0, 1.0, 0.5), fed: tuple[float, float] = (20, 100)
) -> tuple[Resolution, ...]:
    """Resolutions at `factors` x `size` for images about `size` px (shorter side), each
    valid for the objects `fed` px as fed there (original sqrt(area) fed / factor); the
    largest resolution takes every smaller object, the smallest every larger one. Test
    ranges are 20 % wider, as the paper's are."""
    rows = []
    order = sorted(factors, reverse=True)
    for k, f in enumerate(order):
        lo = 0.0 if k == 0 else fed[0] / f
        hi = INF if k == len(order) - 1 else fed[1] / f
        rows.append(
            Resolution(
                min_size=round(size * f / 32) * 32,
                max_size=round(size * f * 5 / 3 / 32) * 32,
                train_range=(lo, hi),
                test_range=(lo / 1.2, hi * 1.2),
            )
        )
    return tuple(rows)


PYRAMIDS = {
    "coco": COCO_PYRAMID,
    # the built-in synthetic set: images ~256 px trained at ~256 (COCO: 800), so x 0.32
    "synthetic": scaled_pyramid(COCO_PYRAMID, 256 / 800),
}


def get_pyramid(spec: str | list, test_size: int | None = None) -> tuple[Resolution, ...]:
    """A preset name, `fit:SIZE`, `auto` (fit:`test_size`: the recipe's own test size), or
    rows [min_size, max_size, lo, hi] (one range for train and test) with optional [rpn_lo,
    rpn_hi] after them."""
    if spec == "auto":
        if test_size is None:
            raise ValueError("pyramid 'auto' is fit:SIZE at the recipe's test size: none given")
        return fitted_pyramid(test_size)
    if isinstance(spec, str) and spec.startswith("fit:"):
        size = spec.removeprefix("fit:")
        if not size.isdigit() or int(size) < 32:
            raise ValueError(f"pyramid {spec!r}: expected fit:SIZE, SIZE an image side >= 32")
        return fitted_pyramid(int(size))
    if isinstance(spec, str):
        if spec not in PYRAMIDS:
            raise ValueError(f"unknown pyramid {spec!r}; presets: {', '.join(PYRAMIDS)}")
        return PYRAMIDS[spec]
    rows = []
    for row in spec:
        if len(row) not in (4, 6) or not all(
            0 <= a < b for a, b in zip(row[2::2], row[3::2], strict=True)
        ):
            raise ValueError(
                f"pyramid row {row!r}: expected [min_size, max_size, lo, hi] (and rpn_lo, "
                "rpn_hi) with 0 <= lo < hi"
            )
        rpn = (row[4], row[5]) if len(row) == 6 else None
        rows.append(Resolution(int(row[0]), int(row[1]), (row[2], row[3]), (row[2], row[3]), rpn))
    if not rows:
        raise ValueError("pyramid: at least one resolution is needed")
    return tuple(rows)


def in_range(boxes: Tensor, scale: float, valid: tuple[float, float]) -> Tensor:
    """Which boxes (as-fed pixels, `scale` x the original image) have an original-image
    sqrt(area) inside `valid` (bounds included)."""
    side = box_area(boxes).sqrt() / scale
    return (side >= valid[0]) & (side <= valid[1])


def keep_in_range(det: dict[str, Tensor], valid: tuple[float, float]) -> dict[str, Tensor]:
    """Detections (original pixels) whose sqrt(area) lies inside `valid`."""
    keep = in_range(det["boxes"], 1.0, valid)
    return {k: v[keep] for k, v in det.items()}


def merge_detections(
    dets: list[dict[str, Tensor]],
    method: str = "soft_nms_linear",
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> dict[str, Tensor]:
    """One image's detections from several resolutions merged per class: soft-NMS (linear:
    decay above `iou_threshold`; gaussian: sigma 0.5) or plain NMS; best `max_detections`."""
    if method not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {method!r}")
    boxes = torch.cat([d["boxes"] for d in dets])
    scores = torch.cat([d["scores"] for d in dets])
    labels = torch.cat([d["labels"] for d in dets])
    if method == "nms":
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    keep, decayed = batched_soft_nms(
        boxes, scores, labels, iou_threshold, method=method.removeprefix("soft_nms_")
    )
    top = decayed.argsort(descending=True, stable=True)[:max_detections]
    keep = keep[top]
    return {"boxes": boxes[keep], "scores": decayed[top], "labels": labels[keep]}
