"""The interface through which training methods (DST, Dynamic R-CNN, SNIP, AVW/RLO) plug in.

The loop calls setup(cfg) once with the run's config, then, each iteration: batch = before_step(state, batch) for every hook in order;
the forward pass; losses = loss(state, losses, stats) with the step's TrainingStats (where
the methods read their statistics; none rescales the losses there); backward and optimizer
step; after_step(state). A method changes training only through the batch it returns and
explicit model attributes (`roi_heads.iou_threshold`, `smooth_l1_beta`, a head's
`level_weights`, applied inside that head's loss): docs/design.md, "The hook interface".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from podkit.models.output import TrainingStats


@dataclass
class TrainState:
    """What a hook may read (and `metrics`, what it may add to the log line)."""

    iteration: int  # iterations completed so far
    max_iter: int
    model: nn.Module  # the detector itself, not its DDP wrapper
    draw_batch: Callable[[], Any]  # the next batch of the data stream (a collage draws k)
    rank: int = 0
    world_size: int = 1
    metrics: dict[str, Any] = field(default_factory=dict)


class Hook:
    """A training method. Every method is all no-ops by default."""

    name = "hook"
    draws_per_step = 1  # batches one step may take from the stream; the loader prefetches 2x

    def setup(self, cfg) -> list[str]:
        """Once, before the first step: read what the method needs of the run's config (a
        size, the architecture), refuse in one line what it cannot train; returns notes for
        the start-up lines."""
        return []

    def before_step(self, state: TrainState, batch):
        return batch

    def loss(
        self, state: TrainState, losses: dict[str, Tensor], stats: TrainingStats
    ) -> dict[str, Tensor]:
        return losses

    def after_step(self, state: TrainState) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def rng_state(rng: random.Random) -> list:
    """A method's seeded generator as plain JSON-able data for its checkpoint state."""
    version, internal, _ = rng.getstate()
    return [version, list(internal)]


def set_rng_state(rng: random.Random, state: list) -> None:
    rng.setstate((state[0], tuple(state[1]), None))
