"""`podkit demo`: the pipeline end to end on the built-in data, sized for a laptop CPU.

Today: generate the synthetic set, train the tiny Faster R-CNN and RetinaNet recipes,
evaluate both, write DIR/report.md. Later stages (POD, export, latency) append to it.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from podkit.config import load_config
from podkit.data.synthetic import dataset_statistics, write_split
from podkit.train.loop import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "tiny"
RECIPES = {"Faster R-CNN FPN": "faster_rcnn_fpn.yaml", "RetinaNet": "retinanet.yaml"}


def run_demo(
    out: Path,
    iters: int = 300,
    train_images: int = 400,
    val_images: int = 100,
    size: int = 192,
    console: Console | None = None,
) -> dict[str, dict]:
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    console.rule("1/3 synthetic data")
    for split, count in (("train", train_images), ("val", val_images)):
        path = write_split(data, split, count, size, seed=0)
        stats = dataset_statistics(path)
        console.print(
            f"{path}: {count} images, {100 * stats['instances_small']:.0f} % of instances small"
        )
    results = {}
    for step, (name, file) in enumerate(RECIPES.items(), start=2):
        console.rule(f"{step}/3 train + evaluate {name} ({iters} iterations)")
        overrides = [
            f"data.train.ann={data}/annotations/train.json",
            f"data.train.images={data}/train",
            f"data.val.ann={data}/annotations/val.json",
            f"data.val.images={data}/val",
            f"data.min_size=[{size}]",
            f"data.test_min_size={size}",
            f"train.max_iter={iters}",
            f"train.warmup_iters={min(100, iters // 4)}",
            f"train.checkpoint_every={iters}",
            "train.workers=0",
        ]
        result = train(
            load_config(CONFIGS / file, overrides),
            out / file.removesuffix(".yaml"),
            console=console,
        )
        results[name] = result.metrics or {}
    report = out / "report.md"
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    lines = [
        "# podkit demo",
        "",
        f"Synthetic set: {train_images} training / {val_images} validation images at ~{size} px; {iters} iterations per detector.",
        "",
        "| detector | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, metrics in results.items():
        lines.append(
            f"| {name} | "
            + " | ".join("-" if metrics.get(k) is None else f"{metrics[k]:.1f}" for k in keys)
            + " |"
        )
    report.write_text("\n".join(lines) + "\n")
    console.print(f"wrote {report}")
    return results
