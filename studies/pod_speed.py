"""POD speed: baseline vs GSL vs FD, eval forward and training step, interleaved in one run.

Run: .venv/bin/python -m studies.pod_speed [--arch faster_rcnn_fpn] [--depth 50] [--size 512] [--repeats 5]
GSL runs at fractional scales like the paper's learned ones (drawn uniformly from 0.5-3.0
per direction, seeded) and FD is decomposed from the same scales (channel multiple 16). Targets:
GSL step and eval <= 1.5x baseline, FD eval <= 1.03x baseline.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from podkit.models import ModelConfig, build_detector, tiny_model_config
from podkit.models.gsl import gsl_convs
from podkit.models.split_conv import apply_plan
from podkit.pod.decompose import make_plan


def build_three(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    baseline = build_detector(cfg)
    cfg_gsl = copy.deepcopy(cfg)
    cfg_gsl.gsl = True
    gsl = build_detector(cfg_gsl)
    gsl.load_state_dict(baseline.state_dict(), strict=False)
    rng = random.Random(seed)
    scales = {name: (rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0)) for name, _ in gsl_convs(gsl)}
    for name, conv in gsl_convs(gsl):  # run GSL at those (fractional) scales: four convs a layer
        with torch.no_grad():
            conv.scale_predictor.bias.copy_(torch.log(torch.tensor(scales[name])))
    plan = make_plan(gsl, scales, channel_multiple=16)
    fd = apply_plan(copy.deepcopy(baseline), plan)
    return {"baseline": baseline, "GSL": gsl, "FD": fd}, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="faster_rcnn_fpn")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny CPU recipe instead of a full ResNet"
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-train", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = (
        tiny_model_config(args.arch, 10)
        if args.tiny
        else ModelConfig(arch=args.arch, depth=args.depth, num_classes=80)
    )
    models, plan = build_three(cfg)
    g = torch.Generator().manual_seed(0)
    image = [torch.rand(3, args.size, args.size, generator=g)]
    batch = [torch.rand(3, args.size, args.size, generator=g) for _ in range(2)]
    targets = [
        {
            "boxes": torch.tensor([[40.0, 60, 200, 220], [300, 100, 420, 300]]),
            "labels": torch.tensor([1, 2]),
        }
    ] * 2
    optims = {
        k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        for k, m in models.items()
    }

    def eval_once(name):
        models[name].eval()
        with torch.inference_mode():
            models[name](image)

    def train_once(name):
        m = models[name].train()
        loss = sum(m(batch, targets).losses.values())
        optims[name].zero_grad()
        loss.backward()
        optims[name].step()

    kinds = [("eval", eval_once)] + ([] if args.no_train else [("train", train_once)])
    times = {(n, k): [] for n in models for k, _ in kinds}
    for name in models:
        for _, fn in kinds:
            fn(name)
    for _ in range(args.repeats):
        for kind, fn in kinds:
            for name in models:  # interleaved: drift hits all three alike
                t0 = time.perf_counter()
                fn(name)
                times[(name, kind)].append(time.perf_counter() - t0)
    split = sum(len(layer["parts"]) > 1 for layer in plan)
    label = "tiny" if args.tiny else f"R{args.depth}"
    print(
        f"{args.arch} {label} at {args.size}x{args.size}, {args.threads} threads, median of {args.repeats}; FD plan: {split}/{len(plan)} convs split"
    )
    for kind, _ in kinds:
        base = statistics.median(times[("baseline", kind)])
        for name in models:
            t = statistics.median(times[(name, kind)])
            print(f"  {kind:5s} {name:8s} {t * 1000:8.1f} ms   x{t / base:.3f}")


if __name__ == "__main__":
    main()
