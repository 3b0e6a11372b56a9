"""Region Proposal Network (Ren et al. 2015), on one level (C4) or on every FPN level."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from podkit.config import RPNConfig
from podkit.models.dense_loss import dense_head_loss
from podkit.ops import (
    AnchorGenerator,
    BalancedSampler,
    BoxCoder,
    Matcher,
    clip_boxes_to_image,
    detection_nms,
    wide_enough,
)
from podkit.ops.target import Target


class RPNHead(nn.Module):
    """3x3 conv + ReLU shared by all levels (`convs` of them: torchvision's v2 models have 2),
    then objectness (A) and deltas (4A) per location."""

    def __init__(self, in_channels: int, num_anchors: int, convs: int = 1) -> None:
        super().__init__()
        conv = [nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(convs)]
        # one conv keeps its flat name (rpn.head.conv), more are rpn.head.conv.0, .2, ...
        self.conv = conv[0] if convs == 1 else nn.Sequential(*_with_relus(conv)[:-1])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (*conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def _with_relus(layers: list[nn.Module]) -> list[nn.Module]:
    return [m for layer in layers for m in (layer, nn.ReLU())]


def flatten_level(x: Tensor, channels_per_anchor: int) -> Tensor:
    """(B, A*C, H, W) -> (B, H*W*A, C): the anchor layout of AnchorGenerator."""
    b, _, h, w = x.shape
    return (
        x.view(b, -1, channels_per_anchor, h, w)
        .permute(0, 3, 4, 1, 2)
        .reshape(b, -1, channels_per_anchor)
    )


class RPN(nn.Module):
    """Proposals and the RPN losses."""

    def __init__(self, in_channels: int, config: RPNConfig) -> None:
        super().__init__()
        self.config = config
        self.anchor_generator = AnchorGenerator(
            config.anchor_sizes, config.aspect_ratios, config.anchor_stride, config.anchor_round
        )
        self.head = RPNHead(
            in_channels, self.anchor_generator.num_anchors_per_location, config.head_convs
        )
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(
            config.fg_iou_threshold, config.bg_iou_threshold, allow_low_quality_matches=True
        )
        self.sampler = BalancedSampler(config.batch_size_per_image, config.positive_fraction)
        self.nms_threshold = config.nms_threshold

    def forward(
        self,
        features: list[Tensor],
        strides: list[int],
        sizes: list[tuple[int, int]],
        targets: list[Target] | None = None,
        level_weights: Tensor | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Returns (proposals per image, losses, per-level losses); losses in training, each
        level's terms weighted by `level_weights` (None: 1)."""
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(
            [f.shape[-2:] for f in features], strides, features[0].device
        )
        logits = [flatten_level(x, 1).squeeze(-1) for x in logits]
        deltas = [flatten_level(x, 4) for x in deltas]
        proposals = self.propose(
            anchors, [x.detach() for x in logits], [x.detach() for x in deltas], sizes
        )
        if not self.training:
            return proposals, {}, {}
        losses, level_losses = self.loss(anchors, logits, deltas, targets, level_weights)
        return proposals, losses, level_losses

    def propose(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        sizes: list[tuple[int, int]],
    ) -> list[Tensor]:
        """Each image's proposals (`propose_image`), at the train or test top-k."""
        cfg = self.config
        pre_n = cfg.pre_nms_top_n_train if self.training else cfg.pre_nms_top_n_test
        post_n = cfg.post_nms_top_n_train if self.training else cfg.post_nms_top_n_test
        return [
            self.propose_image(
                anchors, [x[i] for x in logits], [x[i] for x in deltas], size, pre_n, post_n
            )
            for i, size in enumerate(sizes)
        ]

    def propose_image(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        size: tuple[int, int],
        pre_n: int,
        post_n: int,
    ) -> Tensor:
        """One image: top-k per level, decode, clip, drop boxes under `min_size`, NMS per
        level, the best `post_n` overall. Dropping is masking (eager and exported alike):
        objectness goes through softplus (positive, same order: TVM's NMS mishandles scores
        <= 0) and a dropped box scores -1, under the NMS's threshold of 0."""
        boxes_l, scores_l, levels_l = [], [], []
        for level, (a, s, d) in enumerate(zip(anchors, logits, deltas, strict=True)):
            top, idx = s.topk(torch.sym_min(pre_n, s.shape[0]))
            boxes_l.append(self.box_coder.decode(d[idx], a[idx]))
            scores_l.append(top)
            levels_l.append(torch.full_like(idx, level))
        boxes = clip_boxes_to_image(torch.cat(boxes_l), size)
        scores = torch.cat(scores_l)
        wide = wide_enough(boxes, self.config.min_size)
        scores = torch.where(wide, F.softplus(scores), torch.full_like(scores, -1.0))
        keep = detection_nms(boxes, scores, torch.cat(levels_l), self.nms_threshold, 0.0, post_n)
        if torch.compiler.is_compiling():
            # anchors centred in the image survive clipping, so there is a proposal; saying so
            # lets the exporter trace the C4 head's convs over a data-dependent RoI count
            torch._check(keep.shape[0] > 0)
        return boxes[keep]

    def loss(
        self,
        anchors: list[Tensor],
        logits: list[Tensor],
        deltas: list[Tensor],
        targets: list[Target],
        level_weights: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(losses, {"rpn": per-level loss (L,), detached}), over a balanced sample of anchors
        per image, normalised by the number sampled."""
        cfg = self.config
        loss = dense_head_loss(
            anchors, logits, deltas,
            [target.get("rpn", target) for target in targets],  # the RPN's own GTs, if any
            self.matcher, self.box_coder, self.objectness_loss, cfg.smooth_l1_beta,
            cfg.ignore_iou_threshold, level_weights, by_size=False,  # DST reads the R-CNN's
        )  # fmt: skip
        norm = max(loss.scored, 1)
        losses = {"loss_rpn_cls": loss.cls / norm, "loss_rpn_box": loss.box / norm}
        return losses, {"rpn": loss.levels / norm}

    def objectness_loss(
        self, logits: Tensor, matched: Tensor, target: Target
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One image's sampled anchors, their positives, and the sample's binary cross-entropy."""
        labels = (matched >= 0).long() - (matched == -2).long()  # 1 pos, 0 neg, -1 ignore
        pos, neg = self.sampler(labels)
        rows = torch.where(pos | neg)[0]
        cls = F.binary_cross_entropy_with_logits(
            logits[rows], pos[rows].to(logits.dtype), reduction="none"
        )
        return rows, torch.where(pos)[0], cls
