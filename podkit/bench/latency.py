"""`podkit bench latency`: checkpoints x backends, timed side by side in one run.

Each (model, backend) pair gets a runner with the same interface (export.load / torch_runner);
artefacts are cached under `cache_dir` by checkpoint hash, the hash of the code that writes
them (`export_code_hash`: a podkit that exports another graph does not reuse an old file) and
export options, so a second run times without re-exporting or re-tuning. Timing interleaves
the pairs (round-robin, one call each per round) so that drift of a noisy machine hits every
pair alike, and synchronises the GPU after each call when timing on one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
import torch

from podkit.export import (
    BACKENDS,
    Backend,
    BackendUnavailable,
    ExportOptions,
    ParityError,
    Runner,
    artefact_bytes,
    export_checkpoint,
    precisions,
    sample_image,
    torch_runner,
)
from podkit.export import load as load_artefact
from podkit.export.backend import runtime_threads

TORCH_RUNTIMES = ("torch", "torch-compile")


def runtimes() -> dict[str, Backend | None]:
    """--backend names: PyTorch itself (None), then every export backend by its runtime."""
    return {**dict.fromkeys(TORCH_RUNTIMES), **{b.runtime: b for b in BACKENDS.values()}}


@dataclass
class LatencyOptions:
    input_size: tuple[int, int] = (512, 512)
    warmup: int = 3
    iters: int = 20
    threads: int | None = None
    device: str = "cpu"
    tune_trials: int = 0
    tune_db: Path | None = None
    cache_dir: Path = Path(".podkit_cache")
    check: bool = True
    labels: list[str] = field(default_factory=list)
    baseline: str | None = None
    accuracy: bool = False  # also score every pair on the config's data.val
    max_ap_drop: float = 0.5  # an artefact losing more AP than this against its checkpoint
    eval_overrides: list[str] = field(default_factory=list)
    precisions: list[str] = field(default_factory=lambda: ["fp32"])  # artefact backends
    batch: int = 1  # images per call; latency is also reported per image
    calib: int = 64  # INT8 calibration images


def time_interleaved(
    calls: list[Callable[[], object]],
    iters: int,
    warmup: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[float]]:
    """Milliseconds of each call in each of `iters` rounds, the calls taking turns (one each
    per round), so that a machine slowing down for a while slows every call alike."""
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    for it in range(iters):
        for call, ms in zip(calls, times, strict=True):
            start = time.perf_counter()
            call()
            ms.append((time.perf_counter() - start) * 1e3)
        if progress is not None:
            progress(it + 1, iters)
    return times


def checkpoint_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def export_code_hash(root: Path = Path(__file__).resolve().parent.parent) -> str:
    """Fingerprint of the code under `root` (podkit) that decides an artefact's graph:
    models, ops and export."""
    digest = hashlib.sha256()
    for path in sorted(
        p for part in ("models", "ops", "export") for p in (root / part).rglob("*.py")
    ):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def model_label(path: Path) -> str:
    """`runs/fd/last.pt` -> `fd`; `fd.pt` -> `fd`."""
    return path.parent.name if path.stem in ("last", "model", "best") else path.stem


def count_flops(wrapper: torch.nn.Module, image: np.ndarray) -> float:
    """FLOPs of one forward (2 per multiply-add; convs and matmuls, as PyTorch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        wrapper(torch.from_numpy(image))
    return float(counter.get_total_flops())


def measure_peak_gflops(threads: int, seconds: float = 1.0) -> float:
    """The machine's float32 matmul rate through PyTorch: the roof the models are held to."""
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    with contextlib.suppress(Exception):
        versions["onnx"] = __import__("onnx").__version__
    for backend in BACKENDS.values():
        version = backend.version()
        if version is not None:
            versions[backend.module] = version
    return versions


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def prepare(
    checkpoint: Path,
    wrapper: torch.nn.Module,
    backend: str,
    opts: LatencyOptions,
    cache: Path,
    log: Callable[[str], None],
    precision: str = "fp32",
) -> tuple[Runner, dict]:
    """A runner for one (checkpoint, backend, precision). Artefacts live in `cache` (one
    folder per checkpoint, size, batch and device): one ONNX export serves every backend, TVM
    libraries are kept per tuning budget, and an artefact already there is timed without
    re-exporting."""
    if backend in TORCH_RUNTIMES:
        return torch_runner(wrapper, opts.device, compile=backend == "torch-compile"), {}
    target = runtimes()[backend]
    onnx_path = cache / "model.onnx"
    name = f"model_t{opts.tune_trials}" if target.tuned else "model"
    name += "" if precision == "fp32" else f"_{precision}"
    path = cache / f"{name}{target.suffix}"
    info: dict = {}
    if not path.is_file():
        try:
            export = ExportOptions(
                opts.input_size, batch=opts.batch, precision=precision, check=opts.check,
                device=opts.device, calib=opts.calib, tune_trials=opts.tune_trials,
                tune_db=opts.tune_db or opts.cache_dir / "tvm_tuning_db",
            )  # fmt: skip
            report = export_checkpoint(checkpoint, target.name, path, export, log, onnx_path)
            checked = report.get("parity")
            info["parity"] = (
                "not checked"
                if checked is None
                else "ok"
                if all(p["ok"] for p in checked)
                else f"{precision}: detections differ from FP32 PyTorch (by design; see AP)"
            )
            if "tuning" in report[target.name]:
                info["tuning"] = report[target.name]["tuning"]
        except ParityError as exc:
            log(f"warning: {exc}; timed anyway")
            info["parity"] = str(exc)
    else:
        log(f"{model_label(checkpoint)} / {backend}: cached {path}")
    info["artefact"] = str(path)
    runner = load_artefact(path, opts.device, runtime_threads(opts.threads))
    if "inference_precision" in runner.info:  # what the runtime ran (OpenVINO may fall back)
        info["inference_precision"] = runner.info["inference_precision"]
    return runner, info


def run_latency(
    checkpoints: list[Path],
    backends: list[str],
    opts: LatencyOptions,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Time every (checkpoint, backend) pair; returns the report (docs/design.md)."""
    known = runtimes()
    unknown = [b for b in backends if b not in known]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}: choose from {', '.join(known)}")
    wrong = [p for p in opts.precisions if p not in precisions()]
    if wrong or not opts.precisions:
        raise ValueError(f"--precision {wrong}: choose from {', '.join(precisions())}")
    labels = opts.labels or [model_label(Path(c)) for c in checkpoints]
    if len(labels) != len(checkpoints) or len(set(labels)) != len(labels):
        raise ValueError(f"need one distinct label per checkpoint, got {labels}")
    baseline = opts.baseline or labels[0]
    if baseline not in labels:
        raise ValueError(f"--baseline {baseline!r} is not one of the labels {labels}")
    threads = runtime_threads(opts.threads)
    torch.set_num_threads(threads)
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    image = sample_image(opts.input_size, batch=opts.batch)
    from podkit.export.wrap import ExportWrapper
    from podkit.models.checkpoint import load_detector

    pairs, unavailable, models = [], [], {}
    code = export_code_hash()
    for ckpt, label in zip(checkpoints, labels, strict=True):
        model, _, _, _ = load_detector(ckpt)
        wrapper = ExportWrapper(model.cpu())
        h, w = opts.input_size
        batch = "" if opts.batch == 1 else f"_b{opts.batch}"
        key = f"{checkpoint_hash(Path(ckpt))}_{code}_{h}x{w}{batch}_{opts.device}"
        cache = opts.cache_dir / key
        models[label] = {
            "checkpoint": str(ckpt),
            "gflops": count_flops(wrapper, image[:1]) / 1e9,  # per image
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "weights_mb": sum(v.numel() * v.element_size() for v in model.state_dict().values())
            / 1e6,
        }
        for backend, precision in product(backends, opts.precisions):
            target = known[backend]
            if precision != "fp32" and (target is None or precision not in target.precisions):
                continue  # PyTorch and TVM run the FP32 model only
            try:
                runner, info = prepare(Path(ckpt), wrapper, backend, opts, cache, log, precision)
            except BackendUnavailable as exc:
                unavailable.append({"model": label, "backend": backend, "reason": str(exc)})
                log(f"{label} / {backend}: unavailable: {exc}")
                continue
            pairs.append((label, backend, runner, info | {"precision": precision}))
    calls = [lambda r=runner: (r(image), r.sync()) for _, _, runner, _ in pairs]
    times = time_interleaved(calls, opts.iters, opts.warmup, progress)
    results = []
    for (label, backend, _, info), ms in zip(pairs, times, strict=True):
        median = statistics.median(ms)
        results.append(
            {
                "model": label,
                "backend": backend,
                "input": list(opts.input_size),
                "batch": opts.batch,
                "median_ms": median,
                "p90_ms": float(np.percentile(ms, 90)),
                "min_ms": min(ms),
                "per_image_ms": median / opts.batch,
                "gflops": models[label]["gflops"],
                "params_m": models[label]["params_m"],
                "gflops_per_s": models[label]["gflops"] * opts.batch / (median / 1e3),
                **info,
            }
        )
    if opts.accuracy:
        add_accuracy(results, models, opts, log)
    by_pair = {(r["model"], r["backend"], r["precision"]): r["median_ms"] for r in results}
    for r in results:
        base = by_pair.get((baseline, r["backend"], r["precision"]))
        r["ratio_vs_baseline"] = r["median_ms"] / base if base else None
    return {
        "device": _device_name(opts.device),
        "threads": threads,
        "peak_gflops": measure_peak_gflops(threads) if opts.device == "cpu" else None,
        "baseline": baseline,
        "versions": _versions(),
        "warmup": opts.warmup,
        "iters": opts.iters,
        "models": models,
        "results": results,
        "unavailable": unavailable,
        **({"max_ap_drop": opts.max_ap_drop} if opts.accuracy else {}),
    }


def add_accuracy(results: list[dict], models: dict, opts: LatencyOptions, log) -> None:
    """AP and AP50 of every pair on its config's data.val (the checkpoint for the PyTorch
    backends, the artefact itself for the others, through the same evaluation path), its
    size, and the AP difference to its checkpoint, flagged (`ap_flag`) beyond max_ap_drop.
    The checkpoint is scored one image per batch, as an artefact is fed: in a batch every
    image is padded to the largest, and a detector's outputs move with that padding (a GSL
    C4 detector by 0.2 AP, docs/benchmarks.md)."""
    from podkit.evaluation.artefacts import evaluate_path

    checkpoint_metrics: dict[str, dict] = {}
    for r in results:
        ckpt = models[r["model"]]["checkpoint"]
        if ckpt not in checkpoint_metrics:
            log(f"{r['model']}: scoring the checkpoint on data.val, one image per batch")
            overrides = ["eval.batch_size=1", *opts.eval_overrides]
            checkpoint_metrics[ckpt] = evaluate_path(ckpt, overrides)
        if "artefact" in r:
            log(f"{r['model']} / {r['backend']}: scoring {r['artefact']} on data.val")
            metrics = evaluate_path(r["artefact"], opts.eval_overrides)
            r["size_mb"] = artefact_bytes(Path(r["artefact"])) / 1e6
        else:
            metrics = checkpoint_metrics[ckpt]
            r["size_mb"] = models[r["model"]]["weights_mb"]
        r["AP"], r["AP50"] = metrics["AP"], metrics["AP50"]
        r["ap_delta"] = metrics["AP"] - checkpoint_metrics[ckpt]["AP"]
        r["ap_flag"] = r["ap_delta"] < -opts.max_ap_drop


def accuracy_failures(report: dict) -> list[str]:
    """The pairs whose AP fell more than max_ap_drop below their checkpoint's."""
    return [
        f"{r['model']} / {_group(r)}: AP {r['ap_delta']:+.1f} against its checkpoint"
        for r in report["results"]
        if r.get("ap_flag")
    ]


