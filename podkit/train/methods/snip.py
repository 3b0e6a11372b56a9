"""SNIP (Singh & Davis, "An Analysis of Scale Invariance in Object Detection - SNIP", 2018).

Train on an image pyramid, but at each resolution only on the objects whose size suits it:
each resolution has a valid range of object size, sqrt(area) in ORIGINAL-image pixels.
Per batch the hook draws one resolution and resizes the batch to it (from the images as
loaded: load them at the largest resolution, `data.min_size=[<largest>]`); GTs out of range
move to the target's `ignore` boxes, so anchors with IoU > 0.3 to them are neither positive
nor negative (RPN and RetinaNet, `ignore_iou_threshold`); the target's `valid_range` (in
as-fed pixels) makes the R-CNN stage drop out-of-range proposals before sampling; images
without a valid GT at the drawn resolution leave the batch (if none has one, the resolution
where most images do is taken instead). An anchor that is a positive of a valid GT stays
one even if it also overlaps an invalid GT: that object is valid here.

Multi-scale inference (`eval.multiscale`, `eval.snip`) runs every resolution, keeps each
one's detections inside its test range (SNIP) and merges them with soft-NMS or NMS
(`merge_detections`). With DST, put `snip` after `dst`: SNIP then resizes the collage, which
it treats as an image of its own.

`chip_size` (optional, SNIPER-style) crops each image at the highest resolution to the
chip x chip window that covers the most valid objects (best of `chip_candidates` random
windows), so that resolution costs at most chip^2 pixels per image.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.nn import functional as F

from podkit.config import MERGES
from podkit.data.loader import Batch
from podkit.data.transforms import resize_scale
from podkit.ops import batched_nms, batched_soft_nms, box_area, clip_boxes_to_image
from podkit.ops.image_batch import ImageBatch
from podkit.train.hooks import Hook, TrainState, rng_state, set_rng_state

INF = math.inf


@dataclass(frozen=True)
class Resolution:
    """One level of the pyramid: resize rule and valid object sizes (original pixels)."""

    min_size: int  # shorter side
    max_size: int  # cap on the longer side
    train_range: tuple[float, float]
    test_range: tuple[float, float]


COCO_PYRAMID = (
    Resolution(1400, 2000, (0, 80), (0, 90)),
    Resolution(800, 1200, (40, 160), (32, 180)),
    Resolution(480, 800, (120, INF), (75, INF)),
)


def scaled_pyramid(pyramid: tuple[Resolution, ...], factor: float) -> tuple[Resolution, ...]:
    """The same pyramid for images `factor` times the size: every size and range scaled, so
    the ratios between ranges and resolutions stay the paper's."""

    def scale(r: tuple[float, float]) -> tuple[float, float]:
        return (r[0] * factor, r[1] * factor)

    return tuple(
        replace(
            res,
            min_size=round(res.min_size * factor),
            max_size=round(res.max_size * factor),
            train_range=scale(res.train_range),
            test_range=scale(res.test_range),
        )
        for res in pyramid
    )


PYRAMIDS = {
    "coco": COCO_PYRAMID,
    # the built-in synthetic set: images ~256 px trained at ~256 (COCO: 800), so x 0.32
    "synthetic": scaled_pyramid(COCO_PYRAMID, 256 / 800),
}


def get_pyramid(spec: str | list) -> tuple[Resolution, ...]:
    """A preset name, or rows [min_size, max_size, lo, hi] (one range for train and test)."""
    if isinstance(spec, str):
        if spec not in PYRAMIDS:
            raise ValueError(f"unknown pyramid {spec!r}; presets: {', '.join(PYRAMIDS)}")
        return PYRAMIDS[spec]
    rows = []
    for row in spec:
        if len(row) != 4 or not (0 <= row[2] < row[3]):
            raise ValueError(
                f"pyramid row {row!r}: expected [min_size, max_size, lo, hi] with 0 <= lo < hi"
            )
        rows.append(Resolution(int(row[0]), int(row[1]), (row[2], row[3]), (row[2], row[3])))
    if not rows:
        raise ValueError("pyramid: at least one resolution is needed")
    return tuple(rows)


def in_range(boxes: Tensor, scale: float, valid: tuple[float, float]) -> Tensor:
    """Which boxes (as-fed pixels, `scale` x the original image) have an original-image
    sqrt(area) inside `valid` (bounds included)."""
    side = box_area(boxes).sqrt() / scale
    return (side >= valid[0]) & (side <= valid[1])


