"""`podkit data stats`: what the detector will see, per split, before a run is spent on it.

Sizes are of the image as fed (after the config's resize: the middle training size for the
training split, the test size for validation), because that is what the anchors and FPN
levels meet. The warnings name what a first run on new data most often trips on: objects
no anchor can match, objects the resize shrinks below a few pixels, degenerate boxes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from podkit.config import Config
from podkit.data import LoadedDataset
from podkit.data.anchor_fit import MATCH_IOU, anchor_layout, boxes_as_fed, coverage, train_min_size

SMALL, MEDIUM = 32, 96  # COCO's sqrt(area) limits of small and medium, pixels as fed
TINY = 6  # objects smaller than this (as fed) leave a stride-4 feature map one cell or less
WARN_UNMATCHED = 0.10  # warn when more boxes than this have no anchor at MATCH_IOU


@dataclass
class SplitStats:
    split: str
    source: str
    images: int
    image_sizes: dict  # min / median / max of width and height, original pixels
    fed_min_size: int  # the resize the sizes below assume
    objects: int
    objects_per_image: dict  # mean, max, images without objects
    ignore_regions: int
    box_sizes: list[float]  # sqrt(area) of every box, as fed
    aspect_ratios: list[float]  # height / width of every box
    shares: dict  # small / medium / large, as fed
    classes: dict  # class name -> count
    clipped: int
    dropped: int
    anchor_match: float  # share of boxes with an anchor at IoU >= MATCH_IOU
    warnings: list[str]


def split_stats(dataset: LoadedDataset, split: str, cfg: Config, min_size: int) -> SplitStats:
    records = dataset.records
    fed = boxes_as_fed(records, min_size, cfg.data.max_size)
    boxes = np.concatenate([b for _, b in fed]).reshape(-1, 4) if fed else np.zeros((0, 4))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = np.sqrt(np.clip(w * h, 0, None))
    per_image = np.array([len(r.boxes) for r in records])
    widths = np.array([r.width for r in records])
    heights = np.array([r.height for r in records])
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, int)
    n = max(len(sizes), 1)
    stats = SplitStats(
        split=split,
        source=dataset.source,
        images=len(records),
        image_sizes={
            side: [int(v.min()), int(np.median(v)), int(v.max())] if len(v) else []
            for side, v in (("width", widths), ("height", heights))
        },
        fed_min_size=min_size,
        objects=len(sizes),
        objects_per_image={
            "mean": float(per_image.mean()) if len(per_image) else 0.0,
            "max": int(per_image.max()) if len(per_image) else 0,
            "without": int((per_image == 0).sum()),
        },
        ignore_regions=sum(len(r.ignore) for r in records),
        box_sizes=[round(float(s), 2) for s in sizes],
        aspect_ratios=[round(float(r), 3) for r in h / np.maximum(w, 1e-6)],
        shares={
            "small": float((sizes < SMALL).sum() / n),
            "medium": float(((sizes >= SMALL) & (sizes < MEDIUM)).sum() / n),
            "large": float((sizes >= MEDIUM).sum() / n),
        },
        classes={name: int((labels == k).sum()) for k, name in enumerate(dataset.classes)},
        clipped=dataset.report.clipped,
        dropped=dataset.report.dropped,
        anchor_match=coverage(fed, anchor_layout(cfg.model), cfg.data.size_divisible),
        warnings=[],
    )
    stats.warnings = split_warnings(stats)
    return stats


def split_warnings(s: SplitStats) -> list[str]:
    out = []
    if s.objects and 1 - s.anchor_match > WARN_UNMATCHED:
        out.append(
            f"{s.split}: {100 * (1 - s.anchor_match):.0f} % of the boxes have no anchor at IoU "
            f">= {MATCH_IOU} at min_size {s.fed_min_size}; set model.anchors=auto (fits the "
            "anchors to the boxes) or change the resize"
        )
    tiny = sum(v < TINY for v in s.box_sizes)
    if tiny > 0.05 * max(s.objects, 1):
        out.append(
            f"{s.split}: {tiny} boxes ({100 * tiny / s.objects:.0f} %) are under {TINY} px as fed; "
            f"a larger data.min_size (now {s.fed_min_size}) would keep them visible"
        )
    if s.clipped or s.dropped:
        out.append(
            f"{s.split}: {s.clipped} boxes reach outside their image (clipped), {s.dropped} are "
            "empty or inverted (dropped)"
        )
    empty = [name for name, count in s.classes.items() if count == 0]
    if empty and s.split == "train":
        out.append(f"train: no box of class {', '.join(empty[:5])}")
    return out


def dataset_stats(cfg: Config, splits: dict[str, LoadedDataset]) -> list[SplitStats]:
    """Per split, as fed by `cfg` (training: the middle data.min_size; else test_min_size)."""
    return [
        split_stats(
            dataset, split, cfg, train_min_size(cfg) if split == "train" else cfg.data.test_min_size
        )
        for split, dataset in splits.items()
    ]


def write_stats(stats: list[SplitStats], out: Path) -> list[Path]:
    """OUT/stats.json and OUT/stats.png (histograms of box sizes as fed and aspect ratios)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "stats.json").write_text(json.dumps([asdict(s) for s in stats], indent=1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    sizes = [v for s in stats for v in s.box_sizes if v > 0]
    bins = np.geomspace(max(min(sizes, default=1), 1), max(max(sizes, default=2), 2), 40)
    for s in stats:
        axes[0].hist([v for v in s.box_sizes if v > 0], bins=bins, histtype="step", lw=1.5,
                     label=f"{s.split} (min_size {s.fed_min_size})", density=True)  # fmt: skip
        axes[1].hist(np.log2(np.maximum(s.aspect_ratios, 1e-3)), bins=30, histtype="step",
                     lw=1.5, label=s.split, density=True)  # fmt: skip
    for limit in (SMALL, MEDIUM):
        axes[0].axvline(limit, color="grey", ls=":", lw=1)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("box side sqrt(area), pixels as fed (dotted: small / medium limits)")
    axes[1].set_xlabel("log2(height / width)")
    for ax in axes:
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "stats.png", dpi=110)
    plt.close(fig)
    return [out / "stats.json", out / "stats.png"]
