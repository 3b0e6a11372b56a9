"""Geometric transforms of an annotated image: every op moves the boxes with the pixels.

Boxes are x1 y1 x2 y2 in continuous pixel coordinates (a box over pixel columns 3..5 is
x1 = 3, x2 = 6), so a flip of an image W wide maps x to W - x. The random choices live in
podkit/data/augment.py; these functions take their parameters explicitly, which is what
the box-geometry tests check against pixels drawn into the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from podkit.ops import crop_boxes


@dataclass
class Annotated:
    """An image with its boxes, their labels, and ignore (crowd / cut) regions, in its pixels."""

    image: Image.Image
    boxes: np.ndarray  # (N, 4) float32
    labels: np.ndarray  # (N,) int64
    ignore: np.ndarray  # (M, 4) float32

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.size


def resize_scale(height: int, width: int, min_size: float, max_size: float) -> float:
    """Scale that brings the shorter side to `min_size` unless the longer would pass `max_size`."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def resize(a: Annotated, min_size: float, max_size: float) -> Annotated:
    w, h = a.size
    scale = resize_scale(h, w, min_size, max_size)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    return scale_to(a, new_w, new_h)


def scale_to(a: Annotated, new_w: int, new_h: int) -> Annotated:
    w, h = a.size
    factor = np.array([new_w / w, new_h / h] * 2, np.float32)
    image = a.image.resize((new_w, new_h), Image.BILINEAR)
    return replace(a, image=image, boxes=a.boxes * factor, ignore=a.ignore * factor)


def hflip(a: Annotated) -> Annotated:
    """Mirror left-right: x -> W - x."""
    w = a.size[0]
    return transposed(a, Image.FLIP_LEFT_RIGHT, lambda x1, y1, x2, y2: (w - x2, y1, w - x1, y2))


def vflip(a: Annotated) -> Annotated:
    """Mirror top-bottom: y -> H - y."""
    h = a.size[1]
    return transposed(a, Image.FLIP_TOP_BOTTOM, lambda x1, y1, x2, y2: (x1, h - y2, x2, h - y1))


def rot90(a: Annotated, k: int) -> Annotated:
    """Rotate by k x 90 degrees counter-clockwise; each quarter turn maps (x, y) to (y, W - x)."""
    for _ in range(k % 4):
        w = a.size[0]
        a = transposed(a, Image.ROTATE_90, lambda x1, y1, x2, y2, w=w: (y1, w - x2, y2, w - x1))
    return a


def transposed(a: Annotated, method: Image.Transpose, corners) -> Annotated:
    """The image transposed by `method`, every box through `corners(x1, y1, x2, y2)`."""

    def move(b: np.ndarray) -> np.ndarray:
        return np.stack(corners(*b.T), axis=1).astype(np.float32) if len(b) else b

    return replace(a, image=a.image.transpose(method), boxes=move(a.boxes), ignore=move(a.ignore))


def crop(a: Annotated, x0: int, y0: int, x1: int, y1: int, keep: float) -> Annotated:
    """The window [x0, x1) x [y0, y1). A box keeps its label when at least `keep` of its area
    stays inside; one cut more than that becomes an ignore region (ops.crop_boxes), and one
    wholly outside is dropped."""
    boxes, kept, cut = window_boxes(a.boxes, x0, y0, x1, y1, keep)
    ignore, inside, _ = window_boxes(a.ignore, x0, y0, x1, y1, 0)
    return Annotated(
        a.image.crop((x0, y0, x1, y1)),
        boxes[kept],
        a.labels[kept],
        np.concatenate([ignore[inside], boxes[cut]]).astype(np.float32).reshape(-1, 4),
    )


def window_boxes(boxes: np.ndarray, x0: int, y0: int, x1: int, y1: int, keep: float):
    """ops.crop_boxes on numpy boxes: (clipped, kept, cut)."""
    out = crop_boxes(torch.from_numpy(boxes.reshape(-1, 4)), x0, y0, (y1 - y0, x1 - x0), keep)
    return tuple(t.numpy() for t in out)


def mosaic(parts: list[Annotated], width: int, height: int, cx: int, cy: int) -> Annotated:
    """Four images tiled around the centre (cx, cy) of a width x height canvas: each is
    scaled (aspect kept) to fit its quadrant and placed against the centre; the rest of the
    canvas is mid-grey."""
    if len(parts) != 4:
        raise ValueError(f"a mosaic takes 4 images, got {len(parts)}")
    canvas = Image.new("RGB", (width, height), (124, 116, 104))
    quadrants = [(0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height)]
    boxes, labels, ignore = [], [], []
    for part, (qx0, qy0, qx1, qy1) in zip(parts, quadrants, strict=True):
        w, h = part.size
        scale = min((qx1 - qx0) / w, (qy1 - qy0) / h)
        new_w, new_h = max(1, int(scale * w)), max(1, int(scale * h))
        part = scale_to(part, new_w, new_h)
        left = qx1 - new_w if qx0 == 0 else qx0  # against the centre
        top = qy1 - new_h if qy0 == 0 else qy0
        canvas.paste(part.image, (left, top))
        shift = np.array([left, top, left, top], np.float32)
        boxes.append(part.boxes.reshape(-1, 4) + shift)
        labels.append(part.labels)
        ignore.append(part.ignore.reshape(-1, 4) + shift)
    return Annotated(
        canvas,
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(labels),
        np.concatenate(ignore).astype(np.float32),
    )


def to_tensor(image: Image.Image) -> Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1).float().div_(255)
