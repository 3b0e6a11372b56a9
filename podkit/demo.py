"""`podkit demo`: the pipeline end to end on built-in data, small enough for a laptop.

For now it builds each tiny detector, trains it a few steps on random images with random
boxes, and evaluates it: proof that the install works and every architecture runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from podkit.models import ARCHS, build_detector, tiny_model_config


def random_batch(generator: torch.Generator, batch: int = 2, size: int = 128, num_classes: int = 3):
    images = [torch.rand(3, size, size, generator=generator) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=generator) * size * 0.6
        wh = torch.rand(3, 2, generator=generator) * size * 0.3 + 8
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(0, num_classes, (3,), generator=generator),
            }
        )
    return images, targets


def run_demo(out: Path, steps: int = 20, console: Console | None = None) -> dict:
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images, targets = random_batch(generator)
    table = Table(title="tiny detectors on random data")
    for column in ("arch", "params", "first loss", "last loss", "train s/step", "detections"):
        table.add_column(column)
    summary = {}
    for arch in ARCHS:
        model = build_detector(tiny_model_config(arch, 3)).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        losses = []
        start = time.perf_counter()
        for _ in range(steps):
            loss = sum(model(images, targets).losses.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        step_s = (time.perf_counter() - start) / steps
        model.eval()
        with torch.no_grad():
            detections = model(images).detections
        n_params = sum(p.numel() for p in model.parameters())
        summary[arch] = {
            "params": n_params,
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "train_s_per_step": step_s,
            "detections": [len(d["boxes"]) for d in detections],
        }
        table.add_row(
            arch,
            f"{n_params / 1e6:.2f}M",
            f"{losses[0]:.3f}",
            f"{losses[-1]:.3f}",
            f"{step_s:.3f}",
            str(summary[arch]["detections"]),
        )
    console.print(table)
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {out / 'demo.json'}")
    return summary
