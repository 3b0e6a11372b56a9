"""Eval forward and training step (batch 2) of Faster R-CNN R50-FPN and RetinaNet R50 at 512x512.

Run: .venv/bin/python -m studies.core_speed [--threads 2] [--repeats 5] [--profile]
Random weights, random images with 5 boxes each; medians over repeats, the models
interleaved so machine drift hits both alike. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from podkit.models import ModelConfig, build_detector


def make_inputs(batch: int, size: int, num_classes: int, generator: torch.Generator):
    images = [torch.rand(3, size, size, generator=generator) for _ in range(batch)]
    targets = []
    for _ in range(batch):
        xy = torch.rand(5, 2, generator=generator) * size * 0.6
        wh = torch.rand(5, 2, generator=generator) * size * 0.35 + 16
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1),
                "labels": torch.randint(0, num_classes, (5,), generator=generator),
            }
        )
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    models = {
        arch: build_detector(ModelConfig(arch=arch, depth=50))
        for arch in ("faster_rcnn_fpn", "retinanet")
    }
    eval_images, _ = make_inputs(1, args.size, 80, g)
    train_images, train_targets = make_inputs(2, args.size, 80, g)
    params = {a: [p for p in m.parameters() if p.requires_grad] for a, m in models.items()}
    optims = {a: torch.optim.SGD(params[a], lr=1e-4, momentum=0.9) for a in models}

    def eval_once(arch):
        m = models[arch].eval()
        with torch.inference_mode():
            m(eval_images)

    def train_once(arch):
        m = models[arch].train()
        out = m(train_images, train_targets)
        loss = sum(out.losses.values())
        optims[arch].zero_grad()
        loss.backward()
        optims[arch].step()

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for arch in models:
            for name, fn in (("eval", eval_once), ("train", train_once)):
                fn(arch)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    fn(arch)
                print(f"== {arch} {name}")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return

    times = {(a, k): [] for a in models for k in ("eval", "train")}
    for arch in models:  # warm-up
        eval_once(arch)
        train_once(arch)
    for _ in range(args.repeats):
        for arch in models:
            for kind, fn in (("eval", eval_once), ("train", train_once)):
                t0 = time.perf_counter()
                fn(arch)
                times[(arch, kind)].append(time.perf_counter() - t0)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}, median of {args.repeats}"
    )
    for (arch, kind), ts in times.items():
        label = "eval forward (1 image)" if kind == "eval" else "train step (batch 2)"
        print(
            f"{arch:16s} {label:24s} {statistics.median(ts) * 1000:8.0f} ms  (min {min(ts) * 1000:.0f})"
        )


if __name__ == "__main__":
    main()
