"""POD on the synthetic set: baseline vs GSL vs FD (from scratch) vs FD-WT, equal iterations.

Run: .venv/bin/python bench/pod_study.py [--iters 600] [--seeds 0 1] [--out runs/pod_study]
(needs `podkit data synth data/synth`). Every model trains `iters` iterations of the tiny
Faster R-CNN FPN recipe. FD uses the plan decomposed from the final GSL model and starts
from random weights; FD-WT decomposes the GSL model at 2/3 of the budget (scales over
`--scale-images` training images) and finetunes the transferred weights for the last 1/3.
Prints a markdown table (AP, APs/m/l, mean seeds) and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from podkit.config import load_config
from podkit.pod.decompose import decompose_checkpoint
from podkit.pod.scales import scales_from_checkpoint
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/tiny/faster_rcnn_fpn.yaml"
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def run(out: Path, iters: int, seed: int, *extra: str) -> dict:
    cfg = load_config(
        CONFIG,
        [
            f"train.max_iter={iters}",
            f"train.seed={seed}",
            f"train.warmup_iters={min(200, iters // 4)}",
            "train.checkpoint_every=0",
            *extra,
        ],
    )
    if (out / "eval.json").exists():  # resume a partly done study
        return json.loads((out / "eval.json").read_text())
    return train(cfg, out, overwrite=True).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scale-images", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("runs/pod_study"))
    args = parser.parse_args()
    first = (2 * args.iters) // 3
    results: dict[str, list[dict]] = {"baseline": [], "GSL": [], "FD": [], "FD-WT": []}
    scales_seen = {}
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        results["baseline"].append(run(root / "baseline", args.iters, seed))
        results["GSL"].append(
            run(
                root / "gsl",
                args.iters,
                seed,
                "model.gsl=true",
                "train.keep_checkpoints=true",
                f"train.checkpoint_every={first}",
            )
        )
        scales = scales_from_checkpoint(root / "gsl/last.pt", args.scale_images)
        (root / "scales.json").write_text(json.dumps(scales, indent=2))
        scales_seen[seed] = scales
        plan = decompose_checkpoint(root / "gsl/last.pt", scales, root / "fd_from_gsl.pt")
        (root / "plan.json").write_text(json.dumps(plan, indent=2))
        results["FD"].append(
            run(root / "fd", args.iters, seed, f"model.fd_plan={root / 'plan.json'}")
        )
        early = scales_from_checkpoint(root / f"gsl/iter_{first}.pt", args.scale_images)
        early_plan = decompose_checkpoint(
            root / f"gsl/iter_{first}.pt", early, root / "fd_wt_init.pt"
        )
        (root / "plan_early.json").write_text(json.dumps(early_plan, indent=2))
        results["FD-WT"].append(
            run(
                root / "fd_wt",
                args.iters - first,
                seed,
                f"model.fd_plan={root / 'plan_early.json'}",
                f"model.init_from={root / 'fd_wt_init.pt'}",
            )
        )
    (args.out / "results.json").write_text(
        json.dumps(
            {"iters": args.iters, "seeds": args.seeds, "results": results, "scales": scales_seen},
            indent=2,
        )
    )
    print(f"| model ({args.iters} iterations, seeds {args.seeds}) | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for name, runs in results.items():
        cells = []
        for k in KEYS:
            values = [r[k] for r in runs if r.get(k) is not None]
            cells.append(
                " / ".join(f"{v:.1f}" for v in values)
                + (f" (mean {statistics.mean(values):.1f})" if len(values) > 1 else "")
            )
        print(f"| {name} | " + " | ".join(cells) + " |")
    for seed, scales in scales_seen.items():
        print(
            f"seed {seed} learned scales (d_h, d_w): "
            + ", ".join(
                f"{layer['name'].split('body.')[-1]} ({layer['d_h_mean']:.2f}, {layer['d_w_mean']:.2f})"
                for layer in scales["layers"]
            )
        )


if __name__ == "__main__":
    main()
