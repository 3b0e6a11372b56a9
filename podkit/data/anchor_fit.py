"""Anchors against the data: how many boxes an anchor can match, and anchors fitted to them.

A box that no anchor overlaps at IoU 0.5 is learned only through the RPN's "best anchor"
rule (RetinaNet: not at all), so a data set of objects far from the anchor sizes of a
COCO recipe trains badly from the first step. `coverage` measures it on the boxes as fed
(after the config's resize, on the real anchor grids, strides included); `fit_anchors` is
`model.anchors: auto`: k-means on log sqrt(area) for the sizes (sorted, one cluster per
anchor size, levels from small to large, none below MIN_STRIDES x its level's stride,
which its grid could not place on a box) and on log(height / width) for the ratios, kept
only where it covers more boxes than the config's anchors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from podkit.config import Config, ModelConfig
from podkit.data.records import Record
from podkit.data.transforms import resize_scale
from podkit.ops.anchors import AnchorGenerator
from podkit.ops.boxes import box_iou

MATCH_IOU = 0.5  # "can be matched": an anchor at this IoU or more
MAX_IMAGES = 300  # coverage is measured on at most this many images (evenly spaced)
# an anchor of side s on a grid of stride t is at most t / 2 off a box's centre in x and y:
# IoU >= 0.5 at the worst offset needs (s - t/2) / (s + t/2) >= 0.71, s >= 2.9 t
MIN_STRIDES = 3.0


@dataclass(frozen=True)
class AnchorLayout:
    """Anchor sizes per feature level, the aspect ratios (height / width) and level strides."""

    sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...]
    strides: tuple[int, ...]


def anchor_layout(model: ModelConfig) -> AnchorLayout:
    """The anchors a detector of this config places (as podkit.models.build builds it)."""
    if model.arch == "retinanet":
        r = model.retinanet
        sizes = tuple(tuple(b * s for s in r.anchor_scales) for b in r.anchor_base_sizes)
        return AnchorLayout(sizes, tuple(r.aspect_ratios), (8, 16, 32, 64, 128))
    sizes = tuple(tuple(level) for level in model.rpn.anchor_sizes)
    if model.arch == "faster_rcnn_c4":  # one feature map holds every size
        return AnchorLayout(
            (tuple(s for level in sizes for s in level),), tuple(model.rpn.aspect_ratios), (16,)
        )
    return AnchorLayout(sizes, tuple(model.rpn.aspect_ratios), (4, 8, 16, 32, 64))


def boxes_as_fed(
    records: list[Record], min_size: float, max_size: float
) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Per image: its (height, width) and its boxes after the resize to (min_size, max_size)."""
    out = []
    for rec in records:
        s = resize_scale(rec.height, rec.width, min_size, max_size)
        out.append(((round(rec.height * s), round(rec.width * s)), rec.boxes.reshape(-1, 4) * s))
    return out


