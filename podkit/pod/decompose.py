"""Scale decomposition (POD, sections 3.2-3.3): plan each GSL conv's integer-dilation
sub-convs and decompose a checkpoint (the FD modules themselves: models/split_conv.py).

Per GSL conv with mean learned scales (d_h, d_w):
- a direction within `tolerance` (0.05) of an integer is rounded and not split;
- the split directions give alpha = the mean of their fractional parts; the upper part
  (ceil dilations) takes round(alpha * C_out) output channels, rounded to a multiple of
  `channel_multiple` (16: onnxruntime's blocked layout, see docs/backends.md; 1: the paper's
  exact split; halved down to 1 where it would empty a side of a split with alpha in
  (0.1, 0.9)), the lower part (floor dilations) the rest, concatenated lower then upper
  so the next BN / conv keep their channel order;
- no split direction, or an empty side after rounding: one conv;
- dilation 0 (a scale below 1) is a kernel of size 1 along that axis; padding = dilation
  where the kernel is 3, so every output size (stride 2 included) is the original's.
Weights transfer (models/split_conv.py): the lower part takes the first filters, the upper
the last.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from podkit.config import to_dict
from podkit.models.checkpoint import load_detector, save_checkpoint
from podkit.models.gsl import gsl_convs
from podkit.models.split_conv import apply_plan
from podkit.pod.scales import mean_scales


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
    upper_channels, multiple = 0, max(1, channel_multiple)
    if fracs:
        alpha = sum(fracs) / len(fracs)
        upper_channels, multiple = upper_part(alpha, out_channels, multiple)
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
        "channel_multiple": multiple,
        "parts": parts,
    }


def upper_part(alpha: float, out_channels: int, channel_multiple: int) -> tuple[int, int]:
    """(channels of the upper part, the multiple they were rounded to). Rounding never
    collapses a real split: where the multiple would leave one side empty but alpha lies in
    (0.1, 0.9), the multiple halves (down to 1) until both parts keep channels."""
    multiple = channel_multiple
    while True:
        upper = min(out_channels, multiple * round(alpha * out_channels / multiple))
        if 0 < upper < out_channels or not 0.1 < alpha < 0.9 or multiple == 1:
            return upper, multiple
        multiple = max(1, multiple // 2)


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
    model, cfg, ckpt = _load_gsl(path)
    plan = make_plan(model, mean_scales(scales), channel_multiple, tolerance)
    _save_planned(model, cfg, ckpt, plan, path, out, zero_dilation_init)
    return plan


def checkpoint_plan(
    path, scales: dict[str, Any], channel_multiple: int = 16, tolerance: float = 0.05
) -> list[dict[str, Any]]:
    """The plan of a GSL checkpoint's convs from its learned scales (`podkit scales`)."""
    model, _, _ = _load_gsl(path)
    return make_plan(model, mean_scales(scales), channel_multiple, tolerance)


def plan_checkpoint(path, plan: list[dict[str, Any]], out, zero_dilation_init: str = "sum") -> None:
    """A plain checkpoint with `plan` applied: each planned conv's filters go to its parts, as
    ImageNet weights do when a model is built with `model.fd_plan` (POD's "FD": the GSL
    network's architecture without its weights)."""
    model, cfg, ckpt, _ = load_detector(path)
    _save_planned(model, cfg, ckpt, plan, path, out, zero_dilation_init)


def _load_gsl(path):
    model, cfg, ckpt, _ = load_detector(path)
    if not cfg.model.gsl:
        raise ValueError(f"{path}: not a GSL checkpoint (model.gsl is false)")
    return model, cfg, ckpt


def _save_planned(model, cfg, ckpt, plan, source, out, zero_dilation_init: str) -> None:
    apply_plan(model, plan, zero_dilation_init)
    cfg.model.gsl = False
    cfg.model.fd_plan = plan
    save_checkpoint(
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": ckpt.get("classes", []),
            "iteration": 0,
            "source": str(source),
        },
        out,
    )
