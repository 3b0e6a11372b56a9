"""The plain training loop: data stream -> methods -> detector -> losses -> SGD, with checkpoints.

One iteration: draw a batch, let each method transform it (DST collage, SNIP resolution) and
set the detector's training controls (Dynamic R-CNN's threshold and beta, AVW/RLO's level
weights), forward, let each method read the step's statistics, backward, step, let each
method update (DST decision, Dynamic R-CNN and AVW/RLO updates; podkit.train.hooks).
Every `log_every` iterations a line goes to metrics.jsonl; every `checkpoint_every`,
RUN/last.pt is rewritten atomically. Ctrl-C finishes the current iteration, saves and stops;
a non-finite loss stops before the step, leaving the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor, nn

from podkit.config import (
    Config,
    TrainConfig,
    dump_config,
    resolve_amp,
    resolve_device,
    to_dict,
)
from podkit.data import LoadedDataset, load_dataset
from podkit.data.anchor_fit import fit_config_anchors
from podkit.data.loader import Batch, DetectionDataset, make_loader, training_batches
from podkit.data.tiles import tile_training_set
from podkit.data.verify import verify_images
from podkit.evaluation.evaluate import METRIC_KEYS, evaluate, format_metrics
from podkit.models import build_detector
from podkit.models.checkpoint import load_checkpoint, save_checkpoint
from podkit.outputs import check_writable
from podkit.train.distributed import any_rank, barrier, init_distributed
from podkit.train.ema import ModelEMA
from podkit.train.hooks import Hook, TrainState
from podkit.train.methods import build_hooks
from podkit.train.run_folder import claim_run_folder, run_lock
from podkit.train.run_log import check_run_logs, open_run_logs


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    iteration: int
    metrics: dict | None  # eval.json contents when an evaluation ran at the end
    model: nn.Module | None = None  # the trained detector (unwrapped)


def warmup_length(cfg: TrainConfig) -> int:
    """Warm-up iterations, at most a quarter of the run (a shortened run keeps its peak lr)."""
    return min(cfg.warmup_iters, cfg.max_iter // 4)


def lr_factor(iteration: int, cfg: TrainConfig) -> float:
    """Linear warm-up from warmup_factor, then x gamma at each fraction of max_iter in steps."""
    factor = cfg.gamma ** sum(iteration >= round(f * cfg.max_iter) for f in cfg.steps)
    warmup = warmup_length(cfg)
    if iteration < warmup:
        alpha = iteration / warmup
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_model_for(cfg: Config, num_classes: int, load_init: bool = True) -> tuple[nn.Module, str]:
    """The detector of the config, checked against the data, with `init_from` weights if set;
    also the line that reports what `init_from` loaded ("" without it)."""
    if cfg.model.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes is {cfg.model.num_classes} but the training set has {num_classes} classes: set model.num_classes={num_classes}"
        )
    model = build_detector(cfg.model)
    report = ""
    if cfg.model.init_from and load_init:
        report = load_model_weights(model, cfg.model.init_from, cfg.model.init_partial)
    return model, report


# the layers whose shape follows the number of classes (R-CNN predictor, RetinaNet classifier)
CLASS_SPECIFIC = ("roi_heads.predictor.cls_score.", "roi_heads.predictor.bbox_pred.",
                  "head.cls_logits.")  # fmt: skip


def load_model_weights(model: nn.Module, path: str | Path, allow_partial: bool = False) -> str:
    """Initialise from another podkit checkpoint (a converted COCO detector too). Every
    shared weight must have the same shape, except the class-specific layers of a model with
    another number of classes, which keep their initial values (the report names them); a
    residual block or a head left wholly at its initial values is refused unless
    `allow_partial`. Returns a one-line report of what was loaded."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    per_class = [k for k in bad if k.startswith(CLASS_SPECIFIC)]
    bad = [k for k in bad if k not in per_class]
    state = {k: v for k, v in state.items() if k not in per_class}
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} weights differ in shape from this model, e.g. {bad[0]}"
        )
    missing, _ = model.load_state_dict(state, strict=False)
    if len(missing) == len(own):
        raise ValueError(f"{path}: no weight of this checkpoint fits this model")
    # BatchNorm's step counters are never reported missing: leave them out of the count
    own = {k: v for k, v in own.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in missing if k in own]
    report = f"init_from {path}: loaded {len(own) - len(missing)} of {len(own)} tensors"
    if per_class:
        report += f"; re-initialised for this model's classes: {', '.join(per_class)}"
    absent = _absent_units(own, set(missing) - set(per_class))
    if absent:
        report += f"; not in the checkpoint, left at their initial values: {', '.join(absent[:6])}"
        report += ", ..." if len(absent) > 6 else ""
        if not allow_partial:
            raise ValueError(
                f"{report} (set model.init_partial=true to train with them as they are)"
            )
    return report


