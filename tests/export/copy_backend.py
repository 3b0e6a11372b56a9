"""A backend written as a new target would be, in one file: onnxruntime behind another name,
suffix and runtime, its artefact a copy of the ONNX file with the podkit record in a sidecar
(the default), and a `load` that counts the artefacts it opened."""

import shutil
from pathlib import Path

from podkit.export.backend import Backend
from podkit.export.ort import load as ort_load

OPENED: list[Path] = []


def build(onnx_path, out, opts, calibration, log) -> dict:
    shutil.copyfile(onnx_path, out)
    return {"copied_from": str(onnx_path), "batch": opts.batch}


def load(path, device, threads):
    OPENED.append(Path(path))
    return ort_load(path, device, threads)


BACKEND = Backend(
    "copy", "copyrt", ".copy", ("fp32",), dynamic=True, any_batch=False, device=None,
    tuned=False, install="copy needs onnxruntime: pip install onnxruntime", module="onnxruntime",
    build=build, load=load,
)  # fmt: skip
