"""Run configuration: dataclasses, YAML files and `--set a.b=value` overrides.

Every option of a run is a field of a dataclass here, at the bottom of the package (it
imports nothing of podkit): models, data and training read their part; `Config` composes them.
Values are type-checked against the annotations when loaded, and an unknown key fails
with the list of valid ones, so a typo never silently trains the wrong thing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ARCHS = ("faster_rcnn_fpn", "faster_rcnn_c4", "retinanet")
RESNET_DEPTHS = (18, 34, 50, 101)
NORMS = ("frozen", "bn", "gn")
DEVICES = ("auto", "cpu", "cuda")  # auto: cuda where there is one, else the CPU
NAN_POLICIES = ("stop", "skip")
# where a run's scalars go: metrics.jsonl always; TensorBoard event files and MLflow on request
RUN_LOGS = ("jsonl", "tensorboard", "mlflow")
FORMATS = ("coco", "voc")
MERGES = ("soft_nms_linear", "soft_nms_gaussian", "nms")
STAGES = ("layer1", "layer2", "layer3", "layer4")
ANCHOR_MODES = ("config", "auto", "fitted")
# how far apart a level's anchors lie: "nominal", the level's stride; "floor", the input's
# size // the level's feature size per axis (torchvision's AnchorGenerator)
ANCHOR_STRIDES = ("nominal", "floor")
# RetinaNet's P6/P7: from P5 with a ReLU before P7 (RetinaNet paper, torchvision v1), from C5
# (Detectron2), from C5 without the ReLU (MMDetection)
BOX_HEADS = ("2fc", "4conv1fc")  # the FPN R-CNN's box head (RoIHeadConfig.box_head)
RETINANET_EXTRA = ("p6p7", "p6p7_c5", "p6p7_c5_linear")


class ConfigRangeError(ValueError):
    """A field's value lies outside what it can mean; `from_dict` adds the key's full path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def require(obj: Any, key: str, ok: bool, what: str) -> None:
    """Raise naming `key` when its value is not `what` (e.g. "an integer >= 1")."""
    if not ok:
        raise ConfigRangeError(key, f"must be {what}, got {getattr(obj, key)!r}")


def fraction(x: float, low_open: bool = False) -> bool:
    return (x > 0 if low_open else x >= 0) and x <= 1


@dataclass
class RPNConfig:
    """Options of the RPN. Top-k before NMS is per level; after NMS per image."""

    anchor_sizes: tuple[tuple[float, ...], ...] = ((32,), (64,), (128,), (256,), (512,))
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_stride: str = "nominal"  # one of ANCHOR_STRIDES
    # anchor corners rounded to whole pixels (torchvision); false: exact (Detectron2, MMDetection)
    anchor_round: bool = True
    head_convs: int = 1  # 3x3 convs of the shared head (torchvision's v2 models: 2)
    pre_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_train: int = 1000
    post_nms_top_n_test: int = 1000
    nms_threshold: float = 0.7
    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9
    min_size: float = 1e-3
    ignore_iou_threshold: float = 0.3

    def __post_init__(self) -> None:
        sizes = [s for level in self.anchor_sizes for s in level]
        require(self, "anchor_sizes", bool(sizes) and min(sizes) > 0, "positive sizes per level")
        require(
            self,
            "aspect_ratios",
            bool(self.aspect_ratios) and min(self.aspect_ratios) > 0,
            "positive ratios",
        )
        require(
            self, "anchor_stride", self.anchor_stride in ANCHOR_STRIDES, " or ".join(ANCHOR_STRIDES)
        )
        require(self, "head_convs", self.head_convs >= 1, "an integer >= 1")
        for key in (
            "pre_nms_top_n_train",
            "pre_nms_top_n_test",
            "post_nms_top_n_train",
            "post_nms_top_n_test",
            "batch_size_per_image",
        ):
            require(self, key, getattr(self, key) >= 1, "an integer >= 1")
        for key in ("fg_iou_threshold", "bg_iou_threshold", "ignore_iou_threshold"):
            require(self, key, fraction(getattr(self, key)), "in [0, 1]")
        require(self, "nms_threshold", fraction(self.nms_threshold, True), "in (0, 1]")
        require(self, "positive_fraction", fraction(self.positive_fraction, True), "in (0, 1]")
        require(self, "smooth_l1_beta", self.smooth_l1_beta >= 0, ">= 0")
        require(self, "min_size", self.min_size >= 0, ">= 0")


