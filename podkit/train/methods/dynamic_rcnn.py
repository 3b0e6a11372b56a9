"""Dynamic R-CNN (Zhang et al., ECCV 2020): label assignment and SmoothL1 that follow training.

Dynamic label assignment: each iteration records, per image, the K_I-th largest IoU of its
proposals with the ground truth (averaged over images); every C iterations the R-CNN
IoU threshold (positive = negative threshold) becomes max(initial_iou, mean of the record).
Dynamic SmoothL1: each iteration records the (K_beta * images)-th smallest mean(|dx|, |dy|)
of the sampled positives' normalised regression targets; every C iterations beta becomes
min(initial_beta, median of the record). An iteration without positives records nothing, and
a median of ~0 leaves beta unchanged (MMDetection's DynamicRoIHead keeps its beta below
EPS = 1e-15; its first version had no such guard and let beta fall to 0).

Both statistics are taken over the proposals only, as the paper states: the ground-truth
boxes that the R-CNN head adds to its proposals (IoU 1, regression target exactly 0) are left
out (RoIHeads.sample). With them, the K_beta * images smallest targets of a batch are those
zero rows whenever an image has K_beta or more GTs sampled, the median is 0 and beta never
moves; `beta_zero_share` (logged at each update) says how often a statistic was still ~0.

K_I and K_beta belong to the paper's 512 RoIs per image (section 5.5: K_I = 75 is ~15 % of
the RoI batch). Left unset, they are scaled to the detector's RoI batch R:
K_I = round(75 R / 512), K_beta = round(10 R / 512), at least 1 (R = 128: 19 and 2).
`assign: false` or `smooth_l1: false` switch one half off (the paper's ablations): that
half of the head keeps the recipe's value. Under DDP each statistic is a masked sum and a
count reduced over processes, so a rank without positives neither loses the statistic nor
sends NaN, and every rank sets the same values (the references decide per GPU). Tunes only
the controls `rcnn_iou_threshold` and `rcnn_smooth_l1_beta`.
"""

from __future__ import annotations

import math
import statistics

import torch

from podkit.models.output import TrainingStats
from podkit.train.distributed import all_reduce_sum
from podkit.train.hooks import Hook, Panel, TrainState

ZERO = 1e-6  # a beta statistic at or below this is ~0: it would make SmoothL1 an L1 loss


