"""Latency per image of a dynamic-batch ONNX artefact against static-batch ones.

    .venv/bin/python -m studies.dynamic_batch runs/study/frcnn_baseline/seed0/last.pt \
        --input-size 448x640 --batch 8 --iters 10 --out runs/bench/dynamic_batch

Exports (cached in --out) the checkpoint at batch 1, at batch N and with `--dynamic-batch`,
then times, interleaved in one process, the static artefacts at their batch and the dynamic
one at 1 and at N images per call; writes report.md with the median ms per call and per
image. The dynamic graph runs the backbone on the batch and the post-processing in an ONNX
Scan (image by image), where the static one unrolls it.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from podkit.bench.latency import time_interleaved
from podkit.config import parse_size
from podkit.export import ExportOptions, export_checkpoint, load, sample_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--input-size", default="448x640")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/dynamic_batch"))
    args = parser.parse_args()
    size = parse_size(args.input_size)
    args.out.mkdir(parents=True, exist_ok=True)
    artefacts = {}
    for name, batch in (("static_b1", 1), (f"static_b{args.batch}", args.batch), ("any", None)):
        path = args.out / f"{name}.onnx"
        if not path.is_file():
            export_checkpoint(args.checkpoint, "onnx", path, ExportOptions(size, batch=batch))
        artefacts[name] = load(path)
    cases = [  # (label, artefact, images per call)
        ("static batch 1", "static_b1", 1),
        ("dynamic batch, 1 image", "any", 1),
        (f"static batch {args.batch}", f"static_b{args.batch}", args.batch),
        (f"dynamic batch, {args.batch} images", "any", args.batch),
    ]
    images = {n: sample_image(size, batch=n) for n in (1, args.batch)}
    calls = [lambda a=artefacts[name], x=images[n]: a(x) for _, name, n in cases]
    times = time_interleaved(
        calls, args.iters, progress=lambda i, n: print(f"round {i}/{n}", flush=True)
    )
    lines = [
        f"{args.checkpoint}, {size[0]}x{size[1]}, onnxruntime FP32, {args.iters} rounds "
        "interleaved (median)",
        "",
        "| artefact | images per call | ms per call | ms per image |",
        "|---|---|---|---|",
    ]
    for (label, _, n), ms in zip(cases, times, strict=True):
        median = statistics.median(ms)
        lines.append(f"| {label} | {n} | {median:.1f} | {median / n:.1f} |")
    report = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
