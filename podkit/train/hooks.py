"""The contract between training methods (DST, Dynamic R-CNN, SNIP, AVW/RLO) and training.

The loop calls setup(cfg) once with the run's config, then, each iteration:
batch = before_step(state, batch) for every method in order; the forward pass;
observe(state, stats) with the step's `TrainingStats` (what a method may read); backward and
optimizer step; after_step(state). A method changes training only through the batch it
returns and `state.controls` (the detector's `TrainingControls`: the R-CNN IoU threshold and
SmoothL1 beta, per-level loss weights; what a method may tune), which the detector's losses
read at the next forward. It never reaches into the model, and names the figures of its
logged values (`figures`), which `podkit plot` draws.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from podkit.models.output import TrainingControls, TrainingStats


@dataclass
class TrainState:
    """What a method may read each step, and change: `controls`, and `metrics` (what it adds
    to the step's log line)."""

    iteration: int  # iterations completed so far
    max_iter: int
    controls: TrainingControls  # the detector's own: a change applies from the next forward
    draw_batch: Callable[[], Any]  # the next batch of the data stream (a collage draws k)
    rank: int = 0
    world_size: int = 1
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Panel:
    """One panel of a method's figure: logged values against the iteration (the first
    solid, the others dashed), and optionally a 0/1 value whose 1s are ticks on the x axis."""

    title: str
    keys: tuple[str, ...]
    labels: tuple[str, ...] = ()  # legend entries, one per key (none: no legend)
    marks: str | None = None
    marks_label: str = ""


class Hook:
    """A training method. Every method is all no-ops by default."""

    name = "hook"
    draws_per_step = 1  # batches one step may take from the stream; the loader prefetches 2x
    figures: dict[str, tuple[Panel, ...]] = {}  # PNG name -> panels, drawn by `podkit plot`

    def setup(self, cfg) -> list[str]:
        """Once, before the first step: read what the method needs of the run's config (a
        size, the RoI batch), refuse in one line what it cannot train; returns notes for the
        start-up lines."""
        return []

    def before_step(self, state: TrainState, batch):
        return batch

    def observe(self, state: TrainState, stats: TrainingStats) -> None:
        """Read the step's statistics (after the forward, before the weights change)."""

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
