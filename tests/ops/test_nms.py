import importlib

import pytest
import torch

from podkit.ops import batched_nms, batched_soft_nms, detection_nms, nms, soft_nms
from tests.ops.nms_reference import brute_force_nms, direct_soft_nms, nms_per_group

nms_module = importlib.import_module("podkit.ops.nms")


def clustered_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(n // 8, 1), 2, generator=g) * 200
    c = centres[torch.randint(len(centres), (n,), generator=g)] + torch.randn(n, 2, generator=g) * 6
    wh = torch.rand(n, 2, generator=g) * 30 + 10
    return torch.cat([c - wh / 2, c + wh / 2], 1), torch.rand(n, generator=g)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_nms_equals_sequential_reference(threshold, seed):
    boxes, scores = clustered_boxes(150, seed)
    assert nms(boxes, scores, threshold).tolist() == brute_force_nms(boxes, scores, threshold)


def test_nms_suppression_chain_needs_several_rounds():
    # box k overlaps only k+1: the sequential answer keeps every other box
    boxes = torch.tensor([[k * 6.0, 0, k * 6.0 + 10, 10] for k in range(9)])
    scores = torch.linspace(1, 0.1, 9)
    assert (
        nms(boxes, scores, 0.2).tolist() == brute_force_nms(boxes, scores, 0.2) == [0, 2, 4, 6, 8]
    )


def test_nms_ties_and_empty():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == brute_force_nms(boxes, scores, 0.5)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


@pytest.mark.parametrize("dense_limit", [10_000, 50])
def test_batched_nms_is_nms_per_group(monkeypatch, dense_limit):
    monkeypatch.setattr(nms_module, "_BLOCK", 64)
    monkeypatch.setattr(nms_module, "_BATCHED_NMS_DENSE_LIMIT", dense_limit)
    boxes, scores = clustered_boxes(200, 3)
    idxs = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(5))
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == nms_per_group(boxes, scores, idxs, 0.5)


def test_detection_nms_thresholds_then_nms_per_group_then_caps():
    """The detectors' NMS step: only boxes above the score threshold, per group, by score,
    at most `max_output` (the reference: brute force on the survivors of each group)."""
    boxes, scores = clustered_boxes(300, 4)
    groups = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(6))
    above = torch.where(scores > 0.3)[0]
    expected = above[nms_per_group(boxes[above], scores[above], groups[above], 0.5)].tolist()
    assert detection_nms(boxes, scores, groups, 0.5, 0.3, 1000).tolist() == expected
    assert detection_nms(boxes, scores, groups, 0.5, 0.3, 7).tolist() == expected[:7]
    assert detection_nms(boxes, scores, groups, 0.5, 2.0, 10).numel() == 0


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_direct_implementation(method):
    boxes, scores = clustered_boxes(60, 7)
    index, decayed = soft_nms(boxes.double(), scores.double(), 0.3, 0.5, 0.01, method)
    expected = direct_soft_nms(boxes.double(), scores.double(), 0.3, 0.5, 0.01, method)
    assert index.tolist() == [i for i, _ in expected]
    assert decayed.tolist() == pytest.approx([s for _, s in expected], abs=1e-9)


def test_soft_nms_rejects_unknown_method():
    with pytest.raises(ValueError, match="linear"):
        soft_nms(torch.zeros(1, 4), torch.ones(1), method="hard")


@pytest.mark.parametrize("block", [7, 64, 512])
def test_nms_blocks_do_not_change_the_result(monkeypatch, block):
    monkeypatch.setattr(nms_module, "_BLOCK", block)
    boxes, scores = clustered_boxes(300, 11)
    assert nms(boxes, scores, 0.5).tolist() == brute_force_nms(boxes, scores, 0.5)


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_batched_soft_nms_is_soft_nms_per_group(method):
    boxes, scores = clustered_boxes(60, 3)
    groups = torch.arange(60) % 3
    index, decayed = batched_soft_nms(
        boxes.double(), scores.double(), groups, 0.3, 0.5, 0.01, method
    )
    expected = []
    for g in range(3):
        members = torch.where(groups == g)[0]
        picked = direct_soft_nms(
            boxes[members].double(), scores[members].double(), 0.3, 0.5, 0.01, method
        )
        expected += [(int(members[i]), s) for i, s in picked]
    got = sorted(zip(index.tolist(), decayed.tolist(), strict=True))
    assert [i for i, _ in got] == sorted(i for i, _ in expected)
    assert [s for _, s in got] == pytest.approx([s for _, s in sorted(expected)], abs=1e-9)
