import copy
import math

import pytest
import torch
from torch import nn

from podkit.config import to_dict
from podkit.models import build_detector, tiny_model_config
from podkit.models.checkpoint import load_detector, save_checkpoint
from podkit.models.gsl import GlobalScaleConv, gsl_convs
from podkit.models.resnet import FrozenBatchNorm2d
from podkit.models.split_conv import SplitConv, apply_plan, decompose_conv, fold_norm
from podkit.pod.decompose import make_plan, plan_checkpoint, plan_layer
from podkit.pod.scales import draw_records
from tests.conftest import tiny_config
from tests.pod.density import (
    fd_density_1d,
    fd_density_2d,
    gsl_density_1d,
    gsl_density_2d,
    marginal,
)


def parts(layer):
    return [(tuple(p["dilation"]), tuple(p["kernel"]), p["out_channels"]) for p in layer["parts"]]


def test_plan_rules_on_the_papers_examples():
    a = plan_layer("a", 1.7, 2.9, 10, channel_multiple=1)
    assert parts(a) == [((1, 2), (3, 3), 2), ((2, 3), (3, 3), 8)] and a["alpha"] == pytest.approx(
        0.8
    )
    b = plan_layer("b", 2.02, 1.7, 10, channel_multiple=1)
    assert parts(b) == [((2, 1), (3, 3), 3), ((2, 2), (3, 3), 7)] and b["alpha"] == pytest.approx(
        0.7
    )
    c = plan_layer("c", 0.46, 0.89, 40, channel_multiple=1)
    assert [p[:2] for p in parts(c)] == [((0, 0), (1, 1)), ((1, 1), (3, 3))]
    d = plan_layer("d", 1.02, 2.98, 10, channel_multiple=1)
    assert parts(d) == [((1, 3), (3, 3), 10)] and d["alpha"] == 0.0
    e = plan_layer("e", 0.3, 2.0, 8, channel_multiple=1)
    assert [p[:2] for p in parts(e)] == [((0, 2), (1, 3)), ((1, 2), (3, 3))]  # 1x3 kernel part


def test_channel_multiple_rounds_the_upper_part_and_records_the_alpha_used():
    layer = plan_layer("x", 1.7, 2.9, 64, channel_multiple=16)  # 0.8 * 64 = 51.2 -> 48
    assert parts(layer) == [((1, 2), (3, 3), 16), ((2, 3), (3, 3), 48)] and layer["alpha"] == 0.75
    assert (
        len(plan_layer("y", 1.08, 1.08, 64, channel_multiple=16)["parts"]) == 1
    )  # 5.1 -> 0 with alpha under 0.1: one conv
    assert parts(plan_layer("z", 1.97, 1.93, 64, channel_multiple=16)) == [
        ((2, 2), (3, 3), 64)
    ]  # all upper


def test_rounding_never_collapses_a_real_split():
    # 0.2 * 32 = 6.4: a multiple of 16 would round it to 0 channels, one conv at dilation 1
    layer = plan_layer("small", 1.2, 1.2, 32, channel_multiple=16)
    assert parts(layer) == [((1, 1), (3, 3), 24), ((2, 2), (3, 3), 8)]
    assert layer["channel_multiple"] == 8 and layer["alpha"] == 0.25
    # 0.85 * 32 = 27.2 -> 32 with 16: all upper; halving keeps a lower part
    high = plan_layer("high", 1.85, 2.85, 32, channel_multiple=16)
    assert [p["out_channels"] for p in high["parts"]] == [8, 24] and high["channel_multiple"] == 8
    # where one side is empty only because alpha is near 0 or 1, rounding still merges
    assert len(plan_layer("edge", 1.06, 1.06, 32, channel_multiple=16)["parts"]) == 1
    # the exact split is untouched
    assert plan_layer("exact", 1.2, 1.2, 32, channel_multiple=1)["channel_multiple"] == 1


@pytest.mark.parametrize(
    "scales", [(1.7, 2.9), (0.46, 0.89), (0.3, 2.0), (1.02, 2.98), (3.5, 0.02)]
)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(13, 13), (16, 11)])
def test_fd_layers_keep_output_sizes(scales, stride, size):
    conv = nn.Conv2d(4, 16, 3, stride, 1)
    layer = plan_layer("l", *scales, 16, channel_multiple=1)
    fd = decompose_conv(conv, layer)
    x = torch.randn(1, 4, *size)
    assert fd(x).shape == conv(x).shape
    convs = [fd] if isinstance(fd, nn.Conv2d) else list(fd.parts)
    assert all(type(c) is nn.Conv2d for c in convs)


def test_weight_transfer_first_filters_low_last_filters_high_and_sum_or_centre():
    conv = nn.Conv2d(2, 10, 3, padding=1, bias=True)
    layer = plan_layer("l", 0.4, 1.6, 10, channel_multiple=1)
    fd = decompose_conv(conv, layer, "sum")
    low, high = fd.parts
    n_low = low.out_channels
    assert torch.equal(low.weight, conv.weight[:n_low].sum(dim=2, keepdim=True))
    assert torch.equal(high.weight, conv.weight[n_low:])
    assert torch.equal(torch.cat([low.bias, high.bias]), conv.bias)
    centre = decompose_conv(conv, layer, "centre").parts[0]
    assert torch.equal(centre.weight, conv.weight[:n_low, :, 1:2, :])


