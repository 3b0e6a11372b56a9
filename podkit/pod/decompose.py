"""Scale decomposition (POD, sections 3.2-3.3): a GSL conv -> integer-dilation sub-convs.

Per GSL conv with mean learned scales (d_h, d_w):
- a direction within `tolerance` (0.05) of an integer is rounded and not split;
- the split directions give alpha = the mean of their fractional parts; the upper part
  (ceil dilations) takes round(alpha * C_out) output channels, rounded to a multiple of
  `channel_multiple` (16: onnxruntime's blocked layout, see BACKENDS.md; 1: the paper's
  exact split), the lower part (floor dilations) the rest, concatenated lower then upper
  so the next BN / conv keep their channel order;
- no split direction, or an empty side after rounding: one conv;
- dilation 0 (a scale below 1) is a kernel of size 1 along that axis; padding = dilation
  where the kernel is 3, so every output size (stride 2 included) is the original's.
Weights transfer: the lower part takes the first filters, the upper the last; a size-1
direction takes the sum of the three taps (exact for a scale near 0) or the centre tap
(`zero_dilation_init="centre"`, the paper's choice).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from podkit.pod.gsl import GlobalScaleConv, gsl_convs


class SplitConv(nn.Module):
    """Integer-dilation convs side by side, outputs concatenated along channels."""

    def __init__(self, parts: list[nn.Conv2d]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(x) for part in self.parts], dim=1)


def plan_layer(
    name: str,
    d_h: float,
    d_w: float,
    out_channels: int,
    channel_multiple: int = 16,
    tolerance: float = 0.05,
) -> dict[str, Any]:
    """The decomposition of one layer, in plan.json's form."""
    scales = (float(d_h), float(d_w))
    near = [abs(d - round(d)) <= tolerance for d in scales]
    lower = [round(d) if n else math.floor(d) for d, n in zip(scales, near, strict=True)]
    upper = [round(d) if n else math.floor(d) + 1 for d, n in zip(scales, near, strict=True)]
    fracs = [d - math.floor(d) for d, n in zip(scales, near, strict=True) if not n]
    upper_channels = 0
    if fracs:
        alpha = sum(fracs) / len(fracs)
        multiple = max(1, channel_multiple)
        upper_channels = min(out_channels, multiple * round(alpha * out_channels / multiple))
    if upper_channels == 0:
        parts = [_part(lower, out_channels)]
    elif upper_channels == out_channels:
        parts = [_part(upper, out_channels)]
    else:
        parts = [_part(lower, out_channels - upper_channels), _part(upper, upper_channels)]
    return {
        "name": name,
        "d_h": scales[0],
        "d_w": scales[1],
        "alpha": upper_channels / out_channels,
        "parts": parts,
    }


def _part(dilation: list[int], channels: int) -> dict[str, Any]:
    return {
        "dilation": list(dilation),
        "kernel": [1 if d == 0 else 3 for d in dilation],
        "out_channels": channels,
    }


def make_plan(
    model: nn.Module,
    scales: dict[str, tuple[float, float]],
    channel_multiple: int = 16,
    tolerance: float = 0.05,
) -> list[dict[str, Any]]:
    """A plan for every GSL conv of `model` from its mean scales (layer name -> (d_h, d_w))."""
    plan = []
    for name, conv in gsl_convs(model):
        if name not in scales:
            raise ValueError(
                f"no learned scale for layer {name} (the scales file does not match this checkpoint)"
            )
        plan.append(plan_layer(name, *scales[name], conv.out_channels, channel_multiple, tolerance))
    return plan


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


def decompose_checkpoint(
    path,
    scales: dict[str, Any],
    out,
    channel_multiple: int = 16,
    zero_dilation_init: str = "sum",
    tolerance: float = 0.05,
) -> list[dict[str, Any]]:
    """`podkit decompose`: GSL checkpoint + scales.json -> FD checkpoint (weights transferred).

    The FD checkpoint's config carries the plan inline (model.fd_plan) with model.gsl off, so
    it evaluates, exports and finetunes (model.init_from) like any podkit checkpoint.
    """
    from podkit.config import to_dict
    from podkit.pod.scales import mean_scales
    from podkit.train.checkpoint import load_detector, save_checkpoint

    model, cfg, ckpt, _ = load_detector(path)
    if not cfg.model.gsl:
        raise ValueError(f"{path}: not a GSL checkpoint (model.gsl is false)")
    plan = make_plan(model, mean_scales(scales), channel_multiple, tolerance)
    apply_plan(model, plan, zero_dilation_init)
    cfg.model.gsl = False
    cfg.model.fd_plan = plan
    save_checkpoint(
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": ckpt.get("classes", []),
            "iteration": 0,
            "source": str(path),
        },
        out,
    )
    return plan