def _absent_units(own: dict[str, Tensor], missing: set[str]) -> list[str]:
    """Residual blocks (`...layerN.i`) and top-level parts none of whose tensors were loaded."""
    units: dict[str, list[str]] = {}
    for key in own:
        parts = key.split(".")
        stage = next((i for i, p in enumerate(parts) if p.startswith("layer")), None)
        depth = stage + 2 if stage is not None and len(parts) > stage + 2 else 2
        units.setdefault(".".join(parts[:depth]), []).append(key)
    return [unit for unit, keys in units.items() if all(k in missing for k in keys)]


@dataclass
class Run:
    """Everything one training run holds: built by `set_up`, read by each step below."""

    cfg: Config
    out: Path
    console: Console
    rank: int
    world: int
    device: torch.device
    train_set: LoadedDataset
    val_set: LoadedDataset | None
    model: nn.Module  # the detector itself
    train_model: nn.Module  # the detector, or its DDP wrapper
    params: list[nn.Parameter]  # the trained ones
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    hooks: list[Hook]
    amp: bool  # autocast, train.amp resolved for this device
    ema: ModelEMA | None = None  # train.ema: the averaged weights
    iteration: int = 0
    skipped: int = 0  # steps dropped for a non-finite loss (nan_policy: skip)
    skipped_in_a_row: int = 0
    logs: list = field(default_factory=list)  # TensorBoard / MLflow (train.log)
    best: dict | None = None  # {"metric", "value", "iteration"} of RUN/best.pt

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "last.pt"


class DataStream:
    """The training batches, counting how many were drawn (saved in checkpoints, so a resumed
    run continues the same stream) and how long the current step waited for them."""

    def __init__(self, run: Run, position: int) -> None:
        cfg, hooks = run.cfg, run.hooks
        self.position, self.wait = position, 0.0
        batches = training_batches(
            run.train_set.records, cfg.train.batch_size, cfg.data.min_size, cfg.data.flip,
            cfg.train.seed, position, run.rank, run.world, cfg.data.aspect_grouping,
        )  # fmt: skip
        self.loader = iter(
            make_loader(
                DetectionDataset(
                    run.train_set.records,
                    cfg.data.max_size,
                    cfg.data.augment,
                    cfg.data.tile.cache_mb if cfg.data.tile else 0,
                ),  # fmt: skip
                batches,
                cfg.train.workers,
                cfg.data.size_divisible,
                prefetch_batches=2 * max([h.draws_per_step for h in hooks] + [1]),
            )
        )

    def draw(self) -> Batch:
        self.position += 1
        start = time.perf_counter()
        batch = next(self.loader)
        self.wait += time.perf_counter() - start
        return batch


