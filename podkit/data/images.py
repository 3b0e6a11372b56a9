"""Image files without annotations, as `predict` and INT8 calibration read them."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from podkit.data.records import DEFAULT_MAX_PIXELS, Record, check_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def find_images(items: list[str]) -> list[Path]:
    """Image files named by `items`: files, folders (searched recursively) or glob patterns,
    in the order given (each folder or glob sorted), each file once."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        else:
            matches = [
                Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()
            ]
        if not matches:
            raise FileNotFoundError(f"{item}: no image file, folder or glob match")
        found += matches
    return list(dict.fromkeys(found))


def image_records(
    files: list[Path], max_pixels: int = DEFAULT_MAX_PIXELS, reader: str = "predict"
) -> list[Record]:
    """Records without boxes (ids 1..N), sizes as displayed read from the headers; unreadable
    or oversized files are one line naming them."""
    records = []
    for image_id, file in enumerate(files, start=1):
        width, height = check_image(file, reader, max_pixels)
        empty = np.zeros((0, 4), np.float32)
        records.append(Record(image_id, file, width, height, empty, np.zeros(0, np.int64)))
    return records
