"""Where an exported detector spends its time on onnxruntime: per node type, beside the
backbone alone.

Run: .venv/bin/python -m studies.ort_profile --arch faster_rcnn_fpn --size 512x512 \
         --out runs/profile/r50fpn_512

Exports the R50 detector (random weights, 80 classes; the RPN still keeps its full proposal
count, so the second stage does its full work) and its backbone + FPN alone, then: the median latency of `--runs` calls of each without profiling,
the two graphs called in turn (a slower machine for a while slows both), and onnxruntime's
profile of `--profile-runs` more calls of each summed per node type (kernel time only; the
profiler adds its own overhead: read the shares, not the milliseconds). GFLOPs are PyTorch's
count (convs and matmuls). The ratio it reports is the detector's GFLOP/s over the
backbone's, both from the unprofiled medians of the same run. Writes `profile.json` and a
markdown table `profile.md` under `--out`.

It calls only podkit APIs that older checkouts have too (build, export, FLOP count), and
times its onnxruntime sessions itself, so it also profiles another checkout:
`PYTHONPATH=/path/to/checkout .venv/bin/python -m studies.ort_profile ...` (the "before"
column of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import onnxruntime as ort
import torch

from podkit.bench.latency import count_flops, measure_peak_gflops
from podkit.export.onnx import export
from podkit.models import ModelConfig, build_detector


def session(path: Path, threads: int, profile_prefix: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_medians(sessions: dict, feeds: dict, runs: int) -> dict[str, float]:
    """Median seconds per call of each session, the sessions called in turn (round-robin),
    so that a change of the machine's speed hits all of them alike."""
    for name, sess in sessions.items():
        for _ in range(2):
            sess.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds[name])
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def per_node_type(path: Path, threads: int, feed: dict, runs: int, prefix: str) -> dict:
    """Kernel milliseconds per call, summed per ONNX op type, from onnxruntime's profiler."""
    sess = session(path, threads, prefix)
    for _ in range(runs + 1):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    keep_after = runs_seen[0]["ts"] + runs_seen[0]["dur"]  # skip the first (warm-up) run
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= keep_after:
            op = e["args"]["op_name"]
            totals[op] += e["dur"] / 1000 / runs
            counts[op] += 1
    run_ms = statistics.median(e["dur"] / 1000 for e in runs_seen[1:])
    return {
        "run_ms": run_ms,
        "ops": {op: {"ms": totals[op], "nodes": counts[op] // runs} for op in totals},
    }


def table(report: dict) -> str:
    rows = []
    for name, part in report["graphs"].items():
        rows.append(
            f"\n**{name}**: {part['median_ms']:.1f} ms unprofiled, {part['gflops']:.1f} GFLOPs, "
            f"{part['gflop_per_s']:.0f} GFLOP/s; profiled run {part['profile']['run_ms']:.1f} ms\n"
        )
        rows.append("| op type | nodes | ms per call | share of kernel time |")
        rows.append("|---|---|---|---|")
        ops = part["profile"]["ops"]
        total = sum(o["ms"] for o in ops.values())
        for op, o in sorted(ops.items(), key=lambda kv: -kv[1]["ms"]):
            if o["ms"] / total >= 0.002:
                rows.append(
                    f"| {op} | {o['nodes']} | {o['ms']:.1f} | {100 * o['ms'] / total:.1f} % |"
                )
    head = (
        f"{report['arch']} {report['size']}, {report['threads']} threads, onnxruntime "
        f"{report['onnxruntime']}; matmul peak {report['peak_gflops']:.0f} GFLOP/s; "
        f"detector / backbone GFLOP/s = **{report['ratio']:.2f}**"
    )
    return head + "\n" + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="faster_rcnn_fpn")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--profile-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/profile"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_detector(ModelConfig(arch=args.arch, depth=50, num_classes=80)).eval()
    detector_path = args.out / "detector.onnx"
    wrapper = export(model, detector_path, (height, width))
    backbone_path = args.out / "backbone.onnx"
    image = torch.rand(1, 3, height, width)
    torch.onnx.export(model.backbone, (image,), str(backbone_path), dynamo=True, verbose=False)
    feed_image = image.numpy()
    graphs = {
        "detector": (detector_path, wrapper),
        "backbone + FPN": (backbone_path, model.backbone),
    }
    report = {
        "arch": args.arch,
        "size": args.size,
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "peak_gflops": measure_peak_gflops(args.threads),
        "graphs": {},
    }
    sessions = {name: session(path, args.threads) for name, (path, _) in graphs.items()}
    feeds = {name: {s.get_inputs()[0].name: feed_image} for name, s in sessions.items()}
    seconds = interleaved_medians(sessions, feeds, args.runs)
    for name, (path, module) in graphs.items():
        gflops = count_flops(module, feed_image) / 1e9
        report["graphs"][name] = {
            "median_ms": 1000 * seconds[name],
            "gflops": gflops,
            "gflop_per_s": gflops / seconds[name],
            "profile": per_node_type(
                path, args.threads, feeds[name], args.profile_runs, str(args.out / name.split()[0])
            ),
        }
        print(f"{name}: {1000 * seconds[name]:.1f} ms, {gflops / seconds[name]:.0f} GFLOP/s")
    graphs_out = report["graphs"]
    report["ratio"] = (
        graphs_out["detector"]["gflop_per_s"] / graphs_out["backbone + FPN"]["gflop_per_s"]
    )
    (args.out / "profile.json").write_text(json.dumps(report, indent=2))
    (args.out / "profile.md").write_text(table(report))
    print(table(report))


if __name__ == "__main__":
    main()
