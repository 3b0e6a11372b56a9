import pytest
import torch

from podkit.ops import AnchorGenerator, BalancedSampler, Matcher, box_area, ignore_near
from podkit.ops.anchors import cell_anchors


def test_cell_anchors_have_requested_area_and_ratio():
    cells = cell_anchors((32.0, 64.0), (0.5, 1.0, 2.0))
    assert cells.shape == (6, 4)
    w = cells[:, 2] - cells[:, 0]
    h = cells[:, 3] - cells[:, 1]
    # order: ratio-major, then size; area ~ size^2 (rounded to pixels), h / w ~ ratio
    for k, (ratio, size) in enumerate([(r, s) for r in (0.5, 1.0, 2.0) for s in (32, 64)]):
        assert (w[k] * h[k]).item() == pytest.approx(size**2, rel=0.1)
        assert (h[k] / w[k]).item() == pytest.approx(ratio, rel=0.1)


def test_grid_anchors_layout_and_cache():
    gen = AnchorGenerator(((32.0,), (64.0,)), (0.5, 1.0, 2.0))
    a0, a1 = gen([(2, 3), (1, 2)], [8, 16], "cpu")
    assert a0.shape == (2 * 3 * 3, 4) and a1.shape == (1 * 2 * 3, 4)
    # location (y=1, x=2) anchor 1 (ratio 1) is centred at (16, 8)
    box = a0[(1 * 3 + 2) * 3 + 1]
    assert ((box[0] + box[2]) / 2).item() == 16 and ((box[1] + box[3]) / 2).item() == 8
    assert gen([(2, 3), (1, 2)], [8, 16], "cpu")[0] is a0


def test_matcher_thresholds_and_low_quality():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1], [0.1, 0.6, 0.25, 0.35]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, -2, -1, -2]
    # GT 1's best prediction (IoU 0.6, column 1) is kept as a match
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, -1, -2]
    assert Matcher(0.5, 0.5)(torch.zeros(0, 3)).tolist() == [-1, -1, -1]


def test_ignore_near_only_touches_negatives():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    matched = torch.tensor([-1, 0, -1])
    ignore = torch.tensor([[1.0, 1, 10, 10]])
    assert ignore_near(boxes, matched, ignore, 0.3).tolist() == [-2, 0, -1]
    assert ignore_near(boxes, matched, None, 0.3) is matched


def test_sampler_respects_budget_and_fraction():
    labels = torch.tensor([1] * 30 + [0] * 100 + [-1] * 10)
    pos, neg = BalancedSampler(64, 0.25)(labels)
    assert pos.sum() == 16 and neg.sum() == 48
    assert bool((labels[pos] == 1).all()) and bool((labels[neg] == 0).all())
    pos, neg = BalancedSampler(64, 0.5)(torch.tensor([1] * 3 + [0] * 10))
    assert pos.sum() == 3 and neg.sum() == 10
    assert box_area(torch.tensor([[0.0, 0, 2, 3]])).item() == 6


def test_exact_anchors_and_the_floor_stride_rule():
    """Unrounded anchors are MMDetection's / Detectron2's floats (centre -/+ half the size:
    w = size / sqrt(ratio), h = size * sqrt(ratio)); the floor rule spaces a level's anchors
    at the input size // its feature size (torchvision: 416 // 7 = 59 on a 7-wide P6)."""
    exact = cell_anchors((32.0,), (0.5, 2.0), rounded=False)
    for row, ratio in zip(exact, (0.5, 2.0), strict=True):
        w, h = 32 / ratio**0.5, 32 * ratio**0.5
        assert row.tolist() == pytest.approx([-w / 2, -h / 2, w / 2, h / 2], abs=1e-5)
    assert cell_anchors((32.0,), (0.5,)).tolist() == [[-23.0, -11.0, 23.0, 11.0]]
    gen = AnchorGenerator(((32.0,), (64.0,)), (1.0,), stride_rule="floor")
    _, p6 = gen([(80, 104), (5, 7)], [4, 64], "cpu")  # a 320 x 416 input
    centres_x = ((p6[:7, 0] + p6[:7, 2]) / 2).tolist()
    assert centres_x == [59.0 * i for i in range(7)]
    centres_y = ((p6[::7, 1] + p6[::7, 3]) / 2).tolist()
    assert centres_y == [64.0 * i for i in range(5)]
