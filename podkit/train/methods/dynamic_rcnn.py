"""Dynamic R-CNN (Zhang et al., ECCV 2020): label assignment and SmoothL1 that follow training.

Dynamic label assignment: each iteration records, per image, the K_I-th largest IoU of its
proposals with the ground truth (averaged over images); every C iterations the R-CNN
IoU threshold (positive = negative threshold) becomes max(initial_iou, mean of the record).
Dynamic SmoothL1: each iteration records the (K_beta * images)-th smallest mean(|dx|, |dy|)
of the sampled positives' normalised regression targets; every C iterations beta becomes
min(initial_beta, median of the record). An iteration without positives records nothing, and
a median of ~0 leaves beta unchanged (MMDetection let it collapse to 0). Under DDP both
statistics are averaged over processes, so every rank sets the same values (the references
decide per GPU). Changes only `roi_heads.iou_threshold` and `roi_heads.smooth_l1_beta`.
"""

from __future__ import annotations

import statistics

import torch

from podkit.train.distributed import all_reduce_mean
from podkit.train.hooks import Hook, TrainState


class DynamicRCNN(Hook):
    name = "dynamic_rcnn"

    def __init__(
        self,
        k_iou: int = 75,
        k_beta: int = 10,
        interval: int = 100,
        initial_iou: float = 0.4,
        initial_beta: float = 1.0,
    ) -> None:
        if interval < 1 or k_iou < 1 or k_beta < 1:
            raise ValueError("dynamic_rcnn: k_iou, k_beta and interval must be >= 1")
        self.k_iou, self.k_beta, self.interval = k_iou, k_beta, interval
        self.initial_iou, self.initial_beta = initial_iou, initial_beta
        self.iou_threshold, self.beta = initial_iou, initial_beta
        self.iou_history: list[float] = []
        self.beta_history: list[float] = []

    def before_step(self, state: TrainState, batch):
        heads = getattr(state.model, "roi_heads", None)
        if heads is None:
            raise ValueError(
                "dynamic_rcnn needs a two-stage detector (model.arch faster_rcnn_fpn or faster_rcnn_c4)"
            )
        heads.iou_threshold = self.iou_threshold
        heads.smooth_l1_beta = self.beta
        return batch

    def loss(self, state: TrainState, losses, stats):
        iou, beta = self.statistics(stats)
        # one all-reduce for both (NaN marks "none on this rank"): ranks decide alike
        both = all_reduce_mean(torch.tensor([iou, beta], dtype=torch.float64))
        if not torch.isnan(both[0]):
            self.iou_history.append(float(both[0]))
        if not torch.isnan(both[1]):
            self.beta_history.append(float(both[1]))
        return losses

    def statistics(self, stats: dict) -> tuple[float, float]:
        """This iteration's (IoU statistic, beta statistic); NaN where there is none."""
        per_image = []
        for ious in stats["proposal_ious"]:
            if ious.numel():
                k = min(self.k_iou, ious.numel())
                per_image.append(float(ious.topk(k).values[-1]))
        iou = sum(per_image) / len(per_image) if per_image else float("nan")
        targets = stats["pos_reg_targets"]
        beta = float("nan")
        if targets.numel():
            errors = targets[:, :2].abs().mean(dim=1)
            k = min(self.k_beta * stats["num_images"], errors.numel())
            beta = float(errors.kthvalue(k).values)
        return iou, beta

    def after_step(self, state: TrainState) -> None:
        if state.iteration % self.interval == 0:
            if self.iou_history:
                self.iou_threshold = max(self.initial_iou, statistics.mean(self.iou_history))
            if self.beta_history:
                median = statistics.median(self.beta_history)
                if median > 1e-6:
                    self.beta = min(self.initial_beta, median)
            self.iou_history.clear()
            self.beta_history.clear()
        state.metrics["iou_threshold"] = self.iou_threshold
        state.metrics["beta"] = self.beta

    def state_dict(self) -> dict:
        return {
            "iou_threshold": self.iou_threshold,
            "beta": self.beta,
            "iou_history": list(self.iou_history),
            "beta_history": list(self.beta_history),
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.iou_threshold, self.beta = state["iou_threshold"], state["beta"]
            self.iou_history, self.beta_history = (
                list(state["iou_history"]),
                list(state["beta_history"]),
            )
