"""Model-zoo weights -> a podkit checkpoint (`podkit convert`).

Each source (one file each: its architectures, the podkit options under which podkit
computes what the source computes, and the renaming of its tensors) is a row of SOURCES.
A file is read without running code (`torch.load(weights_only=True)`; a Detectron2 `.pkl`
by an unpickler that admits numpy arrays only), every source tensor
must land in exactly one podkit tensor of the same shape and every podkit tensor must be
set: anything else is one line naming the file and what was expected. The checkpoint holds
the config (every option spelled out, the source's values recorded), the class names and
the source, so eval, predict, export, bench latency, `train --set model.init_from=` and the
POD flow take it like any podkit checkpoint.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from podkit.config import config_from_dict, to_dict
from podkit.convert import detectron2, mmdet, torchvision
from podkit.models import build_detector
from podkit.models.checkpoint import save_checkpoint

SOURCES = {
    "torchvision": torchvision.ARCHS,
    "detectron2": detectron2.ARCHS,
    "mmdet": mmdet.ARCHS,
}


# framework classes a checkpoint's training record ("meta", "message_hub") may hold: read as
# inert placeholders (never constructed, never called), so the weights beside them load
RECORD_MODULES = ("mmengine.", "mmcv.", "mmdet.", "numpy.")


class Inert:
    """Stands for a framework object of a checkpoint's training record: takes any arguments
    and state, does nothing with them."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def torch_load(path: Path, source: str):
    """`torch.load(weights_only=True)`; framework objects of the training record (RECORD_MODULES)
    become Inert; any other global is refused as code, naming it."""
    inert: list = []
    for _ in range(2):
        try:
            with warnings.catch_warnings(), torch.serialization.safe_globals(inert):
                warnings.simplefilter("ignore")  # torch warns about pickle protocols it reads
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, not a torch file, or a pickle holding code
            refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            if refused is None:
                raise ValueError(
                    f"{path}: not a readable weights file for --from {source} (truncated, not "
                    f"a PyTorch file, or a pickle the weights-only loader refuses: "
                    f"{type(exc).__name__})"
                ) from None
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # not a zip checkpoint: a bare pickle
                names = [refused[1]]
            code = [n for n in names if not n.startswith(RECORD_MODULES)]
            if code or inert:
                raise ValueError(
                    f"{path}: a pickle that would run code ({(code or names)[0]}), not a "
                    f"weights file for --from {source}; it was not run"
                ) from None
            inert = [(Inert, name) for name in names]
    raise AssertionError("unreachable")


def read_weights(path: Path, source: str) -> dict[str, torch.Tensor]:
    """The state dict in `path`, read without running code in it; wrappers around it
    ({"model": ...}, {"state_dict": ...}) are opened, and the other zoos' layouts named."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if source == "detectron2" and path.suffix == ".pkl":
        data = detectron2.read_pkl(path)
    else:
        data = torch_load(path, source)
    if isinstance(data, dict) and "state_dict" in data and "meta" in data and source != "mmdet":
        raise ValueError(
            f"{path}: an MMDetection checkpoint (state_dict + meta), not --from {source}"
        )
    if isinstance(data, dict) and "model" in data and "config" in data:
        raise ValueError(f"{path}: already a podkit checkpoint (use it as it is)")
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path}: not a state dict of tensors (--from {source})")
    return data


def convert_weights(
    path: str | Path, source: str, arch: str, out: str | Path, log=print
) -> dict[str, Any]:
    """Write the podkit checkpoint of the `arch` model of `source` at `out`; returns a summary."""
    path, out = Path(path), Path(out)
    if source not in SOURCES:
        raise ValueError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    archs = SOURCES[source]
    if arch not in archs:
        raise ValueError(f"--arch {arch!r}: {source} architectures are {', '.join(archs)}")
    model_cfg, data_cfg, classes, convert_state = archs[arch]
    state = convert_state(read_weights(path, source))
    cfg = config_from_dict({"model": model_cfg, "data": data_cfg})
    model = build_detector(cfg.model)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unused = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unused or shapes:
        detail = "; ".join(
            f"{what} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for what, keys in (("missing", missing), ("not used", unused), ("other shape", shapes))
            if keys
        )
        raise ValueError(f"{path}: not {source}'s {arch} ({detail})")
    model.load_state_dict(state, strict=False)
    save_checkpoint(
        {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "classes": list(classes),
            "iteration": 0,
            "converted_from": {"source": source, "arch": arch, "file": str(path.resolve())},
        },
        out,
    )
    log(f"{path}: {len(state)} tensors of {source}'s {arch} -> {out}")
    return {"tensors": len(state), "classes": len(classes), "out": str(out)}
