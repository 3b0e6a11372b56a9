import math

import pytest
import torch

from podkit.ops import sigmoid_focal_loss, smooth_l1_loss


def test_focal_loss_matches_formula():
    logits = torch.tensor([-2.0, -0.3, 0.0, 1.5, 4.0])
    targets = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    got = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    for x, t, v in zip(logits.tolist(), targets.tolist(), got.tolist(), strict=True):
        p = 1 / (1 + math.exp(-x))
        pt = p if t == 1 else 1 - p
        at = 0.25 if t == 1 else 0.75
        assert v == pytest.approx(-at * (1 - pt) ** 2 * math.log(pt), rel=1e-5)


def test_focal_loss_gamma_zero_no_alpha_is_bce_and_reductions():
    logits, targets = torch.randn(20), (torch.rand(20) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    assert torch.allclose(sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0), bce)
    full = sigmoid_focal_loss(logits, targets)
    assert sigmoid_focal_loss(logits, targets, reduction="sum").item() == pytest.approx(
        full.sum().item()
    )
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(
        full.mean().item()
    )
    with pytest.raises(ValueError):
        sigmoid_focal_loss(logits, targets, reduction="avg")


def test_smooth_l1_pieces_and_l1_limit():
    x = torch.tensor([-2.0, -0.05, 0.0, 0.05, 0.5, 3.0])
    beta = 0.1
    expected = [abs(v) - 0.5 * beta if abs(v) >= beta else 0.5 * v * v / beta for v in x.tolist()]
    assert smooth_l1_loss(x, torch.zeros_like(x), beta).tolist() == pytest.approx(expected)
    assert smooth_l1_loss(x, torch.zeros_like(x), 0.0).tolist() == pytest.approx(x.abs().tolist())


def test_smooth_l1_is_continuous_at_beta():
    beta = 0.5
    below = smooth_l1_loss(torch.tensor([beta - 1e-6]), torch.zeros(1), beta)
    above = smooth_l1_loss(torch.tensor([beta + 1e-6]), torch.zeros(1), beta)
    assert below.item() == pytest.approx(above.item(), abs=1e-5)
