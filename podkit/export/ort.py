"""The `onnx` target: the ONNX file itself, run by onnxruntime (CPU, or CUDA with
onnxruntime-gpu). FP16 and INT8 artefacts are that file converted (precision.py); the record
lives in the file's metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from podkit.errors import BackendUnavailable
from podkit.export.backend import Backend, ExportOptions, Runner, import_runtime, runtime_threads
from podkit.export.metadata import read_onnx_record, write_onnx_record
from podkit.export.precision import reduced_onnx

INSTALL = "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """An onnxruntime session (all graph optimisations, `threads` intra-op threads)."""
    ort = import_runtime("onnxruntime", INSTALL)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = runtime_threads(threads)
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                "onnxruntime has no CUDA provider here: pip install onnxruntime-gpu"
            )
        providers.insert(0, "CUDAExecutionProvider")
    session = ort.InferenceSession(str(path), options, providers=providers)
    name = session.get_inputs()[0].name

    def run(image: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {name: image})

    return Runner(run, providers=session.get_providers())


def build(
    onnx_path: Path, out: Path, opts: ExportOptions, calibration: list[np.ndarray] | None, log
) -> dict:
    """The ONNX file is the artefact: copied to `out`, or converted to FP16 / INT8 QDQ."""
    return reduced_onnx(onnx_path, out, opts.precision, calibration)


BACKEND = Backend(
    "onnx", "onnxruntime", ".onnx", ("fp32", "fp16", "int8"), dynamic=True, any_batch=True,
    device=None, tuned=False, install=INSTALL, module="onnxruntime", build=build, load=load,
    files=lambda path: [path], write_record=write_onnx_record, read_record=read_onnx_record,
)  # fmt: skip
