"""TensorRT: an op audit that runs anywhere, and the engine build / runner for GPU machines.

The audit reads the ONNX file only, so a laptop learns what the GPU box would reject. Its
rules come from onnx-tensorrt's support matrix (docs/operators.md, TensorRT 8.5+ / 10.x:
github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md) and NVIDIA/TensorRT#4646.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from podkit.errors import BackendUnavailable
from podkit.export.backend import Backend, ExportOptions, Runner, import_runtime
from podkit.export.precision import reduced_onnx

INSTALL = (
    "TensorRT is not installed: on a machine with an NVIDIA GPU, pip install 'podkit[tensorrt]' "
    "(the tensorrt wheel; CUDA driver required)"
)

# ONNX ops the TensorRT ONNX parser does not import (operators.md, "Supported: N").
UNSUPPORTED_OPS = frozenset(
    {
        "Bernoulli", "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence",
        "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear", "HammingWindow", "HannWindow",
        "Hardmax", "IsInf", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
        "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
        "OptionalHasElement", "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt",
        "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
        "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
        "StringNormalizer", "TfIdfVectorizer", "Unique",
    }
)  # fmt: skip
# Inputs that must be initializers / constants (operators.md "Restrictions").
CONSTANT_INPUTS = {
    "TopK": {1: "K"},
    "NonMaxSuppression": {
        2: "max_output_boxes_per_class",
        3: "iou_threshold",
        4: "score_threshold",
    },
    "Slice": {3: "axes"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "CumSum": {1: "axis"},
}


def audit(onnx_path: str | Path) -> list[str]:
    """Problems TensorRT's ONNX parser would have with the model (empty: it should import)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    problems: dict[str, int] = {}

    def flag(message: str) -> None:
        problems[message] = problems.get(message, 0) + 1

    for node in graph.node:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            flag(f"{node.domain}::{op}: custom-domain op, needs a TensorRT plugin")
            continue
        if op in UNSUPPORTED_OPS:
            flag(f"{op}: not supported by the TensorRT ONNX parser")
        for index, name in CONSTANT_INPUTS.get(op, {}).items():
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                flag(f"{op}: input '{name}' is computed in the graph; TensorRT needs a constant")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if op in ("MaxPool", "AveragePool") and any(d != 1 for d in attrs.get("dilations", [])):
            flag(f"{op}: pooling dilations must be 1")
        if op == "GridSample" and opset >= 20:
            flag(
                "GridSample at opset >= 20: TensorRT runs mode 'linear' as nearest (TensorRT#4646)"
            )
    return [f"{m} (x{n})" if n > 1 else m for m, n in problems.items()]


def require(opts: ExportOptions | None = None) -> None:
    """Beyond the wheel: an NVIDIA GPU."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU with CUDA; none is visible here")


def _tensorrt():
    trt = import_runtime("tensorrt", INSTALL)
    require()
    return trt


def export(
    onnx_path: str | Path,
    out: str | Path,
    input_size: tuple[int, int],
    precision: str = "fp32",
    max_size: tuple[int, int] | None = None,
    workspace_gib: float = 4.0,
    batch: int = 1,
) -> dict:
    """Build a serialized engine from an ONNX file that passed `audit` (export_checkpoint
    refuses one that does not); `max_size` adds a dynamic-size profile (min 64x64, opt
    `input_size`, max `max_size`). Writes `out` and `out.json`.

    Precision: an INT8 file carries its Q/DQ nodes and an FP16 file its half-precision
    weights (precision.py); TensorRT 11 builds what the file says (strong typing is its only
    mode), TensorRT 10 also needs the builder flag that allows the precision."""
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # RoiAlign is the ROIAlign_TRT plugin
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10+
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"{onnx_path}: TensorRT could not parse it: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    major = int(trt.__version__.split(".")[0])
    if major < 11 and precision != "fp32":  # 11 removed the flags: the file's types rule
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.INT8)
    name = network.get_input(0).name
    if max_size is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(name, (batch, 3, 64, 64), (batch, 3, *input_size), (batch, 3, *max_size))
        config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see its log)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(engine))
    info = {"input_size": list(input_size), "precision": precision, "tensorrt": trt.__version__}
    Path(str(out) + ".json").write_text(json.dumps(info, indent=2))
    return info


def load(path: str | Path, device: str = "cuda", threads: int | None = None) -> Runner:
    """Run a serialized engine: buffers allocated once per input shape, a private stream."""
    import torch

    trt = _tensorrt()
    if device != "cuda":
        raise BackendUnavailable("TensorRT runs on CUDA only: use --device cuda")
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    stream = torch.cuda.Stream()
    buffers: dict[str, torch.Tensor] = {}
    shape_now: list[tuple] = [()]

    def run(image: np.ndarray) -> list[np.ndarray]:
        if image.shape != shape_now[0]:
            context.set_input_shape(inputs[0], image.shape)
            buffers[inputs[0]] = torch.empty(image.shape, dtype=torch.float32, device="cuda")
            for name in outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ValueError(f"{path}: output {name} has a data-dependent size")
                dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name))))
                buffers[name] = torch.empty(shape, dtype=dtype.dtype, device="cuda")
            for name, tensor in buffers.items():
                context.set_tensor_address(name, tensor.data_ptr())
            shape_now[0] = image.shape
        with torch.cuda.stream(stream):
            buffers[inputs[0]].copy_(torch.from_numpy(image), non_blocking=True)
            context.execute_async_v3(stream.cuda_stream)
            result = [buffers[n].cpu() for n in outputs]
        stream.synchronize()
        return [r.numpy() for r in result]

    return Runner(run, sync=torch.cuda.synchronize)


def build(
    onnx_path: Path, out: Path, opts: ExportOptions, calibration: list[np.ndarray] | None, log
) -> dict:
    """An engine from the FP32 ONNX file, or from its FP16 / INT8 QDQ form (precision.py;
    INT8 activations symmetric, as TensorRT's importer requires)."""
    with tempfile.TemporaryDirectory(prefix="podkit-trt-") as scratch:
        source, info = Path(onnx_path), {}
        if opts.precision != "fp32":
            source = Path(scratch) / f"model_{opts.precision}.onnx"
            info = reduced_onnx(onnx_path, source, opts.precision, calibration, for_tensorrt=True)
        log(f"building the TensorRT engine {out}")
        max_size = (2048, 2048) if opts.dynamic else None
        batch = opts.batch or 1
        return {
            **info,
            **export(source, out, opts.input_size, opts.precision, max_size, batch=batch),
        }


# engines run on CUDA only and are built for one batch size
BACKEND = Backend(
    "tensorrt", "tensorrt", ".engine", ("fp32", "fp16", "int8"), dynamic=True, any_batch=False,
    device="cuda", tuned=False, install=INSTALL, module="tensorrt", build=build, load=load,
    audit=audit, require=require,
)  # fmt: skip
