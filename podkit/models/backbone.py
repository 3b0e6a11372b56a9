"""Backbones a detector sees: normalisation + ResNet (+ FPN), returning features and strides."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from podkit.models.fpn import FPN
from podkit.models.resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """RGB in [0, 1] -> ImageNet-normalised; part of the model so exports include it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class FPNBackbone(nn.Module):
    """ResNet C-levels `in_levels` (0 = C2 ... 3 = C5) through an FPN."""

    def __init__(
        self,
        body: ResNet,
        out_channels: int,
        in_levels: list[int],
        extra: str,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.body = body
        self.in_levels = in_levels
        self.fpn = FPN(
            [body.out_channels[i] for i in in_levels],
            [body.strides[i] for i in in_levels],
            out_channels,
            extra,
            norm,
        )
        self.strides = self.fpn.strides
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        c = self.body(self.normalize(x))
        return self.fpn([c[i] for i in self.in_levels])


class C4Backbone(nn.Module):
    """ResNet up to C4 (stride 16): the single feature map of the C4 detector."""

    def __init__(self, body: ResNet) -> None:
        super().__init__()
        if body.num_stages != 3:
            raise ValueError("C4Backbone needs a ResNet built with num_stages=3")
        self.normalize = Normalize()
        self.body = body
        self.strides = [16]
        self.out_channels = body.out_channels[-1]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.body(self.normalize(x))[-1]]
