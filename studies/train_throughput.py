"""Training throughput (images/s) of the tiny recipe and of R50-FPN at 512 px, through `train()`.

Run: .venv/bin/python -m studies.train_throughput [--iters 8] [--threads 2]
A synthetic set at 512 px is generated in a temporary folder; each config trains `iters`
iterations (no evaluation, no checkpoints) and the median iteration time after the first
two gives images/s. R50-FPN runs from random init with frozen BN (no ImageNet file needed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from podkit.config import load_config
from podkit.data.synthetic import write_split
from podkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, data: Path, out: Path, iters: int, batch: int, extra: list[str]) -> float:
    overrides = [
        f"data.train.ann={data}/annotations/train.json",
        f"data.train.images={data}/train",
        "data.val.ann=''",
        "data.min_size=[512]",
        "data.max_size=512",
        f"train.max_iter={iters}",
        f"train.batch_size={batch}",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "train.device=cpu",
        "train.workers=1",
        *extra,
    ]
    train(load_config(config, overrides), out)
    times = [json.loads(line)["time"] for line in (out / "metrics.jsonl").read_text().splitlines()][
        2:
    ]
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_split(tmp / "data", "train", 32, 512, seed=0)
        rows = [
            (
                "tiny Faster R-CNN FPN (configs/tiny)",
                ROOT / "configs/tiny/faster_rcnn_fpn.yaml",
                8,
                [],
            ),
            ("tiny RetinaNet (configs/tiny)", ROOT / "configs/tiny/retinanet.yaml", 8, []),
            (
                "Faster R-CNN R50-FPN (1x recipe)",
                ROOT / "configs/faster_rcnn_r50_fpn_1x.yaml",
                2,
                ["model.num_classes=10", "model.backbone_weights=null"],
            ),
        ]
        print(
            f"training throughput at 512x512, {args.threads} threads, median of iterations 3..{args.iters}"
        )
        for k, (name, config, batch, extra) in enumerate(rows):
            ips = run(config, tmp / "data", tmp / f"run{k}", args.iters, batch, extra)
            print(f"  {name:40s} batch {batch}: {ips:6.2f} images/s")


if __name__ == "__main__":
    main()
