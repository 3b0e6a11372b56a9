"""Box geometry on (x1, y1, x2, y2) tensors: area, pairwise IoU, clipping, cropping,
small-box removal."""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    """Area of each box; degenerate boxes give 0 rather than a negative number."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection areas, shape (N, M)."""
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_inside(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise share of each box of `boxes1` lying inside each box of `boxes2`, (N, M)."""
    inter = box_intersection(boxes1, boxes2)
    return inter / box_area(boxes1).clamp(min=torch.finfo(inter.dtype).tiny)[:, None]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU, shape (N, M). Empty unions give 0, never NaN."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    inter = box_intersection(boxes1, boxes2)
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip boxes to an image of size (height, width)."""
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def crop_boxes(
    boxes: Tensor, x0: float, y0: float, size: tuple[int, int], keep: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes moved into the window at (x0, y0) of `size` (height, width) and clipped to it,
    with which are kept (at least `keep` of their area inside) and which are cut (partly
    inside, less than that): the one rule of every crop (augmentation, SNIP's chips); a cut
    box becomes an ignore region, neither object nor background."""
    clipped = clip_boxes_to_image(boxes - boxes.new_tensor([x0, y0, x0, y0]), size)
    inside = box_area(clipped)
    kept = (inside > 0) & (inside >= keep * box_area(boxes))
    return clipped, kept, (inside > 0) & ~kept


def wide_enough(boxes: Tensor, min_size: float) -> Tensor:
    """Mask of the boxes whose both sides are at least `min_size`."""
    return ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose both sides are at least `min_size`."""
    return torch.where(wide_enough(boxes, min_size))[0]


def size_bucket(boxes: Tensor) -> Tensor:
    """COCO size bucket of each box: 0 small (< 32^2), 1 medium (< 96^2), 2 large."""
    area = box_area(boxes)
    return (area >= 32**2).long() + (area >= 96**2).long()
