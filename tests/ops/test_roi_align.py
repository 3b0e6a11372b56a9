import importlib
import math

import pytest
import torch

from podkit.ops import MultiScaleRoIAlign, roi_align

roi_align_module = importlib.import_module("podkit.ops.roi_align")


def bilinear(f, y, x):
    """torchvision's bilinear_interpolate for one (H, W) map, scalar by scalar."""
    h, w = f.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return f.new_zeros(())
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(math.floor(y)), int(math.floor(x))
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    return (
        (1 - ly) * (1 - lx) * f[yl, xl]
        + (1 - ly) * lx * f[yl, xh]
        + ly * (1 - lx) * f[yh, xl]
        + ly * lx * f[yh, xh]
    )


def brute_force_roi_align(inp, rois, pooled, scale, sampling_ratio, aligned):
    out = inp.new_zeros(rois.shape[0], inp.shape[1], pooled, pooled)
    for k in range(rois.shape[0]):
        b = int(rois[k, 0])
        off = 0.5 if aligned else 0.0
        x1, y1, x2, y2 = (float(v) * scale - off for v in rois[k, 1:])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gy = sampling_ratio if sampling_ratio > 0 else max(math.ceil(rh / pooled), 1)
        gx = sampling_ratio if sampling_ratio > 0 else max(math.ceil(rw / pooled), 1)
        for c in range(inp.shape[1]):
            for p in range(pooled):
                for q in range(pooled):
                    acc = inp.new_zeros(())
                    for iy in range(gy):
                        y = y1 + p * rh / pooled + (iy + 0.5) * rh / pooled / gy
                        for ix in range(gx):
                            x = x1 + q * rw / pooled + (ix + 0.5) * rw / pooled / gx
                            acc = acc + bilinear(inp[b, c], y, x)
                    out[k, c, p, q] = acc / (gy * gx)
    return out


ROIS = torch.tensor(
    [
        [0, 1.2, 0.5, 7.7, 6.1],
        [1, -3, -2, 20, 15],  # partly outside
        [0, 4, 4, 4.2, 4.1],  # smaller than a pixel
        [1, 9.5, 7, 12, 10],  # at the border
        [0, 0, 0, 3, 14],  # tall
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("sampling_ratio", [2, 0, 1])
@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_forward_and_backward_match_brute_force(sampling_ratio, aligned):
    torch.manual_seed(0)
    inp = torch.randn(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    out = roi_align(inp, ROIS, 3, 0.9, sampling_ratio, aligned)
    ref = brute_force_roi_align(inp, ROIS, 3, 0.9, sampling_ratio, aligned)
    assert torch.allclose(out, ref, atol=1e-5)
    grad_out = torch.randn_like(out)
    (g_out,) = torch.autograd.grad((out * grad_out).sum(), inp)
    (g_ref,) = torch.autograd.grad((ref * grad_out).sum(), inp)
    assert torch.allclose(g_out, g_ref, atol=1e-5)


def test_roi_align_float32_rectangular_output_and_empty():
    torch.manual_seed(1)
    inp = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0, 2.0, 3.0, 12.0, 9.0]])
    out = roi_align(inp, rois, (3, 3), 0.5, 2)
    ref = brute_force_roi_align(inp.double(), rois.double(), 3, 0.5, 2, True)
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, atol=1e-5)
    assert roi_align(inp, rois, (2, 3)).shape == (1, 4, 2, 3)
    assert roi_align(inp, torch.zeros(0, 5), 7).shape == (0, 4, 7, 7)


def test_roi_align_of_constant_map_is_constant_inside():
    inp = torch.full((1, 2, 20, 20), 3.0)
    out = roi_align(inp, torch.tensor([[0, 2.0, 2.0, 15.0, 17.0]]), 5, 1.0, 2)
    assert torch.allclose(out, torch.full_like(out, 3.0))


def test_multiscale_level_mapping_and_pooling():
    pooler = MultiScaleRoIAlign(output_size=2, sampling_ratio=2)
    strides = [4, 8, 16, 32]
    boxes = torch.tensor(
        [[0, 0, 50.0, 50], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 2000, 2000]]
    )
    # floor(4 + log2(sqrt(area) / 224)) clamped to [2, 5]
    assert pooler.levels(boxes, strides).tolist() == [0, 1, 2, 3, 3]
    feats = [torch.randn(1, 3, 512 // s, 512 // s) for s in strides]
    rois = torch.cat([torch.zeros(5, 1), boxes], 1)
    out = pooler(feats, rois, strides)
    for k, level in enumerate(pooler.levels(boxes, strides).tolist()):
        expected = roi_align(feats[level], rois[k : k + 1], 2, 1.0 / strides[level], 2)
        assert torch.allclose(out[k : k + 1], expected)


def test_multiscale_traced_form_pools_each_roi_once(monkeypatch):
    """Exported (torch.export: the opaque op, a data-dependent split by level), the pooler
    computes the eager result and pools each RoI once, from its own level only."""
    pooler = MultiScaleRoIAlign(output_size=3, sampling_ratio=2)
    strides = [4, 8, 16, 32]
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 4 + torch.rand(40, 2, generator=g) * 300], 1)
    rois = torch.cat([torch.zeros(40, 1), boxes], 1)
    feats = [torch.randn(1, 4, 512 // s, 512 // s, generator=g) for s in strides]

    class Pool(torch.nn.Module):
        def forward(self, rois, *feats):
            return pooler(list(feats), rois, strides)

    program = torch.export.export(Pool(), (rois, *feats)).module()
    pooled_rows = []
    eager_roi_align = roi_align_module.roi_align

    def counting(features, rois, *args):
        pooled_rows.append(rois.shape[0])
        return eager_roi_align(features, rois, *args)

    monkeypatch.setattr(roi_align_module, "roi_align", counting)
    out = program(rois, *feats)
    assert sum(pooled_rows) == 40 and len(pooled_rows) == 4
    assert torch.allclose(out, pooler(feats, rois, strides), atol=1e-6)
