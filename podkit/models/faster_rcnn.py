"""Faster R-CNN (Ren et al. 2015): backbone -> RPN -> R-CNN stage, FPN or C4 flavour."""

from __future__ import annotations

from torch import Tensor, nn

from podkit.models.output import (
    DetectorOutput,
    TrainingControls,
    backbone_features,
    inference_output,
)
from podkit.models.roi_heads import RoIHeads
from podkit.models.rpn import RPN
from podkit.ops.image_batch import ImageBatch
from podkit.ops.target import Target


class FasterRCNN(nn.Module):
    """Images in [0, 1] -> `DetectorOutput`; targets' boxes are in as-fed pixels, labels in
    [0, C). `controls` (what a training method may tune) start at the recipe's values."""

    def __init__(self, backbone: nn.Module, rpn: RPN, roi_heads: RoIHeads) -> None:
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.controls = TrainingControls(
            roi_heads.config.iou_threshold,
            roi_heads.config.smooth_l1_beta,
            {"rpn": None, "rcnn": None},
        )

    def forward(
        self, images: ImageBatch | list[Tensor], targets: list[Target] | None = None
    ) -> DetectorOutput:
        images, features = backbone_features(self, images, targets)
        if not self.training:
            return inference_output(self, features, images)
        strides, controls = self.backbone.strides, self.controls
        proposals, rpn_losses, rpn_levels = self.rpn(
            features, strides, images.sizes, targets, controls.level_weights["rpn"]
        )
        _, roi_losses, stats = self.roi_heads(
            features, strides, proposals, images.sizes, targets, controls
        )
        stats.level_losses = {**rpn_levels, **stats.level_losses}
        stats.num_images = len(images.sizes)
        return DetectorOutput({**rpn_losses, **roi_losses}, [], stats)

    def detect(
        self, features: list[Tensor], sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Each image's detections in as-fed pixels, from the backbone's features: the
        inference that `forward` and the exported graph (podkit.export.wrap) both run."""
        strides = self.backbone.strides
        proposals, _, _ = self.rpn(features, strides, sizes)
        return self.roi_heads(features, strides, proposals, sizes)[0]