def fed_scale(batch: Batch, i: int) -> float:
    """How much larger image i is as fed than originally (meta `original_size`)."""
    (h, w), (oh, ow) = batch.images.sizes[i], batch.meta[i]["original_size"]
    return math.sqrt(h * w / (oh * ow))


def subset(batch: Batch, keep: list[int]) -> Batch:
    images = ImageBatch(
        batch.images.tensor[keep],
        [batch.images.sizes[i] for i in keep],
        [batch.images.original_sizes[i] for i in keep],
    )
    return Batch(images, [batch.targets[i] for i in keep], [batch.meta[i] for i in keep])


def resize_batch(batch: Batch, res: Resolution, size_divisible: int = 32) -> tuple[Batch, list]:
    """The batch at resolution `res` (from the images as loaded), and each image's scale
    from its original size (meta `original_size`)."""
    images, targets, scales = [], [], []
    for i, (h, w) in enumerate(batch.images.sizes):
        oh, ow = batch.meta[i]["original_size"]
        s = resize_scale(oh, ow, res.min_size, res.max_size)
        nh, nw = max(1, round(oh * s)), max(1, round(ow * s))
        crop = batch.images.tensor[i : i + 1, :, :h, :w]
        down = nh < h or nw < w
        images.append(
            F.interpolate(
                crop, size=(nh, nw), mode="bilinear", align_corners=False, antialias=down
            )[0]
        )
        factor = crop.new_tensor([nw / w, nh / h] * 2)
        target = dict(batch.targets[i])
        target["boxes"] = target["boxes"] * factor
        target["ignore"] = target.get("ignore", crop.new_zeros((0, 4))) * factor
        targets.append(target)
        scales.append(math.sqrt(nh * nw / (oh * ow)))
    padded = ImageBatch.from_tensors(images, size_divisible)
    padded.original_sizes = list(batch.images.original_sizes)
    return Batch(padded, targets, list(batch.meta)), scales


def mark_invalid(target: dict[str, Tensor], scale: float, valid: tuple[float, float]) -> dict:
    """Out-of-range GTs become ignore boxes; `valid_range` (as-fed pixels) goes along for the
    R-CNN stage's proposal filter."""
    keep = in_range(target["boxes"], scale, valid)
    boxes = target["boxes"]
    return {
        **target,
        "boxes": boxes[keep],
        "labels": target["labels"][keep],
        "ignore": torch.cat([target.get("ignore", boxes.new_zeros((0, 4))), boxes[~keep]]),
        "valid_range": boxes.new_tensor([valid[0] * scale, min(valid[1] * scale, 1e8)]),
    }


def best_chip(boxes: Tensor, size: tuple[int, int], chip: int, candidates: int, rng) -> tuple:
    """(x0, y0) of the chip x chip window, among `candidates` random ones (and the corner),
    that holds the most boxes entirely."""
    h, w = size
    if h <= chip and w <= chip:
        return 0, 0
    best, best_count = (0, 0), -1
    for k in range(candidates):
        x0 = 0 if k == 0 else rng.randint(0, max(w - chip, 0))
        y0 = 0 if k == 0 else rng.randint(0, max(h - chip, 0))
        inside = (
            (boxes[:, 0] >= x0)
            & (boxes[:, 1] >= y0)
            & (boxes[:, 2] <= x0 + chip)
            & (boxes[:, 3] <= y0 + chip)
        )
        if int(inside.sum()) > best_count:
            best, best_count = (x0, y0), int(inside.sum())
    return best


def crop_to_chips(batch: Batch, chip: int, candidates: int, rng, size_divisible: int = 32) -> Batch:
    """Each image cut to its best chip; boxes cut by the chip border are clipped to it, and
    those that lose more than half their area become ignore regions."""
    images, targets = [], []
    for i, (h, w) in enumerate(batch.images.sizes):
        target = batch.targets[i]
        x0, y0 = best_chip(target["boxes"], (h, w), chip, candidates, rng)
        ch, cw = min(chip, h), min(chip, w)
        images.append(batch.images.tensor[i, :, y0 : y0 + ch, x0 : x0 + cw])
        shift = target["boxes"].new_tensor([x0, y0, x0, y0])
        boxes = clip_boxes_to_image(target["boxes"] - shift, (ch, cw))
        kept = box_area(boxes) > 0.5 * box_area(target["boxes"])
        ignore = clip_boxes_to_image(target["ignore"] - shift, (ch, cw))
        ignore = torch.cat([ignore[box_area(ignore) > 0], boxes[~kept & (box_area(boxes) > 0)]])
        targets.append(
            {**target, "boxes": boxes[kept], "labels": target["labels"][kept], "ignore": ignore}
        )
    padded = ImageBatch.from_tensors(images, size_divisible)
    padded.original_sizes = list(batch.images.original_sizes)
    return Batch(padded, targets, list(batch.meta))


