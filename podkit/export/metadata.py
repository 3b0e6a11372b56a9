"""What an artefact carries so that it can be scored and run without its checkpoint.

The record (`podkit` key): the checkpoint's config (data, sizes, thresholds), the class names,
the input size and whether it is dynamic, the batch it takes, its precision (fp32, fp16,
int8), whether NMS is in the graph, and the output names in order. An ONNX file holds it in
its `metadata_props`; a TVM library or a TensorRT engine in the JSON sidecar beside it
(`ARTEFACT.json`, the file TVM's interface is written to).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEY = "podkit"
SIDECAR = ".json"


def artefact_record(
    checkpoint: str | Path,
    ckpt: dict[str, Any],
    input_size: tuple[int, int],
    dynamic: bool,
    nms: bool,
    outputs: list[str],
    max_detections: int,
    batch: int = 1,
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


def write_metadata(path: str | Path, record: dict[str, Any]) -> None:
    """Attach `record` to the artefact at `path` (into the ONNX file, else its sidecar)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        props[KEY] = json.dumps(record)
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(path))
        return
    sidecar = Path(str(path) + SIDECAR)
    data = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    data[KEY] = record
    sidecar.write_text(json.dumps(data, indent=2))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The record `write_metadata` attached; one line naming the file when there is none."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: artefact not found")
    if path.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends
            raise ValueError(f"{path}: not a readable ONNX file ({exc})") from None
        raw = {p.key: p.value for p in model.metadata_props}.get(KEY)
        record = json.loads(raw) if raw is not None else None
    else:
        sidecar = Path(str(path) + SIDECAR)
        record = json.loads(sidecar.read_text()).get(KEY) if sidecar.is_file() else None
    if record is None:
        raise ValueError(
            f"{path}: no podkit record (exported by an older podkit or another tool, or its "
            f"{SIDECAR} sidecar is missing): export it again with `podkit export`"
        )
    missing = [
        k
        for k in ("config", "classes", "input_size", "dynamic", "nms", "outputs")
        if k not in record
    ]
    if missing:
        raise ValueError(f"{path}: the podkit record lacks {', '.join(missing)}: export it again")
    return record
