"""Anchor coverage against a brute-force grid, and anchors fitted to the data."""

import numpy as np
import pytest

from podkit.config import load_config
from podkit.data.anchor_fit import (
    MIN_STRIDES,
    AnchorLayout,
    anchor_layout,
    best_anchor_iou,
    coverage,
    fit_anchors,
    fit_config_anchors,
)
from podkit.data.records import Record
from podkit.models import build_detector


def brute_force_best_iou(box, h, w, layout):
    """Every anchor of every level placed by hand: centre (x * stride, y * stride)."""
    best = 0.0
    for sizes, stride in zip(layout.sizes, layout.strides, strict=True):
        for y in range(-(-h // stride)):
            for x in range(-(-w // stride)):
                for ratio in layout.aspect_ratios:
                    for size in sizes:
                        aw = round(size / np.sqrt(ratio) / 2) * 2  # as cell_anchors rounds
                        ah = round(size * np.sqrt(ratio) / 2) * 2
                        cx, cy = x * stride, y * stride
                        a = [cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2]
                        iw = max(0, min(a[2], box[2]) - max(a[0], box[0]))
                        ih = max(0, min(a[3], box[3]) - max(a[1], box[1]))
                        inter = iw * ih
                        union = aw * ah + (box[2] - box[0]) * (box[3] - box[1]) - inter
                        best = max(best, inter / union)
    return best


def test_best_anchor_iou_matches_a_brute_force_grid():
    layout = AnchorLayout(((8,), (16,)), (0.5, 1.0, 2.0), (4, 8))
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 40, (12, 2))
    wh = rng.uniform(3, 30, (12, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    got = best_anchor_iou([((64, 64), boxes)], layout)
    want = [brute_force_best_iou(b, 64, 64, layout) for b in boxes]
    assert got == pytest.approx(want, abs=1e-5)


def square_boxes(sides, per_image=20, image=256, seed=0):
    rng = np.random.default_rng(seed)
    images = []
    for k in range(0, len(sides), per_image):
        s = np.asarray(sides[k : k + per_image], np.float32)
        xy = rng.uniform(0, image - s.max(), (len(s), 2))
        images.append(((image, image), np.concatenate([xy, xy + s[:, None]], axis=1)))
    return images


def test_fitted_anchors_find_the_data_and_respect_the_strides():
    sides = [12.0] * 100 + [48.0] * 100
    images = square_boxes(sides)
    coco_like = AnchorLayout(
        ((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0), (4, 8, 16, 32, 64)
    )
    fitted = fit_anchors(images, coco_like)
    flat = [s for level in fitted.sizes for s in level]
    assert flat == sorted(flat)
    assert min(flat) == pytest.approx(12.0, rel=0.05)  # the small cluster, on stride 4
    assert any(abs(s - 48) < 3 for s in flat)
    for sizes, stride in zip(fitted.sizes, fitted.strides, strict=True):
        assert min(sizes) >= MIN_STRIDES * stride - 0.1 or min(sizes) == pytest.approx(
            12.0, rel=0.05
        )
    assert fitted.aspect_ratios[1] == pytest.approx(1.0, abs=0.01)
    assert coverage(images, coco_like) < 0.6 < 0.95 < coverage(images, fitted)


@pytest.mark.parametrize("arch", ["faster_rcnn_fpn", "faster_rcnn_c4", "retinanet"])
def test_auto_anchors_reach_the_built_detector(arch):
    cfg = load_config(
        "configs/tiny/faster_rcnn_fpn.yaml",
        [f"model.arch={arch}", "data.min_size=[256]", "data.max_size=400"],
    )
    cfg.model.rpn.anchor_sizes = ((128,), (256,), (384,), (512,), (640,))
    cfg.model.retinanet.anchor_base_sizes = (128, 256, 384, 512, 640)
    rng = np.random.default_rng(1)
    records = []
    for i in range(30):
        xy = rng.uniform(0, 200, (6, 2))
        side = rng.uniform(14, 40, (6, 1))
        records.append(
            Record(
                i,
                None,
                256,
                256,
                np.concatenate([xy, xy + side], 1).astype(np.float32),
                np.zeros(6, np.int64),
            )
        )
    fitted, line = fit_config_anchors(cfg, records)
    assert fitted.model.anchors == "fitted" and "->" in line and "kept" not in line
    layout = anchor_layout(fitted.model)
    model = build_detector(fitted.model)
    assert list(layout.strides) == list(model.backbone.strides)  # the grids the model places
    generator = model.anchor_generator if arch == "retinanet" else model.rpn.anchor_generator
    assert [float(s) for level in generator.sizes for s in level] == pytest.approx(
        [s for level in layout.sizes for s in level]
    )
    assert tuple(generator.aspect_ratios) == layout.aspect_ratios
