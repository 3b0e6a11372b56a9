"""Every image decoded once before a run starts.

A corrupt file or a decompression bomb then stops the run at start with the file and image id
named, instead of a loader worker's traceback hours in. Images that passed are remembered by
(size, mtime) in a small cache per image folder, so a second run over the same set starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from podkit.data.records import Record, displayed_size, open_image, too_large


def cache_dir() -> Path:
    """$PODKIT_CACHE, else $XDG_CACHE_HOME/podkit, else ~/.cache/podkit."""
    if os.environ.get("PODKIT_CACHE"):
        return Path(os.environ["PODKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "podkit"


def verify_images(
    records: list[Record],
    source: str,
    max_pixels: int,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Decode every image of `records` (once per file version); raise ValueError naming
    `source`, the image id and the file for an unreadable, truncated or oversized image."""
    cache_file = _cache_file(records)
    seen = _read_cache(cache_file)
    changed = False
    for done, rec in enumerate(records, 1):
        try:
            stat = rec.file.stat()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{source}: image {rec.file} (image id {rec.image_id}) not found"
            ) from None
        key, version = str(rec.file.resolve()), [stat.st_size, stat.st_mtime_ns]
        entry = seen.get(key)
        if entry is None or entry[:2] != version:
            width, height = decode(rec.file, f"{source}: image id {rec.image_id}", max_pixels)
            seen[key] = version + [width, height]
            changed = True
        width, height = seen[key][2:]
        if width * height > max_pixels:
            raise ValueError(too_large(f"{source}: image id {rec.image_id}", rec.file, width,
                                       height, max_pixels))  # fmt: skip
        if progress is not None and (done % 50 == 0 or done == len(records)):
            progress(done, len(records))
    if changed:
        _write_cache(cache_file, seen)


def decode(path: Path, where: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) as displayed, after a full decode; the size is checked from the header
    first."""
    with open_image(path, where, max_pixels) as im:
        try:
            im.load()
        except (OSError, SyntaxError) as exc:
            raise ValueError(f"{where}: image {path} is corrupt or not an image ({exc})") from None
        return displayed_size(im)


def _cache_file(records: list[Record]) -> Path:
    folders = sorted({str(r.file.parent.resolve()) for r in records[:1000]})
    digest = hashlib.sha1("\n".join(folders).encode()).hexdigest()[:16]
    return cache_dir() / "verified-images" / f"{digest}.json"


def _read_cache(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, seen: dict[str, list[int]]) -> None:
    """Atomic, and silent when the cache folder cannot be written (a cache is optional)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(seen, f)
        os.replace(tmp, path)
    except OSError:
        pass
