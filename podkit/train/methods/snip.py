"""SNIP (Singh & Davis, "An Analysis of Scale Invariance in Object Detection - SNIP", 2018).

Train on an image pyramid, but at each resolution only on the objects whose size suits it:
each resolution has a valid range of object size, sqrt(area) in ORIGINAL-image pixels.
The paper trains on image-resolution pairs that hold a valid GT, so each image of a batch
gets a resolution drawn among those where it has one (an image with none anywhere gets any):
at equal iterations SNIP sees as many images as multi-scale training, none dropped. Images
are resized from how they were loaded: load them at the largest resolution
(`data.min_size=[<largest>]`). GTs out of range move to the target's `ignore` boxes, so
anchors with IoU > 0.3 to them are neither positive nor negative (RPN and RetinaNet,
`ignore_iou_threshold`); with `anchor_rule: paper` they go to `exclude` instead, which also
removes positives of a valid GT that overlap an invalid one by IoU > 0.3, as the paper
states. The target's `valid_range` (in as-fed pixels) makes the R-CNN stage drop
out-of-range proposals before sampling; there an invalid GT is ignored from the head's own
IoU threshold (which Dynamic R-CNN moves). A resolution may give the RPN its own range
(`rpn_range`; the paper trains the RPN at 800 px on [0, 160] while the R-CNN uses [40, 160]).

Multi-scale inference (`eval.multiscale`, `eval.snip`) runs every resolution, keeps each
one's detections inside its test range (SNIP) and merges them with soft-NMS or NMS
(`merge_detections`). With DST, put `snip` after `dst`: SNIP then resizes the collage, which
it treats as an image of its own.

`chip_size` (optional, SNIPER-style) cuts each image at the highest resolution into
chip x chip windows that cover its valid objects greedily: the window (best of
`chip_candidates` random ones and the corner) holding the most still-uncovered valid
objects, again until every valid object lies in a chip (at most `max_chips` per image);
each chip is an image of the batch, so that resolution costs at most chip^2 pixels each.

Pyramids: `coco` (the paper's), `synthetic` (the built-in set), or `fit:SIZE`: three
resolutions at 2x, 1x and 0.5x a test size SIZE for images about SIZE px, with valid
ranges that put objects at 20-100 px as fed at every resolution (`fitted_pyramid`).
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
    rpn_range: tuple[float, float] | None = None  # the RPN's, when not train_range


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


def fitted_pyramid(
    size: int, factors: tuple[float, ...] = (2.0, 1.0, 0.5), fed: tuple[float, float] = (20, 100)
) -> tuple[Resolution, ...]:
    """Resolutions at `factors` x `size` for images about `size` px (shorter side), each
    valid for the objects `fed` px as fed there (original sqrt(area) fed / factor); the
    largest resolution takes every smaller object, the smallest every larger one. Test
    ranges are 20 % wider, as the paper's are."""
    rows = []
    order = sorted(factors, reverse=True)
    for k, f in enumerate(order):
        lo = 0.0 if k == 0 else fed[0] / f
        hi = INF if k == len(order) - 1 else fed[1] / f
        rows.append(
            Resolution(
                min_size=round(size * f / 32) * 32,
                max_size=round(size * f * 5 / 3 / 32) * 32,
                train_range=(lo, hi),
                test_range=(lo / 1.2, hi * 1.2),
            )
        )
    return tuple(rows)


PYRAMIDS = {
    "coco": COCO_PYRAMID,
    # the built-in synthetic set: images ~256 px trained at ~256 (COCO: 800), so x 0.32
    "synthetic": scaled_pyramid(COCO_PYRAMID, 256 / 800),
}


def get_pyramid(spec: str | list) -> tuple[Resolution, ...]:
    """A preset name, `fit:SIZE`, or rows [min_size, max_size, lo, hi] (one range for train
    and test) with optional [rpn_lo, rpn_hi] after them."""
    if isinstance(spec, str) and spec.startswith("fit:"):
        size = spec.removeprefix("fit:")
        if not size.isdigit() or int(size) < 32:
            raise ValueError(f"pyramid {spec!r}: expected fit:SIZE, SIZE an image side >= 32")
        return fitted_pyramid(int(size))
    if isinstance(spec, str):
        if spec not in PYRAMIDS:
            raise ValueError(f"unknown pyramid {spec!r}; presets: {', '.join(PYRAMIDS)}")
        return PYRAMIDS[spec]
    rows = []
    for row in spec:
        if len(row) not in (4, 6) or not all(
            0 <= a < b for a, b in zip(row[2::2], row[3::2], strict=True)
        ):
            raise ValueError(
                f"pyramid row {row!r}: expected [min_size, max_size, lo, hi] (and rpn_lo, "
                "rpn_hi) with 0 <= lo < hi"
            )
        rpn = (row[4], row[5]) if len(row) == 6 else None
        rows.append(Resolution(int(row[0]), int(row[1]), (row[2], row[3]), (row[2], row[3]), rpn))
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


