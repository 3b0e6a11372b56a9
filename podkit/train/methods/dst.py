"""Dynamic Scale Training (Chen et al., "Dynamic Scale Training for Object Detection").

After each iteration the share of the loss owed to small objects (GT area < 32^2 in the
image as fed) is the feedback: when it is at most `tau`, the next batch is a collage, each
image made of k = grid^2 source images downscaled (nearest) into the cells of the padded
batch size, each keeping its aspect ratio (one scale factor, the largest that fits the cell),
boxes scaled and shifted. A collage has the canvas of a regular batch, so it costs a
regular iteration (plus k - 1 extra images loaded). The feedback starts at 0, so the first batch is a
collage. A collage batch of B images draws k batches from the data stream (the reference
keeps a second loader drawing k times more); resume and the distributed sampler stay exact
because the stream is a function of its position. Under DDP the ratio is reduced over all
processes (sums of numerator and denominator), so every rank takes the same decision.

`tau: auto` chooses tau as the paper's section 4.3 does: the first `auto_iters` (100)
iterations train on regular batches and record the feedback; tau is their median (logged as
`dst_tau`). A box that a collage shrinks below `min_box_size` becomes an ignore region (the
object is still there: it must not train as background).

feedback: reg (default; the box-regression loss of the R-CNN head / RetinaNet box branch),
cls, joint (both), input (share of small GTs in the batch); `always` and `random` (p = 0.5,
seeded, saved in checkpoints) are the paper's ablation baselines.
"""

from __future__ import annotations

import random
import statistics

import torch
from torch.nn import functional as F

from podkit.data.loader import Batch
from podkit.models.output import TrainingStats
from podkit.ops import box_area
from podkit.ops.image_batch import ImageBatch
from podkit.train.distributed import is_distributed
from podkit.train.hooks import Hook, Panel, TrainState, rng_state, set_rng_state

FEEDBACKS = ("reg", "cls", "joint", "input", "always", "random")


def make_collage(batches: list[Batch], grid: int, min_box_size: float = 0.0) -> Batch:
    """Image i of the result tiles image i of each of the grid^2 batches, row by row, on the
    first batch's canvas. Each source image (its own pixels, not its batch's padding) is
    scaled by one factor, the largest that fits its cell, so objects keep their aspect
    ratio; the rest of the cell stays zero, like the padding of a batch."""
    k = grid * grid
    if len(batches) != k:
        raise ValueError(f"a {grid}x{grid} collage needs {k} batches, got {len(batches)}")
    canvas = batches[0].images.tensor
    n, c, height, width = canvas.shape
    ch, cw = height // grid, width // grid
    out = canvas.new_zeros((n, c, height, width))
    targets, meta = [], []
    for i in range(n):
        boxes, labels, ignore = [], [], []
        for j, batch in enumerate(batches):
            h, w = batch.images.sizes[i]
            src = batch.images.tensor[i : i + 1, :, :h, :w]
            factor = min(ch / h, cw / w)
            nh, nw = max(1, min(ch, round(h * factor))), max(1, min(cw, round(w * factor)))
            row, col = divmod(j, grid)
            y0, x0 = row * ch, col * cw
            out[i, :, y0 : y0 + nh, x0 : x0 + nw] = F.interpolate(
                src, size=(nh, nw), mode="nearest"
            )[0]
            scale = src.new_tensor([nw / w, nh / h] * 2)
            shift = src.new_tensor([x0, y0] * 2)
            target = batch.targets[i]
            b = target["boxes"] * scale + shift
            keep = ((b[:, 2] - b[:, 0]) >= min_box_size) & ((b[:, 3] - b[:, 1]) >= min_box_size)
            boxes.append(b[keep])
            labels.append(target["labels"][keep])
            # a box shrunk below the minimum is still an object: ignored, not background
            ignore.append(target.get("ignore", b.new_zeros((0, 4))) * scale + shift)
            ignore.append(b[~keep])
        targets.append(
            {"boxes": torch.cat(boxes), "labels": torch.cat(labels), "ignore": torch.cat(ignore)}
        )
        meta.append(
            {
                "image_id": [b.meta[i]["image_id"] for b in batches],
                "original_size": (height, width),
                "collage": grid,
            }
        )
    images = ImageBatch(out, [(height, width)] * n, [(height, width)] * n)
    return Batch(images, targets, meta)


