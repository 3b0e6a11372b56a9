"""RetinaNet (Lin et al. 2017): dense one-stage detector on P3-P7 with the focal loss."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from podkit.config import RetinaNetConfig
from podkit.models.dense_loss import dense_head_loss
from podkit.models.output import (
    DetectorOutput,
    TrainingControls,
    TrainingStats,
    backbone_features,
    inference_output,
)
from podkit.models.resnet import make_norm
from podkit.models.rpn import flatten_level
from podkit.ops import (
    AnchorGenerator,
    BoxCoder,
    Matcher,
    clip_boxes_to_image,
    detection_nms,
    sigmoid_focal_loss,
)
from podkit.ops.image_batch import ImageBatch
from podkit.ops.target import Target


def conv_tower(channels: int, num_convs: int, norm: str | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, 3, padding=1))
        if norm is not None:
            layers.append(make_norm(norm, channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """Classification and box subnets shared over levels."""

    def __init__(
        self, channels: int, num_anchors: int, num_classes: int, config: RetinaNetConfig
    ) -> None:
        super().__init__()
        self.cls_tower = conv_tower(channels, config.num_convs, config.head_norm)
        self.box_tower = conv_tower(channels, config.num_convs, config.head_norm)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(
            self.cls_logits.bias, -math.log((1 - config.prior_prob) / config.prior_prob)
        )
        self.num_classes = num_classes

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits = [
            flatten_level(self.cls_logits(self.cls_tower(x)), self.num_classes) for x in features
        ]
        deltas = [flatten_level(self.bbox_pred(self.box_tower(x)), 4) for x in features]
        return logits, deltas


class RetinaNet(nn.Module):
    """Images in [0, 1] -> `DetectorOutput`; `controls.level_weights["retinanet"]` weighs the
    loss of each level (AVW/RLO)."""

    def __init__(self, backbone: nn.Module, num_classes: int, config: RetinaNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        sizes = config.anchor_sizes or tuple(
            tuple(b * s for s in config.anchor_scales) for b in config.anchor_base_sizes
        )
        self.anchor_generator = AnchorGenerator(
            sizes, config.aspect_ratios, config.anchor_stride, config.anchor_round
        )
        self.head = RetinaNetHead(
            backbone.out_channels,
            self.anchor_generator.num_anchors_per_location,
            num_classes,
            config,
        )
        self.num_classes = num_classes
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(
            config.fg_iou_threshold, config.bg_iou_threshold, allow_low_quality_matches=True
        )
        self.controls = TrainingControls(level_weights={"retinanet": None})

    def forward(
        self, images: ImageBatch | list[Tensor], targets: list[Target] | None = None
    ) -> DetectorOutput:
        images, features = backbone_features(self, images, targets)
        if not self.training:
            return inference_output(self, features, images)
        logits, deltas = self.head(features)
        weights = self.controls.level_weights["retinanet"]
        losses, stats = self.loss(self.anchors(features), logits, deltas, targets, weights)
        return DetectorOutput(losses, [], stats)

    def anchors(self, features: list[Tensor]) -> list[Tensor]:
        """Each level's anchors (H W A, 4), in the layout of the head's outputs."""
        sizes = [f.shape[-2:] for f in features]
        return self.anchor_generator(sizes, self.backbone.strides, features[0].device)

    def detect(
        self, features: list[Tensor], sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Each image's detections in as-fed pixels, from the backbone's features: the
        inference that `forward` and the exported graph (podkit.export.wrap) both run."""
        logits, deltas = self.head(features)
        anchors = self.anchors(features)
        return [
            self.postprocess_image(anchors, [x[i] for x in logits], [x[i] for x in deltas], size)
            for i, size in enumerate(sizes)
        ]

    def loss(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        targets: list[Target],
        level_weights: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], TrainingStats]:
        """Focal loss over every anchor, SmoothL1 over the positives, both normalised by the
        number of positives."""
        cfg = self.config
        loss = dense_head_loss(
            anchors, logits, deltas, targets, self.matcher, self.box_coder, self.focal_loss,
            cfg.smooth_l1_beta, cfg.ignore_iou_threshold, level_weights,
        )  # fmt: skip
        norm = max(loss.positives, 1)
        losses = {"loss_cls": loss.cls / norm, "loss_box_reg": loss.box / norm}
        stats = TrainingStats(
            level_losses={"retinanet": loss.levels / norm},
            reg_loss_by_size=loss.reg_by_size,
            cls_loss_by_size=loss.cls_by_size,
            num_images=len(targets),
        )
        return losses, stats

    def focal_loss(
        self, logits: Tensor, matched: Tensor, target: Target
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One image: every anchor is scored (ignored ones with loss 0), its positives, and
        each anchor's focal loss summed over the classes."""
        cfg = self.config
        fg = torch.where(matched >= 0)[0]
        onehot = torch.zeros_like(logits)
        onehot[fg, target["labels"][matched[fg]]] = 1.0
        cls = sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma).sum(dim=1)
        rows = torch.arange(len(matched), device=matched.device)
        return rows, fg, cls * (matched != -2)

    def postprocess_image(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        size: tuple[int, int],
    ) -> dict[str, Tensor]:
        """One image: the top-k (anchor, class) pairs above the score threshold per level,
        decoded and clipped; then class-wise NMS. Traced, the threshold is the NMS op's (no
        data-dependent filter before the top-k); the export parity tests hold the two forms
        equal."""
        cfg = self.config
        c = self.num_classes
        boxes_l, scores_l, labels_l = [], [], []
        for a, lg, d in zip(anchors, logits, deltas, strict=True):
            scores = torch.sigmoid(lg).reshape(-1)
            if torch.compiler.is_compiling():  # traced: no data-dependent filter before top-k
                top, idx = scores.topk(torch.sym_min(cfg.topk_candidates, scores.shape[0]))
            else:  # eager: the same candidates, sorting only those above the threshold (the
                # top-k of all 11 M P3 scores of an 800x1216 image costs 3x as much)
                idx = torch.where(scores > cfg.score_threshold)[0]
                top, order = scores[idx].topk(min(cfg.topk_candidates, len(idx)))
                idx = idx[order]
            # indices are >= 0, so truncation is floor division; `//` would export a sign
            # fix-up (Equal on booleans) that TVM's LLVM codegen rejects
            anchor_idx = torch.div(idx, c, rounding_mode="trunc")
            boxes_l.append(self.box_coder.decode(d[anchor_idx], a[anchor_idx]))
            scores_l.append(top)
            labels_l.append(idx - anchor_idx * c)
        boxes = clip_boxes_to_image(torch.cat(boxes_l), size)
        scores, labels = torch.cat(scores_l), torch.cat(labels_l)
        keep = detection_nms(
            boxes,
            scores,
            labels,
            cfg.nms_threshold,
            cfg.score_threshold,
            cfg.detections_per_image,
        )
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
