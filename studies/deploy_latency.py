"""Deployment latency: baseline vs GSL vs FD on torch, onnxruntime and (tuned) TVM, one run.

Run: .venv/bin/python -m studies.deploy_latency --arch faster_rcnn_fpn --size 512 \
         --tune-trials 16 --out runs/bench/deploy_r50fpn
Writes three checkpoints (GSL at fractional scales like learned ones, FD decomposed from them
with weight transfer, as studies/pod_speed.py), then `podkit bench latency` on them. Targets:
FD / baseline <= 1.03 on onnxruntime and TVM; onnxruntime <= 0.9x torch eager;
TVM after tuning vs onnxruntime and vs the measured matmul peak.

INT8: `--precision fp32,int8 --backend onnxruntime --models baseline,FD
--calib-data data/scale` calibrates on that COCO set's training images (the weights are
untrained: the figure is the speed; AP is measured on a trained model, docs/benchmarks.md).
On a GPU: `--device cuda --backend torch,torch-compile,onnxruntime,tensorrt` (gpu_check.sh).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from podkit.bench.latency import LatencyOptions, plot, run_latency, to_markdown
from podkit.config import Config, DatasetConfig, parse_size, to_dict
from podkit.models import ModelConfig, tiny_model_config
from podkit.models.checkpoint import save_checkpoint
from studies.pod_speed import build_three


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="faster_rcnn_fpn")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", type=parse_size, default="512", help="512 or HxW: 800x1216")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--backend", default="torch,onnxruntime,tvm")
    parser.add_argument("--tune-trials", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/deploy"))
    parser.add_argument("--models", default="baseline,GSL,FD", help="which of the three")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", help="comma list: fp32,fp16,int8")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calib", type=int, default=64)
    parser.add_argument("--calib-data", type=Path, help="COCO folder (annotations/train.json)")
    args = parser.parse_args()
    model_cfg = (
        tiny_model_config(args.arch, 10)
        if args.tiny
        else ModelConfig(arch=args.arch, depth=args.depth, num_classes=80)
    )
    models, plan = build_three(model_cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in models.items():
        if name not in args.models.split(","):
            continue
        cfg = Config(model=copy.deepcopy(model_cfg))
        if args.calib_data is not None:  # INT8 calibration draws from data.train
            cfg.data.train = DatasetConfig(
                format="coco",
                ann=str(args.calib_data / "annotations" / "train.json"),
                images=str(args.calib_data / "train"),
            )
            cfg.data.test_min_size, cfg.data.max_size = min(args.size), max(args.size)
        cfg.model.gsl = name == "GSL"
        cfg.model.fd_plan = plan if name == "FD" else None
        path = args.out / f"{name.lower()}.pt"
        save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg)}, path)
        paths.append(path)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    opts = LatencyOptions(
        input_size=args.size,
        iters=args.iters,
        threads=args.threads if args.device == "cpu" else None,
        tune_trials=args.tune_trials,
        cache_dir=args.out / "cache",
        tune_db=args.out / "tvm_db",
        device=args.device,
        precisions=args.precision.split(","),
        batch=args.batch,
        calib=args.calib,
    )
    report = run_latency(paths, args.backend.split(","), opts, print)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(to_markdown(report))
    plot(report, args.out / "report.png")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
