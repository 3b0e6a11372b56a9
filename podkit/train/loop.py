"""The plain training loop: data stream -> hooks -> detector -> losses -> SGD, with checkpoints.

One iteration: draw a batch, let each hook transform it (DST collage, SNIP resolution),
forward, let each hook reweight the losses (AVW/RLO), backward, step, let each hook update
(DST decision, Dynamic R-CNN statistics). Every `log_every` iterations a line goes to
metrics.jsonl; every `checkpoint_every`, RUN/last.pt is rewritten atomically. Ctrl-C
finishes the current iteration, saves and stops; a non-finite loss stops before the step,
leaving the last good checkpoint in place.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
import time
from dataclasses import dataclass
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

from podkit.config import Config, dump_config, to_dict
from podkit.data import LoadedDataset, load_dataset
from podkit.data.loader import DetectionDataset, make_loader, training_batches
from podkit.models import build_detector
from podkit.models.checkpoint import load_checkpoint, save_checkpoint
from podkit.train.distributed import any_rank, barrier, init_distributed
from podkit.train.evaluate import evaluate, format_metrics
from podkit.train.hooks import TrainState
from podkit.train.methods import build_hooks


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted"
    iteration: int
    metrics: dict | None  # eval.json contents when an evaluation ran at the end
    model: torch.nn.Module | None = None  # the trained detector (unwrapped)


def lr_factor(iteration: int, cfg) -> float:
    """Linear warm-up from warmup_factor, then x gamma at each fraction of max_iter in steps."""
    factor = cfg.gamma ** sum(iteration >= round(f * cfg.max_iter) for f in cfg.steps)
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1 - alpha) + alpha
    return factor


def build_model_for(cfg: Config, num_classes: int) -> torch.nn.Module:
    """The detector of the config, checked against the data, with `init_from` weights if set."""
    if cfg.model.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes is {cfg.model.num_classes} but the training set has {num_classes} classes: set model.num_classes={num_classes}"
        )
    model = build_detector(cfg.model)
    if cfg.model.init_from:
        load_model_weights(model, cfg.model.init_from)
    return model


def load_model_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Initialise from another podkit checkpoint; every shared weight must have the same shape."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} weights differ in shape from this model, e.g. {bad[0]}"
        )
    missing, _ = model.load_state_dict(state, strict=False)
    if len(missing) == len(own):
        raise ValueError(f"{path}: no weight of this checkpoint fits this model")


def train(
    cfg: Config, out: str | Path, resume: bool = False, console: Console | None = None, hooks=None
) -> TrainResult:
    """Train as the config says, writing RUN/{config.yaml, last.pt, metrics.jsonl, eval.json}."""
    out = Path(out)
    rank, world, local_rank = init_distributed(cfg.train.device)
    main = rank == 0
    console = console or Console()
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "train.device is cuda but no CUDA device is available (use --set train.device=cpu)"
        )
    device = torch.device(f"cuda:{local_rank}" if cfg.train.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    train_set = load_dataset(cfg.data.train)
    val_set = load_dataset(cfg.data.val) if cfg.data.val.ann else None
    if main:
        for note in train_set.notes + (val_set.notes if val_set else []):
            console.print(note)
    torch.manual_seed(cfg.train.seed)
    model = build_model_for(cfg, len(train_set.classes)).to(device)
    if cfg.train.channels_last:  # NHWC convolutions: ~1.3x on this CPU's oneDNN kernels
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, cfg.train))
    hooks = build_hooks(cfg.methods) if hooks is None else hooks
    # bf16 needs no loss scaling (fp32's exponent range); fp16 on CUDA does
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.train.amp and device.type == "cuda")

    iteration, position = 0, 0
    ckpt_path = out / "last.pt"
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        for hook in hooks:
            hook.load_state_dict(ckpt["hooks"].get(hook.name, {}))
        iteration, position = ckpt["iteration"], ckpt["data_position"]
        torch.set_rng_state(ckpt["rng"]["torch"][rank % len(ckpt["rng"]["torch"])])
        random.setstate(ckpt["rng"]["python"])
        if main:
            _truncate_metrics(out / "metrics.jsonl", iteration)
            console.print(f"resumed {ckpt_path} at iteration {iteration}")
    else:
        torch.manual_seed(cfg.train.seed + rank)  # same weights everywhere, different sampling
    if main:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
        if not resume:
            if ckpt_path.exists():
                console.print(
                    f"{out} holds an earlier run: starting over (--resume continues it instead)"
                )
            (out / "metrics.jsonl").write_text("")  # a fresh run starts a fresh log

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )

    stream_state = {"position": position, "wait": 0.0}
    batches = training_batches(
        train_set.records,
        cfg.train.batch_size,
        cfg.data.min_size,
        cfg.data.flip,
        cfg.train.seed,
        position,
        rank,
        world,
        cfg.data.aspect_grouping,
    )
    loader = iter(
        make_loader(
            DetectionDataset(train_set.records, cfg.data.max_size),
            batches,
            cfg.train.workers,
            cfg.data.size_divisible,
            prefetch_batches=2 * max([h.draws_per_step for h in hooks] + [1]),
        )
    )

    def draw_batch():
        stream_state["position"] += 1
        start = time.perf_counter()
        batch = next(loader)
        stream_state["wait"] += time.perf_counter() - start  # time the step waited for data
        return batch

    def checkpoint(it: int) -> None:
        if main:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "hooks": {h.name: h.state_dict() for h in hooks},
                    "rng": {"torch": _gather_rng(), "python": random.getstate()},
                    "iteration": it,
                    "data_position": stream_state["position"],
                    "config": to_dict(cfg),
                    "classes": train_set.classes,
                },
                ckpt_path,
            )
            if cfg.train.keep_checkpoints:
                shutil.copyfile(ckpt_path, out / f"iter_{it}.pt")
        else:
            _gather_rng()
        barrier()

    stop = {"requested": False}
    previous_handler = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        if stop["requested"]:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous_handler)
            raise KeyboardInterrupt
        stop["requested"] = True

    signal.signal(signal.SIGINT, on_sigint)
    state = TrainState(iteration, cfg.train.max_iter, model, draw_batch, rank, world)
    metrics_file = (out / "metrics.jsonl").open("a") if main else None
    progress = _progress(console, main)
    task = progress.add_task(
        "train", total=cfg.train.max_iter, completed=iteration, loss=float("nan"), lr=0.0
    )
    status = "finished"
    state_start = iteration
    model.train()
    try:
        with progress:
            while iteration < cfg.train.max_iter:
                start = time.perf_counter()
                state.metrics = {}
                state.iteration = iteration
                stream_state["wait"] = 0.0
                batch = draw_batch()
                for hook in hooks:
                    batch = hook.before_step(state, batch)
                batch = batch.to(device)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.train.amp):
                    output = train_model(batch.images, batch.targets)
                losses = output.losses
                state.metrics.update(small_loss_share(output.stats))
                for hook in hooks:
                    losses = hook.loss(state, losses, output.stats)
                loss = sum(losses.values())
                if any_rank(not bool(torch.isfinite(loss)), device):
                    terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
                    kept = (
                        f"the last good checkpoint {ckpt_path} is kept"
                        if ckpt_path.exists()
                        else "no checkpoint was written yet"
                    )
                    raise NonFiniteLossError(
                        f"non-finite loss at iteration {iteration + 1} ({terms}); {kept}"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.train.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                iteration += 1
                state.iteration = iteration
                for hook in hooks:
                    hook.after_step(state)
                if main and (
                    iteration % cfg.train.log_every == 0 or iteration == cfg.train.max_iter
                ):
                    record = {
                        "iter": iteration,
                        "loss": loss.item(),
                        **{k: v.item() for k, v in losses.items()},
                        "lr": lr,
                        "time": time.perf_counter() - start,
                        "data_time": stream_state["wait"],
                        **_plain(state.metrics),
                    }
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                progress.update(task, completed=iteration, loss=loss.item(), lr=lr)
                if main and not console.is_terminal and iteration % cfg.train.log_every == 0:
                    # no live bar in a log file: a plain line instead
                    elapsed = progress.tasks[0].elapsed or 0.0
                    eta = (
                        elapsed / max(iteration - state_start, 1) * (cfg.train.max_iter - iteration)
                    )
                    console.print(
                        f"iter {iteration}/{cfg.train.max_iter}  loss {loss.item():.3f}  lr {lr:.2e}  eta {eta / 60:.1f} min",
                        highlight=False,
                    )
                if cfg.train.checkpoint_every and iteration % cfg.train.checkpoint_every == 0:
                    checkpoint(iteration)
                if (
                    val_set is not None
                    and cfg.train.eval_every
                    and iteration % cfg.train.eval_every == 0
                    and iteration < cfg.train.max_iter
                ):
                    _evaluate_to(
                        out / f"eval_{iteration}.json", model, val_set, cfg, device, console, main
                    )
                if any_rank(stop["requested"], device):
                    status = "interrupted"
                    break
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if metrics_file:
            metrics_file.close()
    checkpoint(iteration)
    metrics = None
    if status == "finished" and val_set is not None:
        metrics = _evaluate_to(out / "eval.json", model, val_set, cfg, device, console, main)
    return TrainResult(status, iteration, metrics, model)


def _evaluate_to(
    path: Path, model, val_set: LoadedDataset, cfg: Config, device, console: Console, main: bool
):
    """Rank 0 evaluates the whole validation set while the others wait."""
    metrics = None
    if main:
        metrics = evaluate(model, val_set, cfg, device)
        path.write_text(json.dumps(metrics, indent=2))
        console.print(f"{path}: {format_metrics(metrics)}")
    barrier()
    return metrics


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


def small_loss_share(stats: dict) -> dict[str, float]:
    """The share of the box-regression loss owed to small GTs (DST's feedback), logged in
    every run whose detector reports it, so a baseline shows what DST would have seen."""
    by_size = stats.get("reg_loss_by_size")
    if by_size is None:
        return {}
    total = float(by_size.sum())
    return {"small_loss_share": float(by_size[0]) / total if total > 0 else 0.0}


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
