"""MMDetection 3's COCO detectors in podkit: the options under which podkit computes what
MMDetection computes, and the renaming of its tensors (`state_dict` of a `.pth` whose
`meta` holds the training record).

Read against mmdet 3's configs/_base_/models/{faster-rcnn,retinanet}_r50_fpn.py and
mmdet/models/{backbones/resnet.py, necks/fpn.py, dense_heads/{rpn,retina}_head.py,
roi_heads/bbox_heads/convfc_bbox_head.py, task_modules/prior_generators/anchor_generator.py}:
- ResNet "pytorch" style (stride in the 3x3 conv), BatchNorm kept in eval mode (eps 1e-5),
  stem and res2 frozen; input RGB normalised with ImageNet's mean and std (as podkit);
- anchors not rounded (`x_center - 0.5 * w`, floats), at the level's stride; RPN anchors
  8 x stride (32-512), RetinaNet's 4 x stride x 2^(i/3), ratios 0.5, 1, 2 ratio-major;
- FPN convs are ConvModules (`.conv`); Faster R-CNN's P6 is max-pooled from P5; RetinaNet's
  P6 is a conv on C5 (`add_extra_convs="on_input"`) and P7 a conv on P6 with no ReLU between
  (`relu_before_extra_convs=False`);
- RoIAlign aligned, adaptive sampling (sampling_ratio 0), FPN level = floor(log2(scale / 56)),
  which is podkit's canonical 224 px at level 4; Shared2FCBBoxHead (two 1024-d FCs), 80
  classes + background last, class-specific boxes, target stds (0.1, 0.1, 0.2, 0.2) =
  podkit's box weights (10, 10, 5, 5);
- L1 box losses (RPN, R-CNN and RetinaNet), RetinaNet 100 detections per image;
- label k is COCO's k-th category in id order (no background channel in the sigmoid heads).
A remaining difference: MMDetection clamps log-size deltas on both sides (|dw| <= log(1000/16)),
podkit (as torchvision) only from above; it matters only for boxes shrunk below 1/62 of their
anchor.
"""

from __future__ import annotations

from torch import Tensor

from podkit.convert.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from podkit.convert.rename import Renames, normalisation, renamed

FASTER_RCNN = {
    "arch": "faster_rcnn_fpn", "depth": 50, "num_classes": 80,
    "category_ids": COCO_CATEGORY_IDS, "norm": "frozen", "freeze_at": 2, "fpn_channels": 256,
    "rpn": {"anchor_round": False, "pre_nms_top_n_train": 2000, "post_nms_top_n_train": 1000,
            "pre_nms_top_n_test": 1000, "post_nms_top_n_test": 1000, "nms_threshold": 0.7,
            "smooth_l1_beta": 0.0},
    "roi_heads": {"aligned": True, "sampling_ratio": 0, "pooler_resolution": 7,
                  "smooth_l1_beta": 0.0, "score_threshold": 0.05, "nms_threshold": 0.5,
                  "detections_per_image": 100},
}  # fmt: skip
RETINANET = {
    "arch": "retinanet", "depth": 50, "num_classes": 80, "category_ids": COCO_CATEGORY_IDS,
    "norm": "frozen", "freeze_at": 2, "fpn_channels": 256,
    "retinanet": {
        "anchor_sizes": [[x * 2 ** (i / 3) for i in range(3)] for x in (32, 64, 128, 256, 512)],
        "anchor_round": False, "extra_levels": "p6p7_c5_linear", "num_convs": 4,
        "smooth_l1_beta": 0.0, "score_threshold": 0.05, "topk_candidates": 1000,
        "nms_threshold": 0.5, "detections_per_image": 100,
    },
}  # fmt: skip
# the 1x recipes' Resize: shorter side 800, longer side at most 1333
DATA = {"min_size": [800], "max_size": 1333, "test_min_size": 800}

COMMON: Renames = [
    (r"^backbone\.", "backbone.body."),
    (r"^neck\.lateral_convs\.(\d+)\.conv\.", r"backbone.fpn.lateral.\1."),
]
FASTER_RCNN_RENAMES: Renames = [
    *COMMON,
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", r"backbone.fpn.output.\1."),
    (r"^rpn_head\.rpn_conv\.", "rpn.head.conv."),
    (r"^rpn_head\.rpn_cls\.", "rpn.head.cls_logits."),
    (r"^rpn_head\.rpn_reg\.", "rpn.head.bbox_pred."),
    (r"^roi_head\.bbox_head\.shared_fcs\.0\.", "roi_heads.box_head.fc6."),
    (r"^roi_head\.bbox_head\.shared_fcs\.1\.", "roi_heads.box_head.fc7."),
    (r"^roi_head\.bbox_head\.fc_cls\.", "roi_heads.predictor.cls_score."),
    (r"^roi_head\.bbox_head\.fc_reg\.", "roi_heads.predictor.bbox_pred."),
]
FPN_OUT = {"0": "output.0", "1": "output.1", "2": "output.2", "3": "p6", "4": "p7"}
RETINANET_RENAMES: Renames = [
    *COMMON,
    (r"^neck\.fpn_convs\.(\d+)\.conv\.", lambda m: f"backbone.fpn.{FPN_OUT[m[1]]}."),
    (r"^bbox_head\.cls_convs\.(\d+)\.conv\.", lambda m: f"head.cls_tower.{2 * int(m[1])}."),
    (r"^bbox_head\.reg_convs\.(\d+)\.conv\.", lambda m: f"head.box_tower.{2 * int(m[1])}."),
    (r"^bbox_head\.retina_cls\.", "head.cls_logits."),
    (r"^bbox_head\.retina_reg\.", "head.bbox_pred."),
]
# mmdet's data_preprocessor: RGB, mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375)
PIXEL_MEAN, PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def renamer(renames: Renames):
    def convert_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """podkit's tensors from MMDetection's: renamed, BatchNorm step counters dropped, the
        data preprocessor's normalisation as the backbone's."""
        return normalisation(PIXEL_MEAN, PIXEL_STD) | renamed(state, renames)

    return convert_state


# arch (MMDetection's config name) -> (model config, data sizes, classes, the state conversion)
ARCHS = {
    "faster-rcnn_r50_fpn_1x_coco": (FASTER_RCNN, DATA, COCO_CLASSES, renamer(FASTER_RCNN_RENAMES)),
    "retinanet_r50_fpn_1x_coco": (RETINANET, DATA, COCO_CLASSES, renamer(RETINANET_RENAMES)),
}