class DynamicRCNN(Hook):
    name = "dynamic_rcnn"
    figures = {  # the paper's Figure 5
        "dynamic_rcnn.png": (
            Panel("R-CNN IoU threshold", ("iou_threshold",)),
            Panel("SmoothL1 beta", ("beta", "beta_statistic"), ("beta", "statistic")),
        )
    }

    def __init__(
        self,
        k_iou: int | None = None,
        k_beta: int | None = None,
        interval: int = 100,
        initial_iou: float = 0.4,
        initial_beta: float = 1.0,
        assign: bool = True,
        smooth_l1: bool = True,
    ) -> None:
        if interval < 1 or any(k is not None and k < 1 for k in (k_iou, k_beta)):
            raise ValueError("dynamic_rcnn: k_iou, k_beta and interval must be >= 1")
        if not (assign or smooth_l1):
            raise ValueError("dynamic_rcnn: assign and smooth_l1 are both off: nothing to do")
        self.k_iou, self.k_beta, self.interval = k_iou, k_beta, interval
        self.assign, self.smooth_l1 = assign, smooth_l1
        self.initial_iou, self.initial_beta = initial_iou, initial_beta
        self.iou_threshold, self.beta = initial_iou, initial_beta
        self.beta_statistic: float | None = None  # the last update's median, for the log
        self.beta_zero_share: float | None = None  # the last interval's share of ~0 statistics
        self.iou_history: list[float] = []
        self.beta_history: list[float] = []

    def setup(self, cfg) -> list[str]:
        """K_I and K_beta, where unset, scaled to the recipe's RoI batch per image."""
        rois = cfg.model.roi_heads.batch_size_per_image
        self.k_iou = self.k_iou or scaled_k(75, rois)
        self.k_beta = self.k_beta or scaled_k(10, rois)
        return []

    def before_step(self, state: TrainState, batch):
        controls = state.controls
        if controls.rcnn_iou_threshold is None:
            raise ValueError(
                "dynamic_rcnn needs a two-stage detector (model.arch faster_rcnn_fpn or faster_rcnn_c4)"
            )
        if self.assign:
            controls.rcnn_iou_threshold = self.iou_threshold
        if self.smooth_l1:
            controls.rcnn_smooth_l1_beta = self.beta
        return batch

    def observe(self, state: TrainState, stats: TrainingStats) -> None:
        iou, beta = self.statistics(stats)
        # one all-reduce of masked sums and counts: a rank with none adds 0 and 0
        has_iou, has_beta = not math.isnan(iou), not math.isnan(beta)
        terms = torch.tensor(
            [iou if has_iou else 0.0, has_iou, beta if has_beta else 0.0, has_beta],
            dtype=torch.float64,
        )
        iou_sum, iou_count, beta_sum, beta_count = all_reduce_sum(terms).tolist()
        if iou_count:
            self.iou_history.append(iou_sum / iou_count)
        if beta_count:
            self.beta_history.append(beta_sum / beta_count)

    def statistics(self, stats: TrainingStats) -> tuple[float, float]:
        """This iteration's (IoU statistic, beta statistic); NaN where there is none."""
        per_image = []
        for ious in stats.proposal_ious:
            if ious.numel():
                k = min(self.k_iou, ious.numel())
                per_image.append(float(ious.topk(k).values[-1]))
        iou = sum(per_image) / len(per_image) if per_image else float("nan")
        targets = stats.pos_reg_targets
        beta = float("nan")
        if targets is not None and targets.numel():
            errors = targets[:, :2].abs().mean(dim=1)
            k = min(self.k_beta * stats.num_images, errors.numel())
            beta = float(errors.kthvalue(k).values)
        return iou, beta

    def after_step(self, state: TrainState) -> None:
        if state.iteration % self.interval == 0:
            if self.iou_history:
                self.iou_threshold = max(self.initial_iou, statistics.mean(self.iou_history))
            if self.beta_history:
                median = statistics.median(self.beta_history)
                self.beta_statistic = median
                zeros = sum(b <= ZERO for b in self.beta_history)
                self.beta_zero_share = zeros / len(self.beta_history)
                if median > ZERO:
                    self.beta = min(self.initial_beta, median)
            self.iou_history.clear()
            self.beta_history.clear()
        if self.assign:
            state.metrics["iou_threshold"] = self.iou_threshold
        if self.smooth_l1:
            state.metrics["beta"] = self.beta
            if self.beta_statistic is not None:  # what beta followed (it caps at initial_beta)
                state.metrics["beta_statistic"] = self.beta_statistic
                state.metrics["beta_zero_share"] = self.beta_zero_share

    def state_dict(self) -> dict:
        return {
            "iou_threshold": self.iou_threshold,
            "beta": self.beta,
            "beta_statistic": self.beta_statistic,
            "beta_zero_share": self.beta_zero_share,
            "iou_history": list(self.iou_history),
            "beta_history": list(self.beta_history),
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.iou_threshold, self.beta = state["iou_threshold"], state["beta"]
            self.beta_statistic = state.get("beta_statistic")  # absent in older checkpoints
            self.beta_zero_share = state.get("beta_zero_share")
            self.iou_history, self.beta_history = (
                list(state["iou_history"]),
                list(state["beta_history"]),
            )


def scaled_k(paper_k: int, rois_per_image: int) -> int:
    """A K of the paper's 512-RoI batch, scaled to this head's RoI batch per image."""
    return max(1, round(paper_k * rois_per_image / 512))
