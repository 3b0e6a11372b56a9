"""An exponential moving average of a detector's weights (train.ema), as Ultralytics' ModelEMA
and MMDetection's EMAHook keep one: evaluated, checkpointed and exported in place of the
trained weights, which stay in the checkpoint only for --resume."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn


class ModelEMA:
    """ema = d * ema + (1 - d) * weights after each optimizer step, with
    d = decay * (1 - exp(-updates / warmup)); buffers that are not floating point (counters)
    are copied."""

    def __init__(self, model: nn.Module, decay: float, warmup: int) -> None:
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.warmup))
        for name, value in model.state_dict().items():
            average = self.weights[name]
            if average.dtype.is_floating_point:
                average.mul_(d).add_(value.detach().to(average.dtype), alpha=1 - d)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        return self.weights

    def load(self, weights: dict[str, Tensor], updates: int) -> None:
        self.weights = {k: v.detach().clone() for k, v in weights.items()}
        self.updates = updates

    @contextlib.contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` with the averaged weights inside the block, its own weights after it."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.weights)
        try:
            yield model
        finally:
            model.load_state_dict(trained)
