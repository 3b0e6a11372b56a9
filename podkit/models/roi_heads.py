"""The R-CNN stage: sample proposals, pool, classify and refine them (Fast R-CNN).

In training, the IoU threshold, SmoothL1 beta and per-level loss weights come from the
detector's `TrainingControls` (what Dynamic R-CNN and AVW/RLO tune between iterations).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from podkit.config import RoIHeadConfig
from podkit.models.output import (
    TrainingControls,
    TrainingStats,
    element_weights,
    per_level_sum,
)
from podkit.models.resnet import make_norm
from podkit.ops import (
    BalancedSampler,
    BoxCoder,
    Matcher,
    MultiScaleRoIAlign,
    box_area,
    box_iou,
    clip_boxes_to_image,
    detection_nms,
    size_bucket,
    smooth_l1_loss,
    wide_enough,
)
from podkit.ops.matcher import ignore_regions
from podkit.ops.target import Target


class TwoMLPHead(nn.Module):
    """Two fully connected layers on the flattened pooled features (FPN box head)."""

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.out_features = representation_size

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class ConvFCHead(nn.Module):
    """`num_convs` 3x3 convs (each with a norm, then ReLU) on the pooled features, then one
    fully connected layer (torchvision's v2 box head: 4 convs with BatchNorm, 1 FC)."""

    def __init__(
        self, channels: int, resolution: int, num_convs: int, fc_size: int, norm: str
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                    make_norm(norm, channels),
                    nn.ReLU(inplace=True),
                )
                for _ in range(num_convs)
            )
        )
        self.fc = nn.Linear(channels * resolution**2, fc_size)
        self.out_features = fc_size

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.convs(x).flatten(1)))