def to_markdown(report: dict) -> str:
    lines = [
        f"Device: {report['device']}, {report['threads']} threads; {report['iters']} timed "
        f"calls per pair after {report['warmup']} warm-up, interleaved; batch "
        f"{report['results'][0]['batch'] if report['results'] else 1} (per image: ms / batch).",
    ]
    if report.get("peak_gflops"):
        lines.append(f"Measured float32 matmul peak: {report['peak_gflops']:.0f} GFLOP/s.")
    scored = "max_ap_drop" in report
    extra = " size MB | AP | AP50 | AP vs ckpt |" if scored else ""
    lines += [
        "",
        f"| model | backend | precision | input | median ms | p90 ms | min ms | per image ms "
        f"| x {report['baseline']} | GFLOPs | params (M) | GFLOP/s |{extra}",
        "|---" * 12 + "|" + "---|" * (4 if scored else 0),
    ]
    for r in report["results"]:
        ratio = "-" if r["ratio_vs_baseline"] is None else f"{r['ratio_vs_baseline']:.3f}"
        ran = r.get("inference_precision")  # OpenVINO: what the plugin ran
        precision = r["precision"] + (f" (ran {ran})" if ran else "")
        row = (
            f"| {r['model']} | {r['backend']} | {precision} | "
            f"{r['input'][0]}x{r['input'][1]} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
            f"{r['min_ms']:.1f} | {r['per_image_ms']:.1f} | {ratio} | "
            f"{r['gflops']:.2f} | {r['params_m']:.2f} | {r['gflops_per_s']:.1f} |"
        )
        if scored:
            flag = " **over the limit**" if r["ap_flag"] else ""
            row += (
                f" {r['size_mb']:.1f} | {r['AP']:.1f} | {r['AP50']:.1f} | "
                f"{r['ap_delta']:+.2f}{flag} |"
            )
        lines.append(row)
    if scored:
        lines.append(
            f"\nAP on each config's data.val (checkpoints one image per batch, as artefacts are "
            f"fed); an artefact more than {report['max_ap_drop']} AP under its checkpoint is "
            "over the limit."
        )
    for u in report["unavailable"]:
        lines.append(f"\n{u['model']} / {u['backend']}: not available: {u['reason']}")
    for r in report["results"]:
        if r.get("parity") not in (None, "ok"):
            lines.append(f"\n{r['model']} / {r['backend']}: parity: {r['parity']}")
    lines.append("\nVersions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    return "\n".join(lines) + "\n"


def _group(result: dict) -> str:
    """A backend and, when reduced, its precision: `onnxruntime int8`."""
    precision = result.get("precision", "fp32")
    return result["backend"] + ("" if precision == "fp32" else f" {precision}")


def plot(report: dict, path: str | Path) -> None:
    """Grouped bars: median latency per model, one group per backend, p90 as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(dict.fromkeys(_group(r) for r in report["results"]))
    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    width = 0.8 / max(len(models), 1)
    scored = "max_ap_drop" in report
    fig, axes = plt.subplots(
        1, 2 if scored else 1, figsize=(1.8 + 1.6 * len(backends) + (4.2 if scored else 0), 3.6)
    )
    ax = axes[0] if scored else axes
    for i, model in enumerate(models):
        rows = {_group(r): r for r in report["results"] if r["model"] == model}
        xs = [b + (i - (len(models) - 1) / 2) * width for b in range(len(backends))]
        med = [rows[b]["median_ms"] if b in rows else 0 for b in backends]
        err = [rows[b]["p90_ms"] - rows[b]["median_ms"] if b in rows else 0 for b in backends]
        ax.bar(xs, med, width, yerr=[np.zeros(len(err)), err], label=model, capsize=2)
    medians = [r["median_ms"] for r in report["results"]]
    if max(medians) > 20 * min(medians):  # e.g. untuned TVM next to onnxruntime
        ax.set_yscale("log")
    ax.set_xticks(range(len(backends)), backends)
    ax.set_ylabel("latency, ms (median, bar to p90)")
    ax.set_title(f"batch {report['results'][0]['batch']}, {report['results'][0]['input'][0]}x{report['results'][0]['input'][1]}"
                 f" - {report['device']}", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    if scored:  # what each deployment costs against what it keeps
        markers = dict(zip(backends, "osD^v<>", strict=False))
        for i, model in enumerate(models):
            for r in (r for r in report["results"] if r["model"] == model):
                axes[1].scatter(r["median_ms"], r["AP"], color=f"C{i}", marker=markers[_group(r)],
                                label=f"{model} / {_group(r)}")  # fmt: skip
        axes[1].set_xlabel("latency, ms (median)")
        axes[1].set_ylabel("AP on data.val")
        axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
