"""The one in-memory form of an annotated image, whatever file format it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


@dataclass
class Record:
    """An image and its boxes in original pixels; `ignore` holds crowd / difficult regions."""

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2
    labels: np.ndarray  # (N,) int64 in [0, num_classes)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


@dataclass
class BoxReport:
    """What cleaning did to the boxes of a data set, reported once at start."""

    clipped: int = 0
    dropped: int = 0
    clipped_ids: list = field(default_factory=list)  # the first few, for the message
    dropped_ids: list = field(default_factory=list)

    def message(self, source: str) -> str | None:
        if not (self.clipped or self.dropped):
            return None
        return (
            f"{source}: {self.clipped} boxes clipped to their image"
            f"{_first(self.clipped_ids, self.clipped)}, {self.dropped} boxes of zero or negative "
            f"size dropped{_first(self.dropped_ids, self.dropped)}"
        )


def _first(ids: list, count: int) -> str:
    more = ", ..." if count > len(ids) else ""
    return f" (annotations {', '.join(map(str, ids))}{more})" if ids else ""


def clean_boxes(
    boxes: np.ndarray, width: int, height: int, report: BoxReport, ids: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to the image and drop empty ones; returns (boxes, kept mask). `ids` name
    the boxes (annotation ids) in the report."""
    boxes = boxes.reshape(-1, 4).astype(np.float32)
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    was_clipped = (np.abs(clipped - boxes).sum(axis=1) > 0) & keep
    report.dropped += int((~keep).sum())
    report.clipped += int(was_clipped.sum())
    if ids is not None:
        report.dropped_ids += [ids[i] for i in np.flatnonzero(~keep)][: 5 - len(report.dropped_ids)]
        report.clipped_ids += [ids[i] for i in np.flatnonzero(was_clipped)][
            : 5 - len(report.clipped_ids)
        ]
    return clipped[keep], keep


def check_image(path: Path, source: str) -> tuple[int, int]:
    """(width, height) from the file header; a clear error if it is missing or unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"{source}: image {path} not found")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{source}: image {path} is not a readable image ({exc})") from exc


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"image {path} is not a readable image ({exc})") from exc