def train(
    cfg: Config,
    out: str | Path,
    resume: bool = False,
    console: Console | None = None,
    hooks: list[Hook] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train as the config says, writing RUN/{config.yaml, last.pt, metrics.jsonl, eval.json}.

    Inputs are validated before the run folder is touched; a folder holding another run is
    refused unless `resume` (continue it) or `overwrite` (start over)."""
    run = set_up(absolute_paths(cfg), Path(out), console or Console(), hooks, resume)
    if run.main:
        check_writable(run.out / "config.yaml")
    with run_lock(run.out, enabled=run.main):
        if run.main:
            claim_run_folder(run.out, resume, overwrite)
        barrier()
        if resume:
            position = restore(run)
        else:
            position = 0
            torch.manual_seed(cfg.train.seed + run.rank)  # same weights, different sampling
        if run.main:
            dump_config(run.cfg, run.out / "config.yaml")
            if not resume:
                (run.out / "metrics.jsonl").write_text("")  # a fresh run starts a fresh log
            run.logs = open_run_logs(run.cfg.train.log, run.out, to_dict(run.cfg), resume)
        try:
            stream = DataStream(run, position)
            status = run_iterations(run, stream)
            save(run, stream)
            metrics = None
            if status == "finished" and run.val_set is not None:
                metrics = _evaluate_to(run.out / "eval.json", run)
        finally:
            for log in run.logs:
                log.close()
    if run.ema is not None:  # the detector the run delivers: the averaged weights
        run.model.load_state_dict(run.ema.state_dict())
    return TrainResult(status, run.iteration, metrics, run.model)


def absolute_paths(cfg: Config) -> Config:
    """A copy whose file paths are absolute, so the saved config and checkpoint work from any
    folder (`podkit eval RUN/last.pt` elsewhere, `--resume` from another shell)."""
    cfg = copy.deepcopy(cfg)

    def absolute(path):
        return str(Path(path).expanduser().resolve()) if isinstance(path, str) and path else path

    for split in (cfg.data.train, cfg.data.val):
        split.ann, split.images = absolute(split.ann), absolute(split.images)
    cfg.model.init_from = absolute(cfg.model.init_from)
    cfg.model.backbone_weights = absolute(cfg.model.backbone_weights)
    cfg.model.fd_plan = absolute(cfg.model.fd_plan)
    return cfg


def set_up(cfg: Config, out: Path, console: Console, hooks: list[Hook] | None, resume: bool) -> Run:
    """Check and build everything the run needs (device, data, model, optimizer, methods)
    before anything is written."""
    kind = resolve_device(cfg.train.device)
    rank, world, local_rank = init_distributed(kind)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device is cuda but no CUDA device is available (use --set train.device=auto)"
        )
    device = torch.device(f"cuda:{local_rank}" if kind == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    main = rank == 0
    max_pixels = cfg.data.max_image_pixels
    train_set = load_dataset(cfg.data.train, max_pixels)
    val_set = load_dataset(cfg.data.val, max_pixels) if cfg.data.val.ann else None
    for split, dataset in (("train", train_set), ("val", val_set)):
        if dataset is not None:
            verify_dataset_images(dataset, cfg.data.max_image_pixels, console, main, split)
    notes = train_set.notes + (val_set.notes if val_set else [])
    tiled = tile_training_set(train_set, cfg.data.tile)
    notes += [tiled] if tiled else []
    hooks = build_hooks(cfg.methods) if hooks is None else hooks
    for hook in hooks:
        notes += hook.setup(cfg)
    if cfg.train.device == "auto":
        found = "a CUDA device" if kind == "cuda" else "no CUDA device"
        notes.append(f"train.device auto: training on {kind} ({found})")
    amp = resolve_amp(cfg.train.amp, device.type)
    if cfg.train.amp == "auto":
        notes.append(f"train.amp auto: {'bf16' if device.type == 'cpu' else 'fp16'} autocast "
                     + ("on" if amp else "off (this CPU has no bf16 units)"))  # fmt: skip
    elif amp and device.type == "cpu" and not resolve_amp("auto", "cpu"):
        notes.append(
            "train.amp: this CPU has no bf16 units (AVX-512 BF16 / AMX), so bf16 autocast is "
            "emulated and ~10x slower than float32 here: set train.amp=auto or false"
        )
    if warmup_length(cfg.train) < cfg.train.warmup_iters:
        notes.append(
            f"train.warmup_iters {cfg.train.warmup_iters} clipped to "
            f"{warmup_length(cfg.train)}, a quarter of train.max_iter {cfg.train.max_iter}"
        )
    best = cfg.train.best_metric
    if best is not None and best not in METRIC_KEYS:
        raise ValueError(f"train.best_metric: one of {', '.join(METRIC_KEYS)}, got {best!r}")
    if best is not None and val_set is None:
        raise ValueError("train.best_metric needs a validation set: set data.val.ann")
    check_run_logs(cfg.train.log)
    if cfg.model.anchors == "auto":
        cfg, line = fit_config_anchors(cfg, train_set.records)
        notes.append(line)
    torch.manual_seed(cfg.train.seed)
    model, init_report = build_model_for(cfg, len(train_set.classes), load_init=not resume)
    notes += [init_report] if init_report else []
    if main:
        for note in notes:
            console.print(note, highlight=False)
    model = model.to(device)
    if cfg.train.channels_last:  # NHWC convolutions: ~1.3x on this CPU's oneDNN kernels
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg.train))
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    ema = cfg.train.ema and ModelEMA(model, cfg.train.ema.decay, cfg.train.ema.warmup)
    return Run(
        cfg, out, console, rank, world, device, train_set, val_set, model, train_model, params,
        optimizer, scheduler,
        torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda"), hooks, amp,
        ema or None,
    )  # fmt: skip


def verify_dataset_images(
    dataset: LoadedDataset, max_pixels: int, console: Console, show: bool, split: str
) -> None:
    """Decode every image once (cached), with a progress bar while it takes a while."""
    with Progress(console=console, transient=True, disable=not show) as progress:
        task = progress.add_task(f"checking {split} images", total=len(dataset.records))
        verify_images(
            dataset.records, dataset.source, max_pixels,
            lambda done, total: progress.update(task, completed=done),
        )  # fmt: skip


def restore(run: Run) -> int:
    """Load RUN/last.pt into the model, optimizer, scheduler, methods and RNGs; returns the
    data stream's position. A checkpoint of another model is refused in one line."""
    ckpt = load_checkpoint(run.ckpt_path)
    try:
        # with EMA, "model" holds the average and "trained_model" the weights being trained
        run.model.load_state_dict(ckpt.get("trained_model", ckpt["model"]))
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"{run.ckpt_path}: does not fit the model of this config "
            f"({str(exc).splitlines()[0]}); resume with the run's own config.yaml"
        ) from None
    run.scheduler.load_state_dict(ckpt["scheduler"])
    for hook in run.hooks:
        hook.load_state_dict(ckpt["hooks"].get(hook.name, {}))
    if run.ema is not None:  # EMA switched on at --resume starts from the weights
        run.ema.load(ckpt["model"], ckpt.get("ema_updates", 0))
    best = run.out / "best.pt"
    if run.cfg.train.best_metric and best.exists():  # best.pt may be newer than last.pt
        run.best = load_checkpoint(best).get("best")
        if run.best and run.best["metric"] != run.cfg.train.best_metric:
            run.best = None  # another metric now: the next evaluation starts a new best
    run.iteration = ckpt["iteration"]
    torch.set_rng_state(ckpt["rng"]["torch"][run.rank % len(ckpt["rng"]["torch"])])
    random.setstate(ckpt["rng"]["python"])
    if run.main:
        _truncate_metrics(run.out / "metrics.jsonl", run.iteration)
        run.console.print(f"resumed {run.ckpt_path} at iteration {run.iteration}")
    return ckpt["data_position"]


