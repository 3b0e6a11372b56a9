"""SNIP and AVW/RLO on the synthetic set: equal iterations, several seeds (issue 7).

Run: .venv/bin/python bench/scale_study.py [--iters 300] [--seeds 0 1] [--out runs/scale_study]
    [--init ... --lr ...] (as bench/methods_study.py; pass the same to both)
(needs `podkit data synth data/synth`). Tiny RetinaNet: baseline, AVW, RLO. Tiny Faster R-CNN
FPN: baseline (224-288 px), multi-scale training (the pyramid's three sizes, every object
trained at every size), SNIP (the same sizes with the synthetic preset's valid ranges); each
tested single-scale (256) and multi-scale (the pyramid merged with linear soft-NMS; SNIP's
keeps each resolution's test range). The baselines are the ones bench/methods_study.py
trains (same config, iterations and seeds): pass its folder as --baselines to reuse them.
Also: RLO's action frequencies, and the activation memory of a SNIP batch at the highest
resolution with and without chips. Writes OUT/results.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from methods_study import KEYS, ROOT, add_study_arguments, run, study_overrides  # noqa: E402

from podkit.config import load_config  # noqa: E402
from podkit.data import load_dataset  # noqa: E402
from podkit.data.loader import DetectionDataset, collate, training_batches  # noqa: E402
from podkit.models import build_detector  # noqa: E402
from podkit.train.evaluate import evaluate_checkpoint  # noqa: E402
from podkit.train.methods.snip import PYRAMIDS, crop_to_chips, mark_invalid, resize_batch  # noqa: E402

PYRAMID = PYRAMIDS["synthetic"]
LARGEST = max(PYRAMID, key=lambda r: r.min_size)
LOAD_AT = [f"data.min_size=[{LARGEST.min_size}]", f"data.max_size={LARGEST.max_size}"]
RLO_INTERVAL = 20  # 15 weight updates in 300 iterations (50 would give 6)
TESTS = {
    "single": [],
    "multi": ["eval.multiscale=true", "eval.pyramid=synthetic"],
    "snip": ["eval.snip=true", "eval.pyramid=synthetic"],
}
RUNS = {  # name: (arch, methods, overrides, test variants, baseline folder name)
    "RetinaNet baseline": ("retinanet", [], [], ["single"], "retinanet_baseline"),
    "RetinaNet AVW": (
        "retinanet",
        [{"name": "avw", "interval": RLO_INTERVAL}],
        [],
        ["single"],
        None,
    ),
    "RetinaNet RLO": (
        "retinanet",
        [{"name": "rlo", "interval": RLO_INTERVAL}],
        [],
        ["single"],
        None,
    ),
    "FRCNN baseline": ("faster_rcnn_fpn", [], [], ["single", "multi"], "frcnn_baseline"),
    "FRCNN multi-scale train": (
        "faster_rcnn_fpn",
        [],
        [f"data.min_size={[r.min_size for r in PYRAMID]}", f"data.max_size={LARGEST.max_size}"],
        ["single", "multi"],
        None,
    ),
    "FRCNN SNIP": (
        "faster_rcnn_fpn",
        [{"name": "snip", "pyramid": "synthetic"}],
        LOAD_AT,
        ["single", "snip"],
        None,
    ),
}


def wait_for(path: Path, minutes: float = 180) -> None:
    """A baseline that bench/methods_study.py is still training (run both side by side)."""
    deadline = time.time() + 60 * minutes
    while not path.exists():
        if time.time() > deadline:
            raise TimeoutError(f"{path} did not appear: run bench/methods_study.py first")
        time.sleep(30)


def evaluate_variant(run_dir: Path, test: str, single: dict) -> dict:
    if test == "single":
        return single
    path = run_dir / f"eval_{test}.json"
    if not path.exists():
        path.write_text(json.dumps(evaluate_checkpoint(run_dir / "last.pt", TESTS[test])))
    return json.loads(path.read_text())


def rlo_actions(run_dir: Path) -> dict[int, int]:
    """How often each action was drawn (one draw per interval)."""
    log = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    drawn = [r["rlo_action"] for r in log if r["iter"] % RLO_INTERVAL == 0]
    return dict(sorted(collections.Counter(drawn).items()))


def activation_bytes(model, batch) -> int:
    """Bytes the forward pass saves for backward (unique storages): the training memory that
    grows with the image."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(batch.images, batch.targets)
        sum(out.losses.values()).backward()
    return sum(seen.values())


