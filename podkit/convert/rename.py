"""What every source's conversion does: rename tensors by pattern, and carry the source's
pixel normalisation into podkit's backbone."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

# (source name pattern, podkit name or a function of the match), the first match wins
Renames = list[tuple[str, str | Callable[[re.Match], str]]]


def rename(key: str, renames: Renames) -> str:
    """`key` by the first pattern that matches it (unchanged when none does: the converter
    then reports it as not used)."""
    for pattern, repl in renames:
        key, n = re.subn(pattern, repl, key)
        if n:
            return key
    return key


def renamed(
    state: dict[str, Tensor],
    renames: Renames,
    layout: Callable[[str, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Each tensor under its podkit name, passed through `layout(name, value)` where the
    source's layout differs from podkit's; BatchNorm's step counters are dropped."""
    out = {}
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            name = rename(key, renames)
            out[name] = layout(name, value) if layout else value
    return out


def normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Tensor]:
    """podkit's Normalize buffers (RGB in [0, 1]) for a source's per-channel mean and std."""
    return {
        "backbone.normalize.mean": torch.tensor(mean).view(1, 3, 1, 1),
        "backbone.normalize.std": torch.tensor(std).view(1, 3, 1, 1),
    }
