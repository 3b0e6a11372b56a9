"""How an artefact is fed: an image scaled to fit a static input (or padded to multiples of 32
for a dynamic one), then images stacked into the artefact's batch. Evaluation, prediction and
INT8 calibration all prepare images with these two functions."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from podkit.export.wrap import SIZE_MULTIPLE


def artefact_input(
    image: torch.Tensor, input_size: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """One (3, h, w) image as an artefact is fed: scaled down to fit a static `input_size`
    (aspect kept) when larger, then zero-padded to it, or for a dynamic artefact (None) to
    multiples of 32. Returns the (1, 3, H, W) float32 array, the size of the image inside
    it, and whether it was scaled down."""
    h, w = image.shape[-2:]
    downscaled = False
    if input_size is not None:
        scale = min(input_size[0] / h, input_size[1] / w)
        if scale < 1:
            downscaled = True
            h, w = max(1, int(h * scale)), max(1, int(w * scale))
            image = F.interpolate(image[None], (h, w), mode="bilinear", antialias=True)[0]
        height, width = input_size
    else:
        # the export's smallest side is two blocks (check_input_size)
        height = max(2, -(-h // SIZE_MULTIPLE)) * SIZE_MULTIPLE
        width = max(2, -(-w // SIZE_MULTIPLE)) * SIZE_MULTIPLE
    padded = F.pad(image, (0, width - w, 0, height - h))
    return padded[None].contiguous().numpy(), (int(h), int(w)), downscaled


def stack_inputs(arrays: list[np.ndarray], batch: int) -> np.ndarray:
    """One input of an artefact taking `batch` images: the (1, 3, h, w) arrays padded to a
    common size (a dynamic artefact's may differ), blank images after the last one."""
    height = max(a.shape[2] for a in arrays)
    width = max(a.shape[3] for a in arrays)
    stacked = np.zeros((batch, 3, height, width), np.float32)
    for k, a in enumerate(arrays):
        stacked[k, :, : a.shape[2], : a.shape[3]] = a[0]
    return stacked
