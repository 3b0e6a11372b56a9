"""Global Scale Learner (POD, section 3.1): a 3x3 conv whose dilation is learned per image.

A 3x3 conv sampled at a fractional dilation (d_h, d_w), bilinearly and with zero padding,
equals a blend of integer-dilation convs that share its weight:

    y = sum_{a in {fh, fh+1}, b in {fw, fw+1}} c_a c_b conv_(a, b)(x),
    fh = floor(d_h), c_fh = 1 - frac(d_h), c_(fh+1) = frac(d_h)   (same along w)

because the outer taps sample between rows +-fh and +-(fh+1) with weights (1 - frac, frac)
and the centre tap's two coefficients sum to 1. Dilation 0 puts the three taps on the
centre: a kernel of size 1 along that axis whose weight is the sum of the three. The fast
forward runs these (at most four) convs once per group of images that share the floors,
so a batch is not a loop over its images; `grid_sample_conv` is the direct definition the
tests hold it to. The upper dilation is floor + 1 even at an exact integer (with weight
0), so the gradient in the scale there is the derivative from above. (At an integer the
sampled function has a kink: grid_sample's derivative is one-sided in each tap's position,
which is from above for the +1 taps but from below for the -1 taps; everywhere else the
two agree exactly.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MAX_SCALE = 32.0


class GlobalScaleConv(nn.Module):
    """A 3x3 conv with per-image dilation (d_h, d_w) = d0 * exp(linear(global average pool)).

    The predictor starts at zero, so every layer starts at its original dilation d0; the
    exponential keeps scales positive. `last_scales` holds the (N, 2) scales of the latest
    forward (detached), for `podkit scales`.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.groups != 1:
            raise ValueError(
                f"GlobalScaleConv replaces plain 3x3 convs, got kernel {conv.kernel_size}, groups {conv.groups}"
            )
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.stride = conv.stride
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.register_buffer("base_dilation", torch.tensor([float(d) for d in conv.dilation]))
        self.scale_predictor = nn.Linear(conv.in_channels, 2)
        nn.init.zeros_(self.scale_predictor.weight)
        nn.init.zeros_(self.scale_predictor.bias)
        self.last_scales: Tensor | None = None
        # (N, 2): the share of the input's height and width each image fills in a padded
        # batch, during the detector's backbone forward (`image_extent`); None: all of it
        self.image_extent: Tensor | None = None

    def scales(self, x: Tensor) -> Tensor:
        """(N, 2) positive dilations (d_h, d_w) predicted from the input's global average,
        taken over each image's own region, so padding does not change an image's scales."""
        z = self.scale_predictor(image_mean(x, self.image_extent))
        return self.base_dilation * torch.exp(z.clamp(max=math.log(MAX_SCALE)))

    def forward(self, x: Tensor) -> Tensor:
        scales = self.scales(x)
        self.last_scales = scales.detach()
        return blend_conv(x, self.weight, self.bias, scales, self.stride)


def conv_at_dilation(
    x: Tensor, weight: Tensor, stride: tuple[int, int], dh: int, dw: int
) -> Tensor:
    """The 3x3 conv at integer dilation (dh, dw); 0 along an axis = a size-1 kernel of summed taps."""
    if dh == 0:
        weight = weight.sum(dim=2, keepdim=True)
    if dw == 0:
        weight = weight.sum(dim=3, keepdim=True)
    return F.conv2d(x, weight, None, stride, padding=(dh, dw), dilation=(max(dh, 1), max(dw, 1)))


