"""CPU training in fp32 vs bf16 autocast, NCHW vs channels_last: speed side by side, then AP.

Run: .venv/bin/python -m studies.train_precision [--iters 30] [--rounds 3] [--ap]
    [--out runs/precision]   (needs `podkit data synth data/synth`)

Speed: short runs of the tiny Faster R-CNN FPN and RetinaNet recipes through `train()`
alternate round-robin over the four modes, so machine drift hits all alike; the figure is
the median seconds per iteration over all rounds (first 5 of each run skipped) and the
median time an iteration waited for its batch (`data_time` of metrics.jsonl).
`--ap` also trains the 900-iteration Faster R-CNN recipe in fp32 and in bf16 (both
channels_last) and evaluates each; finished runs are reused, so an interrupted run resumes.
Writes OUT/report.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from short_runs import short_run  # studies/, the script's folder

from podkit.config import load_config
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "fp32": ["train.amp=false", "train.channels_last=false"],
    "fp32 channels_last": ["train.amp=false", "train.channels_last=true"],
    "bf16": ["train.amp=true", "train.channels_last=false"],
    "bf16 channels_last": ["train.amp=true", "train.channels_last=true"],
}
AP_MODES = ("fp32 channels_last", "bf16 channels_last")


def speed(arch: str, iters: int, rounds: int, out: Path) -> dict[str, dict[str, float]]:
    seconds: dict[str, list[float]] = {m: [] for m in MODES}
    waits: dict[str, list[float]] = {m: [] for m in MODES}
    for round_ in range(rounds):
        for mode, overrides in MODES.items():
            run = out / "speed" / arch / f"{mode.replace(' ', '_')}_{round_}"
            log = short_run(arch, run, iters, overrides)
            seconds[mode] += [r["time"] for r in log]
            waits[mode] += [r["data_time"] for r in log]
    base = statistics.median(seconds["fp32"])
    return {
        m: {
            "s_per_iter": statistics.median(s),
            "speedup": base / statistics.median(s),
            "data_wait_s": statistics.median(waits[m]),
        }
        for m, s in seconds.items()
    }


def accuracy(out: Path) -> dict[str, dict]:
    results = {}
    for mode in AP_MODES:
        run = out / "ap" / mode.replace(" ", "_")
        if not (run / "eval.json").exists():
            cfg = load_config(ROOT / "configs/tiny/faster_rcnn_fpn.yaml", MODES[mode])
            train(cfg, run, resume=(run / "last.pt").exists(), overwrite=True)
        log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        results[mode] = {
            **json.loads((run / "eval.json").read_text()),
            "s_per_iter": statistics.median(r["time"] for r in log[5:]),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ap", action="store_true", help="also the 900-iteration AP both ways")
    parser.add_argument("--out", type=Path, default=Path("runs/precision"))
    args = parser.parse_args()
    report: dict = {"iters": args.iters, "rounds": args.rounds}
    for arch in ("faster_rcnn_fpn", "retinanet"):
        report[arch] = speed(arch, args.iters, args.rounds, args.out)
    if args.ap:
        report["ap"] = accuracy(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print("| recipe | mode | s/iter | speed-up vs fp32 | data wait s/iter |")
    print("|---|---|---|---|---|")
    for arch in ("faster_rcnn_fpn", "retinanet"):
        for mode, r in report[arch].items():
            print(
                f"| {arch} | {mode} | {r['s_per_iter']:.3f} | {r['speedup']:.2f} "
                f"| {r['data_wait_s']:.4f} |"
            )
    if args.ap:
        print("\n| 900-iteration FRCNN recipe | AP | AP50 | AP75 | APs | APm | APl | s/iter |")
        print("|---|---|---|---|---|---|---|---|")
        for mode, r in report["ap"].items():
            cells = " | ".join(f"{r[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
            print(f"| {mode} | {cells} | {r['s_per_iter']:.3f} |")


if __name__ == "__main__":
    main()