def run_iterations(run: Run, stream: DataStream) -> str:
    """Iterate to max_iter, logging, checkpointing and evaluating on schedule. Ctrl-C finishes
    the iteration and returns "interrupted"; any other error saves the last good state (one
    process) before it propagates."""
    cfg = run.cfg.train
    stop = _StopRequest()
    state = TrainState(
        run.iteration, cfg.max_iter, run.model.controls, stream.draw, run.rank, run.world
    )
    metrics_file = (run.out / "metrics.jsonl").open("a") if run.main else None
    progress = _progress(run.console, run.main)
    task = progress.add_task(
        "train", total=cfg.max_iter, completed=run.iteration, loss=float("nan"), lr=0.0
    )
    first, status = run.iteration, "finished"
    run.model.train()
    try:
        with progress:
            while run.iteration < cfg.max_iter:
                position, done = stream.position, run.iteration
                try:
                    record = step(run, state, stream)
                except NonFiniteLossError:  # the last good checkpoint stays as it is
                    raise
                except Exception:
                    _save_after_error(run, stream, position if run.iteration == done else None)
                    raise
                if run.main and (
                    run.iteration % cfg.log_every == 0 or run.iteration == cfg.max_iter
                ):
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    for log in run.logs:
                        log.scalars(record)
                progress.update(task, completed=run.iteration, loss=record["loss"], lr=record["lr"])
                if run.main and not run.console.is_terminal and run.iteration % cfg.log_every == 0:
                    _print_line(run, record, progress.tasks[0].elapsed or 0.0, first)
                if cfg.checkpoint_every and run.iteration % cfg.checkpoint_every == 0:
                    save(run, stream)
                if (
                    run.val_set is not None
                    and cfg.eval_every
                    and run.iteration % cfg.eval_every == 0
                    and run.iteration < cfg.max_iter
                ):
                    _evaluate_to(run.out / f"eval_{run.iteration}.json", run)
                if any_rank(stop.requested, run.device):
                    status = "interrupted"
                    break
    finally:
        stop.release()
        if metrics_file:
            metrics_file.close()
    return status


