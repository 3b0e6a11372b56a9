"""Training-time overhead of each method vs the baseline, measured side by side.

Run: .venv/bin/python -m studies.methods_overhead [--iters 40] [--rounds 3] [--out runs/overhead]
(needs `podkit data synth data/synth`). Short runs of the tiny Faster R-CNN FPN recipe
(RetinaNet for AVW/RLO, which weight its P3-P7 losses) alternate round-robin
(baseline, DST, Dynamic R-CNN, ... then again), so machine drift hits all alike; the
figure is the median seconds per iteration over all rounds (first 5 iterations of each run
skipped), as a ratio to the baseline of the same detector. The machine's noise between
runs (a few %) is wider than the 1 % targets, so each method's own time is also measured
directly: the time spent inside its hook calls per iteration, with the batches a DST collage
draws from the data stream counted apart (data loading, which loader workers overlap with
compute on a machine with cores to spare). Also times one k=4 collage (make_collage on four
real batches). Targets: DST <= 1.05, Dynamic R-CNN / AVW / RLO <= 1.01.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from short_runs import short_run  # studies/, the script's folder

from podkit.config import load_config
from podkit.train.hooks import Hook
from podkit.train.methods import build_hooks

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "faster_rcnn_fpn": {
        "baseline": [],
        "DST": [{"name": "dst"}],
        "Dynamic R-CNN": [{"name": "dynamic_rcnn"}],
    },
    "retinanet": {"baseline": [], "AVW": [{"name": "avw"}], "RLO": [{"name": "rlo"}]},
}


class TimedHook(Hook):
    """Runs a hook and adds up the seconds spent in it, and in the batches it draws."""

    def __init__(self, hook: Hook) -> None:
        self.hook, self.name, self.draws_per_step = hook, hook.name, hook.draws_per_step
        self.seconds, self.draw_seconds = 0.0, 0.0

    def _timed(self, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        self.seconds += time.perf_counter() - start
        return out

    def before_step(self, state, batch):
        if not getattr(state.draw_batch, "timed", False):
            draw = state.draw_batch

            def timed_draw():
                start = time.perf_counter()
                out = draw()
                self.draw_seconds += time.perf_counter() - start
                return out

            timed_draw.timed = True
            state.draw_batch = timed_draw
        return self._timed(self.hook.before_step, state, batch)

    def observe(self, state, stats):
        return self._timed(self.hook.observe, state, stats)

    def after_step(self, state):
        return self._timed(self.hook.after_step, state)


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
    parser.add_argument("--workers", type=int, default=1, help="loader workers (tiny recipes: 1)")
    args = parser.parse_args()
    report = {}
    for arch, variants in VARIANTS.items():
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        in_hooks: dict[str, list[float]] = {name: [] for name in variants}
        drawing: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, methods in variants.items():
                out = args.out / arch / f"{name.replace(' ', '_')}_{round_}"
                hooks = [TimedHook(h) for h in build_hooks(methods)]
                overrides = ["train.lr=0.01", f"train.workers={args.workers}"]
                log = short_run(arch, out, args.iters, overrides, hooks)
                seconds[name] += [r["time"] for r in log]
                drawn = sum(h.draw_seconds for h in hooks)
                in_hooks[name].append((sum(h.seconds for h in hooks) - drawn) / args.iters)
                drawing[name].append(drawn / args.iters)
        base = statistics.median(seconds["baseline"])
        report[arch] = {
            name: {
                "s_per_iter": statistics.median(s),
                "ratio": statistics.median(s) / base,
                "hook_s_per_iter": statistics.mean(in_hooks[name]),
                "hook_share": statistics.mean(in_hooks[name]) / base,
                "draw_s_per_iter": statistics.mean(drawing[name]),
            }
            for name, s in seconds.items()
        }
    cfg = load_config(ROOT / "configs/tiny/faster_rcnn_fpn.yaml")
    report["collage_ms"] = collage_ms(cfg)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    for arch in VARIANTS:
        for name, r in report[arch].items():
            print(
                f"{arch:16s} {name:14s} {r['s_per_iter'] * 1e3:8.1f} ms/iter  x{r['ratio']:.3f}"
                f"  in hooks {r['hook_s_per_iter'] * 1e3:6.2f} ms/iter ({100 * r['hook_share']:.2f} %)"
                f"  drawing extra batches {r['draw_s_per_iter'] * 1e3:6.1f} ms/iter"
            )
    print(f"one k=4 collage of 8 images: {report['collage_ms']:.1f} ms")


if __name__ == "__main__":
    main()
