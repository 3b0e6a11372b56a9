"""What every podkit detector takes and returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from podkit.models.gsl import image_extent
from podkit.ops.image_batch import ImageBatch
from podkit.ops.target import Target


@dataclass
class TrainingStats:
    """Detached statistics of one training forward: what the training methods read (the
    hook interface, docs/design.md). Sizes are COCO's buckets in the image as fed."""

    level_losses: dict[str, Tensor] = field(default_factory=dict)  # rpn|rcnn|retinanet -> (L,)
    reg_loss_by_size: Tensor | None = None  # (3,): small, medium, large
    cls_loss_by_size: Tensor | None = None  # (3,)
    # per image (P,): each proposal's max IoU to a GT (the GTs added as proposals left out)
    proposal_ious: list[Tensor] = field(default_factory=list)
    # (N, 4): the sampled positive proposals' normalised targets (GT rows left out)
    pos_reg_targets: Tensor | None = None
    num_images: int = 0


@dataclass
class DetectorOutput:
    """`forward` returns this in both modes (`model.train()` / `model.eval()`).

    losses: name -> scalar (training).
    detections: per image {"boxes" (N, 4) in original-image pixels, "scores", "labels"}
        (eval).
    stats: the TrainingStats of a training forward (empty in eval).
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    detections: list[dict[str, Tensor]] = field(default_factory=list)
    stats: TrainingStats = field(default_factory=TrainingStats)


# A checkpoint's model or an exported artefact (podkit.export.detector): images -> detections.
Detector = Callable[[ImageBatch], DetectorOutput]


def backbone_features(
    detector: nn.Module, images: ImageBatch | list[Tensor], targets: list[Target] | None
) -> tuple[ImageBatch, list[Tensor]]:
    """What every detector's `forward` starts with: the images as a padded batch and the
    backbone's features (GSL convs pool over each image's own region of the batch)."""
    if not isinstance(images, ImageBatch):
        images = ImageBatch.from_tensors(images)
    if detector.training and targets is None:
        raise ValueError(f"{type(detector).__name__} in training mode needs targets")
    backbone = detector.backbone
    with image_extent(backbone, images.sizes, tuple(images.tensor.shape[-2:])):
        return images, backbone(images.tensor)


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
