"""Feature Pyramid Network (Lin et al. 2017): top-down pathway with lateral 1x1 convs."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from podkit.models.resnet import make_norm

# extra levels -> how many levels they add
FPN_EXTRA = {"maxpool": 1, "p6p7": 2, "p6p7_c5": 2, "p6p7_c5_linear": 2, "none": 0}


class FPN(nn.Module):
    """P levels from C levels; `extra` adds coarser levels.

    extra = "maxpool": P6 = maxpool(P5) (Faster R-CNN, P2-P6).
    extra = "p6p7": P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)) (RetinaNet, P3-P7).
    extra = "p6p7_c5": P6 from C5 instead (Detectron2, torchvision's RetinaNet v2).
    extra = "p6p7_c5_linear": P6 from C5, P7 = conv3x3/2(P6) without the ReLU (MMDetection's
    add_extra_convs="on_input").
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: int,
        extra: str = "maxpool",
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if extra not in FPN_EXTRA:
            raise ValueError(f"unknown FPN extra levels {extra!r}")

        def conv(cin: int, k: int) -> nn.Module:
            """A conv with a bias, or (with `norm`: torchvision's v2 FPN) conv + norm."""
            if norm is None:
                return nn.Conv2d(cin, out_channels, k, padding=k // 2)
            layer = nn.Conv2d(cin, out_channels, k, padding=k // 2, bias=False)
            return nn.Sequential(layer, make_norm(norm, out_channels))

        self.lateral = nn.ModuleList(conv(c, 1) for c in in_channels)
        self.output = nn.ModuleList(conv(out_channels, 3) for _ in in_channels)
        self.extra = extra
        if extra.startswith("p6p7"):
            p6_in = in_channels[-1] if "c5" in extra else out_channels
            self.p6 = nn.Conv2d(p6_in, out_channels, 3, 2, 1)
            self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        n_extra = FPN_EXTRA[extra]
        self.strides = list(in_strides) + [in_strides[-1] * 2 ** (i + 1) for i in range(n_extra)]
        self.out_channels = out_channels

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        last = self.lateral[-1](features[-1])
        outs = [self.output[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](last))
        if self.extra == "maxpool":
            outs.append(F.max_pool2d(outs[-1], 1, 2))
        elif self.extra != "none":
            p6 = self.p6(features[-1] if "c5" in self.extra else outs[-1])
            outs += [p6, self.p7(p6 if self.extra.endswith("linear") else F.relu(p6))]
        return outs
