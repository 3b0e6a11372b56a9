"""The padded image batch every detector takes: made by the data pipeline, read by models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass
class ImageBatch:
    """Images padded into one tensor, with the size each had as fed and originally.

    `tensor` is (B, 3, H, W), RGB in [0, 1]; `sizes[i]` = (h, w) of image i inside the
    padding (the coordinates targets are given in); `original_sizes[i]` = its size before
    the data pipeline resized it (the coordinates detections are returned in).
    """

    tensor: Tensor
    sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    @classmethod
    def from_tensors(cls, images: list[Tensor], size_divisible: int = 32) -> ImageBatch:
        """Pad a list of (3, h, w) images to a common size divisible by `size_divisible`."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        h = -(-max(s[0] for s in sizes) // size_divisible) * size_divisible
        w = -(-max(s[1] for s in sizes) // size_divisible) * size_divisible
        tensor = torch.stack(
            [F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2])) for im in images]
        )
        return cls(tensor, sizes, list(sizes))

    def to(self, device) -> ImageBatch:
        return ImageBatch(self.tensor.to(device), self.sizes, self.original_sizes)
