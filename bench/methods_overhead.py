"""Training-time overhead of each method vs the baseline, measured side by side (issues 6, 7).

Run: .venv/bin/python bench/methods_overhead.py [--iters 40] [--rounds 3] [--out runs/overhead]
(needs `podkit data synth data/synth`). Short runs of the tiny Faster R-CNN FPN recipe
(RetinaNet for AVW/RLO, which weight its P3-P7 losses) alternate round-robin
(baseline, DST, Dynamic R-CNN, ... then again), so machine drift hits all alike; the
figure is the median seconds per iteration over all rounds (first 5 iterations of each run
skipped), as a ratio to the baseline of the same detector. Also times one k=4 collage
(make_collage on four real batches). Targets: DST <= 1.05, Dynamic R-CNN / AVW / RLO <= 1.01.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from podkit.config import load_config
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "faster_rcnn_fpn": {
        "baseline": [],
        "DST": [{"name": "dst"}],
        "Dynamic R-CNN": [{"name": "dynamic_rcnn"}],
    },
    "retinanet": {"baseline": [], "AVW": [{"name": "avw"}], "RLO": [{"name": "rlo"}]},
}


def collage_ms(cfg, repeats: int = 20) -> float:
    """Median time of one k=4 collage of real training batches."""
    from podkit.data import load_dataset
    from podkit.data.loader import DetectionDataset, make_loader, training_batches
    from podkit.train.methods.dst import make_collage

    dataset = load_dataset(cfg.data.train)
    order = training_batches(dataset.records, cfg.train.batch_size, cfg.data.min_size, 0.5, 0)
    loader = iter(make_loader(DetectionDataset(dataset.records, cfg.data.max_size), order, 0))
    batches = [next(loader) for _ in range(4)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        make_collage(batches, 2)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/overhead"))
    args = parser.parse_args()
    report = {}
    for arch, variants in VARIANTS.items():
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, methods in variants.items():
                out = args.out / arch / f"{name.replace(' ', '_')}_{round_}"
                shutil.rmtree(out, ignore_errors=True)
                cfg = load_config(
                    ROOT / f"configs/tiny/{arch}.yaml",
                    [
                        f"train.max_iter={args.iters}",
                        f"train.warmup_iters={args.iters}",
                        "train.lr=0.01",
                        "train.checkpoint_every=0",
                        "train.log_every=1",
                        "train.workers=0",
                        "data.val.ann=''",
                        f"methods={json.dumps(methods)}",
                    ],
                )
                train(cfg, out)
                log = (out / "metrics.jsonl").read_text().splitlines()
                seconds[name] += [json.loads(line)["time"] for line in log[5:]]
        base = statistics.median(seconds["baseline"])
        report[arch] = {
            name: {"s_per_iter": statistics.median(s), "ratio": statistics.median(s) / base}
            for name, s in seconds.items()
        }
    cfg = load_config(ROOT / "configs/tiny/faster_rcnn_fpn.yaml")
    report["collage_ms"] = collage_ms(cfg)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    for arch in VARIANTS:
        for name, r in report[arch].items():
            print(f"{arch:16s} {name:14s} {r['s_per_iter'] * 1e3:8.1f} ms/iter  x{r['ratio']:.3f}")
    print(f"one k=4 collage of 8 images: {report['collage_ms']:.1f} ms")


if __name__ == "__main__":
    main()
