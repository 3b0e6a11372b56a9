"""TVM (Relax) from the ONNX export: import, optional MetaSchedule tuning, compile, run.

Untuned Relax CPU code is naive (no default conv schedule): ResNet-50 ran ~400x slower than
onnxruntime here, so tuning is what makes TVM worth deploying. Tuning records go to a JSON
database directory that later runs and other models reuse: tasks already in it are not
tuned again (the FD network shares most workloads with its baseline).

Pitfalls handled here (docs/backends.md):
- TVM's ONNX `NonMaxSuppression` converter returns its padded (num_boxes, 3) buffer instead
  of the valid rows; its `RoiAlign` converter shifts half_pixel RoIs by -0.5 before scaling
  and the op ignores `aligned`; `_patched_converters` fixes both.
- The default LocalBuilder's worker processes each import `tvm.s_tir.tensor_intrin` (~20 s)
  and hit its timeout; `InProcessBuilder` builds candidates in this process.
- apache-tvm-ffi 0.1.15 segfaults writing JSON; pyproject pins 0.1.14.post1.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from podkit.errors import BackendUnavailable
from podkit.export.backend import Backend, ExportOptions, Runner, import_runtime, sidecar
from podkit.export.tvm_schedule import cpu_default_schedule

# Tuning covers the convolutions and matmuls (where the time goes). A detector has ~185
# tasks, most of them small element-wise and post-processing kernels that
# `tvm_schedule.cpu_default_schedule` schedules without tuning, as it does the box head's
# matmuls, whose row count (the RoIs NMS kept) is symbolic.
TUNED_OPS = ("conv2d", "matmul", "dense")


INSTALL = "TVM is not installed: pip install 'apache-tvm>=0.27' 'apache-tvm-ffi==0.1.14.post1'"


def _tvm():
    tvm = import_runtime("tvm", INSTALL)
    relax = import_runtime("tvm.relax", INSTALL)
    return tvm, relax


def host_target(device: str = "cpu"):
    """`llvm` with this host's CPU features and cores, or `cuda`."""
    tvm, _ = _tvm()
    if device == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": _cuda_arch()}, host="llvm")
    config = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
    cpu = tvm.target.codegen.llvm_get_system_cpu() if hasattr(tvm.target, "codegen") else None
    if cpu:
        config["mcpu"] = cpu
    return tvm.target.Target(config)


def _cuda_arch() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm_{major}{minor}"


@contextlib.contextmanager
def _patched_converters():
    """Patch two of TVM's ONNX converters: NonMaxSuppression (return only the selected
    rows) and RoiAlign half_pixel (the aligned sampling positions)."""
    from tvm import relax, tirx
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map

    class TrimmedNMS(onnx_frontend.NonMaxSuppression):
        @classmethod
        def _impl_v10(cls, bb, inputs, attr, params):
            selected = super()._impl_v10(bb, inputs, attr, params)
            nms_out = bb.lookup_binding(selected).tuple_value
            count = bb.emit(relax.op.astype(relax.TupleGetItem(nms_out, 1), "int64"))
            end = bb.emit(relax.op.concat([count, relax.const([3], "int64")]))
            rows = relax.op.dynamic_strided_slice(
                selected, relax.const([0, 0], "int64"), end, relax.const([1, 1], "int64")
            )
            kept = tirx.Var("nms_kept", "int64")  # give the sliced rows a symbolic shape
            return bb.match_cast(rows, relax.TensorType([kept, 3], "int64"))

    class HalfPixelRoiAlign(onnx_frontend.OnnxOpConverter):
        """ONNX half_pixel = torchvision's aligned=True: sample at roi * scale - 0.5. TVM's op
        ignores `aligned` (it always computes the unaligned form) and the stock converter
        shifts the unscaled RoIs by -0.5; shifting by -0.5 / scale gives the aligned sampling.
        The unaligned form still clamps RoIs to >= 1 feature cell: a RoI smaller than one
        cell (a few pixels on P2) pools slightly differently than in PyTorch."""

        @classmethod
        def _impl_v16(cls, bb, inputs, attr, params):
            data, rois, batch = inputs
            mode = attr.get("coordinate_transformation_mode", b"half_pixel")
            if (mode.decode() if isinstance(mode, bytes) else mode) != "half_pixel":
                return onnx_frontend.RoiAlign._impl_v16(bb, inputs, attr, params)
            batch = relax.op.astype(relax.op.expand_dims(batch, axis=1), rois.ty.dtype)
            scale = attr.get("spatial_scale", 1.0)
            rois = relax.op.subtract(rois, relax.const(0.5 / scale, rois.ty.dtype))
            method = attr.get("mode", b"avg")
            return relax.op.vision.roi_align(
                data,
                relax.op.concat([batch, rois], axis=1),
                pooled_size=(attr.get("output_height", 1), attr.get("output_width", 1)),
                spatial_scale=scale,
                sample_ratio=attr.get("sampling_ratio", 0),
                aligned=False,
                layout="NCHW",
                mode=method.decode() if isinstance(method, bytes) else method,
            )

    def patched():
        table = original()
        table["NonMaxSuppression"] = TrimmedNMS
        table["RoiAlign"] = HalfPixelRoiAlign
        return table

    onnx_frontend._get_convert_map = patched
    try:
        yield
    finally:
        onnx_frontend._get_convert_map = original