class SNIP(Hook):
    name = "snip"

    def __init__(
        self,
        pyramid: str | list = "coco",
        seed: int = 0,
        size_divisible: int = 32,
        chip_size: int | None = None,
        chip_candidates: int = 50,
    ) -> None:
        self.pyramid = get_pyramid(pyramid)
        self.size_divisible = size_divisible
        self.chip_size, self.chip_candidates = chip_size, chip_candidates
        self.rng = random.Random(seed)
        self.largest = max(range(len(self.pyramid)), key=lambda k: self.pyramid[k].min_size)
        self._last: tuple[int, int, int] = (-1, 0, 0)  # resolution, images kept, images in
        self._warned = False

    def before_step(self, state: TrainState, batch: Batch) -> Batch:
        fed_scales = [fed_scale(batch, i) for i in range(len(batch.targets))]
        valid = [
            [
                bool(in_range(t["boxes"], s, res.train_range).any())
                for t, s in zip(batch.targets, fed_scales, strict=True)
            ]
            for res in self.pyramid
        ]
        counts = [sum(v) for v in valid]
        choice = self.rng.randrange(len(self.pyramid))
        if counts[choice] == 0 and max(counts) > 0:
            choice = counts.index(max(counts))
        res = self.pyramid[choice]
        keep = [i for i, ok in enumerate(valid[choice]) if ok] or list(range(len(valid[choice])))
        self._warn_if_upsampling(batch, res)
        resized, scales = resize_batch(subset(batch, keep), res, self.size_divisible)
        resized.targets = [
            mark_invalid(t, s, res.train_range)
            for t, s in zip(resized.targets, scales, strict=True)
        ]
        if self.chip_size and choice == self.largest:
            resized = crop_to_chips(
                resized, self.chip_size, self.chip_candidates, self.rng, self.size_divisible
            )
        self._last = (choice, len(keep), len(batch.targets))
        return resized

    def _warn_if_upsampling(self, batch: Batch, res: Resolution) -> None:
        h, w = batch.images.sizes[0]
        oh, ow = batch.meta[0]["original_size"]
        wanted = resize_scale(oh, ow, res.min_size, res.max_size) * oh
        if not self._warned and wanted > 1.05 * h:
            warnings.warn(
                f"snip: images are loaded at {h} px and upsampled to {round(wanted)} for the "
                f"{res.min_size} resolution; load them at the largest resolution "
                f"(data.min_size=[{self.pyramid[self.largest].min_size}], "
                f"data.max_size={self.pyramid[self.largest].max_size})",
                stacklevel=2,
            )
            self._warned = True

    def after_step(self, state: TrainState) -> None:
        choice, kept, total = self._last
        state.metrics["snip_resolution"] = self.pyramid[choice].min_size
        state.metrics["snip_images"] = kept
        state.metrics["snip_skipped"] = total - kept

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            set_rng_state(self.rng, state["rng"])


def keep_in_range(det: dict[str, Tensor], valid: tuple[float, float]) -> dict[str, Tensor]:
    """Detections (original pixels) whose sqrt(area) lies inside `valid`."""
    keep = in_range(det["boxes"], 1.0, valid)
    return {k: v[keep] for k, v in det.items()}


def merge_detections(
    dets: list[dict[str, Tensor]],
    method: str = "soft_nms_linear",
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> dict[str, Tensor]:
    """One image's detections from several resolutions merged per class: soft-NMS (linear:
    decay above `iou_threshold`; gaussian: sigma 0.5) or plain NMS; best `max_detections`."""
    if method not in MERGES:
        raise ValueError(f"merge must be one of {', '.join(MERGES)}, got {method!r}")
    boxes = torch.cat([d["boxes"] for d in dets])
    scores = torch.cat([d["scores"] for d in dets])
    labels = torch.cat([d["labels"] for d in dets])
    if method == "nms":
        keep = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    keep, decayed = batched_soft_nms(
        boxes, scores, labels, iou_threshold, method=method.removeprefix("soft_nms_")
    )
    top = decayed.argsort(descending=True, stable=True)[:max_detections]
    keep = keep[top]
    return {"boxes": boxes[keep], "scores": decayed[top], "labels": labels[keep]}