def resize_batch(
    batch: Batch, res: Resolution | list[Resolution], size_divisible: int = 32
) -> tuple[Batch, list]:
    """The batch at resolution `res` (one for all, or one per image; from the images as
    loaded), and each image's scale from its original size (meta `original_size`)."""
    images, targets, scales = [], [], []
    per_image = res if isinstance(res, list) else [res] * len(batch.targets)
    for i, ((h, w), res) in enumerate(zip(batch.images.sizes, per_image, strict=True)):
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


def mark_invalid(
    target: dict[str, Tensor], scale: float, res: Resolution, exclude: bool = False
) -> dict:
    """Out-of-range GTs become ignore boxes (`exclude` boxes under the paper's anchor rule);
    `valid_range` (as-fed pixels) goes along for the R-CNN stage's proposal filter, and a
    resolution with its own RPN range gives the RPN its own GTs (`rpn_*`)."""
    boxes = target["boxes"]
    crowd = target.get("ignore", boxes.new_zeros((0, 4)))

    def split(valid: tuple[float, float]) -> tuple[Tensor, dict[str, Tensor]]:
        keep = in_range(boxes, scale, valid)
        if exclude:
            return keep, {"boxes": boxes[keep], "ignore": crowd, "exclude": boxes[~keep]}
        return keep, {"boxes": boxes[keep], "ignore": torch.cat([crowd, boxes[~keep]])}

    keep, main = split(res.train_range)
    out = {**target, **main, "labels": target["labels"][keep]}
    out["valid_range"] = boxes.new_tensor(
        [res.train_range[0] * scale, min(res.train_range[1] * scale, 1e8)]
    )
    if res.rpn_range is not None:
        out.update({f"rpn_{k}": v for k, v in split(res.rpn_range)[1].items()})
    return out


def best_chip(
    boxes: Tensor, size: tuple[int, int], chip: int, candidates: int, rng
) -> tuple[tuple[int, int], Tensor]:
    """(x0, y0) of the chip x chip window, among `candidates` random ones (and the corner),
    that holds the most of `boxes` entirely, and which boxes it holds."""
    h, w = size
    corners = [(0, 0)] + [
        (rng.randint(0, max(w - chip, 0)), rng.randint(0, max(h - chip, 0)))
        for _ in range(candidates - 1 if h > chip or w > chip else 0)
    ]
    xy = boxes.new_tensor(corners)[:, None, :]  # (K, 1, 2): every candidate tested at once
    inside = ((boxes[None, :, :2] >= xy) & (boxes[None, :, 2:] <= xy + chip)).all(-1)
    best = int(inside.sum(1).argmax())  # the first of the best, as the loop it replaces
    return corners[best], inside[best]


def cover_with_chips(
    boxes: Tensor, size: tuple[int, int], chip: int, candidates: int, rng, max_chips: int = 4
) -> list[tuple[int, int]]:
    """Chips that cover the boxes greedily (SNIPER): the best chip for the boxes not yet
    covered, until all are (or a box fits no chip, or `max_chips`). At least one chip."""
    chips, left = [], torch.ones(len(boxes), dtype=torch.bool)
    while len(chips) < max_chips:
        corner, inside = best_chip(boxes[left], size, chip, candidates, rng)
        if chips and not inside.any():
            break  # what is left fits no chip (or there was nothing to cover)
        chips.append(corner)
        left[torch.where(left)[0][inside]] = False
        if not left.any():
            break
    return chips


