"""Run by torchrun from test_dynamic_rcnn.py: rank 0 has positives, rank 1 has none."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from podkit.models.output import TrainingStats
from podkit.train.methods.dynamic_rcnn import DynamicRCNN

if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    hook = DynamicRCNN(k_iou=1, k_beta=1)
    if rank == 0:
        stats = TrainingStats(
            proposal_ious=[torch.tensor([0.9, 0.3])],
            pos_reg_targets=torch.tensor([[0.2, 0.4, 0.0, 0.0]]),
            num_images=1,
        )
    else:
        stats = TrainingStats(
            proposal_ious=[torch.zeros(0)],
            pos_reg_targets=torch.zeros(0, 4),
            num_images=1,
        )
    hook.observe(None, stats)
    report = {"iou_history": hook.iou_history, "beta_history": hook.beta_history}
    (Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