class Res5Head(nn.Module):
    """ResNet stage 5 on 14x14 RoI features, then global average pooling (C4 box head)."""

    def __init__(self, res5: nn.Sequential, out_features: int) -> None:
        super().__init__()
        self.res5 = res5
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.res5(x).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """Class scores (C + 1, background last) and class-specific box deltas (4 C)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    def __init__(
        self,
        pooler: MultiScaleRoIAlign,
        box_head: nn.Module,
        num_classes: int,
        config: RoIHeadConfig,
        pool_levels: int | None = None,
    ) -> None:
        """`pool_levels`: pool from the first N feature levels only (FPN: P2-P5, not P6)."""
        super().__init__()
        self.pool_levels = pool_levels
        self.config = config
        self.pooler = pooler
        self.box_head = box_head
        self.predictor = BoxPredictor(box_head.out_features, num_classes)
        self.num_classes = num_classes
        self.box_coder = BoxCoder(config.bbox_reg_weights)
        self.sampler = BalancedSampler(config.batch_size_per_image, config.positive_fraction)

    def forward(
        self,
        features: list[Tensor],
        strides: list[int],
        proposals: list[Tensor],
        sizes: list[tuple[int, int]],
        targets: list[Target] | None = None,
        controls: TrainingControls | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor], TrainingStats]:
        """Returns (detections per image in as-fed pixels, losses, stats): detections in
        eval, losses and stats in training, under the detector's `controls`."""
        if not self.training:
            # image by image: each image's RoIs come in a data-dependent number once
            # exported, and splitting one batch of them by such sizes would not import in TVM
            detections = []
            for i, (props, size) in enumerate(zip(proposals, sizes, strict=True)):
                logits, deltas = self.predict([f[i : i + 1] for f in features], strides, [props])
                detections.append(self.postprocess_image(logits, deltas, props, size))
            return detections, {}, TrainingStats()
        if controls is None:
            raise ValueError("RoIHeads in training mode needs the detector's TrainingControls")
        proposals, labels, reg_targets, gt_sizes, ious, pos = self.sample(
            proposals, targets, controls.rcnn_iou_threshold
        )
        class_logits, box_deltas = self.predict(features, strides, proposals)
        strides = strides[: self.pool_levels]
        levels = self.pooler.levels(torch.cat(proposals), strides)
        losses, stats = self.loss(
            class_logits, box_deltas, labels, reg_targets, gt_sizes, levels, len(strides),
            controls.rcnn_smooth_l1_beta, controls.level_weights.get("rcnn"),
        )  # fmt: skip
        stats.proposal_ious, stats.pos_reg_targets = ious, pos
        return [], losses, stats

    def predict(
        self, features: list[Tensor], strides: list[int], proposals: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Pool every image's proposals and classify them: (class logits (P, C + 1), box
        deltas (P, 4 C)), the proposals of all images in order."""
        features, strides = features[: self.pool_levels], strides[: self.pool_levels]
        # full_like, not new_full((len(p), 1)): a traced graph cannot read a data-dependent
        # length (torch.export would fail and the ONNX exporter retry with another strategy)
        rois = torch.cat(
            [torch.cat([torch.full_like(p[:, :1], i), p], dim=1) for i, p in enumerate(proposals)]
        )
        return self.predictor(self.box_head(self.pooler(features, rois, strides)))

    def sample(self, proposals: list[Tensor], targets: list[Target], iou_threshold: float):
        """Add GTs to the proposals, match at `iou_threshold`, sample positives and negatives.
        The statistics (each proposal's max IoU, the positives' regression targets) leave the
        GT rows out: their IoU is 1 and their targets exactly 0, so they would pin Dynamic
        R-CNN's top-K IoU and its smallest-K |target| (beta) to those values."""
        out_props, out_labels, out_regs, out_sizes, ious = [], [], [], [], []
        pos_targets = []
        matcher = Matcher(iou_threshold, iou_threshold, allow_low_quality_matches=False)
        ignore_threshold = self.config.ignore_iou_threshold
        if ignore_threshold is None:
            ignore_threshold = iou_threshold
        for props, target in zip(proposals, targets, strict=True):
            gt, gt_labels = target["boxes"], target["labels"]
            if "proposal_range" in target:  # proposals out of it are not trained on
                side = box_area(props).sqrt()
                lo, hi = target["proposal_range"]
                props = props[(side >= lo) & (side <= hi)]
            is_gt = torch.arange(len(props) + len(gt), device=props.device) >= len(props)
            props = torch.cat([props, gt])
            if gt.numel():
                iou = box_iou(gt, props)
                max_iou = iou.max(dim=0).values
            else:
                iou = props.new_zeros((0, len(props)))
                max_iou = props.new_zeros(len(props))
            ious.append(max_iou[~is_gt])
            # an invalid GT (SNIP) is ignored from the IoU a proposal would need to be a
            # positive: the head's threshold, which Dynamic R-CNN moves, unless one is set
            matched = ignore_regions(props, matcher(iou), target, ignore_threshold)
            labels = torch.full_like(matched, self.num_classes)
            fg = matched >= 0
            labels[fg] = gt_labels[matched[fg]]
            flag = fg.long() - (matched == -2).long()
            pos, neg = self.sampler(flag)
            keep = torch.where(pos | neg)[0]
            props, matched, labels = props[keep], matched[keep], labels[keep]
            is_gt = is_gt[keep]
            fg = matched >= 0
            regs = props.new_zeros((len(keep), 4))
            sizes = torch.full_like(labels, -1)
            if bool(fg.any()):
                matched_gt = gt[matched[fg]]
                regs[fg] = self.box_coder.encode(matched_gt, props[fg])
                sizes[fg] = size_bucket(matched_gt)
                pos_targets.append(regs[fg & ~is_gt])
            out_props.append(props)
            out_labels.append(labels)
            out_regs.append(regs)
            out_sizes.append(sizes)
        pos = torch.cat(pos_targets) if pos_targets else proposals[0].new_zeros((0, 4))
        return (out_props, torch.cat(out_labels), torch.cat(out_regs), torch.cat(out_sizes),
                ious, pos)  # fmt: skip

    def loss(
        self, class_logits, box_deltas, labels, reg_targets, gt_sizes, levels, num_levels,
        smooth_l1_beta: float, level_weights: Tensor | None,
    ):  # fmt: skip
        weights = element_weights(levels, level_weights)
        cls = F.cross_entropy(class_logits, labels, reduction="none")
        fg = torch.where(labels < self.num_classes)[0]
        pred = box_deltas.view(len(labels), -1, 4)[fg, labels[fg]]
        box = smooth_l1_loss(pred, reg_targets[fg], smooth_l1_beta).sum(dim=1)
        norm = max(labels.numel(), 1)
        losses = {
            "loss_cls": (cls * weights).sum() / norm,
            "loss_box_reg": (box * weights[fg]).sum() / norm,
        }
        sizes = gt_sizes[fg]
        per_level = per_level_sum(
            torch.cat([cls, box]).detach(), torch.cat([levels, levels[fg]]), num_levels
        )
        stats = TrainingStats(
            level_losses={"rcnn": per_level / norm},
            reg_loss_by_size=per_level_sum(box.detach(), sizes, 3),
            cls_loss_by_size=per_level_sum(cls[fg].detach(), sizes, 3),
        )
        return losses, stats

    def postprocess_image(
        self, class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """One image: per class, score threshold, NMS, then the top detections. Every
        (proposal, class) pair is a candidate; a box under 0.01 px scores 0, under the
        threshold (masking, eager and exported alike)."""
        cfg = self.config
        c = self.num_classes
        scores = F.softmax(class_logits, dim=-1)[:, :c]
        boxes = clip_boxes_to_image(
            self.box_coder.decode(box_deltas, proposals).reshape(-1, 4), size
        )
        # each pair's class by broadcasting (a `repeat` by the proposal count would be shape
        # arithmetic on a data-dependent size, which TVM's importer cannot follow)
        classes = torch.arange(c, device=scores.device)
        labels = (torch.zeros_like(scores, dtype=torch.int64) + classes).reshape(-1)
        scores = scores.reshape(-1)
        scores = torch.where(wide_enough(boxes, 1e-2), scores, torch.zeros_like(scores))
        keep = detection_nms(
            boxes, scores, labels, cfg.nms_threshold, cfg.score_threshold, cfg.detections_per_image
        )
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