@dataclass
class RoIHeadConfig:
    """Options of the R-CNN stage (defaults: Faster R-CNN FPN 1x).

    pooler_resolution / sampling_ratio None take the architecture's default: 7 and 2 for
    FPN, 14 and 0 (adaptive) for C4.
    """

    pooler_resolution: int | None = None
    sampling_ratio: int | None = None
    # RoIAlign's sampling grid: true samples at roi * scale - 0.5 (Detectron2, MMDetection),
    # false at roi * scale with RoIs of at least one cell (torchvision's MultiScaleRoIAlign)
    aligned: bool = True
    # the FPN box head: "2fc" (two FCs of representation_size) or "4conv1fc" (four 3x3 convs
    # with box_head_norm, one FC: torchvision's v2 model)
    box_head: str = "2fc"
    box_head_norm: str = "bn"
    representation_size: int = 1024
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    iou_threshold: float = 0.5
    smooth_l1_beta: float = 1.0
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    ignore_iou_threshold: float | None = None  # None: the head's current iou_threshold

    def __post_init__(self) -> None:
        require(self, "box_head", self.box_head in BOX_HEADS, " or ".join(BOX_HEADS))
        require(self, "box_head_norm", self.box_head_norm in NORMS, f"one of {', '.join(NORMS)}")
        require(
            self,
            "pooler_resolution",
            self.pooler_resolution is None or self.pooler_resolution >= 1,
            "an integer >= 1",
        )
        require(
            self,
            "sampling_ratio",
            self.sampling_ratio is None or self.sampling_ratio >= 0,
            "an integer >= 0 (0: adaptive)",
        )
        for key in ("representation_size", "batch_size_per_image", "detections_per_image"):
            require(self, key, getattr(self, key) >= 1, "an integer >= 1")
        for key in ("iou_threshold", "nms_threshold", "positive_fraction"):
            require(self, key, fraction(getattr(self, key), True), "in (0, 1]")
        require(self, "score_threshold", fraction(self.score_threshold), "in [0, 1]")
        require(
            self,
            "ignore_iou_threshold",
            self.ignore_iou_threshold is None or fraction(self.ignore_iou_threshold),
            "in [0, 1], or null (the head's iou_threshold)",
        )
        require(self, "smooth_l1_beta", self.smooth_l1_beta >= 0, ">= 0")
        require(self, "bbox_reg_weights", min(self.bbox_reg_weights) > 0, "4 positive numbers")


@dataclass
class RetinaNetConfig:
    """Options of the RetinaNet head (defaults: the paper's R50-FPN 1x)."""

    anchor_base_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    # explicit sizes per level, replacing base x scales (torchvision truncates its sizes to
    # integers: (32, 40, 50), (64, 80, 101), ...)
    anchor_sizes: tuple[tuple[float, ...], ...] | None = None
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_stride: str = "nominal"  # one of ANCHOR_STRIDES
    anchor_round: bool = True  # as RPNConfig.anchor_round
    extra_levels: str = "p6p7"  # one of RETINANET_EXTRA
    num_convs: int = 4
    head_norm: str | None = None  # "gn": GroupNorm in the towers (trains faster from scratch)
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 0.1
    prior_prob: float = 0.01
    score_threshold: float = 0.05
    topk_candidates: int = 1000
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    ignore_iou_threshold: float = 0.3

    def __post_init__(self) -> None:
        for key in ("anchor_base_sizes", "anchor_scales", "aspect_ratios"):
            values = getattr(self, key)
            require(self, key, bool(values) and min(values) > 0, "a list of positive numbers")
        require(
            self, "anchor_stride", self.anchor_stride in ANCHOR_STRIDES, " or ".join(ANCHOR_STRIDES)
        )
        require(
            self, "extra_levels", self.extra_levels in RETINANET_EXTRA, " or ".join(RETINANET_EXTRA)
        )
        require(self, "num_convs", self.num_convs >= 0, "an integer >= 0")
        require(self, "head_norm", self.head_norm in (None, "gn"), "null or gn")
        for key in (
            "fg_iou_threshold",
            "bg_iou_threshold",
            "ignore_iou_threshold",
            "focal_alpha",
            "score_threshold",
        ):
            require(self, key, fraction(getattr(self, key)), "in [0, 1]")
        require(self, "nms_threshold", fraction(self.nms_threshold, True), "in (0, 1]")
        require(self, "prior_prob", 0 < self.prior_prob < 1, "in (0, 1)")
        require(self, "focal_gamma", self.focal_gamma >= 0, ">= 0")
        require(self, "smooth_l1_beta", self.smooth_l1_beta >= 0, ">= 0")
        for key in ("topk_candidates", "detections_per_image"):
            require(self, key, getattr(self, key) >= 1, "an integer >= 1")


