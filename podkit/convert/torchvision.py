"""torchvision's COCO detectors in podkit: the options under which podkit computes what
torchvision computes, and the renaming of its tensors.

Read against torchvision/models/detection/{faster_rcnn,retinanet,rpn,roi_heads}.py (0.29):
- FrozenBatchNorm with eps 0: the builders call `overwrite_eps(model, 0.0)` for COCO_V1;
- anchors lie at the input's size // the feature size per axis (AnchorGenerator's strides:
  59 px on P6 of a 416 px wide input, not 64);
- MultiScaleRoIAlign samples unaligned (roi * scale, RoIs of at least one cell), ratio 2;
- 91 labels, background at 0 (index = COCO category id): podkit keeps the 90 others in
  order (the softmax still runs over all 91), background last, and predicts label k as COCO
  category id k + 1;
- the R-CNN box loss is SmoothL1 with beta 1/9, RPN 2000 proposals in training;
- RetinaNet's anchors are (x, int(x * 2^(1/3)), int(x * 2^(2/3))): sizes truncated to
  integers, 300 detections per image, P6 from P5, an L1 box loss, and its background
  channel (label 0, never trained) dropped from each anchor's 91 class channels.
"""

from __future__ import annotations

from torch import Tensor

from podkit.convert.coco import TORCHVISION_LABELS
from podkit.convert.rename import Renames, normalisation, renamed

CLASSES = TORCHVISION_LABELS[1:]  # 90 labels, "N/A" where COCO skips an id
CATEGORY_IDS = list(range(1, 91))

FASTER_RCNN = {
    "arch": "faster_rcnn_fpn", "depth": 50, "num_classes": 90, "category_ids": CATEGORY_IDS,
    "norm": "frozen", "norm_eps": 0.0, "freeze_at": 2, "fpn_channels": 256,
    "rpn": {"anchor_stride": "floor", "pre_nms_top_n_train": 2000, "post_nms_top_n_train": 2000,
            "pre_nms_top_n_test": 1000, "post_nms_top_n_test": 1000, "nms_threshold": 0.7},
    "roi_heads": {"aligned": False, "sampling_ratio": 2, "pooler_resolution": 7,
                  "smooth_l1_beta": 1 / 9, "score_threshold": 0.05, "nms_threshold": 0.5,
                  "detections_per_image": 100},
}  # fmt: skip
RETINANET = {
    "arch": "retinanet", "depth": 50, "num_classes": 90, "category_ids": CATEGORY_IDS,
    "norm": "frozen", "norm_eps": 0.0, "freeze_at": 2, "fpn_channels": 256,
    "retinanet": {
        "anchor_sizes": [[x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))]
                         for x in (32, 64, 128, 256, 512)],
        "anchor_stride": "floor", "num_convs": 4, "smooth_l1_beta": 0.0, "score_threshold": 0.05,
        "topk_candidates": 1000, "nms_threshold": 0.5, "detections_per_image": 300,
    },
}  # fmt: skip
# v2 (torchvision's "improved" Faster R-CNN): BatchNorm in the backbone (eps 1e-5, not the v1
# weights' 0) and after every FPN conv, two convs in the RPN head, and a box head of four 3x3
# convs with BatchNorm and one FC; everything else as v1
FASTER_RCNN_V2 = {
    **FASTER_RCNN, "norm_eps": 1e-5, "fpn_norm": "frozen",
    "rpn": {**FASTER_RCNN["rpn"], "head_convs": 2},
    "roi_heads": {**FASTER_RCNN["roi_heads"], "box_head": "4conv1fc", "box_head_norm": "frozen"},
}  # fmt: skip
# torchvision's transform: 800 px shorter side, 1333 longer
DATA = {"min_size": [800], "max_size": 1333, "test_min_size": 800}

# source name pattern -> podkit name (Conv2dNormActivation wrappers `.0` optional: older
# torchvision saved the bare convs)
V2_RENAMES: Renames = [  # Conv2dNormActivation's conv (.0) and norm (.1) kept apart
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.", r"backbone.fpn.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.", r"backbone.fpn.output.\1."),
    (r"^rpn\.head\.conv\.(\d+)\.0\.", lambda m: f"rpn.head.conv.{2 * int(m[1])}."),
    (r"^roi_heads\.box_head\.([0-3])\.", r"roi_heads.box_head.convs.\1."),
    (r"^roi_heads\.box_head\.5\.", "roi_heads.box_head.fc."),
]
RENAMES: Renames = [
    (r"^backbone\.fpn\.inner_blocks\.(\d+)(\.0)?\.", r"backbone.fpn.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)(\.0)?\.", r"backbone.fpn.output.\1."),
    (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.", r"backbone.fpn.\1."),
    (r"^rpn\.head\.conv(\.0\.0)?\.", "rpn.head.conv."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.predictor."),
    (r"^head\.classification_head\.conv\.(\d+)\.0\.", lambda m: f"head.cls_tower.{2 * int(m[1])}."),
    (r"^head\.regression_head\.conv\.(\d+)\.0\.", lambda m: f"head.box_tower.{2 * int(m[1])}."),
    (r"^head\.classification_head\.cls_logits\.", "head.cls_logits."),
    (r"^head\.regression_head\.bbox_reg\.", "head.bbox_pred."),
]  # fmt: skip


# GeneralizedRCNNTransform's image_mean / image_std (RGB in [0, 1])
PIXEL_MEAN, PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def convert_state(state: dict[str, Tensor], renames: Renames | None = None) -> dict[str, Tensor]:
    """podkit's tensors from torchvision's: renamed; the predictor's background row moved
    last (classes) or dropped (boxes); RetinaNet's background channel of each anchor dropped;
    the transform's pixel normalisation as the backbone's."""
    return normalisation(PIXEL_MEAN, PIXEL_STD) | renamed(
        state, (renames or []) + RENAMES, background_last
    )


def background_last(name: str, value: Tensor) -> Tensor:
    """torchvision's background label (0) moved last in the R-CNN classifier, its box rows
    dropped, and RetinaNet's background channel of each anchor dropped."""
    if name.startswith("roi_heads.predictor.cls_score."):
        return value[list(range(1, len(value))) + [0]]
    if name.startswith("roi_heads.predictor.bbox_pred."):
        return value[4:]
    if name.startswith("head.cls_logits."):
        labels = len(TORCHVISION_LABELS)
        return value.reshape(-1, labels, *value.shape[1:])[:, 1:].reshape(-1, *value.shape[1:])
    return value


# arch -> (model config, data sizes, classes, the state conversion)
ARCHS = {
    "fasterrcnn_resnet50_fpn": (FASTER_RCNN, DATA, CLASSES, convert_state),
    "fasterrcnn_resnet50_fpn_v2": (
        FASTER_RCNN_V2,
        DATA,
        CLASSES,
        lambda state: convert_state(state, V2_RENAMES),
    ),
    "retinanet_resnet50_fpn": (RETINANET, DATA, CLASSES, convert_state),
}
