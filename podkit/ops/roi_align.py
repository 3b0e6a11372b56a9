"""RoIAlign (He et al. 2017, `aligned=True` semantics of torchvision/Detectron2) in pure PyTorch.

Bilinear sampling averaged over a regular grid of sampling points is linear in the feature
map and separable in y and x: each output bin is a weighted sum of (2S)^2 feature pixels.
We compute the pixel indices and weights of every bin (separably, per axis) and let
`embedding_bag(mode="sum", per_sample_weights=...)` gather and sum the channels-last
feature rows: no per-RoI loop, memory O(K*P*P*S*S) for the indices, and autograd gives
the gradient with respect to the features. Measured against a sparse CSR matmul and a
dense gather it was 1.6x and 10x+ faster on 2 cores (docs/benchmarks.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from podkit.ops.boxes import box_area


def _axis_weights(
    start: Tensor, length: Tensor, pooled: int, samples: Tensor, max_samples: int, size: int
) -> tuple[Tensor, Tensor]:
    """Per-RoI bilinear taps along one axis.

    Returns (index, weight), each (K, pooled, max_samples * 2): the feature row/column of
    each of the two taps of each sampling point and its weight, already divided by the
    number of samples along the axis, so that summing the outer product of the y and x
    weights averages the bilinear samples exactly as torchvision does.
    """
    k = start.shape[0]
    bin_size = length / pooled
    grid = torch.arange(max_samples, device=start.device, dtype=start.dtype)
    bins = torch.arange(pooled, device=start.device, dtype=start.dtype)
    # sample position: start + p * bin + (i + 0.5) * bin / S
    pos = (
        start[:, None, None]
        + bins[None, :, None] * bin_size[:, None, None]
        + (grid[None, None, :] + 0.5) * (bin_size / samples)[:, None, None]
    )
    used = grid[None, None, :] < samples[:, None, None]
    valid = used & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    scale = valid.to(pos.dtype) / samples[:, None, None]
    index = torch.stack((low, high), dim=-1).reshape(k, pooled, -1)
    weight = torch.stack(((1 - frac) * scale, frac * scale), dim=-1).reshape(k, pooled, -1)
    return index, weight


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Pool each RoI of `rois` (K, 5) = [batch_index, x1, y1, x2, y2] into (K, C, PH, PW).

    sampling_ratio <= 0 uses ceil(roi_size / output_size) points per bin, per RoI.
    """
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    n, c, h, w = input.shape
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros((0, c, ph, pw))
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        sy = torch.full((k,), float(sampling_ratio), dtype=input.dtype, device=input.device)
        sx = sy
        max_sy = max_sx = sampling_ratio
    else:
        sy = torch.ceil(roi_h / ph).clamp(min=1)
        sx = torch.ceil(roi_w / pw).clamp(min=1)
        max_sy, max_sx = int(sy.max()), int(sx.max())
    y_index, y_weight = _axis_weights(y1, roi_h, ph, sy, max_sy, h)
    x_index, x_weight = _axis_weights(x1, roi_w, pw, sx, max_sx, w)
    batch = rois[:, 0].long()
    # (K, PH, PW, TY, TX) flat pixel index and weight of every tap of every bin
    flat = (batch[:, None, None, None, None] * h + y_index[:, :, None, :, None]) * w + x_index[
        :, None, :, None, :
    ]
    weight = y_weight[:, :, None, :, None] * x_weight[:, None, :, None, :]
    taps = flat.shape[3] * flat.shape[4]
    # contiguous rows of C channels (for a batch of one, reshape alone gives a strided view
    # that makes the gather ~25x slower)
    features = input.permute(0, 2, 3, 1).contiguous().view(n * h * w, c)
    # a weighted sum of `taps` feature rows per bin: exactly what embedding_bag computes
    pooled = F.embedding_bag(
        flat.reshape(-1, taps),
        features,
        per_sample_weights=weight.reshape(-1, taps),
        mode="sum",
    )
    return pooled.reshape(k, ph, pw, c).permute(0, 3, 1, 2)


@torch.library.custom_op("podkit::roi_align", mutates_args=())
def roi_align_op(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """`roi_align` as one opaque op, so a traced graph keeps it as one node (ONNX RoiAlign:
    half_pixel when aligned, output_half_pixel when not: podkit.export.wrap). It has no
    autograd: training calls `roi_align` itself."""
    return roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)


@roi_align_op.register_fake
def _roi_align_fake(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    return features.new_empty((rois.shape[0], features.shape[1], output_size, output_size))


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over FPN levels: each RoI is pooled once, from the level that fits its size.

    Level = floor(canonical_level + log2(sqrt(area) / canonical_size)), clamped to the
    available levels (FPN paper, eq. 1: 224 px maps to level 4).
    """

    def __init__(
        self,
        output_size: int,
        sampling_ratio: int = 2,
        canonical_size: int = 224,
        canonical_level: int = 4,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level

    def levels(self, boxes: Tensor, strides: list[int]) -> Tensor:
        """Index (into `strides`) of the level each box is pooled from."""
        k_min = int(round(math.log2(strides[0])))
        k_max = int(round(math.log2(strides[-1])))
        scale = torch.sqrt(box_area(boxes))
        target = torch.floor(self.canonical_level + torch.log2(scale / self.canonical_size + 1e-6))
        return (target.clamp(min=k_min, max=k_max) - k_min).long()

    def forward(self, features: list[Tensor], rois: Tensor, strides: list[int]) -> Tensor:
        # traced (export, torch.compile): the opaque op; eager: the function, with autograd
        pool = roi_align_op if torch.compiler.is_compiling() else roi_align
        size, ratio, aligned = self.output_size, self.sampling_ratio, self.aligned
        if len(features) == 1:
            return pool(features[0], rois, size, 1.0 / strides[0], ratio, aligned)
        levels = self.levels(rois[:, 1:], strides)
        pooled = features[0].new_zeros((rois.shape[0], features[0].shape[1], size, size))
        for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
            # a data-dependent selection (NonZero, ScatterND once exported), not a mask: every
            # RoI is pooled from its own level only
            index = torch.where(levels == level)[0]
            pooled = pooled.index_put(
                (index,), pool(feature, rois[index], size, 1.0 / stride, ratio, aligned)
            )
        return pooled