def chip_memory(chip: int, batches: int = 4) -> dict:
    """Activation memory of SNIP batches at the highest resolution, without and with chips."""
    cfg = load_config(ROOT / "configs/tiny/faster_rcnn_fpn.yaml", LOAD_AT)
    data = load_dataset(cfg.data.train)
    dataset = DetectionDataset(data.records, cfg.data.max_size)
    stream = training_batches(data.records, cfg.train.batch_size, [LARGEST.min_size], 0.0, 0)
    torch.manual_seed(0)
    model = build_detector(cfg.model).train()
    rng = random.Random(0)
    full, chipped = [], []
    for _ in range(batches):
        batch = collate([dataset[s] for s in next(stream)])
        batch, scales = resize_batch(batch, LARGEST)
        batch.targets = [
            mark_invalid(t, s, LARGEST.train_range)
            for t, s in zip(batch.targets, scales, strict=True)
        ]
        full.append(activation_bytes(model, batch))
        chipped.append(activation_bytes(model, crop_to_chips(batch, chip, 50, rng)))
    return {
        "chip": chip,
        "resolution": LARGEST.min_size,
        "batch_size": cfg.train.batch_size,
        "full_MiB": statistics.mean(full) / 2**20,
        "chips_MiB": statistics.mean(chipped) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_study_arguments(parser, "runs/scale_study")
    parser.add_argument("--baselines", type=Path, default=Path("runs/methods_study"))
    parser.add_argument("--chip", type=int, default=256)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    # own runs first, the baselines bench/methods_study.py trains last
    order = sorted(RUNS, key=lambda name: RUNS[name][4] is not None)
    for name in order:
        arch, methods, overrides, tests, baseline = RUNS[name]
        if args.only and name not in args.only:
            continue
        per_test = {t: [] for t in tests}
        extra = []
        for seed in args.seeds:
            slug = name.lower().replace(" ", "_").replace("-", "_")
            run_dir = (
                args.baselines / f"seed{seed}" / baseline
                if baseline
                else args.out / f"seed{seed}" / slug
            )
            if baseline:
                wait_for(run_dir / "eval.json")
            single = run(
                run_dir,
                arch,
                methods,
                args.iters,
                seed,
                (*overrides, *study_overrides(arch, args.init, args.lr)),
            )
            for test in tests:
                per_test[test].append(evaluate_variant(run_dir, test, single))
            extra.append(
                {
                    "seconds_per_iter": single["seconds_per_iter"],
                    **({"rlo_actions": rlo_actions(run_dir)} if "RLO" in name else {}),
                }
            )
        results[name] = {"tests": per_test, "extra": extra}
    results = {name: results[name] for name in RUNS if name in results}
    memory = chip_memory(args.chip)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"iters": args.iters, "seeds": args.seeds, "results": results, "memory": memory},
            indent=2,
        )
    )
    print(
        f"| run, test ({args.iters} iterations, mean of seeds {args.seeds}) | " + " | ".join(KEYS)
    )
    print("|---" * (len(KEYS) + 1) + "|")
    for name, r in results.items():
        for test, runs in r["tests"].items():
            cells = [
                f"{statistics.mean(x[k] for x in runs if x.get(k) is not None):.1f}" for k in KEYS
            ]
            print(f"| {name}, {test}-scale test | " + " | ".join(cells) + " |")
    print()
    for name, r in results.items():
        per_seed = {t: [round(x["AP"], 1) for x in runs] for t, runs in r["tests"].items()}
        print(f"{name}: AP per seed {per_seed}; {r['extra']}")
    print(
        f"\nactivation memory at {memory['resolution']} px, batch {memory['batch_size']}: "
        f"{memory['full_MiB']:.0f} MiB full images, {memory['chips_MiB']:.0f} MiB with "
        f"{memory['chip']} px chips"
    )


if __name__ == "__main__":
    main()
