"""Checkpoints: written atomically, read with `weights_only=True` (never arbitrary pickles)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from podkit.config import config_from_dict
from podkit.models.build import build_detector


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message advises weights_only=False: never do that
        raise ValueError(
            f"{path}: not a podkit checkpoint (truncated, or from an untrusted source); "
            "podkit never unpickles code"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a podkit checkpoint (needs 'model' and 'config')")
    return ckpt


def load_detector(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """(model with the checkpoint's weights on its device, its config with `overrides` applied,
    the checkpoint, the device: cuda if the config asks for it and one is present)."""
    ckpt = load_checkpoint(path)
    cfg = config_from_dict(ckpt["config"], overrides)
    cfg.model.init_from = None  # the checkpoint's own weights replace whatever it started from
    model = build_detector(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: the weights do not fit the model its config describes ({str(exc).splitlines()[0]})"
        ) from exc
    device = torch.device(
        "cuda" if cfg.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    )
    return model.to(device), cfg, ckpt, device
