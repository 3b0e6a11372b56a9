"""The `triton` target: a Triton Inference Server model repository holding one podkit model.

    REPO/NAME/config.pbtxt      platform, input and output names, types and dims, batching,
                                instance group (written through Triton's own ModelConfig)
    REPO/NAME/podkit.json       the podkit record (classes, sizes, outputs)
    REPO/NAME/1/model.onnx      the ONNX artefact (onnxruntime_onnx), or
    REPO/NAME/1/model.plan      a TensorRT engine (tensorrt_plan; `inner="tensorrt"`)

An artefact taking any number of images gets `max_batch_size` (`MAX_BATCH`) and dynamic
batching, so the server groups requests; a fixed-batch one `max_batch_size: 0` and its full
shapes. The client does what podkit does before and after the artefact: scale the image to the
recorded size (keeping its aspect), pad to the input size (a dynamic artefact: to multiples of
32), divide by 255, map the boxes back by the scale and clip them to the image (README, "Serve
with Triton"). podkit runs a repository itself through the model file's own backend, so
`podkit eval` and `predict` score exactly what the server would serve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from podkit.export.backend import Backend, ExportOptions, Runner
from podkit.export.ort import BACKEND as ONNXRUNTIME
from podkit.export.tensorrt import BACKEND as TENSORRT

INSTALL = "writing a Triton model repository needs tritonclient: pip install 'podkit[triton]'"
RECORD = "podkit.json"
MAX_BATCH = 8  # an any-batch artefact: the most images the server may group into one call
# the model file each inner format is served as
INNER = {
    "onnx": (ONNXRUNTIME, "model.onnx", "onnxruntime_onnx"),
    "tensorrt": (TENSORRT, "model.plan", "tensorrt_plan"),
}
ONNX_TYPES = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16", 11: "TYPE_FP64"}


def model_folder(repo: Path) -> Path | None:
    """The one model folder (NAME/config.pbtxt) of a podkit repository (None: not one)."""
    found = [p.parent for p in repo.glob("*/config.pbtxt")] if repo.is_dir() else []
    return found[0] if len(found) == 1 else None


def served_model(repo: Path) -> tuple[Backend, Path]:
    """The repository's model file and the backend that runs it."""
    folder = model_folder(repo)
    if folder is None:
        raise FileNotFoundError(f"{repo}: not a podkit Triton repository (NAME/config.pbtxt)")
    for inner, name, _ in INNER.values():
        if (folder / "1" / name).is_file():
            return inner, folder / "1" / name
    raise FileNotFoundError(f"{folder / '1'}: no model.onnx or model.plan")


def io_dims(onnx_path: Path) -> tuple[list, list]:
    """(name, Triton type, dims) of the ONNX file's inputs and outputs (-1: free)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def describe(value) -> tuple[str, str, list[int]]:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        return value.name, ONNX_TYPES[tensor.elem_type], dims

    return [describe(v) for v in graph.input], [describe(v) for v in graph.output]


def model_config(onnx_path: Path, opts: ExportOptions, platform: str, gpu: bool):
    """Triton's ModelConfig of the artefact (tritonclient's protobuf, so every field name and
    value is Triton's own)."""
    from tritonclient.grpc import model_config_pb2 as pb

    config = pb.ModelConfig(name=opts.name, platform=platform)
    inputs, outputs = io_dims(onnx_path)
    batched = opts.batch is None
    config.max_batch_size = MAX_BATCH if batched else 0
    for (name, dtype, dims), field in [(i, config.input) for i in inputs] + [
        (o, config.output) for o in outputs
    ]:
        entry = field.add(name=name, data_type=pb.DataType.Value(dtype))
        shape = dims[1:] if batched else dims  # with max_batch_size, dims leave out the batch
        if shape:
            entry.dims.extend(shape)
        else:  # one value per image (num_detections): Triton wants a dim, reshaped away
            entry.dims.append(1)
            entry.reshape.SetInParent()
    if batched:
        config.dynamic_batching.SetInParent()
    kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=1)
    return config


def require(opts: ExportOptions) -> None:
    """The model it serves can be built here, with these options (before any export)."""
    if opts.inner not in INNER:
        raise ValueError(f"--triton-model must be one of {', '.join(INNER)}, got {opts.inner!r}")
    inner = INNER[opts.inner][0]
    if opts.batch is None and not inner.any_batch:
        raise ValueError(f"--target triton with a {opts.inner} model builds for one batch size: "
                         "use --batch N")  # fmt: skip
    if opts.precision not in inner.precisions:
        raise ValueError(
            f"--target triton with a {opts.inner} model: {opts.precision} is not built"
        )
    inner.check_available(opts)


def build(
    onnx_path: Path, out: Path, opts: ExportOptions, calibration: list[np.ndarray] | None, log
) -> dict:
    """The repository: the inner artefact built by its own backend, config.pbtxt beside it."""
    from google.protobuf import text_format

    require(opts)
    inner, filename, platform = INNER[opts.inner]
    version = out / opts.name / "1"
    version.mkdir(parents=True)
    report = inner.build(onnx_path, version / filename, opts, calibration, log)
    gpu = inner.device == "cuda" or opts.device == "cuda"
    source = version / filename if filename.endswith(".onnx") else onnx_path
    config = model_config(source, opts, platform, gpu)
    (out / opts.name / "config.pbtxt").write_text(text_format.MessageToString(config))
    log(f"Triton repository {out}: model {opts.name!r} ({platform}, max_batch_size "
        f"{config.max_batch_size}, {'GPU' if gpu else 'CPU'} instance)")  # fmt: skip
    return {"model": opts.name, "platform": platform, "inner": report}


def write_record(repo: Path, record: dict) -> None:
    (model_folder(repo) / RECORD).write_text(json.dumps(record, indent=2))


def read_record(repo: Path) -> dict | None:
    folder = model_folder(repo)
    found = folder is not None and (folder / RECORD).is_file()
    return json.loads((folder / RECORD).read_text()) if found else None


def load(repo: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """The repository's model file run by its own backend (what the server runs)."""
    inner, path = served_model(Path(repo))
    return inner.load(path, inner.device or device, threads)


BACKEND = Backend(
    "triton", "triton", "", ("fp32", "fp16", "int8"), dynamic=True, any_batch=True, device=None,
    tuned=False, install=INSTALL, module="tritonclient", build=build, load=load,
    files=lambda path: [path], write_record=write_record, read_record=read_record,
    require=require,
)  # fmt: skip
