"""Tiny checkpoints (baseline, GSL, FD) whose scores spread out, so NMS has work to do."""

from pathlib import Path

import pytest
import torch

from podkit.config import to_dict
from podkit.models import build_detector
from podkit.models.checkpoint import save_checkpoint
from podkit.models.gsl import gsl_convs
from podkit.pod.decompose import make_plan
from tests.conftest import tiny_config

VARIANTS = ("baseline", "gsl", "fd")


def _spread_scores(model: torch.nn.Module) -> None:
    """Random heads instead of the prior-initialised ones: an untrained detector scores
    every box alike, which would make the parity of its detections a test of tie-breaking."""
    g = torch.Generator().manual_seed(1)
    if hasattr(model, "head"):  # RetinaNet
        layers = [model.head.cls_logits, model.head.bbox_pred]
        torch.nn.init.zeros_(model.head.cls_logits.bias)
    else:
        layers = [
            model.rpn.head.cls_logits,
            model.roi_heads.predictor.cls_score,
            model.roi_heads.predictor.bbox_pred,
        ]
    for layer in layers:
        layer.weight.data = torch.randn(layer.weight.shape, generator=g) * 0.3
    for _, conv in gsl_convs(model):  # learned scales that differ between layers and images
        conv.scale_predictor.weight.data = torch.randn(
            conv.scale_predictor.weight.shape, generator=g
        )


def make_checkpoint(out: Path, data: Path, arch: str, variant: str) -> Path:
    # GSL in layer4 only (a stride-2 and stride-1 GSL conv each): every GSL conv exports alike,
    # and they dominate the export time (dynamic FPN: 122 s with 12 GSL convs, 73 s with 4)
    gsl = ["model.gsl=true", "model.gsl_stages=[layer4]"] if variant == "gsl" else []
    cfg = tiny_config(data, f"model.arch={arch}", *gsl)
    if variant == "fd":
        gsl_cfg = tiny_config(data, f"model.arch={arch}", "model.gsl=true")
        names = [n for n, _ in gsl_convs(build_detector(gsl_cfg.model))]
        scales = {n: (1.3 + 0.1 * (i % 5), 0.8 + 0.3 * (i % 3)) for i, n in enumerate(names)}
        cfg.model.fd_plan = make_plan(build_detector(gsl_cfg.model), scales, channel_multiple=1)
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    _spread_scores(model)
    path = out / f"{arch}_{variant}.pt"
    save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0}, path)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, synth_set):
    """Lazily made checkpoints: checkpoints(arch, variant) -> path."""
    out = tmp_path_factory.mktemp("ckpt")
    made: dict = {}

    def get(arch: str = "faster_rcnn_fpn", variant: str = "baseline") -> Path:
        if (arch, variant) not in made:
            made[arch, variant] = make_checkpoint(out, synth_set, arch, variant)
        return made[arch, variant]

    return get
