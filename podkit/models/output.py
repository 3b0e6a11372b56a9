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
class TrainingControls:
    """What a training method may tune between iterations: the detector's losses read these
    at every training forward, and a method changes training only through them (and the batch
    it returns). Each detector sets them from its recipe; a control it does not have is None
    (RetinaNet has no R-CNN stage), and `level_weights` has one entry per head with per-level
    losses (rpn, rcnn, retinanet; None: every level weighs 1)."""

    rcnn_iou_threshold: float | None = None  # positive = negative threshold of the R-CNN stage
    rcnn_smooth_l1_beta: float | None = None  # the R-CNN box loss's SmoothL1 beta
    level_weights: dict[str, Tensor | None] = field(default_factory=dict)  # head -> (L,)


@dataclass
class TrainingStats:
    """Detached statistics of one training forward: what the training methods read (the
    method contract, docs/design.md). Sizes are COCO's buckets in the image as fed."""

    level_losses: dict[str, Tensor] = field(default_factory=dict)  # rpn|rcnn|retinanet -> (L,)
    reg_loss_by_size: Tensor | None = None  # (3,): small, medium, large
    cls_loss_by_size: Tensor | None = None  # (3,)
    # per image (P,): each proposal's max IoU to a GT (the GTs added as proposals left out)
    proposal_ious: list[Tensor] = field(default_factory=list)
    # (N, 4): the sampled positive proposals' normalised targets (GT rows left out)
    pos_reg_targets: Tensor | None = None
    num_images: int = 0

    def logged(self) -> dict[str, float]:
        """What every run logs of these, method or not (a baseline shows what DST would have
        seen): the share of the box-regression loss owed to small GTs."""
        if self.reg_loss_by_size is None:
            return {}
        total = float(self.reg_loss_by_size.sum())
        share = float(self.reg_loss_by_size[0]) / total if total > 0 else 0.0
        return {"small_loss_share": share}


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


def inference_output(
    detector: nn.Module, features: list[Tensor], images: ImageBatch
) -> DetectorOutput:
    """The eval-mode output of every detector: its `detect` on the backbone's features, boxes
    mapped back to original-image pixels."""
    return DetectorOutput({}, rescale_detections(detector.detect(features, images.sizes), images))


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
    the loss that AVW/RLO rebalance through `TrainingControls.level_weights`."""
    if weights is None:
        return torch.ones(levels.shape, device=levels.device)
    return weights.to(levels.device, torch.float32)[levels]
