"""ResNet backbones (He et al. 2016) with a width multiplier, frozen BN and stage freezing.

Module names follow torchvision's layout (conv1, bn1, layer1..layer4, downsample.0/1), so
ImageNet weights saved from torchvision load by name from a local file. The stride of a
bottleneck sits on its 3x3 conv ("ResNet v1.5", torchvision and MMDetection), or on its first
1x1 conv (`stride_in_1x1`: the MSRA weights behind Detectron2's model zoo).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not parameters).

    Detection batches are too small for useful batch statistics; with pretrained weights the
    ImageNet statistics are kept as they are.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        # the fused inference kernel: one pass over x instead of a multiply and an add
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


def make_norm(kind: str, channels: int) -> nn.Module:
    """`frozen` for pretrained backbones, `bn` for training from scratch, `gn` for small batches."""
    if kind == "frozen":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    raise ValueError(f"unknown norm {kind!r}: use frozen, bn or gn")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int, norm: str, stride_in_1x1: bool = False
    ) -> None:
        super().__init__()
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride_1x1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride_3x3, 1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = make_norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * 4, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int, norm: str) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, 1, stride, bias=False), make_norm(norm, outplanes)
    )


def make_stage(
    block: type,
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int,
    norm: str,
    stride_in_1x1: bool = False,
) -> nn.Sequential:
    """One ResNet stage (torchvision's `layerN`): the first block carries the stride (on its
    1x1 conv with `stride_in_1x1`, bottlenecks only)."""
    first = {"stride_in_1x1": True} if stride_in_1x1 else {}
    layers = [block(inplanes, planes, stride, norm, **first)]
    layers += [block(planes * block.expansion, planes, 1, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet trunk returning the outputs of its stages (C2..C5, strides 4..32).

    `width` scales every channel count (0.25 gives a tiny net for tests); `num_stages` = 3
    stops at C4 (the C4 detector puts stage 5 in its RoI head); `freeze_at` = k freezes the
    stem (k >= 1) and stages 2..k.
    """

    def __init__(
        self,
        depth: int = 50,
        width: float = 1.0,
        norm: str = "frozen",
        freeze_at: int = 2,
        num_stages: int = 4,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        kind, blocks = DEPTHS[depth]
        self.block = BasicBlock if kind == "basic" else Bottleneck
        self.norm = norm
        self.depth = depth
        base = max(8, int(round(64 * width)))
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.planes = [base * 2**i for i in range(4)]
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        inplanes = base
        for i in range(num_stages):
            stride = 1 if i == 0 else 2
            stage = make_stage(
                self.block, inplanes, self.planes[i], blocks[i], stride, norm, stride_in_1x1
            )
            self.add_module(f"layer{i + 1}", stage)
            inplanes = self.planes[i] * self.block.expansion
            self.out_channels.append(inplanes)
            self.strides.append(4 * 2**i)
        self.num_stages = num_stages
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (freeze_at >= 1) and to stages 2..freeze_at."""
        modules = [self.conv1, self.bn1] if freeze_at >= 1 else []
        modules += [
            getattr(self, f"layer{i - 1}")
            for i in range(2, min(freeze_at, self.num_stages + 1) + 1)
        ]
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


def read_resnet_weights(path: str | Path) -> dict[str, Tensor]:
    """An ImageNet ResNet state dict (torchvision key layout) from a local file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: backbone weights not found (podkit never downloads them; pass a local file)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or not a tensor dict
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a dict of tensors in torchvision's ResNet layout")
    return state


def load_resnet_weights(
    module: nn.Module, path: str | Path, prefix_map: dict[str, str] | None = None
) -> list[str]:
    """Load ImageNet weights into `module` by torchvision key; returns the keys left unused.

    `prefix_map` renames key prefixes first (the C4 detector maps `layer4.` into its head).
    A key present in both with a different shape is an error naming the key and file.
    """
    state = read_resnet_weights(path)
    if prefix_map:
        renamed = {}
        for key, value in state.items():
            for old, new in prefix_map.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            renamed[key] = value
        state = renamed
    own = module.state_dict()
    matched = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked") or key not in own:
            continue
        if own[key].shape != value.shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(own[key].shape)} (depth/width mismatch?)"
            )
        matched[key] = value
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} model weights not in the file, e.g. {missing[:3]}"
        )
    module.load_state_dict(matched, strict=False)
    return sorted(k for k in set(state) - set(matched) if not k.endswith("num_batches_tracked"))