def crop_to_chips(
    batch: Batch,
    chip: int,
    candidates: int,
    rng,
    size_divisible: int = 32,
    max_chips: int = 4,
    which: list[bool] | None = None,
) -> Batch:
    """Each image (those `which` marks; the others stay whole) cut into the chips that cover
    its valid objects (`cover_with_chips`), each chip an image of the batch; boxes cut by a
    chip border are clipped to it, and those that lose more than half their area become
    ignore regions."""
    images, targets, meta, originals = [], [], [], []
    for i, (h, w) in enumerate(batch.images.sizes):
        target = batch.targets[i]
        if which is not None and not which[i]:
            corners, (ch, cw) = [(0, 0)], (h, w)
        else:
            corners = cover_with_chips(target["boxes"], (h, w), chip, candidates, rng, max_chips)
            ch, cw = min(chip, h), min(chip, w)
        for x0, y0 in corners:
            images.append(batch.images.tensor[i, :, y0 : y0 + ch, x0 : x0 + cw])
            targets.append(_crop_target(target, x0, y0, (ch, cw)))
            meta.append(batch.meta[i])
            originals.append(batch.images.original_sizes[i])
    padded = ImageBatch.from_tensors(images, size_divisible)
    padded.original_sizes = originals
    return Batch(padded, targets, meta)


def _crop_target(target: dict[str, Tensor], x0: int, y0: int, size: tuple[int, int]) -> dict:
    """A target moved into the chip at (x0, y0) of `size`: every box kind clipped to it."""
    shift = target["boxes"].new_tensor([x0, y0, x0, y0])
    out = dict(target)
    for prefix in ("", "rpn_") if "rpn_boxes" in target else ("",):
        boxes = clip_boxes_to_image(target[f"{prefix}boxes"] - shift, size)
        kept = box_area(boxes) > 0.5 * box_area(target[f"{prefix}boxes"])
        ignore = clip_boxes_to_image(target[f"{prefix}ignore"] - shift, size)
        out[f"{prefix}ignore"] = torch.cat(
            [ignore[box_area(ignore) > 0], boxes[~kept & (box_area(boxes) > 0)]]
        )
        out[f"{prefix}boxes"] = boxes[kept]
        if prefix == "":
            out["labels"] = target["labels"][kept]
        if f"{prefix}exclude" in target:
            exclude = clip_boxes_to_image(target[f"{prefix}exclude"] - shift, size)
            out[f"{prefix}exclude"] = exclude[box_area(exclude) > 0]
    return out


class SNIP(Hook):
    name = "snip"

    def __init__(
        self,
        pyramid: str | list = "coco",
        seed: int = 0,
        size_divisible: int = 32,
        chip_size: int | None = None,
        chip_candidates: int = 50,
        max_chips: int = 4,
        anchor_rule: str = "negatives",
    ) -> None:
        if anchor_rule not in ("negatives", "paper"):
            raise ValueError(
                f"snip: anchor_rule must be negatives (only negatives near an invalid GT are "
                f"ignored) or paper (every anchor near one), got {anchor_rule!r}"
            )
        self.pyramid = get_pyramid(pyramid)
        self.size_divisible = size_divisible
        self.chip_size, self.chip_candidates, self.max_chips = chip_size, chip_candidates, max_chips
        self.exclude = anchor_rule == "paper"
        self.rng = random.Random(seed)
        self.largest = max(range(len(self.pyramid)), key=lambda k: self.pyramid[k].min_size)
        self._last: tuple[list[int], int] = ([], 0)  # each image's resolution, valid objects
        self._warned = False

    def before_step(self, state: TrainState, batch: Batch) -> Batch:
        """Each image at a resolution where it has a valid GT (drawn among those)."""
        choices = []
        for i, target in enumerate(batch.targets):
            scale = fed_scale(batch, i)
            valid = [
                k
                for k, res in enumerate(self.pyramid)
                if bool(in_range(target["boxes"], scale, res.train_range).any())
            ]
            choices.append(self.rng.choice(valid or range(len(self.pyramid))))
        resolutions = [self.pyramid[k] for k in choices]
        self._warn_if_upsampling(
            batch, self.pyramid[max(choices, key=lambda k: self.pyramid[k].min_size)]
        )
        resized, scales = resize_batch(batch, resolutions, self.size_divisible)
        resized.targets = [
            mark_invalid(t, s, res, self.exclude)
            for t, s, res in zip(resized.targets, scales, resolutions, strict=True)
        ]
        if self.chip_size:  # the images at the largest resolution become chips
            resized = crop_to_chips(
                resized, self.chip_size, self.chip_candidates, self.rng, self.size_divisible,
                self.max_chips, [k == self.largest for k in choices],
            )  # fmt: skip
        self._last = (choices, sum(len(t["boxes"]) for t in resized.targets))
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
        choices, valid_objects = self._last
        state.metrics["snip_resolution"] = [self.pyramid[k].min_size for k in choices]
        state.metrics["snip_valid_objects"] = valid_objects

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
