"""Assigning ground truth to anchors/proposals by IoU, and balanced sampling of the result."""

from __future__ import annotations

import torch
from torch import Tensor

from podkit.ops.boxes import box_iou
from podkit.ops.target import Target

BELOW_LOW_THRESHOLD = -1  # negative
BETWEEN_THRESHOLDS = -2  # ignored


class Matcher:
    """Each prediction gets the index of its best GT, or -1 (IoU < low), or -2 (in between).

    With `allow_low_quality_matches`, each GT also keeps the predictions that reach its
    highest IoU even if that is below `high` (Faster R-CNN's RPN rule), so no GT goes
    without an anchor.
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if low > high:
            raise ValueError(f"Matcher: low threshold {low} is above high threshold {high}")
        self.high = high
        self.low = low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """`iou` is (num_gt, num_predictions); returns (num_predictions,) int64."""
        if iou.shape[0] == 0:
            return torch.full(
                (iou.shape[1],), BELOW_LOW_THRESHOLD, dtype=torch.int64, device=iou.device
            )
        best_iou, matches = iou.max(dim=0)
        out = matches.clone()
        out[best_iou < self.low] = BELOW_LOW_THRESHOLD
        out[(best_iou >= self.low) & (best_iou < self.high)] = BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            _, pred_idx = torch.where((iou == best_per_gt) & (best_per_gt > 0))
            out[pred_idx] = matches[pred_idx]
        return out


def ignore_near(
    boxes: Tensor,
    matched: Tensor,
    ignore_boxes: Tensor | None,
    iou_threshold: float,
    negatives_only: bool = True,
) -> Tensor:
    """Mark negatives (-1) whose IoU with an ignore region exceeds the threshold as ignored (-2);
    with `negatives_only=False` positives too (SNIP's paper rule for invalid GTs).

    Ignore regions are crowd boxes and, under SNIP, GTs outside the valid scale range: an
    anchor on one of them is neither a positive nor a negative.
    """
    if ignore_boxes is None or ignore_boxes.numel() == 0 or boxes.numel() == 0:
        return matched
    near = box_iou(boxes, ignore_boxes).max(dim=1).values > iou_threshold
    if negatives_only:
        near = near & (matched == BELOW_LOW_THRESHOLD)
    return torch.where(near, torch.full_like(matched, BETWEEN_THRESHOLDS), matched)


def ignore_regions(boxes: Tensor, matched: Tensor, target: Target, iou_threshold: float) -> Tensor:
    """A target's ignore regions applied to matches: `ignore` turns near negatives into
    ignored, `exclude` (SNIP, paper rule) every near anchor, positives included."""
    matched = ignore_near(boxes, matched, target.get("ignore"), iou_threshold)
    return ignore_near(boxes, matched, target.get("exclude"), iou_threshold, negatives_only=False)


class BalancedSampler:
    """Samples `batch_size_per_image` examples with at most `positive_fraction` positives.

    `labels` per image: 1 positive, 0 negative, -1 ignored. Returns boolean masks.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(
        self, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        positive = torch.where(labels >= 1)[0]
        negative = torch.where(labels == 0)[0]
        num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
        perm_pos = torch.randperm(positive.numel(), device=labels.device, generator=generator)[
            :num_pos
        ]
        perm_neg = torch.randperm(negative.numel(), device=labels.device, generator=generator)[
            :num_neg
        ]
        pos_mask = torch.zeros_like(labels, dtype=torch.bool)
        neg_mask = torch.zeros_like(labels, dtype=torch.bool)
        pos_mask[positive[perm_pos]] = True
        neg_mask[negative[perm_neg]] = True
        return pos_mask, neg_mask
