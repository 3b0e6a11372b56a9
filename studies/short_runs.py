"""Short training runs of a tiny recipe, side by side: the shared step of the speed benches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from podkit.config import load_config
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def short_run(arch: str, out: Path, iters: int, overrides: list[str], hooks=None) -> list[dict]:
    """`iters` iterations of configs/tiny/ARCH.yaml (no eval, no checkpoint, warm-up over the
    whole run) in a fresh `out`; returns the log rows after the first 5."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(
        ROOT / f"configs/tiny/{arch}.yaml",
        [
            f"train.max_iter={iters}",
            f"train.warmup_iters={iters}",
            "train.checkpoint_every=0",
            "train.log_every=1",
            "data.val.ann=''",
            *overrides,
        ],
    )
    train(cfg, out, hooks=hooks, overwrite=True)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][5:]