def best_anchor_iou(
    images: list[tuple[tuple[int, int], np.ndarray]], layout: AnchorLayout, size_divisible: int = 32
) -> np.ndarray:
    """For every box, its IoU with the best anchor of its image's grids."""
    generator = AnchorGenerator(layout.sizes, layout.aspect_ratios)
    step = max(1, len(images) // MAX_IMAGES)
    best = []
    for (h, w), boxes in images[::step]:
        if not len(boxes):
            continue
        h, w = (-(-v // size_divisible) * size_divisible for v in (h, w))
        grids = [
            generator.compute(i, (-(-h // s), -(-w // s)), (s, s), "cpu")
            for i, s in enumerate(layout.strides)
        ]
        iou = box_iou(torch.as_tensor(boxes, dtype=torch.float32), torch.cat(grids))
        best.append(iou.max(dim=1).values.numpy())
    return np.concatenate(best) if best else np.zeros(0)


def coverage(images, layout: AnchorLayout, size_divisible: int = 32) -> float:
    """The fraction of boxes with an anchor at IoU >= MATCH_IOU."""
    best = best_anchor_iou(images, layout, size_divisible)
    return float((best >= MATCH_IOU).mean()) if len(best) else 1.0


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 50) -> np.ndarray:
    """Sorted centres of k clusters of `values` (Lloyd's algorithm from evenly spaced quantiles)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None]).argmin(axis=1)
        for j in range(k):
            if (assign == j).any():
                centres[j] = values[assign == j].mean()
    return np.sort(centres)


def fit_anchors(images, layout: AnchorLayout) -> AnchorLayout:
    """Sizes and ratios fitted to the boxes as fed, on the grids (strides) of `layout`."""
    boxes = np.concatenate([b for _, b in images]).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    real = (w > 0) & (h > 0)
    w, h = w[real], h[real]
    if len(w) < 2:
        raise ValueError("model.anchors: auto needs training boxes to fit anchors to")
    per_level = len(layout.sizes[0])
    centres = np.exp(kmeans_1d(np.log(np.sqrt(w * h)), len(layout.sizes) * per_level))
    sizes, smallest = [], 0.0
    for i, stride in enumerate(layout.strides):
        level = centres[i * per_level : (i + 1) * per_level]
        level = np.maximum(
            level * max(1.0, MIN_STRIDES * stride / level[0], smallest / level[0]), 1
        )
        sizes.append(tuple(round(float(c), 1) for c in level))
        smallest = float(level[-1]) * 1.01  # sizes grow with the level
    sizes = tuple(sizes)
    ratios = np.exp(kmeans_1d(np.log(h / w), len(layout.aspect_ratios)))
    return replace(layout, sizes=sizes, aspect_ratios=tuple(round(float(r), 3) for r in ratios))


def with_layout(model: ModelConfig, layout: AnchorLayout) -> ModelConfig:
    """The model config whose detector places `layout`'s anchors."""
    if model.arch == "retinanet":
        # each level's sizes are base x scales: the base that puts their geometric mean on
        # the fitted centre
        middle = geometric_mean(model.retinanet.anchor_scales)
        bases = tuple(round(geometric_mean(level) / middle, 1) for level in layout.sizes)
        retinanet = replace(
            model.retinanet, anchor_base_sizes=bases, aspect_ratios=layout.aspect_ratios
        )
        return replace(model, retinanet=retinanet)
    sizes = layout.sizes
    if model.arch == "faster_rcnn_c4":
        sizes = tuple((s,) for s in layout.sizes[0])
    rpn = replace(model.rpn, anchor_sizes=sizes, aspect_ratios=layout.aspect_ratios)
    return replace(model, rpn=rpn)


def train_min_size(cfg: Config) -> int:
    """The training size that boxes are measured at: the middle of data.min_size."""
    sizes = sorted(cfg.data.min_size)
    return sizes[len(sizes) // 2]


def fit_config_anchors(cfg: Config, records: list[Record]) -> tuple[Config, str]:
    """`model.anchors: auto`: the config with anchors fitted to the training boxes as fed
    (at the middle training size), if they cover more boxes; and the line that says so."""
    images = boxes_as_fed(records, train_min_size(cfg), cfg.data.max_size)
    current = anchor_layout(cfg.model)
    target = current
    if cfg.model.arch == "retinanet":  # a level's sizes are a base x fixed scales: one centre
        target = replace(current, sizes=tuple((geometric_mean(s),) for s in current.sizes))
    fitted_model = with_layout(cfg.model, fit_anchors(images, target))
    fitted = anchor_layout(fitted_model)
    before = coverage(images, current, cfg.data.size_divisible)
    after = coverage(images, fitted, cfg.data.size_divisible)
    line = (
        f"anchors fitted to {sum(len(b) for _, b in images)} training boxes: sizes "
        f"{[[round(s, 1) for s in level] for level in fitted.sizes]}, ratios "
        f"{list(fitted.aspect_ratios)}; boxes with an anchor at IoU >= {MATCH_IOU}: "
        f"{100 * before:.0f} % -> {100 * after:.0f} %"
    )
    if after <= before:
        line += " (not better: the config's anchors are kept)"
        fitted_model = cfg.model
    return replace(cfg, model=replace(fitted_model, anchors="fitted")), line


def geometric_mean(values) -> float:
    return float(np.exp(np.log(np.asarray(values, float)).mean()))