class DynamicScaleTraining(Hook):
    name = "dst"
    figures = {  # the paper's Figures 5-6
        "dst_small_ratio.png": (
            Panel(
                "DST feedback",
                ("dst_small_ratio",),
                ("small-object share of the loss",),
                marks="dst_collage",
            ),
        )
    }

    def __init__(
        self,
        tau: float | str = 0.1,
        k: int = 4,
        feedback: str = "reg",
        min_box_size: float = 0.0,
        random_p: float = 0.5,
        seed: int = 0,
        auto_iters: int = 100,
    ) -> None:
        if not (tau == "auto" or isinstance(tau, (int, float)) and not isinstance(tau, bool)):
            raise ValueError(f"dst: tau must be a number or 'auto', got {tau!r}")
        if tau == "auto" and (feedback in ("always", "random") or auto_iters < 1):
            raise ValueError("dst: tau 'auto' needs a loss or input feedback and auto_iters >= 1")
        if feedback not in FEEDBACKS:
            raise ValueError(
                f"dst: feedback must be one of {', '.join(FEEDBACKS)}, got {feedback!r}"
            )
        grid = round(k**0.5)
        if grid * grid != k or grid < 2:
            raise ValueError(f"dst: k must be a square >= 4 (4 for 2x2, 9 for 3x3), got {k}")
        self.grid, self.feedback = grid, feedback
        self.draws_per_step = k
        self.min_box_size, self.random_p = min_box_size, random_p
        # tau 'auto' (the paper's section 4.3): regular batches for the first auto_iters
        # iterations, then tau = the median feedback they gave
        self.tau: float | None = None if tau == "auto" else float(tau)
        self.auto_iters = auto_iters
        self.calibration: list[float] = []
        self.rng = random.Random(seed)
        self.ratio = 0.0  # the paper starts at 0: the first batch is a collage
        self.collage_next = self.tau is not None and (
            feedback != "random" or self.rng.random() < random_p
        )
        self.collage_now = False
        self._input_counts = (0.0, 0.0)

    def before_step(self, state: TrainState, batch: Batch) -> Batch:
        self.collage_now = self.collage_next
        if self.collage_now:
            batch = make_collage(
                [batch] + [state.draw_batch() for _ in range(self.grid**2 - 1)],
                self.grid,
                self.min_box_size,
            )
        if self.feedback == "input":  # only this feedback reads the batch's boxes
            boxes = [t["boxes"] for t in batch.targets]
            areas = box_area(torch.cat(boxes)) if boxes else torch.zeros(0)
            self._input_counts = (float((areas < 32**2).sum()), float(areas.numel()))
        return batch

    def observe(self, state: TrainState, stats: TrainingStats) -> None:
        small, total = self._feedback_terms(stats)
        terms = torch.tensor([small, total], dtype=torch.float64)
        if is_distributed():
            torch.distributed.all_reduce(terms)
        self.ratio = float(terms[0] / terms[1]) if terms[1] > 0 else 0.0

    def _feedback_terms(self, stats: TrainingStats) -> tuple[float, float]:
        """(small part, whole) of the chosen feedback for this batch."""
        if self.feedback == "input":
            return self._input_counts
        parts = []
        if self.feedback in ("reg", "joint", "always", "random"):
            parts.append(stats.reg_loss_by_size)
        if self.feedback in ("cls", "joint"):
            parts.append(stats.cls_loss_by_size)
        by_size = torch.stack(parts).sum(0)
        return float(by_size[0]), float(by_size.sum())

    def after_step(self, state: TrainState) -> None:
        if self.tau is None:  # calibrating tau 'auto'
            self.calibration.append(self.ratio)
            if len(self.calibration) >= self.auto_iters:
                self.tau = statistics.median(self.calibration)
        if self.tau is None:
            self.collage_next = False
        elif self.feedback == "always":
            self.collage_next = True
        elif self.feedback == "random":
            self.collage_next = self.rng.random() < self.random_p
        else:
            self.collage_next = self.ratio <= self.tau
        state.metrics["dst_small_ratio"] = self.ratio
        state.metrics["dst_collage"] = int(self.collage_now)
        state.metrics["dst_tau"] = self.tau

    def state_dict(self) -> dict:
        return {
            "ratio": self.ratio,
            "collage_next": self.collage_next,
            "rng": rng_state(self.rng),
            "tau": self.tau,
            "calibration": list(self.calibration),
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.ratio, self.collage_next = state["ratio"], state["collage_next"]
            set_rng_state(self.rng, state["rng"])
            if "tau" in state:  # checkpoints before tau 'auto' keep the configured tau
                self.tau, self.calibration = state["tau"], list(state["calibration"])
