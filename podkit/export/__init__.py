"""Checkpoint -> deployable artefact (ONNX, TVM library, TensorRT engine), checked against PyTorch.

Every target goes through the ONNX export of `wrap.ExportWrapper`; `load(path, device)`
returns the same kind of callable for each (image -> outputs), so the latency benchmark
times all backends alike.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from podkit.errors import BackendUnavailable, ParityError
from podkit.export.common import Runner, compare_outputs, format_parity

TARGETS = {"onnx": ".onnx", "tvm": ".so", "tensorrt": ".engine"}
PRECISIONS = ("fp32", "fp16", "int8")

__all__ = [
    "PRECISIONS",
    "TARGETS",
    "BackendUnavailable",
    "ParityError",
    "Runner",
    "export_checkpoint",
    "load",
    "sample_image",
    "torch_runner",
]


def sample_image(input_size: tuple[int, int], seed: int = 0, batch: int = 1) -> np.ndarray:
    """Synthetic scenes (shapes on texture, one per seed from `seed`) cropped/padded to
    (batch, 3, H, W) in [0, 1]: inputs with objects, so that the parity check compares real
    detections, and different ones per image of a batch."""
    from podkit.data.synthetic import synth_image

    h, w = input_size
    images = []
    for k in range(batch):
        pixels, _ = synth_image(max(h, w), np.random.default_rng(seed + k))
        canvas = np.zeros((h, w, 3), np.float32)
        crop = pixels[:h, :w].astype(np.float32) / 255.0
        canvas[: crop.shape[0], : crop.shape[1]] = crop
        images.append(canvas.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(images))


def torch_runner(wrapper: torch.nn.Module, device: str = "cpu", compile: bool = False) -> Runner:
    """The wrapper in PyTorch eager (or `torch.compile`d) behind the common interface."""
    wrapper = wrapper.to(device).eval()
    forward = torch.compile(wrapper) if compile else wrapper

    @torch.inference_mode()
    def run(image: np.ndarray) -> list[np.ndarray]:
        out = forward(torch.from_numpy(image).to(device))
        return [o.cpu().numpy() for o in out]

    run.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # type: ignore[attr-defined]
    return run


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """Load any exported artefact by its suffix: .onnx (onnxruntime), .so (TVM), .engine."""
    path = Path(path)
    if path.suffix == ".onnx":
        from podkit.export import onnx

        return onnx.load(path, device, threads)
    if path.suffix == ".so":
        from podkit.export import tvm

        return tvm.load(path, device)
    if path.suffix == ".engine":
        from podkit.export import tensorrt

        return tensorrt.load(path, device)
    raise ValueError(f"{path}: unknown artefact (expected {', '.join(TARGETS.values())})")


def check_parity(
    wrapper, runner: Runner, input_size: tuple[int, int], seed: int = 0, batch: int = 1
) -> dict:
    """Run PyTorch and the backend on the same sample images and compare (compare_outputs)."""
    image = sample_image(input_size, seed, batch)
    reference = torch_runner(wrapper)(image)
    report = compare_outputs(wrapper.output_names, reference, runner(image))
    report["input"] = list(input_size)
    return report


def export_checkpoint(
    checkpoint: str | Path,
    target: str,
    out: str | Path | None,
    input_size: tuple[int, int] = (512, 512),
    dynamic: bool = False,
    nms: bool = True,
    precision: str = "fp32",
    check: bool = True,
    check_only: bool = False,
    device: str = "cpu",
    tune_trials: int = 0,
    tune_db: str | Path | None = None,
    opset: int = 18,
    log: Callable[[str], None] = print,
    onnx_path: str | Path | None = None,
    batch: int = 1,
    calib: int = 64,
) -> dict:
    """Export a checkpoint to `target` at `out`; returns what was written and checked.

    Non-ONNX targets go through an ONNX file: `onnx_path` if given (an existing one is
    reused, as the latency benchmark's cache does for all backends of a checkpoint), else a
    temporary one, so no file of the user's is ever replaced. `precision` fp16 / int8 turns
    that FP32 file into a half-precision or an INT8 QDQ one (calibrated on `calib` training
    images, see precision.py) before the target is built. With `check` the artefact runs on
    sample images and must match PyTorch (ParityError otherwise; the artefact stays for
    inspection); a reduced-precision artefact's detections differ by design, so its check is
    reported, not enforced: its accuracy is what `podkit eval` measures. `check_only`
    (TensorRT) stops after the op audit and needs no `out`.
    """
    if target not in TARGETS:
        raise ValueError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if target == "tvm" and dynamic:
        raise ValueError("TVM compiles for one input size: drop --dynamic or use --target onnx")
    if target == "tvm" and precision != "fp32":
        raise ValueError(f"--target tvm exports FP32 only; {precision} is for onnx and tensorrt")
    if precision != "fp32" and not nms:
        raise ValueError(f"{precision} artefacts keep NMS in the graph: drop --no-nms")
    if check_only and target != "tensorrt":
        raise ValueError("--check-only is the TensorRT op audit: use it with --target tensorrt")
    if out is None and not check_only:
        raise ValueError("--out is required (the artefact to write)")
    from podkit.export import onnx as onnx_export
    from podkit.export import precision as reduced
    from podkit.export import tensorrt, tvm
    from podkit.export.metadata import artefact_record, write_metadata
    from podkit.export.wrap import ExportWrapper
    from podkit.models.checkpoint import load_detector

    if target == "tensorrt" and not check_only:
        tensorrt.require()  # missing TensorRT or GPU: say so before minutes of export
    if target == "tvm":
        tvm.require()
    out = Path(out) if out is not None else None
    with tempfile.TemporaryDirectory(prefix="podkit-export-") as scratch:
        direct = target == "onnx" and precision == "fp32"
        onnx_path = Path(out if direct else onnx_path or Path(scratch) / "model.onnx")
        model, _, ckpt, _ = load_detector(checkpoint)
        if not direct and onnx_path.is_file():
            log(f"{checkpoint}: reusing {onnx_path}")
            wrapper = ExportWrapper(model.cpu().eval(), nms=nms)
        else:
            log(f"exporting {checkpoint} to ONNX ({'dynamic' if dynamic else 'static'} "
                f"{input_size[0]}x{input_size[1]}, batch {batch}, "
                f"{'NMS in graph' if nms else 'raw outputs'})")  # fmt: skip
            wrapper = onnx_export.export(
                model, onnx_path, input_size, dynamic, nms, opset, batch=batch
            )
        record = artefact_record(
            checkpoint, ckpt, input_size, dynamic, nms, wrapper.output_names,
            wrapper.max_detections, batch, precision,
        )  # fmt: skip
        report: dict = {"target": target, "outputs": wrapper.output_names, "precision": precision}
        if precision != "fp32":
            reduced_path = out if target == "onnx" else Path(scratch) / f"model_{precision}.onnx"
            if precision == "int8":
                log(f"calibrating INT8 on {calib} training images")
                fed_size = None if dynamic else input_size
                images = list(
                    reduced.calibration_images(ckpt["config"], fed_size, calib, batch=batch)
                )
                report["int8"] = reduced.quantize_int8(
                    onnx_path, reduced_path, images, for_tensorrt=target == "tensorrt"
                )
            else:
                report["fp16"] = reduced.convert_fp16(onnx_path, reduced_path)
            onnx_path = reduced_path
        if target == "onnx":
            report["onnx"] = str(onnx_path)
        if target == "tensorrt":
            problems = tensorrt.audit(onnx_path)
            report["audit"] = problems
            log("TensorRT op audit: " + ("passed" if not problems else "; ".join(problems)))
            if check_only:
                return report
            log(f"building the TensorRT engine {out}")
            tensorrt.export(
                onnx_path, out, input_size, precision, (2048, 2048) if dynamic else None,
                batch=batch,
            )  # fmt: skip
            device = "cuda"
        elif target == "tvm":
            log(f"compiling {out} with TVM ({tune_trials} tuning trials per task)")
            report["tvm"] = tvm.export(
                onnx_path, out, input_size, device, tune_trials, tune_db, log
            )
        report["path"] = str(out)
        write_metadata(out, record)
        if check:
            runner = load(out, device)
            sizes = [input_size] + ([(input_size[0] + 64, input_size[1] + 96)] if dynamic else [])
            log(f"checking {out} against PyTorch at {len(sizes)} size(s)")
            report["parity"] = [check_parity(wrapper, runner, size, batch=batch) for size in sizes]
            for item in report["parity"]:
                log(
                    f"parity vs PyTorch at {item['input'][0]}x{item['input'][1]}: {format_parity(item)}"
                )
            failed = [p for p in report["parity"] if not p["ok"]]
            if failed and precision != "fp32":
                log(f"{precision}: detections differ from FP32 PyTorch by design; "
                    f"`podkit eval {out}` scores it on the validation set")  # fmt: skip
            elif failed:
                raise ParityError(f"{out}: {format_parity(failed[0])}")
        return report