@dataclass
class ModelConfig:
    """What to build. `depth`/`width` shrink the network for tests (18 and 0.25 is tiny)."""

    arch: str = "faster_rcnn_fpn"
    depth: int = 50
    width: float = 1.0
    num_classes: int = 80
    # the category id `predict` writes for each label (a converted COCO model's own ids);
    # None: 1..num_classes
    category_ids: list[int] | None = None
    norm: str = "frozen"
    norm_eps: float = 1e-5  # every BatchNorm's eps (torchvision's COCO weights use 0)
    # a bottleneck's stride on its first 1x1 conv (Detectron2's MSRA-based models), not the 3x3
    stride_in_1x1: bool = False
    fpn_norm: str | None = None  # a norm after each FPN conv (torchvision's v2 models: bn)
    freeze_at: int = 2
    fpn_channels: int = 256
    gsl: bool = False  # 3x3 convs of gsl_stages learn their dilation (POD's GSL)
    gsl_stages: list[str] = field(default_factory=lambda: ["layer2", "layer3", "layer4"])
    fd_plan: str | list[dict[str, Any]] | None = (
        None  # FD network: a plan.json path or the plan itself
    )
    init_from: str | None = None
    init_partial: bool = False  # init_from may leave whole blocks or heads at their initial values
    backbone_weights: str | None = None
    # config: the sizes below; auto: fitted to the training boxes at start (the run's saved
    # config then holds the fitted sizes, marked fitted)
    anchors: str = "config"
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    retinanet: RetinaNetConfig = field(default_factory=RetinaNetConfig)

    def __post_init__(self) -> None:
        require(self, "arch", self.arch in ARCHS, f"one of {', '.join(ARCHS)}")
        require(self, "anchors", self.anchors in ANCHOR_MODES, f"one of {', '.join(ANCHOR_MODES)}")
        require(self, "depth", self.depth in RESNET_DEPTHS, f"one of {RESNET_DEPTHS}")
        require(self, "width", 0 < self.width <= 4, "in (0, 4]")
        require(self, "num_classes", self.num_classes >= 1, "an integer >= 1")
        require(self, "norm", self.norm in NORMS, f"one of {', '.join(NORMS)}")
        require(self, "norm_eps", 0 <= self.norm_eps < 1, "in [0, 1)")
        require(
            self, "fpn_norm", self.fpn_norm in (None, *NORMS), f"null or one of {', '.join(NORMS)}"
        )
        require(self, "stride_in_1x1", not self.stride_in_1x1 or self.depth >= 50,
                "false for depths 18 and 34 (no 1x1 conv in their blocks)")  # fmt: skip
        require(
            self,
            "category_ids",
            self.category_ids is None or len(self.category_ids) == self.num_classes,
            "null or one id per class (model.num_classes of them)",
        )
        require(self, "freeze_at", 0 <= self.freeze_at <= 5, "in 0..5")
        require(self, "fpn_channels", self.fpn_channels >= 1, "an integer >= 1")
        require(
            self,
            "gsl_stages",
            set(self.gsl_stages) <= set(STAGES),
            f"a list of {', '.join(STAGES)}",
        )


@dataclass
class DatasetConfig:
    """One split: `format` coco (ann = json file) or voc (ann = folder of xml files)."""

    format: str = "coco"
    ann: str | None = ""  # empty or null: no such split (data.val.ann=null: no validation)
    images: str = ""
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        require(self, "format", self.format in FORMATS, f"one of {', '.join(FORMATS)}")


