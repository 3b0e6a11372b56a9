"""SNIP and AVW/RLO on the synthetic set: equal iterations, several seeds (issue 7).

Run: .venv/bin/python bench/scale_study.py [--iters 300] [--seeds 0 1] [--out runs/scale_study]
    [--init faster_rcnn_fpn=CKPT --init retinanet=CKPT] [--lr 0.01] [--baselines DIR]

The issue-7 protocol (continued training from a converged checkpoint), kept until SNIP and
AVW/RLO move to bench/study.py's shared-start protocol on the scale benchmark; DST and
Dynamic R-CNN have moved already (bench/methods_study.py is retired).
(needs `podkit data synth data/synth`). Tiny RetinaNet: baseline, AVW, RLO. Tiny Faster R-CNN
FPN: baseline (224-288 px), multi-scale training (the pyramid's three sizes, every object
trained at every size), SNIP (the same sizes with the synthetic preset's valid ranges); each
tested single-scale (256) and multi-scale (the pyramid merged with linear soft-NMS; SNIP's
keeps each resolution's test range). The two baselines are trained here unless --baselines
holds them (seedN/frcnn_baseline, seedN/retinanet_baseline).
Also: RLO's action frequencies, and the activation memory of a SNIP batch at the highest
resolution with and without chips. Writes OUT/results.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
from pathlib import Path

import torch

from podkit.bench.accuracy import evaluate_path
from podkit.config import load_config
from podkit.data import load_dataset
from podkit.data.loader import DetectionDataset, collate, training_batches
from podkit.models import build_detector
from podkit.models.pyramid import PYRAMIDS
from podkit.train.loop import train
from podkit.train.methods.snip import crop_to_chips, mark_invalid, resize_batch

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90")

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


def evaluate_variant(run_dir: Path, test: str, single: dict) -> dict:
    if test == "single":
        return single
    path = run_dir / f"eval_{test}.json"
    if not path.exists():
        path.write_text(json.dumps(evaluate_path(run_dir / "last.pt", TESTS[test])))
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
        metrics = train(cfg, out, overwrite=True).metrics
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
    add_study_arguments(parser, "runs/scale_study")
    parser.add_argument(
        "--baselines",
        type=Path,
        default=Path("runs/methods_study"),
        help="where earlier baselines are",
    )
    parser.add_argument("--chip", type=int, default=256)
    args = parser.parse_args()
    results: dict[str, dict] = {}
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
                if baseline and (args.baselines / f"seed{seed}" / baseline).exists()
                else args.out / f"seed{seed}" / slug
            )
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
