"""An exported artefact behind the detector's inference interface: ImageBatch -> DetectorOutput.

Evaluation and prediction call a checkpoint's model and an artefact the same way, so an
artefact is scored with the very loader, resizing and COCO code a checkpoint is (one path).
Each image of the batch is cropped out of the padding and fed alone (the artefacts take one
image): padded to a multiple of 32 for a dynamic artefact, to its input size for a static one.
An image larger than a static input is first scaled down to fit it (counted in `downscaled`:
its detections then differ from the checkpoint's at the config's test size).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from podkit.export import load
from podkit.export.metadata import read_metadata
from podkit.export.wrap import SIZE_MULTIPLE
from podkit.models.output import DetectorOutput, rescale_detections
from podkit.ops import clip_boxes_to_image
from podkit.ops.image_batch import ImageBatch


class ArtefactDetector:
    """`detector(images)` for an .onnx / .so / .engine file, with the record it carries."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        self.path = Path(path)
        self.record = read_metadata(self.path)
        if not self.record["nms"]:
            raise ValueError(
                f"{self.path}: exported with --no-nms (raw head outputs): scoring and prediction "
                "need the detections; export it again without --no-nms"
            )
        self.input_size = None if self.record["dynamic"] else tuple(self.record["input_size"])
        self.run = load(self.path, device, threads)
        self.downscaled = 0

    def __call__(self, images: ImageBatch) -> DetectorOutput:
        detections, fed_sizes = [], []
        for tensor, (h, w) in zip(images.tensor.cpu(), images.sizes, strict=True):
            image = tensor[:, :h, :w]
            if self.input_size is not None:
                image = self._fit(image)
            fed_sizes.append((int(image.shape[-2]), int(image.shape[-1])))
            outputs = dict(zip(self.record["outputs"], self.run(self._pad(image)), strict=True))
            n = int(outputs["num_detections"].reshape(-1)[0])
            # a padded input lets boxes reach into the padding: clip them to the image, as the
            # model clips to each image's size
            boxes = clip_boxes_to_image(
                torch.from_numpy(outputs["boxes"][:n]).float(), fed_sizes[-1]
            )
            detections.append(
                {
                    "boxes": boxes,
                    "scores": torch.from_numpy(outputs["scores"][:n]).float(),
                    "labels": torch.from_numpy(outputs["labels"][:n]).long(),
                }
            )
        fed = ImageBatch(images.tensor, fed_sizes, images.original_sizes)
        return DetectorOutput(detections=rescale_detections(detections, fed))

    def _fit(self, image: torch.Tensor) -> torch.Tensor:
        """Scale an image larger than the static input down to fit it (aspect kept)."""
        h, w = image.shape[-2:]
        scale = min(self.input_size[0] / h, self.input_size[1] / w)
        if scale >= 1:
            return image
        self.downscaled += 1
        size = (max(1, int(h * scale)), max(1, int(w * scale)))
        return F.interpolate(image[None], size, mode="bilinear", antialias=True)[0]

    def _pad(self, image: torch.Tensor):
        """(1, 3, H, W) float32 array: zero padding to the input size, as a batch of one is."""
        h, w = image.shape[-2:]
        if self.input_size is not None:
            height, width = self.input_size
        else:
            # the export's smallest side is two blocks (check_input_size)
            height = max(2, -(-h // SIZE_MULTIPLE)) * SIZE_MULTIPLE
            width = max(2, -(-w // SIZE_MULTIPLE)) * SIZE_MULTIPLE
        padded = F.pad(image, (0, width - w, 0, height - h))
        return padded[None].contiguous().numpy()