@dataclass
class AugmentConfig:
    """Training-time augmentation (`data.augment`): each op with its probability (0: off, the
    default) and strength. Applied in this order: mosaic, crop, scale jitter, flips and
    rotations, colour (see podkit/data/augment.py)."""

    color: float = 0.0  # probability of colour jitter (brightness, contrast, saturation, hue)
    brightness: float = 0.3  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03  # shift drawn from [-h, h] of the hue circle
    grayscale: float = 0.0  # probability
    blur: float = 0.0  # probability of a Gaussian blur
    blur_sigma: float = 1.5  # largest sigma, pixels
    scale: list[float] | None = None  # [lo, hi]: resize factor drawn log-uniformly
    crop: float = 0.0  # probability of a random crop
    crop_min: float = 0.5  # smallest crop side, a fraction of the image side
    crop_keep: float = 0.5  # a cut box keeping less of its area becomes an ignore region
    vflip: float = 0.0  # probability
    rot90: float = 0.0  # probability of a rotation by 90, 180 or 270 degrees
    mosaic: float = 0.0  # probability of a 2x2 mosaic of this image and three random others

    def __post_init__(self) -> None:
        for key in ("color", "grayscale", "blur", "crop", "vflip", "rot90", "mosaic"):
            require(self, key, fraction(getattr(self, key)), "a probability in [0, 1]")
        for key in ("brightness", "contrast", "saturation"):
            require(self, key, 0 <= getattr(self, key) < 1, "in [0, 1)")
        require(self, "hue", 0 <= self.hue <= 0.5, "in [0, 0.5]")
        require(self, "blur_sigma", self.blur_sigma > 0, "a number > 0")
        require(
            self,
            "scale",
            self.scale is None or (len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]),
            "null or [lo, hi] with 0 < lo <= hi",
        )
        require(self, "crop_min", fraction(self.crop_min, low_open=True), "in (0, 1]")
        require(self, "crop_keep", fraction(self.crop_keep, low_open=True), "in (0, 1]")


@dataclass
class TrainTileConfig:
    """Tiled training data (data.tile): each training image becomes its `size` x `size`
    tiles (overlapping by `overlap`, the grid of sliced inference) with the boxes they hold;
    a box with less than `min_visible` of its area inside a tile is an ignore region there."""

    size: int = 640
    overlap: float = 0.2
    min_visible: float = 0.5
    cache_mb: int = 2048  # decoded source images kept per loader worker (0: decode per tile)

    def __post_init__(self) -> None:
        require(self, "size", self.size >= 32 and self.size % 32 == 0, "a multiple of 32, >= 32")
        require(self, "overlap", 0 <= self.overlap < 1, "in [0, 1)")
        require(self, "min_visible", 0 < self.min_visible <= 1, "in (0, 1]")
        require(self, "cache_mb", self.cache_mb >= 0, "an integer >= 0")


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: DatasetConfig = field(default_factory=DatasetConfig)
    min_size: list[int] = field(
        default_factory=lambda: [800]
    )  # shorter side; random choice in training
    max_size: int = 1333  # cap on the longer side
    test_min_size: int = 800
    flip: float = 0.5
    size_divisible: int = 32
    aspect_grouping: bool = True
    max_image_pixels: int = 64_000_000  # larger images are refused (decompression bombs)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tile: TrainTileConfig | None = None  # train on tiles of large images; null: whole images

    def __post_init__(self) -> None:
        require(
            self,
            "min_size",
            bool(self.min_size) and min(self.min_size) >= 1,
            "a non-empty list of sizes >= 1",
        )
        for key in ("max_size", "test_min_size", "size_divisible", "max_image_pixels"):
            require(self, key, getattr(self, key) >= 1, "an integer >= 1")
        require(self, "flip", fraction(self.flip), "a probability in [0, 1]")


@dataclass
class EMAConfig:
    """An exponential moving average of the weights, evaluated, saved and exported in their
    place (Ultralytics' ModelEMA): after each step ema = d * ema + (1 - d) * weights, with
    d = decay * (1 - exp(-updates / warmup)), so the average follows the weights closely early on."""

    decay: float = 0.9998
    warmup: int = 2000

    def __post_init__(self) -> None:
        require(self, "decay", 0 < self.decay < 1, "in (0, 1)")
        require(self, "warmup", self.warmup >= 1, "an integer >= 1")


