"""The training loss of a dense head (the RPN, RetinaNet): one implementation for both.

Per image: every anchor of every level is matched to the ground truth, anchors near ignore
regions drop out, the head's `assign` picks the rows it scores and their classification loss
(the RPN: a balanced sample, binary cross-entropy; RetinaNet: every anchor, focal loss) and
the positives, whose encoded boxes train SmoothL1. Terms are weighted per FPN level (AVW/RLO's
`level_weights`) and summed; the per-level sums and the box / class loss by GT size (COCO's
buckets, what DST reads) come with them. The head divides by its own normaliser (sampled rows
or positives). Detectron2 shares this part the same way (DenseDetector).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from podkit.models.output import element_weights, per_level_sum
from podkit.ops import BoxCoder, Matcher, box_iou, size_bucket, smooth_l1_loss
from podkit.ops.matcher import ignore_regions
from podkit.ops.target import Target

# (one image's logits (A, ...), each anchor's matched GT (A,): >= 0 a GT, -1 background,
#  -2 ignored, the image's target) -> (rows scored, ascending; the positives among them,
#  ascending; the classification loss of each row scored)
Assign = Callable[[Tensor, Tensor, Target], tuple[Tensor, Tensor, Tensor]]


@dataclass
class DenseLoss:
    """Sums over a batch, not yet normalised."""

    cls: Tensor  # the weighted classification loss
    box: Tensor  # the weighted box loss
    levels: Tensor  # (L,) classification + box loss per level, unweighted, detached
    reg_by_size: Tensor  # (3,) box loss of the positives by their GT's size, detached
    cls_by_size: Tensor  # (3,)
    scored: int  # rows scored
    positives: int


def concat_levels(
    anchors: list[Tensor], logits: list[Tensor], deltas: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Every level's anchors (A, 4) and head outputs (B, A, .) as one list of rows, with each
    row's level index (A,): the form a dense head's loss matches targets in."""
    levels = torch.cat(
        [
            torch.full((len(a),), i, dtype=torch.int64, device=a.device)
            for i, a in enumerate(anchors)
        ]
    )
    return torch.cat(anchors), levels, torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def dense_head_loss(
    anchors: list[Tensor],
    logits: list[Tensor],
    deltas: list[Tensor],
    targets: list[Target],
    matcher: Matcher,
    box_coder: BoxCoder,
    assign: Assign,
    smooth_l1_beta: float,
    ignore_iou_threshold: float,
    level_weights: Tensor | None,
    by_size: bool = True,
) -> DenseLoss:
    """The loss of per-level anchors, logits and deltas (B, A_l, .) against the targets;
    `by_size` False leaves the sums by GT size at 0 (a head whose statistics nobody reads)."""
    all_anchors, levels, logits, deltas = concat_levels(anchors, logits, deltas)
    weights = element_weights(levels, level_weights)
    cls_terms, box_terms, level_terms, scored, positives = [], [], [], 0, 0
    reg_by_size, cls_by_size = logits.new_zeros(3), logits.new_zeros(3)
    for img, target in enumerate(targets):
        gt = target["boxes"]
        matched = matcher(box_iou(gt, all_anchors))
        matched = ignore_regions(all_anchors, matched, target, ignore_iou_threshold)
        rows, pos, cls = assign(logits[img], matched, target)
        scored, positives = scored + rows.numel(), positives + pos.numel()
        reg_targets = box_coder.encode(gt[matched[pos]], all_anchors[pos])
        box = smooth_l1_loss(deltas[img, pos], reg_targets, smooth_l1_beta).sum(dim=1)
        cls_terms.append((cls * weights[rows]).sum())
        box_terms.append((box * weights[pos]).sum())
        level_terms.append(
            per_level_sum(
                torch.cat([cls, box]).detach(), torch.cat([levels[rows], levels[pos]]), len(anchors)
            )
        )
        if by_size and pos.numel():
            bucket = size_bucket(gt[matched[pos]])
            reg_by_size += per_level_sum(box.detach(), bucket, 3)
            # the positives' classification loss: their places among the rows scored
            cls_by_size += per_level_sum(cls.detach()[torch.searchsorted(rows, pos)], bucket, 3)
    return DenseLoss(
        torch.stack(cls_terms).sum(),
        torch.stack(box_terms).sum(),
        torch.stack(level_terms).sum(0),
        reg_by_size,
        cls_by_size,
        scored,
        positives,
    )
