"""Where a TVM-compiled detector spends its time: per kernel kind, beside onnxruntime.

Run: .venv/bin/python -m studies.tvm_profile runs/profile/r50fpn_512/detector.onnx \
         --size 512 --tune-db runs/bench/tvm_r50/tvm_db --out runs/profile/tvm_r50fpn_512

Compiles the ONNX export with podkit's TVM path (the tuning database applied, no further
tuning), then times every kernel call of `--runs` calls through the Relax VM's instrument hook
and sums them per kind (conv, matmul, RoIAlign, NMS, sort/top-k, gather/scatter, other), and
times the same graph on onnxruntime, the two called in turn. Writes `profile.json` and
`profile.md` under `--out`. `--no-cpu-schedule` compiles without podkit's default CPU schedule
for the kernels tuning does not cover (the "before" column).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from podkit.bench.latency import time_interleaved
from podkit.config import parse_size
from podkit.export import ort
from podkit.export import tvm as tvm_backend

KINDS = (
    ("conv", ("conv2d",)),
    ("matmul", ("matmul", "dense")),
    ("RoIAlign", ("roi_align",)),
    ("NMS", ("non_max_suppression",)),
    ("sort / top-k", ("sort", "topk", "argsort")),
    ("gather / scatter", ("take", "gather", "scatter")),
    ("VM runtime", ("vm.builtin",)),
)


def kind_of(symbol: str) -> str:
    for kind, keys in KINDS:
        if any(k in symbol for k in keys):
            return kind
    return "other (element-wise, resize, pools)"


def profile_tvm(library: Path, image: np.ndarray, runs: int) -> tuple[dict, dict]:
    """Milliseconds per call summed per kernel kind and per kernel, through the VM's
    instrument hook (called before and after every call instruction)."""
    import tvm
    from tvm import relax

    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev)
    started: dict[str, float] = {}
    per_kernel: dict[str, float] = defaultdict(float)

    def instrument(func, symbol, before, ret, *args):
        if before:
            started[symbol] = time.perf_counter()
        else:
            per_kernel[symbol] += time.perf_counter() - started.pop(symbol)
        return 0

    data = tvm.runtime.tensor(image, dev)
    vm["main"](data)  # warm-up
    vm.set_instrument(tvm.runtime.convert(instrument))
    for _ in range(runs):
        vm["main"](data)
    per_kernel = {k: v * 1000 / runs for k, v in per_kernel.items()}
    per_kind: dict[str, float] = defaultdict(float)
    for symbol, ms in per_kernel.items():
        per_kind[kind_of(symbol)] += ms
    return dict(per_kind), per_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("onnx", type=Path)
    parser.add_argument("--size", type=parse_size, default="512")
    parser.add_argument("--tune-db", type=Path, help="apply this MetaSchedule database")
    parser.add_argument("--no-cpu-schedule", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/profile/tvm"))
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's pool starts
    args.out.mkdir(parents=True, exist_ok=True)
    library = args.out / "model.so"
    start = time.perf_counter()
    tvm_backend.export(
        args.onnx,
        library,
        args.size,
        tune_db=args.tune_db,
        cpu_schedule=not args.no_cpu_schedule,
    )
    compile_s = time.perf_counter() - start
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, *args.size)).astype(np.float32)
    tvm_runner = tvm_backend.load(library)
    ort_runner = ort.load(args.onnx, threads=args.threads)
    tvm_ms, ort_ms = time_interleaved(
        [lambda: tvm_runner(image), lambda: ort_runner(image)], args.runs
    )
    medians = {"TVM": statistics.median(tvm_ms), "onnxruntime": statistics.median(ort_ms)}
    per_kind, per_kernel = profile_tvm(library, image, args.runs)
    total = sum(per_kind.values())
    result = {
        "onnx": str(args.onnx),
        "size": list(args.size),
        "tune_db": str(args.tune_db) if args.tune_db else None,
        "cpu_schedule": not args.no_cpu_schedule,
        "compile_s": round(compile_s, 1),
        "median_ms": medians,
        "tvm_over_onnxruntime": medians["TVM"] / medians["onnxruntime"],
        "per_kind_ms": per_kind,
        "top_kernels_ms": dict(sorted(per_kernel.items(), key=lambda kv: -kv[1])[:25]),
    }
    (args.out / "profile.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"TVM {medians['TVM']:.1f} ms, onnxruntime {medians['onnxruntime']:.1f} ms "
        f"(x{result['tvm_over_onnxruntime']:.2f}), compile {compile_s:.0f} s",
        "",
        "| kernel kind | ms per call | share |",
        "|---|---|---|",
    ]
    for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f} % |")
    lines += ["", "| kernel | ms per call |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["top_kernels_ms"].items()]
    (args.out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
