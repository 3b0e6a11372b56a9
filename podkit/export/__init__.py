"""Checkpoint -> deployable artefact (ONNX, TVM library, TensorRT engine), checked against PyTorch.

Every target goes through the ONNX export of `wrap.ExportWrapper`, then its backend's build
(backend.py: one `Backend` per target, listed in BACKENDS); `load(path, device)` returns the
same `Runner` for each (images -> outputs), so the latency benchmark times all backends alike.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from podkit.errors import BackendUnavailable, ParityError
from podkit.export import onnx, tensorrt, tvm
from podkit.export.backend import Backend, BuildOptions
from podkit.export.common import Runner, compare_outputs, format_parity
from podkit.outputs import staging_folder

PRECISIONS = ("fp32", "fp16", "int8")
# The one table of export targets (fields: backend.Backend). TVM compiles for one input size
# and FP32; TensorRT engines run on CUDA only. Any batch size is an ONNX Scan, which TVM's
# importer lacks (and the TensorRT path builds one batch).
# fmt: off
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("onnx", "onnxruntime", ".onnx", PRECISIONS, dynamic=True, any_batch=True,
            device=None, tuned=False, require=onnx.require, build=onnx.build, load=onnx.load),
    Backend("tvm", "tvm", ".so", ("fp32",), dynamic=False, any_batch=False, device=None,
            tuned=True, require=tvm.require, build=tvm.build, load=tvm.load),
    Backend("tensorrt", "tensorrt", ".engine", PRECISIONS, dynamic=True, any_batch=False,
            device="cuda", tuned=False, require=tensorrt.require, build=tensorrt.build,
            load=tensorrt.load, audit=tensorrt.audit),
)}
# fmt: on

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "BackendUnavailable",
    "ParityError",
    "Runner",
    "backend_of",
    "export_checkpoint",
    "get_backend",
    "load",
    "sample_image",
    "torch_runner",
]


def get_backend(target: str) -> Backend:
    """The backend of export target `target`; one line listing the targets otherwise."""
    if target not in BACKENDS:
        raise ValueError(f"--target must be one of {', '.join(BACKENDS)}, got {target!r}")
    return BACKENDS[target]


def backend_of(path: str | Path) -> Backend:
    """The backend that wrote the artefact at `path`, from its suffix."""
    path = Path(path)
    for backend in BACKENDS.values():
        if path.suffix == backend.suffix:
            return backend
    suffixes = ", ".join(b.suffix for b in BACKENDS.values())
    raise ValueError(f"{path}: unknown artefact (expected {suffixes})")


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

    return Runner(run, sync=torch.cuda.synchronize) if device == "cuda" else Runner(run)


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """Load any exported artefact with the backend its suffix names."""
    return backend_of(path).load(Path(path), device, threads)


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
    batch: int | None = 1,
    calib: int = 64,
    calib_data: list[str] | None = None,
) -> dict:
    """Export a checkpoint to `target` at `out`; returns what was written and checked.

    Non-ONNX targets go through an ONNX file: `onnx_path` if given (an existing one is
    reused, as the latency benchmark's cache does for all backends of a checkpoint), else a
    temporary one, so no file of the user's is ever replaced. `precision` fp16 / int8 turns
    that FP32 file into a half-precision or an INT8 QDQ one (calibrated on `calib` training
    images, see precision.py; `calib_data`: other images, precision.calibration_records)
    before the target is built. With `check` the artefact runs on
    sample images and must match PyTorch (ParityError otherwise; the artefact stays for
    inspection); a reduced-precision artefact's detections differ by design, so its check is
    reported, not enforced: its accuracy is what `podkit eval` measures. `check_only`
    (TensorRT) stops after the op audit and needs no `out`. `batch` images per call; None:
    any number (ONNX only).
    """
    backend = get_backend(target)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dynamic and not backend.dynamic:
        raise ValueError(
            f"--target {target} compiles for one input size: drop --dynamic or use --target onnx"
        )
    if precision not in backend.precisions:
        raise ValueError(
            f"--target {target} exports {', '.join(backend.precisions).upper()} only; "
            f"{precision.upper()} is for "
            + " and ".join(b.name for b in BACKENDS.values() if precision in b.precisions)
        )
    if precision != "fp32" and not nms:
        raise ValueError(f"{precision} artefacts keep NMS in the graph: drop --no-nms")
    if batch is None and not backend.any_batch:
        others = " or ".join(b.name for b in BACKENDS.values() if b.any_batch)
        raise ValueError(f"--target {target} builds for one batch size: use --batch N, or "
                         f"--target {others} for --dynamic-batch")  # fmt: skip
    if batch is None and precision == "fp16":
        raise ValueError("--fp16 and --dynamic-batch: the FP16 converter cannot follow the "
                         "per-image loop (ONNX Scan); export FP16 with --batch N")  # fmt: skip
    if check_only and backend.audit is None:
        raise ValueError("--check-only is the TensorRT op audit: use it with --target tensorrt")
    if out is None and not check_only:
        raise ValueError("--out is required (the artefact to write)")
    from podkit.export import precision as reduced
    from podkit.export.metadata import artefact_record, write_metadata
    from podkit.export.wrap import ExportWrapper
    from podkit.models.checkpoint import load_detector

    if not check_only:
        backend.require()  # a missing backend or GPU: say so before minutes of export
    out = Path(out) if out is not None else None
    with tempfile.TemporaryDirectory(prefix="podkit-export-") as scratch:
        onnx_path = Path(onnx_path or Path(scratch) / "model.onnx")
        model, cfg, ckpt, _ = load_detector(checkpoint)
        if precision == "int8":  # the calibration images exist, before minutes of export
            calib_records = reduced.calibration_records(cfg, calib_data)
        if onnx_path.is_file():
            log(f"{checkpoint}: reusing {onnx_path}")
            wrapper = ExportWrapper(model.cpu().eval(), nms=nms)
        else:
            log(f"exporting {checkpoint} to ONNX ({'dynamic' if dynamic else 'static'} "
                f"{input_size[0]}x{input_size[1]}, batch {batch or 'any'}, "
                f"{'NMS in graph' if nms else 'raw outputs'})")  # fmt: skip
            wrapper = onnx.export(model, onnx_path, input_size, dynamic, nms, opset, batch=batch)
        record = artefact_record(
            checkpoint, ckpt, input_size, dynamic, nms, wrapper.output_names,
            wrapper.max_detections, batch, precision,
        )  # fmt: skip
        report: dict = {"target": target, "outputs": wrapper.output_names, "precision": precision}
        if precision != "fp32":
            reduced_path = Path(scratch) / f"model_{precision}.onnx"
            if precision == "int8":
                source = "--calib-data" if calib_data else "training"
                log(f"calibrating INT8 on {min(calib, len(calib_records))} {source} images")
                fed_size = None if dynamic else input_size
                images = list(
                    reduced.calibration_images(
                        ckpt["config"], fed_size, calib, batch=batch or 1, records=calib_records
                    )
                )
                report["int8"] = reduced.quantize_int8(
                    onnx_path, reduced_path, images, for_tensorrt=target == "tensorrt"
                )
            else:
                report["fp16"] = reduced.convert_fp16(onnx_path, reduced_path)
            onnx_path = reduced_path
        if backend.audit is not None:
            problems = backend.audit(onnx_path)
            report["audit"] = problems
            log(f"{target} op audit: " + ("passed" if not problems else "; ".join(problems)))
            if check_only:
                return report
            if problems:
                raise ValueError(f"{checkpoint}: {target} would reject its ONNX graph: "
                                 + "; ".join(problems))  # fmt: skip
        if backend.tuned:
            log(f"compiling {out} with {target} ({tune_trials} tuning trials per task)")
        options = BuildOptions(input_size, dynamic, precision, batch, device, tune_trials,
                               Path(tune_db) if tune_db else None)  # fmt: skip
        with staging_folder(out) as stage:  # a failed build leaves an existing `out` whole
            staged = stage / out.name
            report[target] = backend.build(onnx_path, staged, options, log)
            write_metadata(staged, record)
            for part in sorted(stage.glob(glob.escape(out.name) + "*")):  # artefact, sidecar
                os.replace(part, out.parent / part.name)
        device = backend.device or device
        report["path"] = str(out)
        if check:
            runner = load(out, device)
            # (size, batch) pairs: the export's, another size if dynamic, other batches if any
            checks = [(input_size, batch or 2)]
            if dynamic:
                checks.append(((input_size[0] + 64, input_size[1] + 96), batch or 1))
            if batch is None:
                checks += [(input_size, 1), (input_size, 3)]
            log(f"checking {out} against PyTorch on {len(checks)} input(s)")
            report["parity"] = [check_parity(wrapper, runner, size, batch=n) for size, n in checks]
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
