"""DST and Dynamic R-CNN on the synthetic set: equal iterations, several seeds (issue 6).

Run: .venv/bin/python bench/methods_study.py [--iters 300] [--seeds 0 1] [--out runs/methods_study]
    [--init faster_rcnn_fpn=runs/tiny_frcnn_900/last.pt --init retinanet=runs/tiny_retina_gn/last.pt]
    [--lr 0.01]
(needs `podkit data synth data/synth`). From scratch, 300 iterations are too few for the tiny
recipes (the classifier has not yet separated the classes: AP ~5 where 900 iterations give
47), so the figures in docs/benchmarks.md continue every variant of a detector from one
common trained baseline (`--init`) for the same iterations at `--lr`. Tiny Faster R-CNN FPN: baseline, DST, Dynamic R-CNN,
both; tiny RetinaNet: baseline, DST. Prints AP, APs/m/l, AP50-AP90 per run and the seed
means, the fraction of collage iterations, and Dynamic R-CNN's final IoU threshold and beta;
`podkit plot RUN` draws each run's curves. Writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from podkit.config import load_config
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90")
RUNS = {
    "FRCNN baseline": ("faster_rcnn_fpn", []),
    "FRCNN DST": ("faster_rcnn_fpn", [{"name": "dst"}]),
    "FRCNN Dynamic R-CNN": ("faster_rcnn_fpn", [{"name": "dynamic_rcnn"}]),
    # K_I = 75 assumes 2000 proposals per image; the tiny recipe keeps 300: 75 * 300 / 2000
    "FRCNN Dynamic R-CNN K11": ("faster_rcnn_fpn", [{"name": "dynamic_rcnn", "k_iou": 11}]),
    "FRCNN DST + Dynamic R-CNN": ("faster_rcnn_fpn", [{"name": "dst"}, {"name": "dynamic_rcnn"}]),
    "RetinaNet baseline": ("retinanet", []),
    "RetinaNet DST": ("retinanet", [{"name": "dst"}]),
}


def run(
    out: Path, arch: str, methods: list[dict], iters: int, seed: int, overrides: tuple = ()
) -> dict:
    """Train one configuration (or read its finished eval.json) and summarise its log."""
    if (out / "eval.json").exists():  # resume a partly done study
        metrics = json.loads((out / "eval.json").read_text())
    else:
        cfg = load_config(
            ROOT / f"configs/tiny/{arch}.yaml",
            [
                f"train.max_iter={iters}",
                f"train.seed={seed}",
                f"train.warmup_iters={min(200, iters // 4)}",
                "train.checkpoint_every=0",
                "train.log_every=1",
                # the tiny RetinaNet recipe's clipping for every run: without it, DST's
                # collages took the Faster R-CNN recipe (lr 0.04) to inf at iteration 125
                "train.clip_grad_norm=10.0",
                f"methods={json.dumps(methods)}",
                *overrides,
            ],
        )
        metrics = train(cfg, out).metrics
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    state = {"seconds_per_iter": statistics.median(r["time"] for r in log[5:])}
    if any("dst_collage" in r for r in log):
        state["collage_fraction"] = statistics.mean(r.get("dst_collage", 0) for r in log)
    if any("iou_threshold" in r for r in log):
        last = [r for r in log if "iou_threshold" in r][-1]
        state.update(final_iou_threshold=last["iou_threshold"], final_beta=last["beta"])
    return {**metrics, **state}


def study_overrides(arch: str, init: list[str], lr: float | None) -> tuple[str, ...]:
    """`--init ARCH=CKPT` and `--lr` as config overrides for one detector's runs."""
    paths = dict(item.split("=", 1) for item in init)
    out = [f"model.init_from={paths[arch]}"] if arch in paths else []
    return tuple(out + ([f"train.lr={lr}"] if lr else []))


def add_study_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--init", nargs="*", default=[], help="ARCH=CKPT to start from")
    parser.add_argument("--lr", type=float, default=None, help="base lr (default: recipe's)")
    parser.add_argument("--only", nargs="*", help="run names to include (default: all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_study_arguments(parser, "runs/methods_study")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for name, (arch, methods) in RUNS.items():
        if args.only and name not in args.only:
            continue
        slug = name.lower().replace(" + ", "_").replace(" ", "_").replace("-", "")
        results[name] = [
            run(
                args.out / f"seed{seed}" / slug,
                arch,
                methods,
                args.iters,
                seed,
                study_overrides(arch, args.init, args.lr),
            )
            for seed in args.seeds
        ]
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "iters": args.iters,
                "seeds": args.seeds,
                "init": args.init,
                "lr": args.lr,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"| run ({args.iters} iterations, mean of seeds {args.seeds}) | " + " | ".join(KEYS))
    print("|---" * (len(KEYS) + 1) + "|")
    for name, runs in results.items():
        cells = [f"{statistics.mean(r[k] for r in runs if r.get(k) is not None):.1f}" for k in KEYS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for name, runs in results.items():
        extra = {
            k: [round(r[k], 3) for r in runs]
            for k in ("collage_fraction", "final_iou_threshold", "final_beta", "seconds_per_iter")
            if k in runs[0]
        }
        per_seed_ap = [round(r["AP"], 1) for r in runs]
        print(f"{name}: AP per seed {per_seed_ap}; {extra}")


if __name__ == "__main__":
    main()
