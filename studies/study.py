"""Method studies on the scale benchmark: named arms x seeds from one shared start, resumable.

Run (one study at a time; safe to leave in the background, re-run the same command to go on):
    podkit data synth data/scale --preset scale --val 1000
    nohup .venv/bin/python -m studies.study dst dynamic_rcnn --seeds 0 1 > runs/study.log 2>&1 &
    .venv/bin/python -m studies.study dst dynamic_rcnn --report     # tables of what has finished

Protocol. Each detector first trains one start checkpoint with its recipe
(configs/scale/ARCH.yaml) for `--start-iters` iterations at the recipe's lr with no decay:
just past the point where the classifier forms. Every arm of every study, every seed,
starts from it (`model.init_from`), so arms differ only by the method, and trains the full
recipe schedule (warm-up, decay at 2/3 and 8/9 of `--iters`, default 1200 iterations).
An arm is a recipe: a scale recipe itself (the baselines) or a file of studies/arms/ that
extends one (`_base_`) with the method or setting the arm tests.
Arms are paired by seed (same data order, same start); the report gives, per arm and
metric, the per-seed differences to its study's baseline, their mean with a 95 % t-interval
over the seeds (mean +- t(0.975, n - 1) * sd / sqrt(n) of the paired differences), and the
seed spread of the baseline (max - min over seeds). An effect is "resolved" only when its
interval excludes 0 over at least MIN_SEEDS seeds (an interval from two differences rests on
a standard deviation of two values: it is printed as "clear of 0 on 2 seeds").

Tests. Every arm is scored single-scale at the recipe's test size (RUN/eval.json). A study
with the `pyramid` test also scores every arm on the pyramid PYRAMID (RUN/eval_pyramid.json):
SNIP arms with their valid ranges (`eval.snip`), the others with plain multi-scale merging
(`eval.multiscale`), so each arm meets the same multi-scale test.

An arm is done when RUN/eval.json exists; an interrupted arm resumes from RUN/last.pt
(checkpoints every 200 iterations). Writes OUT/results.json and OUT/results.md.

Across machines. Run folders are not kept in the repository, so each finished arm also
writes its summary (every test it had) to LEDGER/SLUG/seedN.json with the fingerprint of the
start it trained from; the ledger is committed. A later run with a start of the same
fingerprint skips the recorded arms and reports them; arms are paired only within one
start (a seed whose arms were trained from different starts is left out of the pairs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from podkit.config import load_config
from podkit.evaluation.artefacts import evaluate_path
from podkit.models.checkpoint import load_checkpoint
from podkit.pod.decompose import checkpoint_plan, decompose_checkpoint, plan_checkpoint
from podkit.pod.scales import mean_scales, plot_scales, scales_from_checkpoint
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP80", "AP90")
# the SNIP study's pyramid, fitted to the benchmark's 448 px test size: 896, 448 and 224 px,
# valid ranges putting objects at 20-100 px as fed (evaluation/image_pyramid.fitted_pyramid);
# the SNIP arm trains on it (studies/arms/frcnn_snip.yaml), every arm is tested on it
PYRAMID = "fit:448"


@dataclass(frozen=True)
class Decompose:
    """How an FD arm starts and trains (POD): the plan of GSL_ARM's run of the same seed (its
    learned scales over SCALE_IMAGES training images), with `channel_multiple` (1: the exact
    split). transfer=False, "FD": the plan on the shared start's weights; True, "FD-WT": the
    GSL run's own weights transferred. Then `schedule` of the recipe's iterations at `lr_scale`
    times its lr (the paper's FD-WT: a full schedule at the full lr after GSL)."""

    gsl_arm: str
    channel_multiple: int
    transfer: bool
    schedule: float = 1.0
    lr_scale: float = 1.0


@dataclass(frozen=True)
class Arm:
    """One way of training a detector: its recipe (a shipped recipe, or a file of
    studies/arms/ extending one: the method or the setting the arm tests); `slug` names its
    run folder (shared across studies). From the shared start of its architecture unless
    `from_start` is False: then the recipe is trained from scratch for its own max_iter."""

    slug: str
    config: str
    from_start: bool = True
    decompose: Decompose | None = None


ARM_FILES = ROOT / "studies" / "arms"
FPN, RETINA, C4 = "scale/faster_rcnn_fpn.yaml", "scale/retinanet.yaml", "scale/faster_rcnn_c4.yaml"
# the augmentation study: the tiny recipe before (configs/tiny) and after (the small-data
# preset: augmentation and fitted anchors) on the synthetic set and on the sites set
TINY, SMALL_DATA = "tiny/faster_rcnn_fpn.yaml", "small_data/tiny_scratch.yaml"
TRAIN_IMAGES = 200  # the "train" test scores this many training images
SCALE_IMAGES = 500  # a GSL run's learned scales are averaged over this many training images


SHORT, LR_TENTH = 1 / 3, 0.1  # the short FD-WT finetune: a third of the schedule, lr / 10


def arm_file(slug: str) -> str:
    return str(ARM_FILES / f"{slug}.yaml")


ARMS = {
    "frcnn": Arm("frcnn_baseline", FPN),
    "frcnn_ms": Arm("frcnn_multiscale", arm_file("frcnn_multiscale")),
    "frcnn_dst": Arm("frcnn_dst", arm_file("frcnn_dst")),
    # Dynamic R-CNN's Table 3: label assignment only (DLA), SmoothL1 only (DSL), both
    "frcnn_dla": Arm("frcnn_drcnn_dla", arm_file("frcnn_drcnn_dla")),
    "frcnn_dsl": Arm("frcnn_drcnn_dsl", arm_file("frcnn_drcnn_dsl")),
    "frcnn_drcnn": Arm("frcnn_drcnn_both", arm_file("frcnn_drcnn_both")),
    "frcnn_ema": Arm("frcnn_ema", arm_file("frcnn_ema")),
    "retina": Arm("retinanet_baseline", RETINA),
    "retina_dst": Arm("retinanet_dst", arm_file("retinanet_dst")),
    "retina_avw": Arm("retinanet_avw", arm_file("retinanet_avw")),
    "retina_rlo": Arm("retinanet_rlo", arm_file("retinanet_rlo")),
    "frcnn_mst": Arm("frcnn_pyramid_ms", arm_file("frcnn_pyramid_ms")),
    "frcnn_snip": Arm("frcnn_snip", arm_file("frcnn_snip")),
    "tiny_synth": Arm("tiny_synth", TINY, from_start=False),
    "tiny_synth_aug": Arm("tiny_synth_aug", arm_file("tiny_synth_aug"), from_start=False),
    "tiny_sites": Arm("tiny_sites", arm_file("tiny_sites"), from_start=False),
    "tiny_sites_aug": Arm("tiny_sites_aug", SMALL_DATA, from_start=False),
    # POD's Table 5 on its detector, Faster R-CNN C4: baseline, GSL, FD, FD-WT
    "c4": Arm("c4_baseline", C4),
    "c4_gsl": Arm("c4_gsl", arm_file("c4_gsl")),
    "c4_fd": Arm("c4_fd", C4, decompose=Decompose("c4_gsl", 16, False)),
    "c4_fd_exact": Arm("c4_fd_exact", C4, decompose=Decompose("c4_gsl", 1, False)),
    # FD-WT as the paper trains it (a full schedule at the full lr), and a short finetune
    # (a third of the schedule at a tenth of the lr) with both channel multiples
    "c4_fdwt_full": Arm("c4_fdwt_full", C4, decompose=Decompose("c4_gsl", 16, True)),
    "c4_fdwt": Arm("c4_fdwt", C4, decompose=Decompose("c4_gsl", 16, True, SHORT, LR_TENTH)),
    "c4_fdwt_exact": Arm(
        "c4_fdwt_exact", C4, decompose=Decompose("c4_gsl", 1, True, SHORT, LR_TENTH)
    ),
}
# study: (its arms, baseline first; the metrics the papers judge it on; its tests)
STUDIES = {
    "dst": (("frcnn", "frcnn_ms", "frcnn_dst", "retina", "retina_dst"), ("APs", "AP"), ("single",)),
    "dynamic_rcnn": (
        ("frcnn", "frcnn_dla", "frcnn_dsl", "frcnn_drcnn"),
        ("AP", "AP80", "AP90"),
        ("single",),
    ),
    "loss_balance": (("retina", "retina_avw", "retina_rlo"), ("AP", "APs", "APl"), ("single",)),
    "ema": (("frcnn", "frcnn_ema"), ("AP", "APs", "AP90"), ("single",)),
    "snip": (
        ("frcnn", "frcnn_ms", "frcnn_mst", "frcnn_snip"),
        ("APs", "AP", "APl"),
        ("single", "pyramid"),
    ),
    "augment": (
        ("tiny_synth", "tiny_synth_aug", "tiny_sites", "tiny_sites_aug"),
        ("AP", "AP50"),
        ("single", "train"),
    ),
    "pod": (
        ("c4", "c4_gsl", "c4_fd", "c4_fd_exact", "c4_fdwt_full", "c4_fdwt", "c4_fdwt_exact"),
        ("AP", "APs", "APl"),
        ("single",),
    ),
}
EVAL_FILE = {"single": "eval.json", "pyramid": "eval_pyramid.json", "train": "eval_train.json"}
# arm: the arms it is paired with, its study's baseline first
BASELINES = {
    "frcnn_ms": ("frcnn",),
    "frcnn_dst": ("frcnn",),
    "frcnn_dla": ("frcnn",),
    "frcnn_dsl": ("frcnn",),
    "frcnn_drcnn": ("frcnn", "frcnn_dla"),
    "frcnn_ema": ("frcnn",),
    "retina_dst": ("retina",),
    "retina_avw": ("retina",),
    "retina_rlo": ("retina",),
    "frcnn_mst": ("frcnn",),
    "frcnn_snip": ("frcnn", "frcnn_mst"),  # the paper's question: SNIP vs multi-scale training
    "tiny_synth_aug": ("tiny_synth",),
    "tiny_sites_aug": ("tiny_sites",),
    "c4_gsl": ("c4",),
    "c4_fd": ("c4", "c4_gsl"),
    "c4_fd_exact": ("c4", "c4_fd"),
    # the paper: FD-WT 40.0 > FD (2x) 39.6; GSL 38.7 > FD 38.4 (1x)
    "c4_fdwt_full": ("c4", "c4_gsl", "c4_fd"),
    "c4_fdwt": ("c4", "c4_gsl", "c4_fdwt_full"),
    "c4_fdwt_exact": ("c4", "c4_fdwt"),
}


EXTRA: list[str] = []  # --set overrides, applied to every run
LEDGER = ROOT / "studies" / "results"  # committed summaries of finished arms, by start


def recipe(config: str, overrides: list[str]):
    return load_config(config, [*overrides, *EXTRA])


def arch_of(arm: Arm) -> str:
    return load_config(arm.config).model.arch


def train_start(arch: str, out: Path, iters: int) -> Path:
    """The shared start: the scale recipe of `arch` (configs/scale/ARCH.yaml) for `iters`
    iterations, constant lr after warm-up."""
    run = out / "start" / arch
    if not (run / "eval.json").exists():
        cfg = recipe(f"scale/{arch}.yaml", [f"train.max_iter={iters}", "train.steps=[]"])
        train(cfg, run, resume=(run / "last.pt").exists(), overwrite=True)
    fingerprint = run / "fingerprint.txt"
    if not fingerprint.exists():
        fingerprint.write_text(weights_fingerprint(run / "last.pt") + "\n")
    print(f"shared start {run}: weights {fingerprint.read_text().strip()}", flush=True)
    return run / "last.pt"


def weights_fingerprint(checkpoint: Path) -> str:
    """A digest of a checkpoint's weights: training is bit-exact on one machine and thread
    count, so a start trained again in a later session (its run folder lost) can be
    checked to be the same start before new seeds are paired with the old ones."""
    state = load_checkpoint(checkpoint)["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].numpy().tobytes())
    return digest.hexdigest()[:16]


def start_fingerprint(start: Path | None) -> str | None:
    return None if start is None else (start.parent / "fingerprint.txt").read_text().strip()


def ledger_entry(arm: Arm, seed: int) -> dict | None:
    path = LEDGER / arm.slug / f"seed{seed}.json"
    return json.loads(path.read_text()) if path.exists() else None


def record_arm(arm: Arm, seed: int, run: Path, start: Path | None) -> None:
    """The arm's summaries (every test it has) in the ledger, with its start's fingerprint."""
    tests = {t: summarise(run, t) for t, f in EVAL_FILE.items() if (run / f).exists()}
    path = LEDGER / arm.slug / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"start": start_fingerprint(start), "extra": EXTRA, "tests": tests}
    path.write_text(json.dumps(entry, indent=1) + "\n")


def recorded(arm: Arm, seed: int, start: Path | None, tests: set[str]) -> bool:
    """Whether the ledger holds this arm and seed, from this start, with every test."""
    entry = ledger_entry(arm, seed)
    return (
        entry is not None
        and entry["start"] == start_fingerprint(start)
        and tests <= set(entry["tests"])
    )


def train_arm(arm: Arm, seed: int, start: Path | None, out: Path, iters: int) -> Path:
    run = out / arm.slug / f"seed{seed}"
    if not (run / "eval.json").exists():
        schedule = [f"model.init_from={start}", f"train.max_iter={iters}"] if start else []
        if arm.decompose:
            init, plan = fd_start(arm.decompose, seed, start, out, run, iters)
            finetune = round(iters * arm.decompose.schedule)
            schedule = [f"model.init_from={init}", f"model.fd_plan={plan}",
                        f"train.max_iter={finetune}"]  # fmt: skip
        cfg = recipe(arm.config, [*schedule, f"train.seed={seed}"])
        if arm.decompose:
            cfg.train.lr *= arm.decompose.lr_scale
        train(cfg, run, resume=(run / "last.pt").exists(), overwrite=True)
    return run


def fd_start(
    d: Decompose, seed: int, start: Path, out: Path, run: Path, iters: int
) -> tuple[Path, Path]:
    """RUN/fd_init.pt and RUN/plan.json of an FD arm (see Decompose), made once."""
    init, plan_path = run / "fd_init.pt", run / "plan.json"
    if not plan_path.exists():  # written last: an interrupted start is made again
        gsl = out / ARMS[d.gsl_arm].slug / f"seed{seed}" / "last.pt"
        if not gsl.exists():  # recorded in the ledger, its run folder gone: train it again
            train_arm(ARMS[d.gsl_arm], seed, start, out, iters)
        scales = learned_scales(gsl.parent)
        if d.transfer:  # GSL's weights, transferred
            plan = decompose_checkpoint(gsl, scales, init, d.channel_multiple)
        else:  # GSL's plan on the shared start's weights
            plan = checkpoint_plan(gsl, scales, d.channel_multiple)
            plan_checkpoint(start, plan, init)
        plan_path.write_text(json.dumps(plan, indent=2))
    return init, plan_path


def learned_scales(run: Path) -> dict:
    """A GSL run's learned scales (RUN/scales.json and the plot RUN/scales.png), made once."""
    path = run / "scales.json"
    if not path.exists():
        scales = scales_from_checkpoint(run / "last.pt", SCALE_IMAGES)
        path.write_text(json.dumps(scales, indent=2))
        plot_scales(scales, run / "scales.png")
    return json.loads(path.read_text())


def test_on_pyramid(arm: Arm, run: Path) -> None:
    """RUN/eval_pyramid.json: the multi-scale test on PYRAMID, with SNIP's ranges for SNIP."""
    out = run / EVAL_FILE["pyramid"]
    if out.exists():
        return
    snip = any(m["name"] == "snip" for m in load_config(arm.config).methods)
    mode = "eval.snip=true" if snip else "eval.multiscale=true"
    print(f"{run}: {mode} on the pyramid {PYRAMID}", flush=True)
    metrics = evaluate_path(run / "last.pt", [mode, f"eval.pyramid={PYRAMID}", *EXTRA])
    out.write_text(json.dumps(metrics, indent=2))
    print(f"{out}: AP {metrics['AP']:.1f}  APs {metrics['APs']:.1f}", flush=True)


def test_on_training_images(run: Path) -> None:
    """RUN/eval_train.json: the run scored on TRAIN_IMAGES of its own training images, so
    the report shows how much of its validation AP it lost to the train/val gap."""
    out = run / EVAL_FILE["train"]
    if out.exists():
        return
    data = load_config(run / "config.yaml").data.train
    overrides = [f"data.val.ann={data.ann}", f"data.val.images={data.images}",
                 f"eval.max_images={TRAIN_IMAGES}"]  # fmt: skip
    metrics = evaluate_path(run / "last.pt", [*overrides, *EXTRA])
    out.write_text(json.dumps(metrics, indent=2))
    print(f"{out}: AP {metrics['AP']:.1f}  AP50 {metrics['AP50']:.1f}", flush=True)


def summarise(run: Path, test: str = "single") -> dict:
    """The test's eval file plus what the log says about the method (collages, T and beta,
    speed)."""
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out = dict(json.loads((run / EVAL_FILE[test]).read_text()))
    out["seconds_per_iter"] = statistics.median(r["time"] for r in log)
    shares = [r["small_loss_share"] for r in log if r.get("small_loss_share") is not None]
    if shares:
        out["small_loss_share"] = statistics.median(shares)
    if any("dst_collage" in r for r in log):  # logged every log_every iterations
        out["collage_fraction"] = statistics.mean(r["dst_collage"] for r in log)
        out["dst_tau"] = log[-1].get("dst_tau")
    if any("rlo_probs" in r for r in log):  # interval 10 = log_every: one line per action
        actions = [r["rlo_action"] for r in log if r.get("rlo_action") is not None]
        out["rlo_action_counts"] = {a: actions.count(a) for a in sorted(set(actions))}
        out["rlo_final_probs"] = log[-1]["rlo_probs"]
    if any("iou_threshold" in r or "beta" in r for r in log):  # DLA / DSL log one each
        out["final_iou_threshold"] = log[-1].get("iou_threshold")
        out["final_beta"] = log[-1].get("beta")
        zeros = [r["beta_zero_share"] for r in log if r.get("beta_zero_share") is not None]
        if zeros:  # how often the beta statistic was ~0 (GT rows left out: rarely)
            out["beta_zero_share"] = statistics.mean(zeros)
    if (run / "scales.json").exists():
        out["learned_scale"] = summarise_scales(run)
    return out


def summarise_scales(run: Path) -> dict[str, float]:
    """A GSL run's mean learned dilation per ResNet stage (res5: the C4 box head's layer4)."""
    by_stage: dict[str, list[float]] = {}
    for name, (dh, dw) in mean_scales(json.loads((run / "scales.json").read_text())).items():
        stage = next((s for s in ("layer2", "layer3", "layer4", "res5") if s in name), name)
        by_stage.setdefault(stage, []).append((dh + dw) / 2)
    return {k: round(statistics.mean(v), 2) for k, v in by_stage.items()}


# two-sided 95 % quantiles of Student's t by degrees of freedom (1-30)
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_975(df: int) -> float:
    """t(0.975, df): the table, then its expansion around the normal's 1.96 (Cornish-Fisher;
    within 1e-3 beyond 30 degrees of freedom)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_interval(diffs: list[float]) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a 95 % t-interval on paired differences; no interval (None)
    from a single pair."""
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, None, None
    half = t_975(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


MIN_SEEDS = 3  # a claim needs 5 seeds, or 3 where its interval is already clear of 0


def paired(arm: list[dict], base: list[dict], key: str, base_all: list[dict]) -> dict:
    """Per-seed differences (arm and base on the same seeds), their mean and 95 % interval,
    whether it excludes 0 (`clear`) and over at least MIN_SEEDS seeds (`resolved`), and the
    baseline's spread over every seed it has finished (None with fewer than two)."""
    diffs = [a[key] - b[key] for a, b in zip(arm, base, strict=True)]
    values = [b[key] for b in base_all]
    spread = max(values) - min(values) if len(values) > 1 else None
    mean, low, high = paired_interval(diffs)
    clear = low is not None and (low > 0 or high < 0)
    return {"diffs": diffs, "mean": mean, "ci95": None if low is None else [low, high],
            "clear": clear, "resolved": clear and len(diffs) >= MIN_SEEDS,
            "baseline_spread": spread}  # fmt: skip


def report(studies: list[str], out: Path, seeds: list[int]) -> str:
    """Markdown tables of every arm with at least one finished seed, per test, paired with
    its baselines over the seeds both have (a partial arm says which seeds it holds). An arm
    under the pyramid test is named ARM@pyramid."""
    done: dict[str, dict[int, dict]] = {}
    for study in studies:
        arms, _, tests = STUDIES[study]
        for name, test in product(arms, tests):
            finished = {}
            for s in seeds:
                entry = ledger_entry(ARMS[name], s)
                run = out / ARMS[name].slug / f"seed{s}"
                if (run / EVAL_FILE[test]).exists():
                    start = entry["start"] if entry else None
                    finished[s] = {**summarise(run, test), "start": start}
                elif entry and test in entry["tests"]:
                    finished[s] = {**entry["tests"][test], "start": entry["start"]}
            if finished:
                done[tested(name, test)] = finished
    arms_json = {n: [dict(r, seed=s) for s, r in d.items()] for n, d in done.items()}
    results: dict = {"seeds": seeds, "arms": arms_json, "studies": {}}
    lines = []
    for study in studies:
        arms, judged, tests = STUDIES[study]
        results["studies"][study] = {}
        for test in tests:
            title = {"single": "", "pyramid": f", tested on the pyramid {PYRAMID}",
                     "train": f", tested on {TRAIN_IMAGES} of its training images"}[test]  # fmt: skip
            lines += [f"### {study}{title} (seeds {seeds}; mean, then per-seed in brackets)", ""]
            lines += ["| arm | " + " | ".join(KEYS) + " | extra |", "|---" * (len(KEYS) + 2) + "|"]
            for name in (tested(a, test) for a in arms):
                if name not in done:
                    lines.append(
                        f"| {name} | " + " | ".join("-" for _ in KEYS) + " | not run yet |"
                    )
                    continue
                runs = list(done[name].values())
                cells = [_cell([r[k] for r in runs]) for k in KEYS]
                partial = f"seeds {list(done[name])} only, " if len(runs) < len(seeds) else ""
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {partial}{_extra(runs)} |")
            lines += ["", "Paired differences: mean [95 % t-interval] (per seed; the "
                      f"baseline's seed spread); resolved: the interval excludes 0 over >= "
                      f"{MIN_SEEDS} seeds", ""]  # fmt: skip
            for arm in arms:
                for k, base_arm in enumerate(BASELINES.get(arm, ())):
                    name, base = tested(arm, test), tested(base_arm, test)
                    line = pair_line(done, name, base, judged)
                    if line:
                        label = name if k == 0 else f"{name} vs {base}"
                        results["studies"][study][label] = line[1]
                        lines.append(line[0])
            lines.append("")
        if "train" in tests:  # what the detector memorised: training AP minus validation AP
            lines += ["Train - val gap (per seed; mean):", ""]
            for arm in arms:
                val, fit = done.get(arm, {}), done.get(tested(arm, "train"), {})
                both = [s for s in val if s in fit]
                for key in judged if both else ():
                    gaps = [fit[s][key] - val[s][key] for s in both]
                    results["studies"][study].setdefault(f"{arm} gap", {})[key] = gaps
                if both:
                    gap = results["studies"][study][f"{arm} gap"]
                    lines.append(f"- {arm} (seeds {both}): " + "; ".join(
                        f"{k} {statistics.mean(v):+.1f} ({', '.join(f'{g:+.1f}' for g in v)})"
                        for k, v in gap.items()))  # fmt: skip
            lines.append("")
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(text)
    return text


def tested(arm: str, test: str) -> str:
    return arm if test == "single" else f"{arm}@{test}"


def pair_line(done: dict, name: str, base: str, judged: tuple) -> tuple[str, dict] | None:
    """One line of paired differences of `name` to `base` and its JSON, or None if they share
    no finished seed."""
    if name not in done or base not in done:
        return None
    # pairs within one start (a seed trained again elsewhere may hold arms of two starts)
    common = [
        s for s in done[name]
        if s in done[base] and done[name][s].get("start") == done[base][s].get("start")
    ]  # fmt: skip
    if not common:
        return None
    arm_runs, base_runs = [done[name][s] for s in common], [done[base][s] for s in common]
    # a metric the data cannot give (APl of a set without large objects) is left out
    scored = [k for k in KEYS if all(r[k] is not None for r in arm_runs + base_runs)]
    diff = {k: paired(arm_runs, base_runs, k, list(done[base].values())) for k in scored}
    cells = [
        f"{k} {d['mean']:+.1f} "
        + ("[one seed]" if d["ci95"] is None else "[{:+.1f}, {:+.1f}]".format(*d["ci95"]))
        + (
            " **resolved**"
            if d["resolved"]
            else f" clear of 0 on {len(d['diffs'])} seeds"
            if d["clear"]
            else ""
        )
        + f" ({', '.join(f'{x:+.1f}' for x in d['diffs'])}; spread "
        + ("n/a" if d["baseline_spread"] is None else f"{d['baseline_spread']:.1f}")
        + ")"
        for k, d in diff.items()
        if k in judged
    ]
    return f"- {name} vs {base} (seeds {common}): " + "; ".join(cells), diff | {"seeds": common}


def _cell(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "-"
    return f"{statistics.mean(values):.1f} [{', '.join(f'{v:.1f}' for v in values)}]"


def _extra(runs: list[dict]) -> str:
    keys = ("collage_fraction", "dst_tau", "final_iou_threshold", "final_beta", "beta_zero_share")
    parts = [
        f"{k} {[round(r[k], 3) for r in runs if r.get(k) is not None]}"
        for k in keys
        if runs[0].get(k) is not None
    ]
    parts += [f"{k} {[r[k] for r in runs]}" for k in ("rlo_action_counts", "rlo_final_probs",
              "learned_scale") if k in runs[0]]  # fmt: skip
    parts.append(f"s/iter {statistics.mean(r['seconds_per_iter'] for r in runs):.2f}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("studies", nargs="+", choices=sorted(STUDIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iters", type=int, default=1200, help="iterations of every arm")
    parser.add_argument("--start-iters", type=int, default=500, help="of the shared start")
    parser.add_argument("--out", type=Path, default=Path("runs/study"))
    parser.add_argument("--only", nargs="*", choices=sorted(ARMS), help="arms to run")
    parser.add_argument("--report", action="store_true", help="only print what has finished")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args()
    EXTRA.extend(args.overrides)
    if not args.report:
        # seeds outer: every arm of a seed finishes before the next seed starts, so a study
        # cut short holds whole pairs (an FD arm follows its GSL arm within the seed)
        order = [a for s in args.studies for a in STUDIES[s][0] if not args.only or a in args.only]
        for seed in args.seeds:
            for name in dict.fromkeys(order):
                arm = ARMS[name]
                start = (
                    train_start(arch_of(arm), args.out, args.start_iters)
                    if arm.from_start
                    else None
                )
                tests = {t for s in args.studies if name in STUDIES[s][0] for t in STUDIES[s][2]}
                if recorded(arm, seed, start, tests):
                    continue
                run = train_arm(arm, seed, start, args.out, args.iters)
                if load_config(run / "config.yaml").model.gsl:  # its scales, in the report
                    learned_scales(run)
                if "pyramid" in tests:
                    test_on_pyramid(arm, run)
                if "train" in tests:
                    test_on_training_images(run)
                record_arm(arm, seed, run, start)
            print(report(args.studies, args.out, args.seeds), flush=True)
    print(report(args.studies, args.out, args.seeds))


if __name__ == "__main__":
    main()