@dataclass
class TrainConfig:
    max_iter: int = 90000
    batch_size: int = 16  # images per iteration, over all processes
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    steps: list[float] = field(
        default_factory=lambda: [2 / 3, 8 / 9]
    )  # decay points, fractions of max_iter
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    # mixed precision: fp16 autocast on CUDA, bf16 autocast on the CPU; auto: where it is fast
    # (CUDA, or a CPU with bf16 units: AVX-512 BF16 / AMX; elsewhere bf16 is emulated, ~10x
    # slower than float32)
    amp: bool | str = False
    channels_last: bool = False  # NHWC weights and activations (faster convs on the CPU)
    checkpoint_every: int = 5000
    keep_checkpoints: bool = False  # also keep iter_N.pt at every checkpoint
    eval_every: int = 0  # 0: only at the end
    log_every: int = 20
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    # a non-finite loss: stop (keeping the last good checkpoint), or skip that step and go
    # on, stopping after `max_skipped_steps` skipped in a row
    nan_policy: str = "stop"
    max_skipped_steps: int = 10
    ema: EMAConfig | None = None  # null: the trained weights themselves
    # RUN/best.pt: the weights that scored highest on this eval.json key (AP, AP50, APs, ...)
    # at the periodic (eval_every) and final evaluations; null: no best.pt
    best_metric: str | None = None
    log: list[str] = field(default_factory=lambda: ["jsonl"])  # any of RUN_LOGS

    def __post_init__(self) -> None:
        for key in ("max_iter", "batch_size", "log_every"):
            require(self, key, getattr(self, key) >= 1, "an integer >= 1")
        for key in ("warmup_iters", "checkpoint_every", "eval_every", "workers"):
            require(self, key, getattr(self, key) >= 0, "an integer >= 0")
        require(self, "lr", self.lr >= 0, "a number >= 0")
        require(self, "momentum", 0 <= self.momentum < 1, "in [0, 1)")
        require(self, "weight_decay", self.weight_decay >= 0, ">= 0")
        require(self, "warmup_factor", fraction(self.warmup_factor, True), "in (0, 1]")
        require(
            self, "steps", all(0 < f <= 1 for f in self.steps), "fractions of max_iter in (0, 1]"
        )
        require(self, "gamma", self.gamma > 0, "a number > 0")
        require(
            self,
            "clip_grad_norm",
            self.clip_grad_norm is None or self.clip_grad_norm > 0,
            "null or a number > 0",
        )
        require(self, "device", self.device in DEVICES, f"one of {', '.join(DEVICES)}")
        require(self, "amp", self.amp in (True, False, "auto"), "true, false or auto")
        require(self, "nan_policy", self.nan_policy in NAN_POLICIES, "stop or skip")
        require(self, "max_skipped_steps", self.max_skipped_steps >= 1, "an integer >= 1")
        require(self, "log", set(self.log) <= set(RUN_LOGS), f"a list of {', '.join(RUN_LOGS)}")


def resolve_amp(amp: bool | str, device: str) -> bool:
    """Whether to autocast: train.amp, with auto on for CUDA and for CPUs with bf16 units."""
    if amp != "auto":
        return bool(amp)
    import torch

    return device == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(name: str) -> str:
    """cpu or cuda for a train.device value: auto picks cuda where torch sees one."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TileConfig:
    """Sliced inference (eval.tile): `size` x `size` tiles fed at their own pixels, stepping by
    size * (1 - overlap); `whole` adds the whole image at the test size (for objects larger
    than the overlap). ops/tiles.py says how their detections merge."""

    size: int = 640
    overlap: float = 0.2
    whole: bool = False

    def __post_init__(self) -> None:
        require(self, "size", self.size >= 32 and self.size % 32 == 0, "a multiple of 32, >= 32")
        require(self, "overlap", 0 <= self.overlap < 1, "in [0, 1)")


@dataclass
class EvalConfig:
    batch_size: int = 2
    max_images: int | None = None
    multiscale: bool = False  # test on every resolution of `pyramid`, merged
    snip: bool = False  # multiscale, each resolution keeping only its valid range (SNIP)
    # auto (fit:SIZE at data.test_min_size), a preset (coco, synthetic), fit:SIZE, or rows
    pyramid: str | list[list[float]] = "auto"
    merge: str = "soft_nms_linear"  # soft_nms_linear | soft_nms_gaussian | nms
    tile: TileConfig | None = None  # sliced inference on large images; null: whole images

    def __post_init__(self) -> None:
        require(self, "batch_size", self.batch_size >= 1, "an integer >= 1")
        require(
            self,
            "max_images",
            self.max_images is None or self.max_images >= 1,
            "null or an integer >= 1",
        )
        require(self, "merge", self.merge in MERGES, f"one of {', '.join(MERGES)}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    methods: list[dict[str, Any]] = field(default_factory=list)
    # the recipe files this config was read from, each base before the file extending it
    # (recorded in the run's config.yaml, which holds the merged result; never read back)
    recipe: list[str] = field(default_factory=list)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- YAML file (over its `_base_` files) <- `key.sub=value` overrides (values
    parsed as YAML). A path that is not a file may name a config shipped with podkit
    (`configs/tiny/retinanet.yaml` or `tiny/retinanet.yaml`), so the recipes work from an
    installed wheel too."""
    data: dict[str, Any] = {}
    if path is not None:
        chain: list[Path] = []
        data = read_recipe(packaged_config(path), chain)
        data.setdefault("recipe", [str(p) for p in chain])  # a run's config.yaml keeps its own
    return config_from_dict(data, overrides)


