"""A real-like small data set with a domain shift: dense small vehicles on the ground of a
few "sites", training tiles from one site, validation tiles from others.

It stands in for the first run a detection engineer makes on their own overhead imagery: one
class, many objects of 8-60 px per 320 px tile, seen from above (no "up"), and a training
set from one place that must generalise to others. A site fixes the ground (colour, grain,
field stripes, roads), the light (brightness and colour cast) and the clutter (buildings
and trees, class-free); vehicles take any colour and orientation. Boxes are the extent of
each vehicle's visible pixels; one less than 35 % visible becomes a crowd (ignore) region.
Deterministic from the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from podkit.data.synthetic import write_coco_split

CATEGORIES = ["vehicle"]
TILE = 320


def site_look(seed: int, site: int) -> dict:
    """The ground, light and clutter of one site, drawn from (seed, site)."""
    rng = np.random.default_rng([seed, 7919, site])
    hue_family = rng.choice(
        [[95, 120, 70], [120, 118, 112], [150, 128, 90], [190, 175, 140], [70, 95, 60]]
    )
    return {
        "ground": np.asarray(hue_family, float) + rng.normal(0, 18, 3),
        "grain": float(rng.uniform(6, 26)),  # pixel noise
        "blob": int(rng.integers(2, 9)),  # grain size (blur radius of the noise)
        "stripes": float(rng.uniform(0, 0.6)),  # field stripes' contrast
        "stripe_period": int(rng.integers(12, 40)),
        "roads": int(rng.integers(0, 4)),
        "light": float(rng.uniform(0.65, 1.25)),
        "cast": rng.normal(1.0, 0.08, 3),
        "buildings": int(rng.integers(0, 6)),
        "trees": int(rng.integers(0, 25)),
    }


def ground(look: dict, rng: np.random.Generator) -> Image.Image:
    h = w = TILE
    noise = Image.fromarray(rng.normal(128, 60, (h, w)).clip(0, 255).astype(np.uint8))
    noise = np.asarray(noise.filter(ImageFilter.GaussianBlur(look["blob"])), float) - 128
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, np.pi)
    phase = (xx * np.cos(angle) + yy * np.sin(angle)) / look["stripe_period"]
    stripes = look["stripes"] * 40 * np.sign(np.sin(phase))
    img = look["ground"] + (noise * look["grain"] / 10 + stripes)[..., None]
    img = img + rng.normal(0, look["grain"] / 3, (h, w, 3))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(look["roads"]):
        grey = int(rng.uniform(60, 140))
        ends = [tuple(rng.uniform(0, w, 2)) for _ in range(2)]
        draw.line(ends, fill=(grey, grey, grey), width=int(rng.integers(14, 30)))
    for _ in range(look["buildings"]):
        x, y = rng.uniform(-20, w - 20, 2)
        bw, bh = rng.uniform(50, 120, 2)
        roof = tuple(int(c) for c in rng.uniform(60, 200, 3))
        draw.rectangle((x, y, x + bw, y + bh), fill=roof)
    for _ in range(look["trees"]):
        tree(draw, rng, 16)
    return im


def tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, largest: float) -> tuple:
    """A tree crown seen from above, radius 5 to `largest` px; returns its bounding box."""
    x, y = rng.uniform(0, TILE, 2)
    r = rng.uniform(5, largest)
    green = (int(rng.uniform(20, 60)), int(rng.uniform(50, 100)), int(rng.uniform(20, 50)))
    extent = (x - r, y - r, x + r, y + r)
    draw.ellipse(extent, fill=green)
    return extent


def vehicle(length: float, width: float, angle: float) -> np.ndarray:
    """The corners of a vehicle of this size, rotated by `angle`, centred on (0, 0)."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * [length / 2, width / 2]
    c, s = np.cos(angle), np.sin(angle)
    return corners @ np.array([[c, s], [-s, c]])


def sites_image(look: dict, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One tile of a site and its annotations (COCO fields)."""
    im = ground(look, rng)
    draw = ImageDraw.Draw(im)
    owner = Image.new("I", im.size, -1)
    owner_draw = ImageDraw.Draw(owner)
    full = []
    parked = rng.random() < 0.5  # rows of parked vehicles share an orientation
    base_angle = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.05)
    for k in range(int(rng.integers(8, 40))):
        length = rng.uniform(10, 60)
        width = length / rng.uniform(1.6, 2.4)
        angle = base_angle if parked else rng.uniform(0, np.pi)
        centre = rng.uniform(0, TILE, 2)
        corners = [tuple(p) for p in vehicle(length, width, angle) + centre]
        shadow = [(x + width * 0.25, y + width * 0.25) for x, y in corners]
        draw.polygon(shadow, fill=tuple(int(c * 0.45) for c in look["ground"]))
        body = tuple(int(c) for c in rng.uniform(10, 245, 3))
        draw.polygon(corners, fill=body, outline=tuple(max(c - 40, 0) for c in body))
        glass = [tuple(p) for p in vehicle(length * 0.18, width * 0.8, angle) + centre]
        draw.polygon(glass, fill=(30, 40, 50))
        owner_draw.polygon(corners, fill=k)
        mask = Image.new("L", im.size, 0)
        ImageDraw.Draw(mask).polygon(corners, fill=1)
        full.append(int(np.asarray(mask).sum()))
    for _ in range(int(rng.integers(0, look["trees"] // 3 + 1))):  # trees over vehicles
        owner_draw.ellipse(tree(draw, rng, 14), fill=-1)
    pixels = np.asarray(im, float) * look["light"] * look["cast"]
    owners = np.asarray(owner)
    anns = []
    for k, area in enumerate(full):
        ys, xs = np.nonzero(owners == k)
        if len(xs) == 0 or area == 0:
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append(
            {
                "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(len(xs) < 0.35 * area),
            }
        )
    return pixels.clip(0, 255).astype(np.uint8), anns


def write_sites_split(
    out: Path, split: str, count: int, sites: list[int], seed: int, progress=None
) -> Path:
    """OUT/split/*.png and OUT/annotations/split.json, tiles spread evenly over `sites`."""
    looks = [site_look(seed, s) for s in sites]

    def draw(i: int, rng: np.random.Generator):
        return sites_image(looks[i % len(looks)], rng)

    return write_coco_split(out, split, count, seed, draw, CATEGORIES, progress)
