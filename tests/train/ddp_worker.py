"""Run by torchrun from tests/train/test_ddp.py: a few iterations, then each rank's checksums."""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from podkit.train.loop import train
from tests.conftest import tiny_config

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    device = os.environ.get("PODKIT_TEST_DEVICE", "cpu")  # cuda: tests/gpu, nccl
    cfg = tiny_config(
        data, "train.batch_size=4", "data.val.ann=''", f"train.device={device}", max_iter=3
    )
    result = train(cfg, out)
    # parameters; BN buffers are broadcast from rank 0 at the start of each forward, so after
    # the last step each rank still holds its own batch's statistics (rank 0's are saved)
    sums = {k: float(p.detach().double().sum()) for k, p in result.model.named_parameters()}
    report = {
        "rank": dist.get_rank(),
        "world": dist.get_world_size(),
        "backend": dist.get_backend(),
        "iteration": result.iteration,
        "sums": sums,
    }
    (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
