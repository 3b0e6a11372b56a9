"""Building a detector from a `ModelConfig`: the one place that wires the parts together."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from podkit.config import ModelConfig, RoIHeadConfig
from podkit.models.backbone import C4Backbone, FPNBackbone
from podkit.models.faster_rcnn import FasterRCNN
from podkit.models.gsl import to_gsl
from podkit.models.resnet import (
    DEPTHS,
    FrozenBatchNorm2d,
    ResNet,
    load_resnet_weights,
    make_stage,
)
from podkit.models.retinanet import RetinaNet
from podkit.models.roi_heads import ConvFCHead, Res5Head, RoIHeads, TwoMLPHead
from podkit.models.rpn import RPN
from podkit.models.split_conv import apply_plan
from podkit.ops import MultiScaleRoIAlign


def build_detector(cfg: ModelConfig) -> nn.Module:
    """A Faster R-CNN (FPN or C4) or RetinaNet as the config says, with weights if given."""
    c4 = cfg.arch == "faster_rcnn_c4"
    body = ResNet(cfg.depth, cfg.width, cfg.norm, cfg.freeze_at, 3 if c4 else 4, cfg.stride_in_1x1)
    if cfg.arch == "retinanet":
        backbone = FPNBackbone(
            body, cfg.fpn_channels, [1, 2, 3], cfg.retinanet.extra_levels, cfg.fpn_norm
        )
        model: nn.Module = RetinaNet(backbone, cfg.num_classes, cfg.retinanet)
    elif c4:
        backbone = C4Backbone(body)
        # one feature map: every anchor size lives on it
        rpn_cfg = replace(
            cfg.rpn, anchor_sizes=(tuple(s for level in cfg.rpn.anchor_sizes for s in level),)
        )
        roi_cfg = cfg.roi_heads
        kind, blocks = DEPTHS[cfg.depth]
        res5 = make_stage(
            body.block, body.out_channels[-1], body.planes[3], blocks[3], 2, cfg.norm,
            cfg.stride_in_1x1,
        )  # fmt: skip
        head = Res5Head(res5, body.planes[3] * body.block.expansion)
        pooler = MultiScaleRoIAlign(
            roi_cfg.pooler_resolution or 14, _sampling(roi_cfg, 0), aligned=roi_cfg.aligned
        )
        model = FasterRCNN(
            backbone,
            RPN(backbone.out_channels, rpn_cfg),
            RoIHeads(pooler, head, cfg.num_classes, roi_cfg),
        )
    else:
        backbone = FPNBackbone(body, cfg.fpn_channels, [0, 1, 2, 3], "maxpool", cfg.fpn_norm)
        roi_cfg = cfg.roi_heads
        resolution = roi_cfg.pooler_resolution or 7
        pooler = MultiScaleRoIAlign(resolution, _sampling(roi_cfg, 2), aligned=roi_cfg.aligned)
        head = (
            ConvFCHead(cfg.fpn_channels, resolution, 4, roi_cfg.representation_size,
                       roi_cfg.box_head_norm)
            if roi_cfg.box_head == "4conv1fc"
            else TwoMLPHead(cfg.fpn_channels * resolution**2, roi_cfg.representation_size)
        )  # fmt: skip
        # the R-CNN stage pools from P2-P5 (the FPN paper's level mapping), never from P6
        roi_heads = RoIHeads(pooler, head, cfg.num_classes, roi_cfg, pool_levels=4)
        model = FasterRCNN(backbone, RPN(cfg.fpn_channels, cfg.rpn), roi_heads)
    if cfg.backbone_weights:
        load_resnet_weights(body, cfg.backbone_weights)
        if c4:
            load_resnet_weights(
                model.roi_heads.box_head, cfg.backbone_weights, {"layer4.": "res5."}
            )
        body.freeze(cfg.freeze_at)
    set_norm_eps(model, cfg.norm_eps)
    if cfg.gsl and cfg.fd_plan:
        raise ValueError(
            "model.gsl and model.fd_plan exclude each other: FD is what GSL decomposes into"
        )
    if cfg.gsl:
        to_gsl(model, tuple(cfg.gsl_stages))
    if cfg.fd_plan:
        # FD from a plan: the split parts start from the (ImageNet or random) 3x3 weights
        apply_plan(model, read_plan(cfg.fd_plan))
    return model


def read_plan(plan: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decomposition plan, given inline or as a plan.json path."""
    if isinstance(plan, list):
        return plan
    path = Path(plan)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: plan file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(data, list) or not all(
        isinstance(x, dict) and "name" in x and "parts" in x for x in data
    ):
        raise ValueError(f"{path}: not a plan (a list of {{name, parts, ...}})")
    return data


def set_norm_eps(model: nn.Module, eps: float) -> None:
    """Every BatchNorm of the detector (frozen or trained) at `eps`: a converted model keeps
    its source's (torchvision's COCO Faster R-CNN and RetinaNet use 0)."""
    for module in model.modules():
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            module.eps = eps


def _sampling(cfg: RoIHeadConfig, default: int) -> int:
    return default if cfg.sampling_ratio is None else cfg.sampling_ratio
