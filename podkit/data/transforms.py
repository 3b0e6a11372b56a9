"""Resize (shorter side to S, longer side capped) and horizontal flip, boxes alongside."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """Scale that brings the shorter side to `min_size` unless the longer would pass `max_size`."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return scale


def resize(image: Image.Image, boxes: np.ndarray, ignore: np.ndarray, min_size: int, max_size: int):
    w, h = image.size
    scale = resize_scale(h, w, min_size, max_size)
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    image = image.resize((new_w, new_h), Image.BILINEAR)
    sx, sy = new_w / w, new_h / h
    factor = np.array([sx, sy, sx, sy], np.float32)
    return image, boxes * factor, ignore * factor


def hflip(image: Image.Image, boxes: np.ndarray, ignore: np.ndarray):
    w = image.size[0]

    def flip(b):
        return np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1) if len(b) else b

    return image.transpose(Image.FLIP_LEFT_RIGHT), flip(boxes), flip(ignore)


def to_tensor(image: Image.Image) -> Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1).float().div_(255)