def step(run: Run, state: TrainState, stream: DataStream) -> dict:
    """One iteration: batch -> hooks -> forward -> losses -> hooks -> backward -> SGD step ->
    hooks. Returns its log record. A non-finite loss stops before the step."""
    start = time.perf_counter()
    state.metrics, state.iteration, stream.wait = {}, run.iteration, 0.0
    position = stream.position
    batch = stream.draw()
    for hook in run.hooks:
        batch = hook.before_step(state, batch)
    batch = batch.to(run.device)
    # bf16 needs no loss scaling (fp32's exponent range); fp16 on CUDA does
    amp_dtype = torch.float16 if run.device.type == "cuda" else torch.bfloat16
    with torch.autocast(run.device.type, dtype=amp_dtype, enabled=run.amp):
        output = run.train_model(batch.images, batch.targets)
    losses = output.losses
    state.metrics.update(output.stats.logged())
    for hook in run.hooks:
        hook.observe(state, output.stats)
    loss = sum(losses.values())
    finite = not any_rank(not bool(torch.isfinite(loss)), run.device)
    run.optimizer.zero_grad(set_to_none=True)
    if finite:
        run.skipped_in_a_row = 0
        run.scaler.scale(loss).backward()
        if run.cfg.train.clip_grad_norm:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.params, run.cfg.train.clip_grad_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update(run.model)
    else:
        skip_or_stop(run, stream, losses, position)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    run.iteration += 1
    state.iteration = run.iteration
    for hook in run.hooks:
        hook.after_step(state)
    if run.skipped:
        state.metrics["skipped_steps"] = run.skipped
    return {
        "iter": run.iteration,
        "loss": loss.item(),
        **{k: v.item() for k, v in losses.items()},
        "lr": lr,
        "time": time.perf_counter() - start,
        "data_time": stream.wait,
        **_plain(state.metrics),
    }


def skip_or_stop(run: Run, stream: DataStream, losses: dict[str, Tensor], position: int) -> None:
    """A non-finite loss (the weights are still those of the last finite step): under
    `nan_policy: skip` the step is dropped and counted, unless too many were dropped in a
    row; otherwise training stops, naming the iteration and the non-finite terms, keeping
    the last good checkpoint, or writing one from these weights when there was none yet."""
    cfg = run.cfg.train
    bad = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items() if not torch.isfinite(v))
    if cfg.nan_policy == "skip" and run.skipped_in_a_row < cfg.max_skipped_steps:
        run.skipped += 1
        run.skipped_in_a_row += 1
        return
    if run.ckpt_path.exists():
        kept = f"the last good checkpoint {run.ckpt_path} is kept"
    elif run.iteration > 0:
        stream.position = position  # the batches of the failed step are drawn again on --resume
        save(run, stream)
        kept = f"the weights after iteration {run.iteration} were saved to {run.ckpt_path}"
    else:
        kept = "nothing was trained yet"
    many = f" ({run.skipped_in_a_row} steps skipped in a row)" if run.skipped_in_a_row else ""
    raise NonFiniteLossError(
        f"non-finite loss at iteration {run.iteration + 1}{many}: {bad or 'the total'}; {kept}"
        "; lower train.lr, raise train.warmup_iters or set train.clip_grad_norm"
    )