def integer_gsl_detector(arch):
    cfg = tiny_model_config(arch, 3)
    cfg.gsl = True
    model = build_detector(cfg).eval()
    scales = {}  # integer (d_h, d_w) in {1, 2, 3} x {1, 2}, varied over the layers
    for k, (name, conv) in enumerate(gsl_convs(model)):
        dh, dw = (1 + k % 3, 1 + (k // 3) % 2)
        with torch.no_grad():
            conv.scale_predictor.bias.copy_(torch.tensor([math.log(dh), math.log(dw)]))
        scales[name] = (float(dh), float(dw))
    return model, scales


@pytest.mark.parametrize("arch", ["faster_rcnn_fpn", "faster_rcnn_c4", "retinanet"])
def test_integer_scales_fd_equals_gsl_whole_detector(arch):
    torch.manual_seed(3)
    gsl, scales = integer_gsl_detector(arch)
    fd = apply_plan(copy.deepcopy(gsl), make_plan(gsl, scales))
    assert not any(isinstance(m, GlobalScaleConv) for m in fd.modules())
    assert any(isinstance(m, nn.Conv2d) and m.dilation != (1, 1) for m in fd.modules())
    x = torch.rand(1, 3, 96, 128)
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 96)]
    with torch.no_grad():
        for a, b in zip(gsl.backbone(x), fd.backbone(x), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
        out_gsl, out_fd = gsl(images).detections, fd(images).detections
    for a, b in zip(out_gsl, out_fd, strict=True):
        assert torch.equal(a["labels"], b["labels"])
        assert torch.allclose(a["boxes"], b["boxes"], atol=1e-4)
        assert torch.allclose(a["scores"], b["scores"], atol=1e-5)


def test_plan_on_a_plain_checkpoint_splits_each_conv_s_own_filters(tmp_path):
    """POD's FD: the GSL network's plan on a plain network's weights. Each planned conv's
    filters go to its parts (first filters low dilation, last high), everything else as
    it was, and the checkpoint builds, loads and runs as an FD detector."""
    torch.manual_seed(0)
    cfg = tiny_config(tmp_path, "model.arch=faster_rcnn_c4")
    plain = build_detector(cfg.model)
    save_checkpoint({"model": plain.state_dict(), "config": to_dict(cfg)}, tmp_path / "p.pt")
    gsl_cfg = tiny_config(tmp_path, "model.arch=faster_rcnn_c4", "model.gsl=true")
    names = [n for n, _ in gsl_convs(build_detector(gsl_cfg.model))]
    plan = make_plan(
        build_detector(gsl_cfg.model), {n: (1.5, 2.5) for n in names}, channel_multiple=1
    )
    plan_checkpoint(tmp_path / "p.pt", plan, tmp_path / "fd.pt")
    fd, fd_cfg, _, _ = load_detector(tmp_path / "fd.pt")
    assert fd_cfg.model.fd_plan == plan and not fd_cfg.model.gsl
    modules, plain_modules = dict(fd.named_modules()), dict(plain.named_modules())
    for layer in plan:
        low, high = modules[layer["name"]].parts
        weight = plain_modules[layer["name"]].weight
        assert (low.dilation, high.dilation) == ((1, 2), (2, 3))
        torch.testing.assert_close(low.weight, weight[: low.out_channels])
        torch.testing.assert_close(high.weight, weight[low.out_channels :])
    unplanned = "rpn.head.conv.weight"
    torch.testing.assert_close(fd.state_dict()[unplanned], plain.state_dict()[unplanned])
    fd.eval()
    with torch.no_grad():
        assert len(fd([torch.rand(3, 96, 128)]).detections) == 1


def test_density_1d_is_exact():
    for d in (0.46, 1.0, 1.7, 2.9, 5.25):
        frac = d - math.floor(d)
        assert gsl_density_1d(d) == pytest.approx(
            fd_density_1d([math.floor(d), math.floor(d) + 1], [1 - frac, frac])
        )


def test_density_2d_agrees_up_to_the_papers_simplification():
    for dh, dw in ((1.7, 2.9), (2.02, 1.7), (1.4, 2.4), (0.46, 0.89)):
        layer = plan_layer("l", dh, dw, 1000, channel_multiple=1)
        gsl, fd = gsl_density_2d(dh, dw), fd_density_2d(layer)
        assert sum(gsl.values()) == pytest.approx(9.0) and sum(fd.values()) == pytest.approx(9.0)
        if dh >= 1 and dw >= 1:
            assert gsl[(0, 0)] == pytest.approx(fd[(0, 0)]) == pytest.approx(1.0)
        fh, fw = dh - math.floor(dh), dw - math.floor(dw)
        if abs(fh - fw) < 1e-9:  # equal fractions: each axis' marginal is exact
            for axis in (0, 1):
                assert marginal(gsl, axis) == pytest.approx(marginal(fd, axis), abs=1e-3)


def test_scales_draw_their_images_at_random_seeded():
    records = list(range(50))
    first = draw_records(records, 10, seed=0)
    assert first == draw_records(records, 10, seed=0) == sorted(first)  # seeded, file order
    assert len(set(first)) == 10 and first != records[:10]
    assert draw_records(records, 10, seed=1) != first
    assert draw_records(records, 80, seed=0) == records


def test_fold_norm_equals_the_norm_after_the_split():
    """Folding a norm into the parts (what the export does) computes norm(split(x))."""
    torch.manual_seed(0)
    parts = [
        nn.Conv2d(8, 5, 3, padding=1, bias=False),
        nn.Conv2d(8, 7, (1, 3), padding=(0, 2), dilation=2),
    ]
    split, norm = SplitConv(parts), FrozenBatchNorm2d(12)
    for buffer in (norm.weight, norm.bias, norm.running_mean):
        buffer.normal_()
    norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        reference = norm(split(x))
        fold_norm(split, norm)
        torch.testing.assert_close(split(x), reference, rtol=1e-5, atol=1e-5)
