"""Detectron2's model-zoo detectors in podkit: the options under which podkit computes what
Detectron2 computes, and the renaming of its tensors (a `.pkl` of numpy arrays, read by an
unpickler that admits arrays and nothing else, or a `.pth` of its checkpointer).

Read against detectron2/modeling/{backbone/resnet.py, backbone/fpn.py, anchor_generator.py,
proposal_generator/rpn.py, roi_heads/{roi_heads.py, box_head.py, fast_rcnn.py},
meta_arch/retinanet.py} and configs/{Base-RCNN-FPN, Base-RCNN-C4, Base-RetinaNet}.yaml:
- ResNet with a bottleneck's stride on its first 1x1 conv (STRIDE_IN_1X1, the MSRA R-50 the
  zoo starts from), FrozenBN (eps 1e-5), stem and res2 frozen (FREEZE_AT 2);
- input BGR in 0-255, minus PIXEL_MEAN (103.53, 116.28, 123.675), over PIXEL_STD (1, 1, 1):
  for podkit's RGB input in [0, 1] the mean and std / 255 in RGB order, and conv1's input
  channels reversed;
- anchors exact floats at offset 0, size-major within a cell (each size, then each ratio),
  where podkit's are ratio-major: heads with several sizes per cell (RetinaNet, the C4 RPN)
  have their per-anchor rows reordered;
- ROIAlignV2 (aligned) with adaptive sampling, FPN level floor(4 + log2(sqrt(area) / 224));
  the FPN's top-down path is nearest x2 (the size podkit interpolates to, inputs padded to 32);
  R-CNN's P6 is max-pooled from P5, RetinaNet's P6 / P7 are convs on C5 with a ReLU before P7;
- L1 box losses (SMOOTH_L1_BETA 0) for the RPN and R-CNN, beta 0.1 for RetinaNet; 80 classes
  (background last in R-CNN, none in RetinaNet's sigmoid), label k = COCO's k-th id;
- C4: the RPN and the RoI pooling on res4 (stride 16), 6000 / 1000 proposals at test and
  12000 / 2000 in training, res5 on 14x14 RoIs, then the average.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from podkit.convert.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from podkit.convert.rename import Renames, normalisation, renamed

COMMON = {"depth": 50, "num_classes": 80, "category_ids": COCO_CATEGORY_IDS, "norm": "frozen",
          "stride_in_1x1": True, "freeze_at": 2, "fpn_channels": 256}  # fmt: skip
ROI = {"aligned": True, "sampling_ratio": 0, "smooth_l1_beta": 0.0, "score_threshold": 0.05,
       "nms_threshold": 0.5, "detections_per_image": 100}  # fmt: skip
FASTER_RCNN_FPN = {
    **COMMON, "arch": "faster_rcnn_fpn",
    "rpn": {"anchor_round": False, "pre_nms_top_n_train": 2000, "post_nms_top_n_train": 1000,
            "pre_nms_top_n_test": 1000, "post_nms_top_n_test": 1000, "nms_threshold": 0.7,
            "smooth_l1_beta": 0.0},
    "roi_heads": {**ROI, "pooler_resolution": 7},
}  # fmt: skip
FASTER_RCNN_C4 = {  # Base-RCNN-C4: more proposals, res5 on 14x14 RoIs
    **FASTER_RCNN_FPN, "arch": "faster_rcnn_c4",
    "rpn": {**FASTER_RCNN_FPN["rpn"], "pre_nms_top_n_train": 12000,
            "post_nms_top_n_train": 2000, "pre_nms_top_n_test": 6000},
    "roi_heads": {**ROI, "pooler_resolution": 14},
}  # fmt: skip
RETINA_SIZES = [[x * 2 ** (i / 3) for i in range(3)] for x in (32, 64, 128, 256, 512)]
RETINANET = {
    **COMMON, "arch": "retinanet",
    "retinanet": {
        "anchor_sizes": RETINA_SIZES, "anchor_round": False, "extra_levels": "p6p7_c5",
        "num_convs": 4, "smooth_l1_beta": 0.1, "score_threshold": 0.05,
        "topk_candidates": 1000, "nms_threshold": 0.5, "detections_per_image": 100,
    },
}  # fmt: skip
# the 1x recipes: shorter side 640-800 in training, 800 at test, longer side at most 1333
DATA = {"min_size": [640, 672, 704, 736, 768, 800], "max_size": 1333, "test_min_size": 800}
PIXEL_MEAN_BGR, PIXEL_STD_BGR = (103.530, 116.280, 123.675), (1.0, 1.0, 1.0)
RATIOS = 3  # aspect ratios per cell (0.5, 1, 2)


def resnet_part(m) -> str:
    """podkit's name for a ResNet tensor of Detectron2's (backbone resN or the C4 head's res5)."""
    stage = f"backbone.body.layer{int(m[1]) - 1}." if m[1] else "roi_heads.box_head.res5."
    part = m[3]
    if part == "shortcut":
        return f"{stage}{m[2]}.downsample.{1 if m[4] else 0}."
    return f"{stage}{m[2]}.{'bn' if m[4] else 'conv'}{part[-1]}."


def renames(first_fpn_level: int) -> Renames:
    """The renaming of a Detectron2 R-50 detector whose FPN starts at P`first_fpn_level`."""
    return [
        (r"^backbone\.(?:bottom_up\.)?stem\.conv1\.norm\.", "backbone.body.bn1."),
        (r"^backbone\.(?:bottom_up\.)?stem\.conv1\.", "backbone.body.conv1."),
        (r"^(?:backbone\.(?:bottom_up\.)?res(\d)|roi_heads\.res5)\.(\d+)\.(conv\d|shortcut)\.(norm\.)?",
         resnet_part),
        (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"backbone.fpn.lateral.{int(m[1]) - first_fpn_level}."),
        (r"^backbone\.fpn_output(\d)\.", lambda m: f"backbone.fpn.output.{int(m[1]) - first_fpn_level}."),
        (r"^backbone\.top_block\.(p6|p7)\.", r"backbone.fpn.\1."),
        (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv."),
        (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
        (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
        (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
        (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
        (r"^roi_heads\.box_predictor\.", "roi_heads.predictor."),
        (r"^head\.cls_subnet\.(\d+)\.", r"head.cls_tower.\1."),
        (r"^head\.bbox_subnet\.(\d+)\.", r"head.box_tower.\1."),
        (r"^head\.cls_score\.", "head.cls_logits."),
        (r"^head\.bbox_pred\.", "head.bbox_pred."),
    ]  # fmt: skip


def ratio_major(value: Tensor, sizes: int, per_anchor: int) -> Tensor:
    """A head's rows (anchor, then `per_anchor` outputs) from size-major anchors to ratio-major."""
    rows = value.reshape(sizes, RATIOS, per_anchor, *value.shape[1:])
    return rows.transpose(0, 1).reshape(value.shape)


# podkit tensor -> (sizes per cell, outputs per anchor) of heads with several sizes per cell
REORDERED = {
    "retinanet": {"head.cls_logits.": (3, 80), "head.bbox_pred.": (3, 4)},
    "faster_rcnn_c4": {"rpn.head.cls_logits.": (5, 1), "rpn.head.bbox_pred.": (5, 4)},
    "faster_rcnn_fpn": {},
}


def converter(arch: str, first_fpn_level: int):
    names = renames(first_fpn_level)

    def convert_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """podkit's tensors from Detectron2's: renamed; conv1 taking RGB; the pixel mean and
        std (the file's own when it holds them) in podkit's normalisation; rows of heads
        with several anchor sizes per cell reordered."""
        mean = state.pop("pixel_mean", torch.tensor(PIXEL_MEAN_BGR)).flatten()
        std = state.pop("pixel_std", torch.tensor(PIXEL_STD_BGR)).flatten()
        return normalisation(tuple(mean.flip(0) / 255), tuple(std.flip(0) / 255)) | renamed(
            state, names, layout
        )

    def layout(name: str, value: Tensor) -> Tensor:
        if name == "backbone.body.conv1.weight":
            return value.flip(1)  # BGR -> RGB input channels
        for prefix, (sizes, per_anchor) in REORDERED[arch].items():
            if name.startswith(prefix):
                return ratio_major(value, sizes, per_anchor)
        return value

    return convert_state


# the globals a pickle of numpy arrays needs: array reconstruction (and, in protocol-2
# pickles, bytes spelt as latin-1 text), nothing that runs code
_multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")  # fmt: skip
ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists and plain values; any other global is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in ARRAY_GLOBALS:
            return ARRAY_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name}")


def read_pkl(path: Path) -> dict:
    """A Detectron2 `.pkl` ({"model": {name: array}, ...}) with its arrays as tensors."""
    try:
        with path.open("rb") as f:
            data = ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "." in text and " " not in text:  # a refused global
            raise ValueError(
                f"{path}: a pickle that would run code ({text}), not Detectron2's arrays; "
                "it was not run"
            ) from None
        raise ValueError(f"{path}: not a readable Detectron2 .pkl ({text})") from None
    except (EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable Detectron2 .pkl (truncated? {exc})") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"{path}: not Detectron2's layout (a dict with a 'model' dict of arrays)")
    return {
        "model": {
            k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in model.items()
        }
    }


# arch (the model zoo's config name) -> (model config, data sizes, classes, the conversion)
ARCHS = {
    "faster_rcnn_R_50_FPN_1x": (FASTER_RCNN_FPN, DATA, COCO_CLASSES, converter("faster_rcnn_fpn", 2)),
    "faster_rcnn_R_50_C4_1x": (FASTER_RCNN_C4, DATA, COCO_CLASSES, converter("faster_rcnn_c4", 2)),
    "retinanet_R_50_FPN_1x": (RETINANET, DATA, COCO_CLASSES, converter("retinanet", 3)),
}  # fmt: skip