def save(run: Run, stream: DataStream) -> None:
    """RUN/last.pt (atomically), and iter_N.pt when asked to keep them; every rank takes part
    (their RNG states are gathered)."""
    rng = _gather_rng()
    if run.main:
        ema = run.ema
        trained = (
            {"trained_model": run.model.state_dict(), "ema_updates": ema.updates} if ema else {}
        )
        save_checkpoint(
            {
                # what eval, export and init_from read: the average when there is one
                "model": ema.state_dict() if ema else run.model.state_dict(),
                **trained,
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "hooks": {h.name: h.state_dict() for h in run.hooks},
                "rng": {"torch": rng, "python": random.getstate()},
                "iteration": run.iteration,
                "data_position": stream.position,
                "config": to_dict(run.cfg),
                "classes": run.train_set.classes,
            },
            run.ckpt_path,
        )
        if run.cfg.train.keep_checkpoints:
            shutil.copyfile(run.ckpt_path, run.out / f"iter_{run.iteration}.pt")
    barrier()


def _save_after_error(run: Run, stream: DataStream, position: int | None) -> None:
    """An error mid-run: keep the work done so far. Before the step completed the weights are
    those of the previous iteration, and the stream goes back to where it began. With several
    processes nothing is saved (the others would wait for this one forever)."""
    if run.world > 1 or run.iteration == 0:
        return
    if position is not None:
        stream.position = position
    save(run, stream)
    run.console.print(
        f"error at iteration {run.iteration + 1}: the state after iteration {run.iteration} "
        f"is saved in {run.ckpt_path} (--resume continues from it)",
        highlight=False,
    )


class _StopRequest:
    """Ctrl-C asks the loop to stop after the current iteration; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            self.release()
            raise KeyboardInterrupt
        self.requested = True

    def release(self) -> None:
        signal.signal(signal.SIGINT, self.previous)


def _print_line(run: Run, record: dict, elapsed: float, first: int) -> None:
    """No live bar in a log file: a plain line instead."""
    max_iter = run.cfg.train.max_iter
    eta = elapsed / max(run.iteration - first, 1) * (max_iter - run.iteration)
    run.console.print(
        f"iter {run.iteration}/{max_iter}  loss {record['loss']:.3f}  lr {record['lr']:.2e}  "
        f"eta {eta / 60:.1f} min",
        highlight=False,
    )


def _evaluate_to(path: Path, run: Run) -> dict | None:
    """Rank 0 evaluates the whole validation set (the EMA weights with train.ema) while the
    others wait, and keeps RUN/best.pt by train.best_metric."""
    metrics = None
    if run.main:
        with (
            run.ema.applied_to(run.model) if run.ema else contextlib.nullcontext(run.model) as model
        ):
            metrics = evaluate(model, run.val_set, run.cfg, run.device)
            keep_best(run, model, metrics)
        path.write_text(json.dumps(metrics, indent=2))
        run.console.print(f"{path}: {format_metrics(metrics)}")
        for log in run.logs:
            log.evaluation(metrics, run.iteration)
    barrier()
    return metrics


def keep_best(run: Run, model: nn.Module, metrics: dict) -> None:
    """RUN/best.pt: the evaluated weights, when they beat every earlier evaluation of the run
    on train.best_metric (a checkpoint eval, predict and export take as they take last.pt)."""
    key = run.cfg.train.best_metric
    if key is None or (run.best is not None and metrics[key] <= run.best["value"]):
        return
    run.best = {"metric": key, "value": metrics[key], "iteration": run.iteration}
    save_checkpoint(
        {"model": model.state_dict(), "config": to_dict(run.cfg), "iteration": run.iteration,
         "classes": run.train_set.classes, "best": run.best},
        run.out / "best.pt",
    )  # fmt: skip
    run.console.print(
        f"{run.out / 'best.pt'}: {key} {metrics[key]:.2f} at iteration {run.iteration}"
    )


def _gather_rng() -> list[torch.Tensor]:
    """Every rank's torch RNG state (rank 0 keeps the list)."""
    state = torch.get_rng_state()
    if not torch.distributed.is_initialized():
        return [state]
    states = [torch.empty_like(state) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(states, state)
    return states


def _truncate_metrics(path: Path, iteration: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if path.exists():
        lines = [
            ln
            for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["iter"] <= iteration
        ]
        path.write_text("".join(ln + "\n" for ln in lines))


def _plain(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  lr {task.fields[lr]:.2e}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
