"""Sliced (tiled) inference on large images: the tile grid and the merging of what the tiles
detect.

Tiles of `size` x `size` pixels step by size * (1 - overlap); the last tile of a row or a
column is moved back to end at the image's edge, so the tiles cover the image exactly and
none reaches outside it (an image smaller than a tile is one tile of its own size).

Merging, per class, of every tile's detections (in image pixels): first the cut rule, a box
that touches a tile edge lying inside the image is a cut view of an object another tile (or
the whole-image pass) may see whole, and it is dropped when at least `contained` of its area
lies inside a larger box of the same class; then greedy NMS at IoU 0.5. An object smaller
than the overlap is reported once, whole, from the tile that holds it; a larger one is
reported whole when the whole-image pass sees it, and otherwise can come back in pieces (one
per tile that cuts it): add the whole-image pass for objects larger than the overlap.
"""

from __future__ import annotations

import torch
from torch import Tensor

from podkit.ops.boxes import box_area, box_inside
from podkit.ops.nms import batched_nms

EDGE = 1.0  # px: a box within this of an inner tile edge touches it


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets along one axis: step size * (1 - overlap), the last tile ending at the
    edge."""
    if length <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def tile_grid(
    height: int, width: int, size: int, overlap: float
) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of every tile, row by row."""
    return [
        (x, y, min(x + size, width), min(y + size, height))
        for y in tile_starts(height, size, overlap)
        for x in tile_starts(width, size, overlap)
    ]


def inner_edge_contact(
    boxes: Tensor, tile: tuple[int, int, int, int], height: int, width: int
) -> Tensor:
    """(N,) whether each box (image pixels) touches an edge of its tile that is not the image's."""
    x0, y0, x1, y1 = tile
    touches = torch.zeros(len(boxes), dtype=torch.bool)
    if x0 > 0:
        touches |= boxes[:, 0] <= x0 + EDGE
    if y0 > 0:
        touches |= boxes[:, 1] <= y0 + EDGE
    if x1 < width:
        touches |= boxes[:, 2] >= x1 - EDGE
    if y1 < height:
        touches |= boxes[:, 3] >= y1 - EDGE
    return touches


def merge_tiles(
    detections: dict[str, Tensor], cut: Tensor, iou: float = 0.5, contained: float = 0.6
) -> dict[str, Tensor]:
    """The cut rule, then class-wise NMS (module docstring); `cut` marks the boxes touching an
    inner tile edge. Returns the kept detections by decreasing score."""
    boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
    rows = torch.where(cut)[0]  # only cut boxes can be dropped: (cut, all) pairs, not (all, all)
    if len(rows):
        area = box_area(boxes)
        covers = box_inside(boxes[rows], boxes) >= contained
        covers &= labels[rows, None] == labels[None, :]
        covers &= area[None, :] > area[rows, None]
        kept = torch.ones(len(boxes), dtype=torch.bool)
        kept[rows[covers.any(1)]] = False
        boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    keep = batched_nms(boxes, scores, labels, iou)
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
