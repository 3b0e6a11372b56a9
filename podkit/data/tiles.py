"""Tiled training data (data.tile): large images as the tiles sliced inference feeds.

Each image becomes the tiles of `ops.tiles.tile_grid` (the same grid as `--tile`), each a
record of its own (`Record.crop`) holding the boxes clipped to it: a box with at least
`min_visible` of its area inside the tile is an object there, one with less (but some) is
an ignore region, so the detector is neither taught a fragment as an object nor punished for
finding it. Deterministic: the same images give the same tiles, whatever the seed.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from podkit.config import TrainTileConfig
from podkit.data import LoadedDataset
from podkit.data.records import Record
from podkit.ops.tiles import tile_grid


def clip_to(boxes: np.ndarray, tile: tuple[int, int, int, int]) -> np.ndarray:
    """`boxes` clipped to `tile`, in the tile's pixels (empty ones have zero width or height)."""
    x0, y0, x1, y1 = tile
    clipped = boxes.copy()
    clipped[:, 0::2] = boxes[:, 0::2].clip(x0, x1) - x0
    clipped[:, 1::2] = boxes[:, 1::2].clip(y0, y1) - y0
    return clipped


def area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def tile_records(
    records: list[Record], size: int, overlap: float, min_visible: float
) -> tuple[list[Record], int]:
    """The tiles of every record, and how many (box, tile) pairs became ignore regions."""
    tiles, cut = [], 0
    for rec in records:
        full = area(rec.boxes)
        for tile in tile_grid(rec.height, rec.width, size, overlap):
            boxes = clip_to(rec.boxes, tile)
            visible = area(boxes) / np.maximum(full, 1e-6)
            inside = area(boxes) > 0
            keep = inside & (visible >= min_visible)
            partial = inside & ~keep
            ignore = clip_to(rec.ignore, tile)
            ignore = np.concatenate([ignore[area(ignore) > 0], boxes[partial]]).astype(np.float32)
            x0, y0, x1, y1 = tile
            tiles.append(
                replace(
                    rec, image_id=len(tiles) + 1, width=x1 - x0, height=y1 - y0,
                    boxes=boxes[keep].astype(np.float32), labels=rec.labels[keep],
                    ignore=ignore.reshape(-1, 4), crop=tile,
                )
            )  # fmt: skip
            cut += int(partial.sum())
    return tiles, cut


def tile_training_set(dataset: LoadedDataset, tile: TrainTileConfig | None) -> str | None:
    """Replace `dataset`'s records by their tiles when `tile` (data.tile) is set; returns the
    line that says what it did (None: untiled)."""
    if tile is None:
        return None
    images = len(dataset.records)
    dataset.records, cut = tile_records(dataset.records, tile.size, tile.overlap, tile.min_visible)
    return (
        f"data.tile: {images} training images -> {len(dataset.records)} tiles of {tile.size} px "
        f"(overlap {tile.overlap}); {cut} boxes cut below min_visible {tile.min_visible} are "
        "ignore regions in their tiles"
    )
