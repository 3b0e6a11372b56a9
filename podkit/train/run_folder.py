"""A run folder belongs to one run: never reused by accident, never written by two trainings.

A new training refuses a folder that holds an earlier run unless told `--resume` (continue it)
or `--overwrite` (start over, removing the old run's files), so a typo never empties a finished
run's history. A lock file holding the trainer's pid stops a second training on the same folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

RUN_FILES = ("last.pt", "metrics.jsonl", "config.yaml", "eval.json")
LOCK = ".lock"


def claim_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder holding another run unless resuming or overwriting; on overwrite, remove
    that run's files (and only them)."""
    if resume:
        if not (out / "last.pt").is_file():
            raise FileNotFoundError(f"{out / 'last.pt'}: no checkpoint to resume from")
        return
    old = [name for name in RUN_FILES if (out / name).exists()]
    old += sorted(p.name for p in out.glob("iter_*.pt")) + sorted(
        p.name for p in out.glob("eval_*.json")
    )
    if not old:
        return
    if not overwrite:
        raise ValueError(
            f"{out}: holds an earlier run ({', '.join(old[:3])}): continue it with --resume, "
            "or start over with --overwrite (its files are then removed)"
        )
    for name in old:
        (out / name).unlink()


@contextlib.contextmanager
def run_lock(out: Path, enabled: bool = True) -> Iterator[None]:
    """Hold OUT/.lock (with our pid) for the duration; a live holder stops us with a message,
    a lock left by a dead process is taken over."""
    if not enabled:
        yield
        return
    path = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = _pid_in(path)
            if holder is not None and _alive(holder):
                raise ValueError(
                    f"{out}: another training (pid {holder}) is writing this run folder; "
                    f"wait for it, or remove {path} if that process is gone"
                ) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise ValueError(f"{path}: could not take the run folder's lock")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
