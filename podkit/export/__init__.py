"""Checkpoint -> deployable artefact (ONNX, OpenVINO IR, TVM library, TensorRT engine, Triton
model repository), checked against PyTorch.

Every target starts from the ONNX export of `wrap.ExportWrapper` (onnx.py), then its
backend's build; `load(path, device)` returns the same `Runner` for each (images ->
outputs), so evaluation, prediction and the latency benchmark treat all artefacts alike. A
backend is one file and one row of BACKENDS (backend.py says what a row holds).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from podkit.errors import BackendUnavailable, ParityError
from podkit.export import openvino, ort, tensorrt, triton, tvm
from podkit.export.backend import Backend, ExportOptions, Runner
from podkit.export.metadata import checked_record
from podkit.export.parity import compare_outputs, format_parity
from podkit.outputs import staging_folder

# The one table of export targets, by `--target` name.
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (ort.BACKEND, openvino.BACKEND, tvm.BACKEND, tensorrt.BACKEND, triton.BACKEND)
}

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "artefact_bytes",
    "ExportOptions",
    "ParityError",
    "Runner",
    "backend_of",
    "export_checkpoint",
    "get_backend",
    "load",
    "precisions",
    "read_record",
    "sample_image",
    "torch_runner",
    "write_record",
]


def precisions() -> tuple[str, ...]:
    """Every precision some backend builds, fp32 first."""
    return tuple(dict.fromkeys(p for b in BACKENDS.values() for p in b.precisions))


def targets() -> str:
    """The targets, for help and messages: `onnx, openvino, tvm, tensorrt or triton`."""
    names = list(BACKENDS)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def get_backend(target: str) -> Backend:
    """The backend of export target `target`; one line listing the targets otherwise."""
    if target not in BACKENDS:
        raise ValueError(f"--target must be one of {', '.join(BACKENDS)}, got {target!r}")
    return BACKENDS[target]


def backend_of(path: str | Path) -> Backend:
    """The backend that wrote the artefact at `path`: by its suffix, or a folder by its files."""
    path = Path(path)
    for backend in BACKENDS.values():
        if backend.owns(path):
            return backend
    kinds = ", ".join(b.suffix or f"a {b.name} folder" for b in BACKENDS.values())
    raise ValueError(f"{path}: unknown artefact (expected {kinds})")


def read_record(path: str | Path) -> dict:
    """The podkit record of the artefact at `path`; one line naming the file when it has none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: artefact not found")
    return checked_record(path, backend_of(path).load_record(path))


def artefact_bytes(path: str | Path) -> int:
    """The size of an artefact, all its files (a folder's included)."""
    files = backend_of(path).artefact_files(Path(path))
    every = [p for f in files for p in ([f] if f.is_file() else f.rglob("*"))]
    return sum(p.stat().st_size for p in every if p.is_file())


def write_record(path: str | Path, record: dict) -> None:
    backend_of(path).save_record(Path(path), record)


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


def torch_runner(wrapper, device: str = "cpu", compile: bool = False) -> Runner:
    """The wrapper (a torch module) in PyTorch eager (or `torch.compile`d) behind the common
    interface."""
    import torch

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


def check_options(backend: Backend, opts: ExportOptions, out: Path | None) -> None:
    """What this target cannot build, in one line, before any work."""
    target = backend.name
    if opts.precision not in precisions():
        raise ValueError(
            f"precision must be one of {', '.join(precisions())}, got {opts.precision!r}"
        )
    if opts.dynamic and not backend.dynamic:
        raise ValueError(
            f"--target {target} compiles for one input size: drop --dynamic or use --target onnx"
        )
    if opts.precision not in backend.precisions:
        raise ValueError(
            f"--target {target} exports {', '.join(backend.precisions).upper()} only; "
            f"{opts.precision.upper()} is for "
            + ", ".join(b.name for b in BACKENDS.values() if opts.precision in b.precisions)
        )
    if opts.precision != "fp32" and not opts.nms:
        raise ValueError(f"{opts.precision} artefacts keep NMS in the graph: drop --no-nms")
    if opts.batch is None and not backend.any_batch:
        others = " or ".join(b.name for b in BACKENDS.values() if b.any_batch)
        raise ValueError(f"--target {target} builds for one batch size: use --batch N, or "
                         f"--target {others} for --dynamic-batch")  # fmt: skip
    if opts.batch is None and opts.precision == "fp16":
        raise ValueError("--fp16 and --dynamic-batch: the FP16 converter cannot follow the "
                         "per-image loop (ONNX Scan); export FP16 with --batch N")  # fmt: skip
    if opts.check_only and backend.audit is None:
        audited = " or ".join(b.name for b in BACKENDS.values() if b.audit)
        raise ValueError(f"--check-only is an op audit: use it with --target {audited}")
    if out is None and not opts.check_only:
        raise ValueError("--out is required (the artefact to write)")


