"""The one in-memory form of an annotated image, whatever file format it came from."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from podkit.config import DataConfig


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
    # (x0, y0, x1, y1): a tile of the file (data.tile); boxes and sizes are the tile's
    crop: tuple[int, int, int, int] | None = None


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


# The EXIF orientations that swap width and height (rotations by 90 or 270 degrees, with or
# without a mirror): such an image is displayed, labelled and read here transposed.
EXIF_ORIENTATION = 0x0112
TRANSPOSING = {5, 6, 7, 8}
DEFAULT_MAX_PIXELS = DataConfig.max_image_pixels


def orientation(im: Image.Image) -> int:
    """The image's EXIF orientation (1: as stored)."""
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
    except (ValueError, TypeError, OSError):
        return 1


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, the EXIF orientation applied: the frame that labelling
    tools, OpenCV and Detectron2 give boxes in, and the frame podkit reads pixels in."""
    width, height = im.size
    return (height, width) if orientation(im) in TRANSPOSING else (width, height)


@contextlib.contextmanager
def open_image(path: Path, where: str, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Open an image with podkit's own size limit in place of Pillow's (whose refusal is a
    traceback and whose warning is printed raw): one line naming the file, its size and how
    to raise the limit. `where` names the file's source (annotation file, command); None: no
    limit (for images whose header was checked when their record was made)."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the header's size is checked below instead
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{where}: image {path} is not a readable image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    with im:
        width, height = im.size
        if max_pixels is not None and width * height > max_pixels:
            raise ValueError(too_large(where, path, width, height, max_pixels))
        yield im


def too_large(where: str, path: Path, width: int, height: int, limit: int) -> str:
    return (
        f"{where}: image {path} has {width}x{height} = {width * height:,} pixels, over the "
        f"limit of {limit:,} (raise it with --set "
        f"data.max_image_pixels={width * height}; tiled inference reads such images in tiles)"
    )


def check_image(path: Path, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as displayed, from the file header; a clear error if it is missing or
    unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"{source}: image {path} not found")
    with open_image(path, source, max_pixels) as im:
        return displayed_size(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB. Images of more bits are scaled down as OpenCV's imread does (16-bit values
    / 256), not clipped at 255 (which turns most of them white); float images are taken as
    [0, 1] when their maximum is at most 1, else as 0-255."""
    if im.mode.startswith("I"):  # I;16, I;16B, I (32-bit integers from 16-bit files)
        values = np.asarray(im, dtype=np.float64) / 256.0
        im = Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        values = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
        im = Image.fromarray(np.nan_to_num(values).clip(0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def load_image(path: Path) -> Image.Image:
    """The image as displayed (EXIF orientation applied) in 8-bit RGB. Its size is not
    limited here: records are made through `check_image`, which applies the limit."""
    with open_image(path, str(path), None) as im:
        try:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"image {path} is not a readable image ({exc})") from None
