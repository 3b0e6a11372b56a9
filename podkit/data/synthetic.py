"""The built-in data set: textured shapes on cluttered backgrounds, with DST's scale imbalance.

Ten classes are (shape, texture) pairs; two shapes come in two textures, so a class is told
apart by texture as well as outline, which small instances make hard. Per image: large
objects (side 100 px to most of the image) with probability 0.8, medium (34-90 px) with
0.7, small (8-30 px) with 0.5, drawn large to small over a background of gradients, noise,
lines and class-free polygons; a few lines cross the objects. About 40 % of the instances
are small but only half of the images hold one. Boxes are the extent of each object's
visible pixels; an object less than 35 % visible becomes a crowd (ignore) region.
Deterministic from the seed.

Presets: `standard` (the above, images of `size` +-15 %, 256 px by default), `scale`, the
scale benchmark: images of 384-512 px a side and objects from 4 px to most of the image
(small 4-30 px, medium 34-90 px, large 100 px to 85 % of the shorter side), with the same
imbalance: many small instances, but only about half of the images holding one; and
`aerial`: images of 2000-4000 px a side with 30-90 objects of 6-40 px, a few of 40-120 px
and in half of the images one or two of 300-900 px (sliced inference, tiled training).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = [
    ("disc", "circle", "solid"),
    ("striped_square", "square", "stripes"),
    ("triangle", "triangle", "solid"),
    ("cross", "cross", "solid"),
    ("ring", "ring", "solid"),
    ("dotted_diamond", "diamond", "dots"),
    ("star", "star", "solid"),
    ("checkered_hexagon", "hexagon", "checker"),
    ("checkered_square", "square", "checker"),
    ("striped_disc", "circle", "stripes"),
]
# (probability an image has the bucket, min count, max count, min side, max side or None)
BUCKETS = {
    "large": (0.8, 1, 2, 100, None),
    "medium": (0.7, 1, 3, 34, 90),
    "small": (0.5, 2, 6, 8, 30),
}


@dataclass(frozen=True)
class SynthStyle:
    """Image sides drawn from [min_side, max_side]; objects per `buckets` (see BUCKETS)."""

    min_side: float
    max_side: float
    buckets: dict
    suffix: str = ".png"  # aerial: ".jpg" (quality 95), a tenth of the PNG's size


# aerial: many small objects (6-40 px), a few medium, some large ones (300-900 px)
AERIAL = {
    "large": (0.5, 1, 2, 300, 900),
    "medium": (0.8, 3, 10, 40, 120),
    "small": (1.0, 30, 90, 6, 40),
}


def preset_style(preset: str, size: int | None = None) -> SynthStyle:
    """`standard` (images of `size` +-15 %, default 256), `scale` (the scale benchmark) or
    `aerial` (2000-4000 px a side, AERIAL's objects: for sliced inference and tiled training)."""
    if preset == "standard":
        size = size or 256
        return SynthStyle(0.85 * size, 1.15 * size, BUCKETS)
    if preset == "scale":
        if size is not None:
            raise ValueError("--size applies to the standard preset (scale: 384-512 px)")
        return SynthStyle(384, 512, {**BUCKETS, "small": (0.5, 2, 6, 4, 30)})
    if preset == "aerial":
        if size is not None:
            raise ValueError("--size applies to the standard preset (aerial: 2000-4000 px)")
        return SynthStyle(2000, 4000, AERIAL, ".jpg")
    raise ValueError(
        f"unknown synthetic preset {preset!r}; choose standard, scale, aerial or sites"
    )


def _polygon(shape: str, w: int, h: int) -> list[tuple[float, float]] | None:
    def scaled(points):
        return [(x * (w - 1), y * (h - 1)) for x, y in points]

    if shape == "square":
        return scaled([(0, 0), (1, 0), (1, 1), (0, 1)])
    if shape == "triangle":
        return scaled([(0.5, 0), (1, 1), (0, 1)])
    if shape == "diamond":
        return scaled([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)])
    if shape == "cross":
        a, b = 0.33, 0.67
        return scaled(
            [
                (a, 0),
                (b, 0),
                (b, a),
                (1, a),
                (1, b),
                (b, b),
                (b, 1),
                (a, 1),
                (a, b),
                (0, b),
                (0, a),
                (a, a),
            ]
        )
    if shape == "hexagon":
        return scaled([(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)])
    if shape == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 0.5, 0.2)
        return scaled(list(zip(0.5 + r * np.cos(t), 0.5 + r * np.sin(t), strict=True)))
    return None


def shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) mask of a shape filling a w x h box."""
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    if shape in ("circle", "ring"):
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
        if shape == "ring":
            draw.ellipse([w * 0.3, h * 0.3, w * 0.7 - 1, h * 0.7 - 1], fill=0)
    else:
        draw.polygon(_polygon(shape, w, h), fill=255)
    return np.asarray(im) > 127


def texture(kind: str, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float texture in two random colours that differ clearly."""
    c1 = rng.uniform(0, 255, 3)
    c2 = (c1 + rng.uniform(90, 165, 3)) % 255
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(3, 7))
    if kind == "solid":
        pattern = np.zeros((h, w), bool)
    elif kind == "stripes":
        pattern = ((xx + yy) // period) % 2 == 0
    elif kind == "checker":
        pattern = ((xx // period) + (yy // period)) % 2 == 0
    else:  # dots
        pattern = ((xx % (2 * period)) < period // 2 + 1) & ((yy % (2 * period)) < period // 2 + 1)
    out = np.where(pattern[..., None], c2, c1)
    return out + rng.normal(0, 6, (h, w, 3))


def background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (
        np.linspace(0, 1, w)[None, :, None]
        if rng.random() < 0.5
        else np.linspace(0, 1, h)[:, None, None]
    )
    img = a * (1 - t) + b * t + rng.normal(0, 10, (h, w, 3))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 16))):  # clutter: lines and class-free polygons
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            draw.line(
                [tuple(rng.uniform(0, [w, h])) for _ in range(2)],
                fill=colour,
                width=int(rng.integers(1, 4)),
            )
        else:
            centre, radius = rng.uniform(0, [w, h]), rng.uniform(4, 40)
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            radii = radius * rng.uniform(0.3, 1.0, len(angles))
            draw.polygon(
                [
                    (centre[0] + r * np.cos(t), centre[1] + r * np.sin(t))
                    for r, t in zip(radii, angles, strict=True)
                ],
                fill=colour,
            )
    return np.asarray(im).astype(np.float64)


def synth_image(style: SynthStyle | int, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One image and its annotations (COCO fields, category_id 1-based); an int style is the
    standard preset at that size."""
    if isinstance(style, int):
        style = preset_style("standard", style)
    w, h = (int(rng.uniform(style.min_side, style.max_side)) for _ in range(2))
    img = background(w, h, rng)
    owner = np.full((h, w), -1, np.int64)
    objects = []
    for bucket in ("large", "medium", "small"):
        prob, lo, hi, min_side, max_side = style.buckets[bucket]
        if rng.random() >= prob:
            continue
        max_side = max_side or max(
            int(0.85 * min(w, h)), min_side + 1
        )  # small images: large ones fill them
        for _ in range(int(rng.integers(lo, hi + 1))):
            side = rng.uniform(min_side, max_side)
            ratio = rng.uniform(0.7, 1.4)
            ow, oh = (
                max(4, int(round(side * np.sqrt(ratio)))),
                max(4, int(round(side / np.sqrt(ratio)))),
            )
            ow, oh = min(ow, w), min(oh, h)
            x0, y0 = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
            cls = int(rng.integers(len(CLASSES)))
            _, shape, tex = CLASSES[cls]
            mask = shape_mask(shape, ow, oh)
            region = img[y0 : y0 + oh, x0 : x0 + ow]
            region[mask] = texture(tex, ow, oh, rng)[mask]
            owner[y0 : y0 + oh, x0 : x0 + ow][mask] = len(objects)
            objects.append((cls, int(mask.sum()), x0, y0, ow, oh))
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(0, 4))):  # thin lines over everything: occlusion
        draw.line(
            [tuple(rng.uniform(0, [w, h])) for _ in range(2)],
            fill=tuple(int(c) for c in rng.uniform(0, 255, 3)),
            width=1,
        )
    anns = []
    for k, (cls, full, x0, y0, ow, oh) in enumerate(objects):
        ys, xs = np.nonzero(owner[y0 : y0 + oh, x0 : x0 + ow] == k)  # its pixels: in its rect
        if len(xs) == 0:
            continue
        x1, y1 = x0 + int(xs.min()), y0 + int(ys.min())
        x2, y2 = x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1
        bw, bh = x2 - x1, y2 - y1
        crowd = len(xs) < 0.35 * full
        anns.append(
            {
                "category_id": cls + 1,
                "bbox": [x1, y1, bw, bh],
                "area": bw * bh,
                "iscrowd": int(crowd),
            }
        )
    return np.asarray(im), anns


def write_split(
    out: Path, split: str, count: int, size: SynthStyle | int, seed: int, progress=None
) -> Path:
    """Writes OUT/split/*.png and OUT/annotations/split.json; returns the json path.
    `size`: a style, or the image size of the standard preset."""
    names = [name for name, _, _ in CLASSES]
    suffix = size.suffix if isinstance(size, SynthStyle) else ".png"
    return write_coco_split(
        out, split, count, seed, lambda i, rng: synth_image(size, rng), names, progress, suffix
    )


def write_coco_split(
    out: Path,
    split: str,
    count: int,
    seed: int,
    draw,
    categories: list[str],
    progress=None,
    suffix: str = ".png",
) -> Path:
    """Image i is `draw(i, rng)` -> (pixels, annotations) with rng seeded by (seed, split,
    i); writes OUT/split/*.png and OUT/annotations/split.json and returns the json path."""
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    split_key = {"train": 0, "val": 1}.get(split, 2)
    images, annotations = [], []
    for i in range(count):
        pixels, anns = draw(i, np.random.default_rng([seed, split_key, i]))
        name = f"{i:06d}{suffix}"
        Image.fromarray(pixels).save(
            out / split / name, **({"quality": 95} if suffix == ".jpg" else {})
        )
        images.append(
            {"id": i + 1, "file_name": name, "width": pixels.shape[1], "height": pixels.shape[0]}
        )
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **a})
        if progress is not None:
            progress()
    path = out / "annotations" / f"{split}.json"
    cats = [{"id": k + 1, "name": name} for k, name in enumerate(categories)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def dataset_statistics(ann_path: Path) -> dict[str, float]:
    """Share of small instances and of images holding small / medium / large ones."""
    data = json.loads(Path(ann_path).read_text())
    per_image = {im["id"]: set() for im in data["images"]}
    counts = {"small": 0, "medium": 0, "large": 0}
    for a in data["annotations"]:
        if a["iscrowd"]:
            continue
        bucket = "small" if a["area"] < 32**2 else "medium" if a["area"] < 96**2 else "large"
        counts[bucket] += 1
        per_image[a["image_id"]].add(bucket)
    total = max(sum(counts.values()), 1)
    n = max(len(per_image), 1)
    stats = {f"instances_{k}": v / total for k, v in counts.items()}
    stats.update({f"images_with_{k}": sum(k in s for s in per_image.values()) / n for k in counts})
    stats["instances_per_image"] = total / n
    return stats
