"""An exported artefact behind the detector's inference interface: ImageBatch -> DetectorOutput.

Evaluation and prediction call a checkpoint's model and an artefact the same way, so an
artefact is scored with the very loader, resizing and COCO code a checkpoint is (one path).
Each image of the batch is cropped out of the padding and fed in groups of the artefact's own
batch (blank images fill the last group; an any-batch artefact takes the whole batch): padded to a multiple of 32 for a dynamic artefact,
to its input size for a static one.
An image larger than a static input is first scaled down to fit it (counted in `downscaled`:
its detections then differ from the checkpoint's at the config's test size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from podkit.export import load, read_record
from podkit.export.feed import artefact_input, stack_inputs
from podkit.models.output import DetectorOutput, rescale_detections
from podkit.ops import clip_boxes_to_image
from podkit.ops.image_batch import ImageBatch


class ArtefactDetector:
    """`detector(images)` for an exported artefact, with the record it carries."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        self.record = read_record(self.path)
        if not self.record["nms"]:
            raise ValueError(
                f"{self.path}: exported with --no-nms (raw head outputs): scoring and prediction "
                "need the detections; export it again without --no-nms"
            )
        self.input_size = None if self.record["dynamic"] else tuple(self.record["input_size"])
        self.batch: int | None = self.record.get("batch", 1)  # None: any number
        self.run = load(self.path, device, threads)
        self.downscaled = 0

    def __call__(self, images: ImageBatch) -> DetectorOutput:
        arrays, fed_sizes = [], []
        for tensor, (h, w) in zip(images.tensor.cpu(), images.sizes, strict=True):
            array, fed_size, downscaled = artefact_input(tensor[:, :h, :w], self.input_size)
            self.downscaled += downscaled
            arrays.append(array)
            fed_sizes.append(fed_size)
        detections = []
        batch = self.batch or len(arrays)
        for first in range(0, len(arrays), batch):
            group = slice(first, first + batch)
            outputs = self.run(stack_inputs(arrays[group], batch))
            named = dict(zip(self.record["outputs"], outputs, strict=True))
            for k, fed_size in enumerate(fed_sizes[group]):
                detections.append(_image_detections(named, k, fed_size))
        fed = ImageBatch(images.tensor, fed_sizes, images.original_sizes)
        return DetectorOutput(detections=rescale_detections(detections, fed))


def _image_detections(outputs: dict, k: int, fed_size: tuple[int, int]) -> dict:
    """Image k's detections from the padded (N, D, ...) outputs and the counts (N,)."""
    if outputs["boxes"].ndim == 2:  # an artefact from before batches: (D, 4), count (1,)
        outputs = {name: value[None] for name, value in outputs.items()}
    n = int(outputs["num_detections"].reshape(-1)[k])
    # a padded input lets boxes reach into the padding: clip them to the image, as the model
    # clips to each image's size
    boxes = clip_boxes_to_image(torch.from_numpy(outputs["boxes"][k, :n]).float(), fed_size)
    return {
        "boxes": boxes,
        "scores": torch.from_numpy(outputs["scores"][k, :n]).float(),
        "labels": torch.from_numpy(outputs["labels"][k, :n]).long(),
    }
