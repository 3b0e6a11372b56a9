"""A sixth training method, written as a user would add one: this file and one row in
`podkit.train.methods.METHODS` (test_new_method.py adds the row)."""

from __future__ import annotations

from podkit.models.output import TrainingStats
from podkit.train.hooks import Hook, Panel, TrainState


class IoURamp(Hook):
    """The R-CNN IoU threshold raised linearly from `start` to `end` over training (a
    schedule, not a statistic); logs the threshold and the positives it left per image."""

    name = "iou_ramp"
    figures = {"iou_ramp.png": (Panel("R-CNN IoU threshold", ("ramp_threshold",)),)}

    def __init__(self, start: float = 0.4, end: float = 0.6) -> None:
        if not 0 <= start <= end <= 1:
            raise ValueError(f"iou_ramp: need 0 <= start <= end <= 1, got {start}, {end}")
        self.start, self.end = start, end
        self.positives: float | None = None

    def before_step(self, state: TrainState, batch):
        if state.controls.rcnn_iou_threshold is None:
            raise ValueError("iou_ramp needs a two-stage detector")
        done = state.iteration / max(state.max_iter - 1, 1)
        state.controls.rcnn_iou_threshold = self.start + (self.end - self.start) * done
        return batch

    def observe(self, state: TrainState, stats: TrainingStats) -> None:
        self.positives = len(stats.pos_reg_targets) / max(stats.num_images, 1)

    def after_step(self, state: TrainState) -> None:
        state.metrics["ramp_threshold"] = state.controls.rcnn_iou_threshold
        state.metrics["ramp_positives"] = self.positives
