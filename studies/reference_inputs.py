"""Deterministic weights and images for cross-framework equivalence tests (numpy only).

The reference script (studies/torchvision_reference.py, in its own environment with
torchvision) and podkit's test both regenerate the same weights from each tensor's name and
shape, and the same images from a seed, so no weight file or image is committed: only the
other framework's outputs.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    )


def tensor_for(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values for the tensor `name` of `shape`, from uniform draws (stable across
    numpy versions): BatchNorm statistics near identity, conv / linear weights at half the
    He scale (a 50-layer stack of random residual blocks stays finite), small biases."""
    rng = _rng(name)
    size = int(np.prod(shape)) if shape else 1
    u = rng.random(size).reshape(shape) if shape else rng.random(1)[0]
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.asarray(0, np.int64)
    if leaf == "running_var":
        return (0.5 + u).astype(np.float32)
    if leaf == "running_mean":
        return (0.2 * (u - 0.5)).astype(np.float32)
    classifier = "cls_score" in name or "cls_logits" in name
    if len(shape) == 1 and classifier:  # RetinaNet's prior: a few confident anchors only
        return (-4.0 + 2 * u if "classification_head" in name else u - 0.5).astype(np.float32)
    if len(shape) == 1:  # norm weights and every other bias
        is_norm_weight = leaf == "weight"
        return ((0.5 + u) if is_norm_weight else 0.1 * (u - 0.5)).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    limit = 0.5 * np.sqrt(2.0 / fan_in) * np.sqrt(3.0)  # uniform with half the He std
    if classifier:  # spread the class scores: some detections clear the score threshold
        limit *= 30
    return ((2 * u - 1) * limit).astype(np.float32)


def scene(seed: int, height: int, width: int) -> np.ndarray:
    """An RGB image (H, W, 3) in [0, 1]: textured background and a dozen filled rectangles
    and ellipses of 12-160 px, so detectors see edges and blobs at several scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.3 + 0.2 * np.sin(xx[..., None] / (7 + 5 * rng.random(3))) * np.cos(
        yy[..., None] / (9 + 5 * rng.random(3))
    )
    for _ in range(12):
        side = rng.uniform(12, 160, 2)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        colour = rng.random(3)
        if rng.random() < 0.5:
            mask = (np.abs(xx - cx) < side[0] / 2) & (np.abs(yy - cy) < side[1] / 2)
        else:
            mask = ((xx - cx) / (side[0] / 2)) ** 2 + ((yy - cy) / (side[1] / 2)) ** 2 < 1
        image[mask] = colour
    return np.clip(image, 0, 1).astype(np.float32)


# what the reference holds: two images of this size (multiples of 32: no resize, no padding)
IMAGE_SIZE = (320, 416)
SEEDS = (1, 2)
