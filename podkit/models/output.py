"""What every podkit detector takes and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from podkit.ops.image_batch import ImageBatch


@dataclass
class DetectorOutput:
    """`forward` returns this in training and in eval.

    losses: name -> scalar (training, or whenever targets are given).
    detections: per image {"boxes" (N, 4) in original-image pixels, "scores", "labels"}
        (eval mode; empty in training).
    stats: detached training statistics the training methods read (see DESIGN.md):
        level_losses {"rpn"|"rcnn"|"retinanet": (L,)}, reg_loss_by_size (3,) and
        cls_loss_by_size (3,) [small, medium, large], proposal_ious [per image (P,)],
        pos_reg_targets (N, 4), num_images.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    detections: list[dict[str, Tensor]] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


# A checkpoint's model or an exported artefact (podkit.export.detector): images -> detections.
Detector = Callable[[ImageBatch], DetectorOutput]


def rescale_detections(
    detections: list[dict[str, Tensor]], images: ImageBatch
) -> list[dict[str, Tensor]]:
    """Map boxes from the as-fed image back to original-image pixels."""
    for det, (h, w), (oh, ow) in zip(detections, images.sizes, images.original_sizes, strict=True):
        scale = det["boxes"].new_tensor([ow / w, oh / h, ow / w, oh / h])
        det["boxes"] = det["boxes"] * scale
    return detections


def per_level_sum(values: Tensor, levels: Tensor, num_levels: int) -> Tensor:
    """Sum of `values` grouped by level index: (num_levels,)."""
    return values.new_zeros(num_levels).index_add(0, levels, values)


def element_weights(levels: Tensor, weights: Tensor | None) -> Tensor:
    """Per-element loss weight w[level]: summing weighted elements gives sum_l w_l * L_l,
    the loss that AVW/RLO rebalance through a head's `level_weights`."""
    if weights is None:
        return torch.ones(levels.shape, device=levels.device)
    return weights.to(levels.device, torch.float32)[levels]
