import contextlib
import math

import pytest
import torch
from torch import nn

from podkit.models import build_detector, output, tiny_model_config
from podkit.models.gsl import (
    GlobalScaleConv,
    blend_conv,
    grid_sample_conv,
    gsl_convs,
    image_extent,
    to_gsl,
)

CASES = [
    ([[1.3, 2.7], [0.4, 1.6]], (1, 1)),  # fractional, one below 1
    ([[2.0, 3.0], [1.0, 1.0]], (1, 1)),  # exact integers
    ([[1.5, 0.2], [3.25, 2.5]], (2, 2)),  # stride 2
    ([[0.7, 0.7], [0.7, 0.7]], (2, 1)),  # shared floors, mixed stride
    ([[4.6, 5.1], [0.05, 6.9]], (1, 1)),  # large dilations against the borders of a small map
]


@pytest.mark.parametrize("scales,stride", CASES)
def test_blend_equals_grid_sample_in_forward_and_all_gradients(scales, stride):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 11, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(scales, dtype=torch.float64, requires_grad=True)
    fast = blend_conv(x, weight, bias, s, stride)
    ref = grid_sample_conv(x, weight, bias, s, stride)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, atol=1e-10)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * g).sum(), (x, weight, bias, s))
    # at an exact integer the scale derivative is one-sided: compare with the limit from above
    s_above = (s + 1e-9 * (s == s.round())).detach().requires_grad_(True)
    ref_above = grid_sample_conv(x, weight, bias, s_above, stride)
    grads_ref = torch.autograd.grad((ref_above * g).sum(), (x, weight, bias, s_above))
    for a, b, name in zip(
        grads_fast, grads_ref, ("input", "weight", "bias", "scales"), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_scale_gradient_off_integers_needs_no_limit():
    torch.manual_seed(4)
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    s = torch.tensor([[1.37, 2.61]], dtype=torch.float64, requires_grad=True)
    (a,) = torch.autograd.grad(blend_conv(x, w, None, s, (1, 1)).sum(), s)
    (b,) = torch.autograd.grad(grid_sample_conv(x, w, None, s, (1, 1)).sum(), s)
    assert torch.allclose(a, b, atol=1e-10)


def test_global_scale_conv_predictor_gradient_and_float32_tolerance():
    torch.manual_seed(1)
    conv = GlobalScaleConv(nn.Conv2d(6, 8, 3, padding=1, bias=False))
    nn.init.normal_(conv.scale_predictor.weight, std=0.5)
    x = torch.randn(3, 6, 12, 10)
    scales = conv.scales(x)
    fast = blend_conv(x, conv.weight, None, scales, conv.stride)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), conv.scale_predictor.weight)
    scales = conv.scales(x)
    ref = grid_sample_conv(x, conv.weight, None, scales, conv.stride)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), conv.scale_predictor.weight)
    assert torch.allclose(fast, ref, atol=1e-4)
    assert torch.allclose(g_fast, g_ref, rtol=1e-4, atol=1e-4)


def test_starts_at_the_original_conv():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    gsl = GlobalScaleConv(conv)
    x = torch.randn(2, 4, 15, 13)
    assert torch.allclose(gsl(x), conv(x), atol=1e-6)
    assert gsl.last_scales.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    dilated = nn.Conv2d(4, 6, 3, padding=2, dilation=2)
    assert torch.allclose(GlobalScaleConv(dilated)(x), dilated(x), atol=1e-5)