def blend_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, scales: Tensor, stride: tuple[int, int]
) -> Tensor:
    """The GSL forward through the blend identity, grouped by the images' floor dilations."""
    floors = scales.detach().floor().long()
    frac = scales - floors.to(scales.dtype)  # differentiable in the scales
    groups = torch.unique(floors, dim=0)
    out = None
    for fh, fw in groups.tolist():
        members = torch.where((floors[:, 0] == fh) & (floors[:, 1] == fw))[0]
        xs = x if len(members) == len(x) else x[members]
        fr = frac[members]
        ch = torch.stack([1 - fr[:, 0], fr[:, 0]], dim=1)  # (n, 2): coefficients of fh, fh + 1
        cw = torch.stack([1 - fr[:, 1], fr[:, 1]], dim=1)
        y = None
        for i, dh in enumerate((fh, fh + 1)):
            for j, dw in enumerate((fw, fw + 1)):
                coef = ch[:, i] * cw[:, j]
                if not coef.requires_grad and bool((coef == 0).all()):
                    continue  # an exact integer scale at inference: this conv has weight 0
                term = conv_at_dilation(xs, weight, stride, dh, dw) * coef.view(-1, 1, 1, 1)
                y = term if y is None else y + term
        if out is None:
            if len(groups) == 1:
                out = y
                break
            out = y.new_zeros((len(x), *y.shape[1:]))
        out = out.index_copy(0, members, y)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def grid_sample_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, scales: Tensor, stride: tuple[int, int]
) -> Tensor:
    """The definition: each of the 9 taps sampled bilinearly (zero padding) at offset
    (k_h d_h, k_w d_w) from the output's centre pixel, then contracted with the weight.
    The 9 taps' grids are stacked along the rows of one grid, so the export holds one
    GridSample per conv (nine made the ONNX export twice as slow)."""
    n, c, h, w = x.shape
    ho = (h - 1) // stride[0] + 1
    wo = (w - 1) // stride[1] + 1
    cy = torch.arange(ho, dtype=x.dtype, device=x.device) * stride[0]
    cx = torch.arange(wo, dtype=x.dtype, device=x.device) * stride[1]
    k = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    # tap t = 3 * (k_h + 1) + (k_w + 1), as in weight.reshape(out, c * 9)
    kh, kw = k.repeat_interleave(3), k.repeat(3)
    y = cy[None, None, :, None] + kh[None, :, None, None] * scales[:, 0, None, None, None]
    xx = cx[None, None, None, :] + kw[None, :, None, None] * scales[:, 1, None, None, None]
    grid = torch.stack(
        [
            (2 * xx / max(w - 1, 1) - 1).expand(n, 9, ho, wo),
            (2 * y / max(h - 1, 1) - 1).expand(n, 9, ho, wo),
        ],
        dim=-1,
    ).reshape(n, 9 * ho, wo, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    # (n, c, 9 ho, wo) -> (n, 9c, ho, wo): the contraction with the weight is a 1x1 conv
    # (one op every exporter and backend knows)
    sampled = sampled.reshape(n, c * 9, ho, wo)
    return F.conv2d(sampled, weight.reshape(weight.shape[0], c * 9, 1, 1), bias)


def image_mean(x: Tensor, extent: Tensor | None) -> Tensor:
    """(N, C) mean of x (N, C, H, W) over each image's first ceil(extent * size) rows and
    columns: the image's own cells of a feature map computed from a padded batch."""
    if extent is None:
        return x.mean(dim=(2, 3))
    h, w = x.shape[-2:]
    rows = torch.ceil(extent[:, 0] * h - 1e-6).clamp(1, h)  # (N,)
    cols = torch.ceil(extent[:, 1] * w - 1e-6).clamp(1, w)
    mask_h = torch.arange(h, device=x.device)[None, :] < rows[:, None]  # (N, H)
    mask_w = torch.arange(w, device=x.device)[None, :] < cols[:, None]  # (N, W)
    mask = (mask_h[:, :, None] & mask_w[:, None, :]).to(x.dtype)[:, None]  # (N, 1, H, W)
    return (x * mask).sum(dim=(2, 3)) / (rows * cols).to(x.dtype)[:, None]


@contextlib.contextmanager
def image_extent(
    module: nn.Module, sizes: list[tuple[int, int]], padded: tuple[int, int]
) -> Iterator[None]:
    """While in the block, every GSL conv in `module` knows the region each image of a
    padded batch fills; after it, none does (so no later call sees a stale extent)."""
    convs = [conv for _, conv in gsl_convs(module)]
    if convs and any(tuple(s) != tuple(padded) for s in sizes):
        extent = torch.tensor([[h / padded[0], w / padded[1]] for h, w in sizes])
        for conv in convs:
            conv.image_extent = extent.to(conv.weight.device)
    try:
        yield
    finally:
        for conv in convs:
            conv.image_extent = None


def gsl_convs(model: nn.Module) -> list[tuple[str, GlobalScaleConv]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, GlobalScaleConv)]


DEFAULT_STAGES = ("layer2", "layer3", "layer4")  # conv3-conv5


def to_gsl(model: nn.Module, stages: tuple[str, ...] = DEFAULT_STAGES) -> list[str]:
    """Replace the 3x3 convs of the given ResNet stages by GlobalScaleConv, keeping weights.

    Looks in the backbone trunk and, for the C4 detector, in the RoI head's res5 (its conv5).
    Returns the names of the replaced convs.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        parts = name.split(".")
        in_stage = any(p in stages for p in parts) or ("res5" in parts and "layer4" in stages)
        if not in_stage:
            continue
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and child.kernel_size == (3, 3) and child.groups == 1:
                setattr(module, child_name, GlobalScaleConv(child))
                replaced.append(f"{name}.{child_name}")
    if not replaced:
        raise ValueError(f"to_gsl: no 3x3 conv found in stages {stages}")
    return replaced
