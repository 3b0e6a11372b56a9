"""The rules every command follows for the files it writes, so that no command destroys a
file it was not asked to replace.

Before any work, `check_output` refuses an output path that is one of the command's inputs,
has an extension the command does not write, or exists (unless `--overwrite`), and makes sure
its folder can be written. The writing itself goes through `replacing`: the new file is
written under a temporary name beside the old one and renamed over it only once complete, so
a failure half-way leaves the old file whole. (Cheap to import: no torch.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def check_writable(*paths: Path | None) -> None:
    """Create each output's folder if needed and check that it can be written there (None: an
    output not asked for)."""
    for path in paths:
        if path is None:
            continue
        folder = path if path.is_dir() else path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(
                f"{path}: cannot create the folder {folder} ({exc.strerror})"
            ) from None
        if not os.access(folder, os.W_OK):
            raise ValueError(f"{path}: the folder {folder} is not writable")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative paths resolved)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(
    path: Path | None,
    option: str,
    suffixes: Iterable[str] = (),
    inputs: Iterable[Path | None] = (),
    overwrite: bool = False,
    also: Iterable[Path] = (),
    folder: bool = False,
) -> None:
    """Refuse, in one line naming `path` and `option`, an output that is an input of the
    command, has none of `suffixes` (when given), or exists without `overwrite`; then check
    its folder is writable. `also`: the files written with it (an artefact's other files),
    checked the same way. `folder`: the output is a folder (else a folder is refused)."""
    if path is None:
        return
    suffixes = tuple(suffixes)
    if suffixes and not str(path).endswith(suffixes):
        raise ValueError(
            f"{path}: {option} must end in {' or '.join(suffixes)} (the file this writes)"
        )
    written = [path, *also]
    for item in inputs:
        if item is not None and any(same_file(w, Path(item)) for w in written):
            raise ValueError(
                f"{path}: {option} names an input of this command; choose another path"
            )
    if path.is_dir() and not folder:
        raise ValueError(f"{path}: {option} is a folder; give a file path")
    if path.is_file() and folder:
        raise ValueError(f"{path}: {option} is a file; give a folder path")
    existing = [w for w in written if w.exists()]
    if existing and not overwrite:
        raise ValueError(
            f"{existing[0]}: exists; pass --overwrite to replace it, or choose another {option}"
        )
    check_writable(path)


def check_distinct(outputs: dict[str, Path | None]) -> None:
    """Two outputs of one command must not name the same file."""
    seen: list[tuple[str, Path]] = []
    for option, path in outputs.items():
        if path is None:
            continue
        for other, earlier in seen:
            if same_file(path, earlier):
                raise ValueError(f"{path}: given as both {other} and {option}")
        seen.append((option, path))


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix, so writers that look at it behave
    alike); on success it is renamed over `path`, on failure removed and `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write a text file through `replacing`."""
    with replacing(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def staging_folder(beside: Path) -> Iterator[Path]:
    """A temporary folder on the same file system as `beside` (renames out of it are atomic),
    removed afterwards with whatever is left in it."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=beside.parent, prefix=f".{beside.name}.staging-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