def test_grouped_batch_equals_image_by_image():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    s = torch.tensor([[1.2, 1.7], [2.5, 1.1], [1.9, 1.3], [2.2, 1.5]], dtype=torch.float64)
    batch = blend_conv(x, w, None, s, (1, 1))
    single = torch.cat([blend_conv(x[i : i + 1], w, None, s[i : i + 1], (1, 1)) for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-12)


@pytest.mark.parametrize(
    "arch,expected", [("faster_rcnn_fpn", 12), ("faster_rcnn_c4", 12), ("retinanet", 12)]
)
def test_to_gsl_replaces_conv3_to_conv5_and_keeps_weights(arch, expected):
    cfg = tiny_model_config(arch, 3)
    plain = build_detector(cfg)
    cfg.gsl = True
    torch.manual_seed(0)
    gsl = build_detector(cfg)
    names = [n for n, _ in gsl_convs(gsl)]
    assert len(names) == expected  # R18: 2 blocks x 2 convs per stage; C4: layer2, layer3 + res5
    assert not any("layer1" in n or "fpn" in n or "rpn" in n for n in names)
    if arch == "faster_rcnn_c4":
        assert any("res5" in n for n in names)
    gsl.load_state_dict(plain.state_dict(), strict=False)
    plain.eval()
    gsl.eval()
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = plain.backbone(torch.stack(x)), gsl.backbone(torch.stack(x))
    for fa, fb in zip(a, b, strict=True):
        assert torch.allclose(fa, fb, atol=1e-5)


def test_gsl_detector_trains_and_scales_move():
    cfg = tiny_model_config("faster_rcnn_fpn", 3)
    cfg.gsl = True
    model = build_detector(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 60, 70]]), "labels": torch.tensor([1])}] * 2
    for _ in range(2):
        loss = sum(model(images, targets).losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    conv = gsl_convs(model)[0][1]
    assert conv.scale_predictor.weight.grad.abs().sum() > 0
    assert not torch.allclose(conv.last_scales, torch.ones_like(conv.last_scales))
    assert math.isfinite(loss.item())


def test_scales_ignore_batch_padding():
    torch.manual_seed(0)
    conv = GlobalScaleConv(nn.Conv2d(4, 4, 3, padding=1))
    nn.init.normal_(conv.scale_predictor.weight)
    x = torch.rand(1, 4, 6, 10) + 1.0  # one image's map, then the same padded into a batch
    batch = torch.zeros(2, 4, 12, 12)
    batch[0, :, :6, :10] = x[0]
    batch[1] = torch.rand(4, 12, 12)
    alone = conv.scales(x)
    with image_extent(conv, [(6, 10), (12, 12)], (12, 12)):
        assert torch.allclose(conv.scales(batch)[0], alone[0], atol=1e-6)
    assert conv.image_extent is None  # nothing left behind for a later call
    with image_extent(conv, [(12, 12), (12, 12)], (12, 12)):  # no padding: the plain mean
        assert conv.image_extent is None
    assert not torch.allclose(conv.scales(batch)[0], alone[0], atol=1e-2)  # what padding did


def test_gsl_detector_scales_of_an_image_barely_move_in_a_padded_batch(monkeypatch):
    """In a batch with a larger image, the pool sees only the image's own cells: its scales
    move only by what the padding does to the features at its border (the pooled mean over a
    padded map moved them ~10x more)."""
    torch.manual_seed(0)
    cfg = tiny_model_config("retinanet", 3)
    cfg.gsl = True
    model = build_detector(cfg).eval()
    for _, conv in gsl_convs(model):
        nn.init.normal_(conv.scale_predictor.weight, std=0.3)
    small, large = torch.rand(3, 96, 128), torch.rand(3, 192, 224)

    def scales(images):
        with torch.no_grad():
            model(images)
        return torch.stack([conv.last_scales[0] for _, conv in gsl_convs(model)])

    alone, batched = scales([small]), scales([small, large])
    # the old pooling, over the whole padded map
    monkeypatch.setattr(output, "image_extent", lambda *args: contextlib.nullcontext())
    unmasked = scales([small, large])
    moved, moved_unmasked = (batched - alone).abs().max(), (unmasked - alone).abs().max()
    assert moved < 0.1 * moved_unmasked, (moved, moved_unmasked)


def test_to_gsl_without_matching_convs_fails():
    with pytest.raises(ValueError, match="no 3x3 conv"):
        to_gsl(nn.Sequential(nn.Conv2d(3, 3, 1)), ("layer2",))
