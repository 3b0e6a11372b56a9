"""Detection ops in plain PyTorch (torchvision does not load with the CPU torch here)."""

from podkit.ops.anchors import AnchorGenerator
from podkit.ops.box_coder import BoxCoder
from podkit.ops.boxes import (
    box_area,
    box_iou,
    clip_boxes_to_image,
    crop_boxes,
    remove_small_boxes,
    size_bucket,
    wide_enough,
)
from podkit.ops.losses import sigmoid_focal_loss, smooth_l1_loss
from podkit.ops.matcher import BalancedSampler, Matcher, ignore_near, ignore_regions
from podkit.ops.nms import batched_nms, batched_soft_nms, detection_nms, nms, soft_nms
from podkit.ops.roi_align import MultiScaleRoIAlign, roi_align
from podkit.ops.target import Target

__all__ = [
    "AnchorGenerator",
    "BalancedSampler",
    "BoxCoder",
    "Matcher",
    "MultiScaleRoIAlign",
    "Target",
    "batched_nms",
    "batched_soft_nms",
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "crop_boxes",
    "detection_nms",
    "ignore_near",
    "ignore_regions",
    "nms",
    "remove_small_boxes",
    "roi_align",
    "sigmoid_focal_loss",
    "size_bucket",
    "smooth_l1_loss",
    "soft_nms",
    "wide_enough",
]
