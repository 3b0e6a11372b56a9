"""Anchor boxes for every feature level, cached per feature size."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def cell_anchors(
    sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], rounded: bool = True
) -> Tensor:
    """Anchors centred on (0, 0): one per (ratio, size), ratio = height / width, area = size^2;
    corners rounded to whole pixels (torchvision) or exact (Detectron2, MMDetection)."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    anchors = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
    return anchors.round() if rounded else anchors


class AnchorGenerator(nn.Module):
    """Anchors per level: `sizes[i]` and `aspect_ratios` on a grid of stride `strides[i]`
    (`stride_rule` "nominal"), or at the input's size // the level's feature size per axis
    ("floor": torchvision's AnchorGenerator, 59 px instead of 64 on P6 of a 416 px wide input).

    The grid for a given (feature size, stride) is computed once and cached, so a training
    run at fixed input sizes builds its anchors once.
    """

    def __init__(
        self,
        sizes: tuple[tuple[float, ...], ...],
        aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
        stride_rule: str = "nominal",
        rounded: bool = True,
    ) -> None:
        super().__init__()
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        self.stride_rule = stride_rule
        self.cell = [cell_anchors(s, aspect_ratios, rounded) for s in sizes]
        self._cache: dict[tuple, Tensor] = {}

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def grid_anchors(
        self, level: int, size: tuple[int, int], stride: tuple[int, int], device
    ) -> Tensor:
        """(H * W * A, 4) anchors, location-major then anchor, as the heads lay them out."""
        if torch.compiler.is_compiling():  # symbolic sizes (export): no cache
            return self.compute(level, size, stride, device)
        key = (level, size, stride, str(device))
        if key not in self._cache:
            self._cache[key] = self.compute(level, size, stride, device)
        return self._cache[key]

    def compute(self, level: int, size: tuple[int, int], stride: tuple[int, int], device) -> Tensor:
        """`grid_anchors` without the cache; `stride` is (y, x)."""
        h, w = size
        shift_x = torch.arange(w, dtype=torch.float32, device=device) * stride[1]
        shift_y = torch.arange(h, dtype=torch.float32, device=device) * stride[0]
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
        return (shifts + self.cell[level].to(device)[None]).reshape(-1, 4)

    def forward(
        self, feature_sizes: list[tuple[int, int]], strides: list[int], device
    ) -> list[Tensor]:
        """Each level's anchors; the (padded) input's size is the first level's size x its
        stride."""
        steps = [(s, s) for s in strides]
        if self.stride_rule == "floor":
            height, width = (n * strides[0] for n in feature_sizes[0])
            steps = [(height // h, width // w) for h, w in feature_sizes]
        return [
            self.grid_anchors(i, size, step, device)
            for i, (size, step) in enumerate(zip(feature_sizes, steps, strict=True))
        ]
