"""Training-time augmentation: the random choices of `data.augment`, drawn per sample.

Small real data sets are where a detector memorises its few scenes; photometric jitter
(lighting, sensor colour), scale jitter, crops, flips and quarter turns (overhead imagery
has no "up") and mosaics show it more scenes than it has. Every choice comes from the
sample's own generator, seeded by the batch stream from (seed, position, slot), so the
augmented stream is the same for any number of loader workers and after a resume.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from podkit.config import AugmentConfig
from podkit.data.transforms import (
    Annotated,
    crop,
    hflip,
    mosaic,
    resize,
    rot90,
    vflip,
    window_boxes,
)

CROP_TRIES = 10


def augment(
    a: Annotated,
    cfg: AugmentConfig,
    rng: np.random.Generator | None,
    min_size: int,
    max_size: int,
    flip: bool,
    load_other: Callable[[int], Annotated],
    num_records: int,
) -> Annotated:
    """The pipeline of one sample: mosaic, crop, resize (with scale jitter), flips and
    rotations, colour. `load_other(i)` loads record i for a mosaic. With every op off (an
    evaluation sample) it only resizes and flips, and needs no generator."""
    if draw(rng, cfg.mosaic):
        others = [load_other(int(i)) for i in rng.integers(num_records, size=3)]
        w, h = a.size
        cx, cy = (int(v * rng.uniform(0.3, 0.7)) for v in (w, h))
        a = mosaic([a, *others], w, h, max(cx, 1), max(cy, 1))
    if draw(rng, cfg.crop):
        a = random_crop(a, rng, cfg.crop_min, cfg.crop_keep)
    factor = float(np.exp(rng.uniform(*np.log(cfg.scale)))) if cfg.scale else 1.0
    a = resize(a, min_size * factor, max_size * factor)
    if flip:
        a = hflip(a)
    if draw(rng, cfg.vflip):
        a = vflip(a)
    if draw(rng, cfg.rot90):
        a = rot90(a, int(rng.integers(1, 4)))
    return Annotated(photometric(a.image, cfg, rng), a.boxes, a.labels, a.ignore)


def draw(rng: np.random.Generator | None, probability: float) -> bool:
    """A coin with this probability; no draw at all when it is 0, so a switched-off op leaves
    the stream of every other op as it was."""
    return probability > 0 and bool(rng.random() < probability)


def random_crop(a: Annotated, rng: np.random.Generator, min_side: float, keep: float) -> Annotated:
    """A window of each side in [min_side, 1] of the image, placed uniformly; tried up to
    CROP_TRIES times for one that keeps at least one box, else the image is left whole."""
    w, h = a.size
    for _ in range(CROP_TRIES):
        cw, ch = (max(1, int(round(s * rng.uniform(min_side, 1.0)))) for s in (w, h))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        if not len(a.boxes) or window_boxes(a.boxes, x0, y0, x0 + cw, y0 + ch, keep)[1].any():
            return crop(a, x0, y0, x0 + cw, y0 + ch, keep)
    return a


def photometric(image: Image.Image, cfg: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """Colour jitter (brightness, contrast, saturation, hue), grayscale and blur."""
    if draw(rng, cfg.color):
        for enhancer, strength in (
            (ImageEnhance.Brightness, cfg.brightness),
            (ImageEnhance.Contrast, cfg.contrast),
            (ImageEnhance.Color, cfg.saturation),
        ):
            if strength:
                image = enhancer(image).enhance(rng.uniform(1 - strength, 1 + strength))
        if cfg.hue:
            image = shift_hue(image, rng.uniform(-cfg.hue, cfg.hue))
    if draw(rng, cfg.grayscale):
        image = image.convert("L").convert("RGB")
    if draw(rng, cfg.blur):
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, cfg.blur_sigma)))
    return image


def shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` of the circle (in HSV, 8 bits a channel)."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 256))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")
