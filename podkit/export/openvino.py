"""The `openvino` target: OpenVINO IR (`M.xml` + `M.bin`, the record in `M.xml.json`) converted
from the ONNX file, run by OpenVINO's runtime on Intel CPUs (and GPUs / NPUs).

Precision is chosen where OpenVINO chooses it. FP32 and bf16 artefacts hold the same FP32
weights; bf16 is an inference precision the CPU plugin runs where the CPU has bf16 units
(AVX-512 BF16, AMX), and OpenVINO's CPU default there, so an FP32 artefact asks for f32 and
the runner reports the precision that actually ran (`info["inference_precision"]`). INT8 is
OpenVINO's own post-training quantisation (NNCF) on the calibration images, fed as the
artefact is; the layers whose outputs leave the network (the heads' predictors) and the
post-processing (by op type: POST_PROCESSING) stay float, as in the ONNX INT8 path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from podkit.errors import BackendUnavailable
from podkit.export.backend import (
    Backend,
    ExportOptions,
    Runner,
    import_runtime,
    read_sidecar,
    runtime_threads,
    sidecar,
)

INSTALL = "OpenVINO is not installed: pip install 'podkit[openvino]' (openvino, and nncf for INT8)"
INSTALL_NNCF = "INT8 for OpenVINO needs NNCF: pip install 'podkit[openvino]'"
# ops NNCF would otherwise quantise in the post-processing: Sqrt of the RoI areas picks each
# RoI's FPN level, Gather / ScatterNDUpdate select boxes, the rest decode them (quantised,
# they cost a trained scale-benchmark detector 2.7 AP; float, 0.02)
POST_PROCESSING = ["Sqrt", "Gather", "ScatterNDUpdate", "Multiply", "Divide", "Subtract", "Exp"]
# the inference precision each artefact precision asks the plugin for
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def build(
    onnx_path: Path, out: Path, opts: ExportOptions, calibration: list[np.ndarray] | None, log
) -> dict:
    """Convert the FP32 ONNX file (weights kept FP32); INT8: quantised by NNCF."""
    ov = import_runtime("openvino", INSTALL)
    model = ov.convert_model(str(onnx_path))
    info: dict = {"openvino": ov.__version__}
    if opts.precision == "int8":
        model, info["int8"] = quantize(model, onnx_path, calibration, log)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out), compress_to_fp16=False)
    return info


def quantize(model, onnx_path: Path, calibration: list[np.ndarray], log) -> tuple[object, dict]:
    """NNCF's post-training quantisation, the heads' predictors left float (by the ONNX node
    names, which the converted model keeps: precision.head_outputs)."""
    import onnx

    from podkit.export.precision import head_outputs

    nncf = import_runtime("nncf", INSTALL_NNCF)
    kept_float = head_outputs(onnx.load(str(onnx_path), load_external_data=False))
    names = {op.get_friendly_name() for op in model.get_ops()}
    # a Gemm becomes a MatMul named NAME/WithoutBiases (and an Add) in the IR
    ignored = [m for n in kept_float for m in (n, f"{n}/WithoutBiases") if m in names]
    log(f"NNCF: quantising on {len(calibration)} images, {len(ignored)} head layers float")
    quantized = nncf.quantize(
        model,
        nncf.Dataset(calibration),
        subset_size=len(calibration),
        # 7-bit weights in every layer (NNCF's default: the first only), so that the 8-bit
        # kernels of CPUs without VNNI (AVX2) cannot saturate their 16-bit sums
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            overflow_fix=nncf.OverflowFix.ENABLE
        ),
        ignored_scope=nncf.IgnoredScope(names=ignored, types=POST_PROCESSING, validate=False),
    )
    fake = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    report = {
        "calibration_images": len(calibration),
        "head_layers": len(kept_float),
        "float_head_outputs": len(ignored),
        "fake_quantize_ops": fake,
        "nncf": nncf.__version__,
    }
    return quantized, report


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """A compiled model for `device` (cpu, gpu, npu: OpenVINO's devices), latency-tuned, at the
    inference precision the artefact's record asks for."""
    ov = import_runtime("openvino", INSTALL)
    path = Path(path)
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise FileNotFoundError(f"{path}: OpenVINO IR not found (needs {path.stem}.xml and .bin)")
    core = ov.Core()
    name = device.upper()
    if name not in core.available_devices:
        raise BackendUnavailable(
            f"OpenVINO has no {device} device here (it has {', '.join(core.available_devices)}; "
            "CUDA GPUs are not among its devices): use --device cpu"
        )
    precision = (read_sidecar(path) or {}).get("precision", "fp32")
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if name == "CPU":
        config["INFERENCE_PRECISION_HINT"] = INFERENCE_PRECISION[precision]
        config["INFERENCE_NUM_THREADS"] = runtime_threads(threads)
    compiled = core.compile_model(core.read_model(str(path)), name, config)
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    ran = (
        compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() if name == "CPU" else name
    )
    ran = f"int8 + {ran}" if precision == "int8" else ran  # INT8 layers, the rest at `ran`

    def run(image: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: image})
        return [np.asarray(result[o]) for o in outputs]

    return Runner(run, info={"inference_precision": ran, "device": name})


# any batch size is an ONNX Scan whose body reads outer-scope tensors, which OpenVINO's ONNX
# frontend (2026.4) refuses ("Number of Scan node inputs ... is less than required")
BACKEND = Backend(
    "openvino", "openvino", ".xml", ("fp32", "bf16", "int8"), dynamic=True, any_batch=False,
    device=None, tuned=False, install=INSTALL, module="openvino", build=build, load=load,
    files=lambda path: [path, path.with_suffix(".bin"), sidecar(path)],
)  # fmt: skip