@contextlib.contextmanager
def _native_stderr_to(path: Path):
    """Send C++-level stderr (TVM's build warnings: hundreds of lines per model) to a file."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def import_onnx(onnx_path: str | Path, input_size: tuple[int, int]):
    """The Relax module of an ONNX export at a fixed input size (its batch is the export's),
    lowered to TIR and fused."""
    import onnx

    tvm, relax = _tvm()
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(onnx_path))
    name = model.graph.input[0].name
    dims = model.graph.input[0].type.tensor_type.shape.dim
    batch, channels = dims[0].dim_value or 1, dims[1].dim_value or 3
    with _patched_converters():
        mod = from_onnx(
            model, shape_dict={name: [batch, channels, *input_size]}, keep_params_in_input=False
        )
    return mod


def _lower(mod, target):
    tvm, relax = _tvm()
    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ]
        )(mod)


def in_process_builder():
    """A MetaSchedule builder that compiles candidates in this process (see module doc)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    module = default_build(item.mod, item.target, None)
                    results.append(BuilderResult(default_export(module), None))
                except Exception as exc:  # a candidate that fails to build is just a bad one
                    results.append(BuilderResult(None, f"InProcessBuilder: {exc}"))
            return results

    return InProcessBuilder()


def _has_symbolic_shape(func) -> bool:
    """Whether a PrimFunc's buffers have a symbolic extent (MetaSchedule cannot measure it)."""
    from tvm import tirx

    shapes = [param.ty.shape for param in func.params if hasattr(param.ty, "shape")]
    return any(not isinstance(dim, tirx.IntImm) for shape in shapes for dim in shape)


def _measured(database, task, cap: int) -> int:
    """How many measured candidates (up to `cap`) the database holds for a task."""
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0
    return len(database.get_top_k(database.commit_workload(mod), cap))


def tune(mod, target, trials_per_task: int, database_dir: str | Path, log=print) -> dict:
    """Tune the module's static conv/matmul tasks to `trials_per_task` measured candidates
    each (counting those already in the database).

    Returns {"tasks", "tuned", "reused", "trials"}.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    try:
        import xgboost  # noqa: F401  (MetaSchedule's default cost model)
    except ImportError as exc:
        raise BackendUnavailable("TVM tuning needs xgboost: pip install 'podkit[tune]'") from exc
    database_dir = Path(database_dir)
    database_dir.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(database_dir))
    tasks = [t for t in extract_tasks(mod, target) if any(k in t.task_name for k in TUNED_OPS)]
    dynamic = [t for t in tasks if _has_symbolic_shape(t.dispatched[0]["main"])]
    tasks = [t for t in tasks if t not in dynamic]
    # a task is tuned up to `trials_per_task` measured candidates: a database from a smaller
    # budget is topped up (the search starts from its best records), not tuned again
    missing = {
        t.task_name: trials_per_task - _measured(database, t, trials_per_task) for t in tasks
    }
    todo = [t for t in tasks if missing[t.task_name] > 0]
    summary = {"tasks": len(tasks), "tuned": len(todo), "reused": len(tasks) - len(todo)}
    summary["dynamic"] = [t.task_name for t in dynamic]
    summary["trials"] = sum(missing[t.task_name] for t in todo)
    log(
        f"TVM tuning: {len(tasks)} tasks, {summary['reused']} with {trials_per_task} trials "
        f"in {database_dir}, {summary['trials']} trials to run on {len(todo)}; "
        f"{len(dynamic)} with a symbolic shape (the box head after NMS) keep podkit's default "
        "CPU schedule"
    )
    summary["failed"] = []
    if todo and trials_per_task > 0:
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=todo, work_dir=str(database_dir)
        )
        # one task at a time: MetaSchedule 0.27 aborts a whole run when one task's search
        # fails (seen: "old_rv != nullptr" in trace replay); a failed task keeps its default
        # schedule and is reported
        for task, context, weight in zip(todo, contexts, weights, strict=True):
            try:
                ms.tune.tune_tasks(
                    tasks=[context],
                    task_weights=[weight],
                    work_dir=str(database_dir),
                    max_trials_global=missing[task.task_name],
                    max_trials_per_task=missing[task.task_name],
                    num_trials_per_iter=min(64, missing[task.task_name]),
                    builder=in_process_builder(),
                    database=database,
                )
            except Exception as exc:  # noqa: BLE001  (TVM raises plain RuntimeErrors)
                summary["failed"].append(task.task_name)
                log(f"TVM tuning: task {task.task_name} failed ({str(exc).splitlines()[0][:120]})")
    return summary


def export(
    onnx_path: str | Path,
    out: str | Path,
    input_size: tuple[int, int],
    device: str = "cpu",
    tune_trials: int = 0,
    tune_db: str | Path | None = None,
    log: Callable[[str], None] = print,
    cpu_schedule: bool = True,
) -> dict:
    """Compile the ONNX export into `out` (a shared library) plus `out.json` (its interface);
    TVM's native build warnings go to `out.build.log`. `tune_trials` > 0 tunes the missing
    tasks into `tune_db` (default: beside `out`); an existing `tune_db` is applied either way.
    `cpu_schedule=False` leaves the untuned CPU kernels single-threaded (for comparison)."""
    _tvm()  # a missing TVM fails here, with the install line, before any file is written
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _native_stderr_to(Path(str(out) + ".build.log")):
        info = _build(onnx_path, out, input_size, device, tune_trials, tune_db, log, cpu_schedule)
    return info


def _build(onnx_path, out: Path, input_size, device, tune_trials, tune_db, log, cpu_schedule):
    import onnx

    tvm, relax = _tvm()
    target = host_target(device)
    mod = _lower(import_onnx(onnx_path, input_size), target)
    info: dict = {"input_size": list(input_size), "device": device, "target": str(target)}
    db = Path(tune_db) if tune_db else None
    if tune_trials > 0:
        db = db or Path(out).parent / "tvm_tuning_db"
        info["tuning"] = tune(mod, target, tune_trials, db, log)
    if db is not None and db.is_dir():
        with target, tvm.transform.PassContext(opt_level=3):
            mod = relax.transform.MetaScheduleApplyDatabase(str(db))(mod)
    with target:
        if device == "cuda":  # untuned GPU kernels still need thread bindings
            mod = tvm.s_tir.dlight.ApplyDefaultSchedule(tvm.s_tir.dlight.gpu.Fallback())(mod)
        elif cpu_schedule:
            mod = cpu_default_schedule()(mod)
    executable = tvm.compile(mod, target=target)
    executable.export_library(str(out))
    info["outputs"] = [
        o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output
    ]
    sidecar(out).write_text(json.dumps(info, indent=2))
    return info


def load(path: str | Path, device: str = "cpu", threads: int | None = None) -> Runner:
    """A runner of the compiled library through the Relax VM: image -> outputs (`threads`:
    TVM's pool reads TVM_NUM_THREADS when it starts, as the latency benchmark sets it)."""
    tvm, relax = _tvm()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: TVM library not found")
    info = json.loads(sidecar(path).read_text())
    dev = tvm.cuda() if device == "cuda" else tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), dev)

    def run(image: np.ndarray) -> list[np.ndarray]:
        out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(image), dev))
        outs = [out] if isinstance(out, tvm.runtime.Tensor) else out  # one output: no tuple
        return [o.numpy() for o in outs]

    return Runner(run, sync=dev.sync, info=info)


def build(
    onnx_path: Path, out: Path, opts: ExportOptions, calibration: list[np.ndarray] | None, log
) -> dict:
    return export(onnx_path, out, opts.input_size, opts.device, opts.tune_trials, opts.tune_db, log)


# TVM compiles for one input size and FP32; any batch size is an ONNX Scan, which TVM's
# importer lacks
BACKEND = Backend(
    "tvm", "tvm", ".so", ("fp32",), dynamic=False, any_batch=False, device=None, tuned=True,
    install=INSTALL, module="tvm", build=build, load=load,
    files=lambda path: [path, sidecar(path), Path(str(path) + ".build.log")],
)  # fmt: skip
