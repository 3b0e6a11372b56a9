"""`podkit demo`: the whole pipeline on the built-in data, sized for a laptop CPU.

synthetic set -> tiny baseline and tiny GSL Faster R-CNN -> learned scales -> scale
decomposition -> FD-WT finetune -> AP of all four -> ONNX / TVM exports of baseline, GSL
and FD (each checked against PyTorch) -> latency side by side -> DIR/report.md with the
AP table, the latency table, the learned-scale plot and the latency plot.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from podkit.config import SHIPPED_CONFIGS, load_config
from podkit.data.synthetic import dataset_statistics, write_split
from podkit.train.loop import train

AP_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
STEPS = 7


def run_demo(
    out: Path,
    iters: int = 350,
    train_images: int = 400,
    val_images: int = 100,
    size: int = 192,
    backends: tuple[str, ...] = ("torch", "onnxruntime", "tvm"),
    bench_iters: int = 10,
    console: Console | None = None,
) -> dict[str, dict]:
    """Run the pipeline into `out`; returns {"ap": {model: eval}, "latency": report}."""
    from podkit.bench.latency import LatencyOptions, run_latency, to_markdown
    from podkit.bench.latency import plot as plot_latency
    from podkit.pod.decompose import decompose_checkpoint
    from podkit.pod.scales import plot_scales, scales_from_checkpoint

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    console.rule(f"1/{STEPS} synthetic data")
    for split, count in (("train", train_images), ("val", val_images)):
        path = write_split(data, split, count, size, seed=0)
        stats = dataset_statistics(path)
        console.print(
            f"{path}: {count} images, {100 * stats['instances_small']:.0f} % of instances small"
        )
    common = [
        f"data.train.ann={data}/annotations/train.json",
        f"data.train.images={data}/train",
        f"data.val.ann={data}/annotations/val.json",
        f"data.val.images={data}/val",
        f"data.min_size=[{size}]",
        f"data.test_min_size={size}",
        f"train.warmup_iters={min(100, iters // 4)}",
        "train.workers=0",
    ]

    def train_run(name: str, extra: list[str], steps: int) -> dict:
        overrides = [*common, f"train.max_iter={steps}", f"train.checkpoint_every={steps}", *extra]
        cfg = load_config(SHIPPED_CONFIGS / "tiny/faster_rcnn_fpn.yaml", overrides)
        return train(cfg, out / name, console=console, overwrite=True).metrics or {}

    ap = {}
    console.rule(f"2/{STEPS} train the baseline ({iters} iterations)")
    ap["baseline"] = train_run("baseline", [], iters)
    console.rule(f"3/{STEPS} train the GSL network ({iters} iterations)")
    ap["GSL"] = train_run("gsl", ["model.gsl=true"], iters)
    console.rule(f"4/{STEPS} learned scales -> scale decomposition -> FD")
    scales = scales_from_checkpoint(out / "gsl/last.pt", min(train_images, 100))
    (out / "scales.json").write_text(json.dumps(scales, indent=2))
    plot_scales(scales, out / "scales.png")
    plan = decompose_checkpoint(out / "gsl/last.pt", scales, out / "fd.pt")
    split = sum(len(layer["parts"]) == 2 for layer in plan)
    console.print(f"{len(plan)} GSL convs, {split} split into two integer-dilation convs")
    finetune = max(iters // 3, 1)
    console.rule(f"5/{STEPS} finetune FD-WT ({finetune} iterations)")
    (out / "plan.json").write_text(json.dumps(plan, indent=2))
    ap["FD-WT"] = train_run(
        "fd_wt",
        [f"model.fd_plan={out / 'plan.json'}", f"model.init_from={out / 'fd.pt'}", "train.lr=0.01"],
        finetune,
    )
    console.rule(f"6/{STEPS} export + latency ({', '.join(backends)})")
    checkpoints = [out / "baseline/last.pt", out / "gsl/last.pt", out / "fd_wt/last.pt"]
    opts = LatencyOptions(
        input_size=(size, size),
        iters=bench_iters,
        labels=["baseline", "GSL", "FD-WT"],
        cache_dir=out / "exports",
    )
    latency = run_latency(checkpoints, list(backends), opts, log=console.print)
    (out / "latency.json").write_text(json.dumps(latency, indent=2))
    plot_latency(latency, out / "latency.png")
    console.rule(f"7/{STEPS} report")
    report = out / "report.md"
    lines = [
        "# podkit demo",
        "",
        f"Synthetic set: {train_images} training / {val_images} validation images at ~{size} px. "
        f"Tiny Faster R-CNN FPN: baseline and GSL {iters} iterations each; FD-WT = the GSL "
        f"network decomposed with weight transfer, then finetuned {finetune} iterations.",
        "",
        "## Accuracy",
        "",
        "| model | " + " | ".join(AP_KEYS) + " |",
        "|---" * (len(AP_KEYS) + 1) + "|",
    ]
    for name, metrics in ap.items():
        cells = ["-" if metrics.get(k) is None else f"{metrics[k]:.1f}" for k in AP_KEYS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Learned scales",
        "",
        "![learned scales](scales.png)",
        "",
        "## Latency",
        "",
        to_markdown(latency),
        "![latency](latency.png)",
    ]
    report.write_text("\n".join(lines) + "\n")
    console.print(f"wrote {report}")
    return {"ap": ap, "latency": latency}
