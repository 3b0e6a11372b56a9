"""FD convs: a conv split into integer-dilation parts (POD's scale decomposition).

`apply_plan` replaces each planned conv (GSL or plain 3x3) by its parts, built from the
plan that pod/decompose.py writes. Weights transfer: the lower part takes the first
filters, the upper the last; a size-1 direction (dilation 0, a scale below 1) takes the sum
of the three taps (exact for a scale near 0) or the centre tap (`zero_dilation_init=
"centre"`, the paper's choice). Padding = dilation where the kernel is 3, so every output
size (stride 2 included) is the original's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from podkit.models.gsl import GlobalScaleConv


class SplitConv(nn.Module):
    """Integer-dilation convs side by side, outputs concatenated along channels."""

    def __init__(self, parts: list[nn.Conv2d]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(x) for part in self.parts], dim=1)


def fold_norm(split: SplitConv, norm: nn.Module) -> None:
    """Make `split` compute `norm(split(x))` for an inference-time norm (running statistics):
    each part takes its channels' scale into its weights and their shift into its bias. In
    place; the export folds a copy (backends fold a norm into the conv before it, not through
    the parts' concat)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    start = 0
    with torch.no_grad():
        for part in split.parts:
            rows = slice(start, start + part.out_channels)
            bias = shift[rows] if part.bias is None else shift[rows] + part.bias * scale[rows]
            part.weight.mul_(scale[rows, None, None, None])
            part.bias = nn.Parameter(bias.clone())
            start += part.out_channels


def build_part(
    spec: dict[str, Any], in_channels: int, stride: tuple[int, int], bias: bool
) -> nn.Conv2d:
    kh, kw = spec["kernel"]
    dh, dw = spec["dilation"]
    return nn.Conv2d(
        in_channels,
        spec["out_channels"],
        (kh, kw),
        stride,
        padding=(dh if kh == 3 else 0, dw if kw == 3 else 0),
        dilation=(max(dh, 1), max(dw, 1)),
        bias=bias,
    )


def transfer_weight(weight: Tensor, kernel: list[int], zero_dilation_init: str) -> Tensor:
    """A 3x3 weight slice reshaped to `kernel`: size-1 axes by summing or taking the centre."""
    if zero_dilation_init not in ("sum", "centre"):
        raise ValueError(f"zero_dilation_init must be sum or centre, got {zero_dilation_init!r}")
    for axis, size in ((2, kernel[0]), (3, kernel[1])):
        if size == 1:
            weight = (
                weight.sum(dim=axis, keepdim=True)
                if zero_dilation_init == "sum"
                else weight.narrow(axis, 1, 1)
            )
    return weight


def decompose_conv(
    conv: GlobalScaleConv | nn.Conv2d,
    layer_plan: dict[str, Any],
    zero_dilation_init: str = "sum",
    transfer: bool = True,
) -> nn.Module:
    """The FD replacement of one conv: a plain Conv2d, or a SplitConv of its parts."""
    parts, start = [], 0
    has_bias = conv.bias is not None
    for spec in layer_plan["parts"]:
        part = build_part(spec, conv.in_channels, conv.stride, has_bias)
        if transfer:
            n = spec["out_channels"]
            with torch.no_grad():
                part.weight.copy_(
                    transfer_weight(
                        conv.weight[start : start + n], spec["kernel"], zero_dilation_init
                    )
                )
                if has_bias:
                    part.bias.copy_(conv.bias[start : start + n])
            start += n
        parts.append(part)
    return parts[0] if len(parts) == 1 else SplitConv(parts)


def apply_plan(
    model: nn.Module,
    plan: list[dict[str, Any]],
    zero_dilation_init: str = "sum",
    transfer: bool = True,
) -> nn.Module:
    """Replace each planned conv (GSL or plain 3x3) of `model` by its FD form, in place."""
    modules = dict(model.named_modules())
    for layer in plan:
        name = layer["name"]
        if name not in modules:
            raise ValueError(f"plan layer {name} is not a module of this model")
        conv = modules[name]
        if sum(p["out_channels"] for p in layer["parts"]) != conv.out_channels:
            raise ValueError(
                f"plan layer {name}: parts have {sum(p['out_channels'] for p in layer['parts'])} channels, the conv {conv.out_channels}"
            )
        parent_name, _, attr = name.rpartition(".")
        setattr(
            modules[parent_name] if parent_name else model,
            attr,
            decompose_conv(conv, layer, zero_dilation_init, transfer),
        )
    return model