def export_checkpoint(
    checkpoint: str | Path,
    target: str,
    out: str | Path | None,
    opts: ExportOptions = ExportOptions(),
    log: Callable[[str], None] = print,
    onnx_path: str | Path | None = None,
) -> dict:
    """Export a checkpoint to `target` at `out`; returns what was written and checked.

    Every target is built from the FP32 ONNX file: `onnx_path` if given (an existing one is
    reused, as the latency benchmark's cache does for all backends of a checkpoint), else a
    temporary one, so no file of the user's is ever replaced. A reduced precision is the
    backend's to build; INT8 gets `opts.calib` calibration images (training images, or
    `opts.calib_data`, prepared as the artefact is fed: precision.calibration_images). With
    `opts.check` the artefact runs on sample images and must match PyTorch (ParityError
    otherwise; the artefact stays for inspection); a reduced-precision artefact's detections
    differ by design, so its check is reported, not enforced: its accuracy is what `podkit
    eval` measures. `opts.check_only` stops after the backend's op audit and needs no `out`.
    """
    backend = get_backend(target)
    out = Path(out) if out is not None else None
    check_options(backend, opts, out)
    from podkit.export import onnx
    from podkit.export import precision as reduced
    from podkit.export.metadata import artefact_record
    from podkit.export.wrap import ExportWrapper
    from podkit.models.checkpoint import load_detector

    if not opts.check_only:
        backend.check_available(opts)  # a missing backend or GPU: say so before minutes of export
    with tempfile.TemporaryDirectory(prefix="podkit-export-") as scratch:
        onnx_path = Path(onnx_path or Path(scratch) / "model.onnx")
        model, cfg, ckpt, _ = load_detector(checkpoint)
        if opts.precision == "int8":  # the calibration images exist, before minutes of export
            calib_records = reduced.calibration_records(cfg, list(opts.calib_data) or None)
        if onnx_path.is_file():
            log(f"{checkpoint}: reusing {onnx_path}")
            wrapper = ExportWrapper(model.cpu().eval(), nms=opts.nms)
        else:
            h, w = opts.input_size
            log(f"exporting {checkpoint} to ONNX ({'dynamic' if opts.dynamic else 'static'} "
                f"{h}x{w}, batch {opts.batch or 'any'}, "
                f"{'NMS in graph' if opts.nms else 'raw outputs'})")  # fmt: skip
            wrapper = onnx.export(model, onnx_path, opts.input_size, opts.dynamic, opts.nms,
                                  opts.opset, batch=opts.batch)  # fmt: skip
        record = artefact_record(
            checkpoint, ckpt, opts.input_size, opts.dynamic, opts.nms, wrapper.output_names,
            wrapper.max_detections, opts.batch, opts.precision,
        )  # fmt: skip
        report: dict = {"target": target, "outputs": wrapper.output_names,
                        "precision": opts.precision}  # fmt: skip
        if backend.audit is not None:
            problems = backend.audit(onnx_path)
            report["audit"] = problems
            log(f"{target} op audit: " + ("passed" if not problems else "; ".join(problems)))
            if opts.check_only:
                return report
            if problems:
                raise ValueError(f"{checkpoint}: {target} would reject its ONNX graph: "
                                 + "; ".join(problems))  # fmt: skip
        calibration = None
        if opts.precision == "int8":
            source = "--calib-data" if opts.calib_data else "training"
            log(f"calibrating INT8 on {min(opts.calib, len(calib_records))} {source} images")
            fed_size = None if opts.dynamic else opts.input_size
            calibration = list(reduced.calibration_images(
                ckpt["config"], fed_size, opts.calib, batch=opts.batch or 1, records=calib_records
            ))  # fmt: skip
        if backend.tuned:
            log(f"compiling {out} with {target} ({opts.tune_trials} tuning trials per task)")
        with staging_folder(out) as stage:  # a failed build leaves an existing `out` whole
            staged = stage / out.name
            report[target] = backend.build(onnx_path, staged, opts, calibration, log)
            backend.save_record(staged, record)
            for part in backend.artefact_files(staged):
                target_path = out.parent / part.name
                if part.is_dir() and target_path.is_dir() and backend.owns(target_path):
                    shutil.rmtree(target_path)  # the earlier export of this folder artefact
                if part.exists():
                    os.replace(part, target_path)
        report["path"] = str(out)
        if opts.check:
            report["parity"] = check_artefact(
                wrapper, out, backend.device or opts.device, opts, log
            )
        return report


def check_artefact(wrapper, out: Path, device: str, opts: ExportOptions, log) -> list[dict]:
    """Parity with PyTorch on sample images: the export's size and batch, another size if
    dynamic, other batches if any batch. Raises ParityError on an FP32 mismatch."""
    runner = load(out, device)
    checks = [(opts.input_size, opts.batch or 2)]
    if opts.dynamic:
        checks.append(((opts.input_size[0] + 64, opts.input_size[1] + 96), opts.batch or 1))
    if opts.batch is None:
        checks += [(opts.input_size, 1), (opts.input_size, 3)]
    log(f"checking {out} against PyTorch on {len(checks)} input(s)")
    parity = [check_parity(wrapper, runner, size, batch=n) for size, n in checks]
    for item in parity:
        h, w = item["input"]
        log(f"parity vs PyTorch at {h}x{w}: {format_parity(item)}")
    failed = [p for p in parity if not p["ok"]]
    if failed and opts.precision != "fp32":
        log(f"{opts.precision}: detections differ from FP32 PyTorch by design; "
            f"`podkit eval {out}` scores it on the validation set")  # fmt: skip
    elif failed:
        raise ParityError(f"{out}: {format_parity(failed[0])}")
    return parity
