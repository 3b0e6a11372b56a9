"""The record an artefact carries so that it can be scored and run without its checkpoint.

The record: the checkpoint's config (data, sizes, thresholds), the class names, the input
size and whether it is dynamic, the batch it takes, its precision, whether NMS is in the
graph, and the output names in order. Where it is stored is the backend's choice
(`Backend.save_record`): an ONNX file holds it in its `metadata_props`, other artefacts in a
JSON sidecar (`ARTEFACT.json`) or, for a Triton repository, beside the model's config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from podkit.export.backend import RECORD_KEY

REQUIRED = ("config", "classes", "input_size", "dynamic", "nms", "outputs")


def artefact_record(
    checkpoint: str | Path,
    ckpt: dict[str, Any],
    input_size: tuple[int, int],
    dynamic: bool,
    nms: bool,
    outputs: list[str],
    max_detections: int,
    batch: int | None = 1,
    precision: str = "fp32",
) -> dict[str, Any]:
    return {
        "checkpoint": str(Path(checkpoint).resolve()),
        "config": ckpt["config"],
        "classes": list(ckpt.get("classes") or []),
        "input_size": list(input_size),
        "dynamic": dynamic,
        "nms": nms,
        "outputs": outputs,
        "max_detections": max_detections,
        "batch": batch,
        "precision": precision,
    }


def checked_record(path: Path, record: dict[str, Any] | None) -> dict[str, Any]:
    """`record` if it has what scoring and running need; one line naming the file if not."""
    if record is None:
        raise ValueError(
            f"{path}: no podkit record (exported by an older podkit or another tool, or its "
            "sidecar is missing): export it again with `podkit export`"
        )
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{path}: the podkit record lacks {', '.join(missing)}: export it again")
    return record


def write_onnx_record(path: Path, record: dict[str, Any]) -> None:
    """The record in the ONNX file's `metadata_props` (the file stays one file)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    props[RECORD_KEY] = json.dumps(record)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def read_onnx_record(path: Path) -> dict[str, Any] | None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX file ({exc})") from None
    raw = {p.key: p.value for p in model.metadata_props}.get(RECORD_KEY)
    return json.loads(raw) if raw is not None else None
