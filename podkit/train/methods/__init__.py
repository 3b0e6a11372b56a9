"""Training methods, one file each; `METHODS` maps a config name to its hook class."""

from __future__ import annotations

from typing import Any

from podkit.train.hooks import Hook
from podkit.train.methods.dst import DynamicScaleTraining
from podkit.train.methods.dynamic_rcnn import DynamicRCNN
from podkit.train.methods.loss_balance import AVW, RLO
from podkit.train.methods.snip import SNIP

METHODS: dict[str, type[Hook]] = {
    "dst": DynamicScaleTraining,
    "dynamic_rcnn": DynamicRCNN,
    "avw": AVW,
    "rlo": RLO,
    "snip": SNIP,
}


def build_hooks(specs: list[dict[str, Any]]) -> list[Hook]:
    """Hooks from the config's `methods: [{name: ..., option: value}, ...]`."""
    hooks = []
    for spec in specs:
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"methods: each entry needs a name, got {spec!r}")
        options = {k: v for k, v in spec.items() if k != "name"}
        name = spec["name"]
        if name not in METHODS:
            available = ", ".join(sorted(METHODS)) or "none yet"
            raise ValueError(f"unknown method {name!r}; available: {available}")
        try:
            hooks.append(METHODS[name](**options))
        except TypeError as exc:
            raise ValueError(f"method {name}: {exc}") from exc
    names = [h.name for h in hooks]
    if "snip" in names and "dst" in names and names.index("snip") < names.index("dst"):
        raise ValueError(
            "methods: put snip after dst (SNIP resizes the collage DST builds; before it, "
            "the batches DST draws would miss SNIP's resolution and valid ranges)"
        )
    return hooks
