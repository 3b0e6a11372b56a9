"""SNIP (Singh & Davis, "An Analysis of Scale Invariance in Object Detection - SNIP", 2018).

Train on an image pyramid, but at each resolution only on the objects whose size suits it:
each resolution has a valid range of object size, sqrt(area) in ORIGINAL-image pixels.
The paper trains on image-resolution pairs that hold a valid GT, one resolution per
mini-batch: each batch goes to a resolution drawn among those where one of its images has a
valid GT (an image without one there trains as background with its objects ignored), so a
batch is never a padded mix of sizes under train-mode BatchNorm. `mix_resolutions: true`
gives each image its own resolution instead (drawn among its valid ones). Images
are resized from how they were loaded: load them at the largest resolution
(`data.min_size=[<largest>]`). GTs out of range move to the target's `ignore` boxes, so
anchors with IoU > 0.3 to them are neither positive nor negative (RPN and RetinaNet,
`ignore_iou_threshold`); with `anchor_rule: paper` they go to `exclude` instead, which also
removes positives of a valid GT that overlap an invalid one by IoU > 0.3, as the paper
states. The target's `proposal_range` (in as-fed pixels) makes the R-CNN stage drop
out-of-range proposals before sampling; there an invalid GT is ignored from the head's own
IoU threshold (which Dynamic R-CNN moves). A resolution may give the RPN its own range
(`rpn_range`, the target's `rpn`; the paper trains the RPN at 800 px on [0, 160] while the
R-CNN uses [40, 160]). The target keys are ops/target.Target's.

Multi-scale inference (`eval.multiscale`, `eval.snip`) runs every resolution, keeps each
one's detections inside its test range (SNIP) and merges them with soft-NMS or NMS: it lives
with inference (evaluation/image_pyramid.py), as do the pyramids. With DST, put `snip` after `dst`:
SNIP then resizes the collage, which it treats as an image of its own.

`chip_size` (optional, SNIPER-style) cuts each image at the highest resolution into
chip x chip windows that cover its valid objects greedily: the window (best of
`chip_candidates` random ones and the corner) holding the most still-uncovered valid
objects, again until every valid object lies in a chip (at most `max_chips` per image);
each chip is an image of the batch, so that resolution costs at most chip^2 pixels each.

Pyramids: `auto` (the default: fit:SIZE at the recipe's data.test_min_size), `coco` (the
paper's, for COCO-sized images loaded at 1400 px), `synthetic` (the built-in set), or
`fit:SIZE`: three resolutions at 2x, 1x and 0.5x a test size SIZE for images about SIZE px,
with valid ranges that put objects at 20-100 px as fed at every resolution (evaluation/image_pyramid.py).
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor
from torch.nn import functional as F

from podkit.data.loader import Batch
from podkit.data.transforms import resize_scale
from podkit.evaluation.image_pyramid import Resolution, get_pyramid, in_range
from podkit.ops import crop_boxes
from podkit.ops.image_batch import ImageBatch
from podkit.train.hooks import Hook, TrainState, rng_state, set_rng_state


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
    `proposal_range` (as-fed pixels) goes along for the R-CNN stage's proposal filter, and a
    resolution with its own RPN range gives the RPN its own GTs (`rpn`)."""
    boxes = target["boxes"]
    crowd = target.get("ignore", boxes.new_zeros((0, 4)))

    def split(valid: tuple[float, float]) -> tuple[Tensor, dict[str, Tensor]]:
        keep = in_range(boxes, scale, valid)
        if exclude:
            return keep, {"boxes": boxes[keep], "ignore": crowd, "exclude": boxes[~keep]}
        return keep, {"boxes": boxes[keep], "ignore": torch.cat([crowd, boxes[~keep]])}

    keep, main = split(res.train_range)
    out = {**target, **main, "labels": target["labels"][keep]}
    out["proposal_range"] = boxes.new_tensor(
        [res.train_range[0] * scale, min(res.train_range[1] * scale, 1e8)]
    )
    if res.rpn_range is not None:
        out["rpn"] = split(res.rpn_range)[1]
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
    """A target moved into the chip at (x0, y0) of `size`: every box kind clipped to it; a
    box keeping less than half its area becomes an ignore region (ops.crop_boxes)."""
    out = dict(target)
    boxes, kept, cut = crop_boxes(target["boxes"], x0, y0, size, keep=0.5)
    ignore, inside, _ = crop_boxes(target["ignore"], x0, y0, size, keep=0)
    out["ignore"] = torch.cat([ignore[inside], boxes[cut]])
    out["boxes"] = boxes[kept]
    if "labels" in target:
        out["labels"] = target["labels"][kept]
    if "exclude" in target:
        exclude, inside, _ = crop_boxes(target["exclude"], x0, y0, size, keep=0)
        out["exclude"] = exclude[inside]
    if "rpn" in target:
        out["rpn"] = _crop_target(target["rpn"], x0, y0, size)
    return out


class SNIP(Hook):
    name = "snip"

    def __init__(
        self,
        pyramid: str | list = "auto",
        mix_resolutions: bool = False,
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
        self.spec, self.mix_resolutions = pyramid, mix_resolutions
        self.pyramid: tuple[Resolution, ...] = () if pyramid == "auto" else get_pyramid(pyramid)
        self.size_divisible = size_divisible
        self.chip_size, self.chip_candidates, self.max_chips = chip_size, chip_candidates, max_chips
        self.exclude = anchor_rule == "paper"
        self.rng = random.Random(seed)
        self._last: tuple[list[int], int] = ([], 0)  # each image's resolution, valid objects

    @property
    def largest(self) -> int:
        return max(range(len(self.pyramid)), key=lambda k: self.pyramid[k].min_size)

    def setup(self, cfg) -> list[str]:
        """`auto`: the pyramid fitted to the recipe's test size (fit:data.test_min_size). A
        note when the images are loaded smaller than the largest resolution needs."""
        if self.spec == "auto":
            self.pyramid = get_pyramid("auto", cfg.data.test_min_size)
        res = self.pyramid[self.largest]
        if max(cfg.data.min_size) * 1.05 < res.min_size:
            return [
                f"snip: images are loaded at up to {max(cfg.data.min_size)} px and upsampled to "
                f"{res.min_size} for the largest resolution; load them there "
                f"(data.min_size=[{res.min_size}], data.max_size={res.max_size})"
            ]
        return []

    def before_step(self, state: TrainState, batch: Batch) -> Batch:
        """The batch at one resolution (the paper's mini-batches), drawn among those where an
        image of it has a valid GT; with `mix_resolutions`, each image at its own."""
        if not self.pyramid:
            raise ValueError("snip: pyramid 'auto' is resolved by setup(cfg) before training")
        valid = []
        for i, target in enumerate(batch.targets):
            scale = fed_scale(batch, i)
            valid.append([
                k
                for k, res in enumerate(self.pyramid)
                if bool(in_range(target["boxes"], scale, res.train_range).any())
            ])  # fmt: skip
        everywhere = range(len(self.pyramid))
        if self.mix_resolutions:
            choices = [self.rng.choice(v or everywhere) for v in valid]
        else:
            held = sorted({k for v in valid for k in v})
            choices = [self.rng.choice(held or everywhere)] * len(valid)
        resolutions = [self.pyramid[k] for k in choices]
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

    def after_step(self, state: TrainState) -> None:
        choices, valid_objects = self._last
        state.metrics["snip_resolution"] = [self.pyramid[k].min_size for k in choices]
        state.metrics["snip_valid_objects"] = valid_objects

    def state_dict(self) -> dict:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            set_rng_state(self.rng, state["rng"])