def tiny_model_config(arch: str, num_classes: int) -> ModelConfig:
    """The tiny recipes' detector (configs/base/tiny_model.yaml: ResNet-18 at quarter width,
    light heads) as `arch` for `num_classes`: trains on a CPU in seconds (tests, benches)."""
    over = [f"model.arch={arch}", f"model.num_classes={num_classes}"]
    return load_config("base/tiny_model.yaml", over).model


def read_recipe(path: Path, chain: list[Path], seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping over its `_base_` files (a name or a list, relative to the
    file or shipped with podkit; each merged over the previous), sections merged key by key, a list or value
    replacing the base's. `chain` receives the files read, bases first."""
    data = read_yaml_mapping(path)
    bases = data.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ValueError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():  # else a recipe shipped with podkit (tiny/retinanet.yaml)
            try:
                base_path = packaged_config(base)
            except (FileNotFoundError, ValueError):
                raise ValueError(f"{path}: _base_ {base!r}: no such file ({base_path})") from None
        if base_path.resolve() in (*seen, path.resolve()):
            raise ValueError(f"{path}: _base_ {base!r}: the files extend each other in a circle")
        merged = merge_sections(merged, read_recipe(base_path, chain, (*seen, path.resolve())))
    chain.append(path)
    return merge_sections(merged, data)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a config (a binary file, not YAML text)") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: malformed YAML ({yaml_error_line(exc)})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: a config file must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


# the recipes shipped inside the package (package data), found the same from a wheel
SHIPPED_CONFIGS = Path(str(resources.files("podkit") / "configs"))


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line, column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def packaged_config(path: str | Path) -> Path:
    """`path` if it is a file, else the config of that name shipped in podkit/configs."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a config file (.yaml)")
    name = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    shipped = SHIPPED_CONFIGS.joinpath(*name)
    if name and shipped.is_file():
        return shipped
    raise FileNotFoundError(f"{path}: config file not found")


def config_from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A Config from a saved dict (a checkpoint's, an artefact's) with `overrides` applied to a
    copy: the saved dict is left as it was."""
    data = copy.deepcopy(data)
    for item in overrides:
        apply_override(data, item)
    return from_dict(Config, data, "")


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`[1, 2]`, `true`, ...)."""
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(
            f"--set {item!r}: the value is not valid YAML ({yaml_error_line(exc)})"
        ) from None
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {item!r}: {part} is not a section")
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a dict, checking every key and value type."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown config key {_join(where, key)!r}{hint}; valid keys: {', '.join(names)}"
            )
    kwargs = {key: _coerce(value, hints[key], _join(where, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigRangeError as exc:
        raise ValueError(f"{_join(where, exc.key)}: {exc.message}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    raise ValueError(f"{where}: unsupported config type {tp}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (lists, not tuples) for YAML files and checkpoints."""

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def parse_size(text: str, multiple: int = 32) -> tuple[int, int]:
    """'512x640' -> (512, 640); '512' -> (512, 512). Each side a multiple of `multiple`: the
    detectors' feature maps halve five times, and a network input is padded to it anyway."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"--input-size {text!r}: expected HxW, e.g. 512x512")
    if any(p % multiple for p in parts):
        raise ValueError(f"--input-size {text!r}: each side must be a multiple of {multiple}")
    return parts[0], parts[1]
