"""How TVM's tuned convolutions improve with trials, beside onnxruntime.

Run: .venv/bin/python -m studies.tvm_conv_trials --budgets 16 32 64 --out runs/bench/tvm_conv_trials

R50-FPN's convolutions run at ~78 GFLOP/s on TVM after 16 trials per task against ~220 on
onnxruntime (docs/benchmarks.md): this asks how many trials close that gap. Each conv below
(R50-FPN's shapes at a 512x512 input) is a one-node ONNX graph, tuned through podkit's TVM
path into one database per conv and topped up budget by budget (16, then 16 more to 32, ...),
compiled and timed against onnxruntime on the same graph, the two called in turn. Writes
`trials.json` and `trials.md` under `--out`; the tuning time per budget is in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from functools import partial
from pathlib import Path

import numpy as np

from podkit.bench.latency import time_interleaved
from podkit.export import ort
from podkit.export import tvm as tvm_backend

# name: (in channels, out channels, kernel, feature map side), R50-FPN at 512x512
CONVS = {
    "fpn_p2_3x3": (256, 256, 3, 128),  # FPN output conv and RPN conv on P2: the heaviest
    "layer3_3x3": (256, 256, 3, 32),
    "layer1_1x1_expand": (64, 256, 1, 128),
}


def conv_onnx(path: Path, cin: int, cout: int, k: int, side: int) -> float:
    """Write a one-Conv ONNX graph (random weights, bias, same padding); return its GFLOPs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.05, (cout, cin, k, k)).astype(np.float32)
    bias = rng.normal(0, 0.05, cout).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[k // 2] * 4, kernel_shape=[k, k])
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, side, side])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return 2 * cin * cout * k * k * side * side / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--convs", nargs="+", choices=sorted(CONVS), default=list(CONVS))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/tvm_conv_trials"))
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's pool starts
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "trials.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["conv"], r["trials"]) for r in results}
    for name in args.convs:
        cin, cout, k, side = CONVS[name]
        folder = args.out / name
        folder.mkdir(exist_ok=True)
        gflops = conv_onnx(folder / "conv.onnx", cin, cout, k, side)
        image = np.random.default_rng(1).normal(size=(1, cin, side, side)).astype(np.float32)
        ort_runner = ort.load(folder / "conv.onnx", threads=args.threads)
        for budget in sorted(args.budgets):
            if (name, budget) in done:  # resumable: a finished (conv, budget) is kept
                continue
            start = time.perf_counter()
            library = folder / f"conv_{budget}.so"
            tvm_backend.export(
                folder / "conv.onnx", library, (side, side), tune_trials=budget,
                tune_db=folder / "tvm_db", log=lambda _: None,
            )  # fmt: skip
            tune_s = time.perf_counter() - start
            tvm_runner = tvm_backend.load(library)
            np.testing.assert_allclose(tvm_runner(image)[0], ort_runner(image)[0], atol=1e-3)
            tvm_ms, ort_ms = time_interleaved(
                [partial(tvm_runner, image), partial(ort_runner, image)], args.iters, warmup=3
            )
            row = {
                "conv": name,
                "shape": [cin, cout, k, side],
                "gflops": gflops,
                "trials": budget,
                "tune_and_build_s": round(tune_s, 1),
                "tvm_ms": statistics.median(tvm_ms),
                "onnxruntime_ms": statistics.median(ort_ms),
            }
            row["tvm_gflops_per_s"] = gflops / row["tvm_ms"] * 1e3
            row["onnxruntime_gflops_per_s"] = gflops / row["onnxruntime_ms"] * 1e3
            row["tvm_over_onnxruntime"] = row["tvm_ms"] / row["onnxruntime_ms"]
            results.append(row)
            results_path.write_text(json.dumps(results, indent=2))
            print(
                f"{name} {budget} trials: TVM {row['tvm_ms']:.2f} ms "
                f"({row['tvm_gflops_per_s']:.0f} GFLOP/s), onnxruntime "
                f"{row['onnxruntime_ms']:.2f} ms ({row['onnxruntime_gflops_per_s']:.0f}), "
                f"x{row['tvm_over_onnxruntime']:.2f}, {tune_s:.0f} s",
                flush=True,
            )
    lines = [
        "| conv (Cin, Cout, k, side) | GFLOPs | trials | TVM GFLOP/s | onnxruntime GFLOP/s "
        "| TVM / onnxruntime | tuning + build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['conv']} {tuple(r['shape'])} | {r['gflops']:.2f} | {r['trials']} "
            f"| {r['tvm_gflops_per_s']:.0f} | {r['onnxruntime_gflops_per_s']:.0f} "
            f"| {r['tvm_over_onnxruntime']:.2f} | {r['tune_and_build_s']:.0f} |"
        )
    (args.out / "trials.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
