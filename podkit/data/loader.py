"""From records to batches: the dataset, a resumable batch stream, collation and loaders.

The training stream is a pure function of (seed, batch position): each epoch is a seeded
permutation, grouped by aspect ratio, cut into global batches; rank r of W takes the
r-th slice of every global batch (the distributed sampler). Each sample's augmentation draws
from a generator seeded by (seed, position, slot in the global batch), so the data a run
sees does not depend on the number of workers or processes, and a resumed run sees exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from podkit.config import AugmentConfig
from podkit.data.augment import augment
from podkit.data.records import Record, load_image
from podkit.data.transforms import Annotated, to_tensor
from podkit.ops.image_batch import ImageBatch

NO_AUGMENTATION = AugmentConfig()  # evaluation: resize only


@dataclass
class Sample:
    """What a batch stream asks the dataset for: which record, at which size, flipped or not,
    and the seed of its augmentation (None: none, as in evaluation)."""

    index: int
    min_size: int
    flip: bool
    seed: tuple[int, ...] | None = None


class DecodedImages:
    """The most recently used decoded images, up to `limit_mb` of pixels (per loader
    worker): tiles of one large image (data.tile) decode it once instead of once per tile (a
    3000 px JPEG takes ~0.2 s to decode, a 320 px tile's training step less)."""

    def __init__(self, limit_mb: int) -> None:
        self.limit = limit_mb * 2**20
        self.images: OrderedDict[str, Image.Image] = OrderedDict()
        self.bytes = 0

    def get(self, file: str) -> Image.Image:
        if file in self.images:
            self.images.move_to_end(file)
            return self.images[file]
        image = load_image(file)
        image.load()
        size = pixel_bytes(image)
        while self.images and self.bytes + size > self.limit:
            _, old = self.images.popitem(last=False)
            self.bytes -= pixel_bytes(old)
        if size <= self.limit:
            self.images[file] = image
            self.bytes += size
        return image


def pixel_bytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


class DetectionDataset(Dataset):
    """Records -> (image tensor, target in as-fed pixels, meta); `augment` applies to samples
    that carry a seed (training), the others are only resized (and flipped). `cache_mb`:
    keep that much of decoded source images (tiles of large images, DecodedImages)."""

    def __init__(
        self,
        records: list[Record],
        max_size: int,
        augment: AugmentConfig | None = None,
        cache_mb: int = 0,
    ) -> None:
        self.records = records
        self.max_size = max_size
        self.augment = augment or AugmentConfig()
        self.decoded = DecodedImages(cache_mb) if cache_mb > 0 else None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Annotated:
        rec = self.records[index]
        image = self.decoded.get(rec.file) if self.decoded else load_image(rec.file)
        if rec.crop is not None:  # a tile (data.tile): its boxes are already in its pixels
            image = image.crop(rec.crop)
        return Annotated(image, rec.boxes.copy(), rec.labels.copy(), rec.ignore.copy())

    def __getitem__(self, sample: Sample) -> tuple[torch.Tensor, dict, dict]:
        rec = self.records[sample.index]
        seeded = sample.seed is not None
        a = augment(
            self.load(sample.index),
            self.augment if seeded else NO_AUGMENTATION,
            np.random.default_rng(sample.seed) if seeded else None,
            sample.min_size, self.max_size, sample.flip, self.load, len(self.records),
        )  # fmt: skip
        target = {
            "boxes": torch.from_numpy(a.boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(a.labels).long(),
            "ignore": torch.from_numpy(a.ignore.astype(np.float32)).reshape(-1, 4),
        }
        meta = {"image_id": rec.image_id, "original_size": (rec.height, rec.width)}
        return to_tensor(a.image), target, meta


class Batch:
    """A collated batch: padded images, per-image targets (as-fed pixels) and metadata."""

    def __init__(self, images: ImageBatch, targets: list[dict], meta: list[dict]) -> None:
        self.images = images
        self.targets = targets
        self.meta = meta

    def to(self, device) -> Batch:
        def move(target: dict) -> dict:  # a target may nest one (SNIP's `rpn`)
            return {k: move(v) if isinstance(v, dict) else v.to(device) for k, v in target.items()}

        return Batch(self.images.to(device), [move(t) for t in self.targets], self.meta)


def collate(items: list, size_divisible: int = 32) -> Batch:
    images, targets, meta = zip(*items, strict=True)
    batch = ImageBatch.from_tensors(list(images), size_divisible)
    batch.original_sizes = [m["original_size"] for m in meta]
    return Batch(batch, list(targets), list(meta))


def training_batches(
    records: list[Record],
    batch_size: int,
    min_sizes: list[int],
    flip_prob: float,
    seed: int,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    aspect_grouping: bool = True,
) -> Iterator[list[Sample]]:
    """Endless per-rank batches of `batch_size // world_size` samples, from batch `start` on."""
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size {batch_size} is not divisible by the {world_size} processes"
        )
    if len(records) < batch_size:
        raise ValueError(
            f"the training set has {len(records)} images, fewer than train.batch_size {batch_size}"
        )
    per_rank = batch_size // world_size
    wide = np.array([r.width >= r.height for r in records]) if aspect_grouping else None
    epoch, first = 0, 0  # `first`: stream position of the epoch's first batch
    batches = _epoch_batches(len(records), batch_size, seed, epoch, wide)
    position = start
    while True:
        while position >= first + len(batches):
            first += len(batches)
            epoch += 1
            batches = _epoch_batches(len(records), batch_size, seed, epoch, wide)
        ids = batches[position - first][rank * per_rank : (rank + 1) * per_rank]
        rng = np.random.default_rng([seed, position, rank])
        yield [
            Sample(i, int(rng.choice(min_sizes)), bool(rng.random() < flip_prob),
                   (seed, position, rank * per_rank + slot))
            for slot, i in enumerate(ids)
        ]  # fmt: skip
        position += 1


def eval_batches(
    num_images: int, batch_size: int, min_size: int, rank: int = 0, world_size: int = 1
) -> list[list[Sample]]:
    """Every image once, in order, unflipped; rank r takes every W-th image."""
    ids = list(range(rank, num_images, world_size))
    return [
        [Sample(i, min_size, False) for i in ids[k : k + batch_size]]
        for k in range(0, len(ids), batch_size)
    ]


def _epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, wide: np.ndarray | None
) -> list[list[int]]:
    """A seeded permutation cut into n // batch_size full batches; with `wide` given, batches
    hold one orientation (but for the leftovers of the two groups)."""
    order = torch.randperm(
        n, generator=torch.Generator().manual_seed(seed * 100003 + epoch)
    ).tolist()
    if wide is None:
        return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    batches, pending = [], {True: [], False: []}
    for i in order:  # like torchvision's GroupedBatchSampler: emit a group when it is full
        group = pending[bool(wide[i])]
        group.append(i)
        if len(group) == batch_size:
            batches.append(list(group))
            group.clear()
    # what is left of both groups makes mixed batches, so every epoch has n // batch_size
    # batches (else a small or lopsided set could yield none at all)
    rank = {i: k for k, i in enumerate(order)}
    rest = sorted(pending[True] + pending[False], key=rank.__getitem__)
    batches += [rest[i : i + batch_size] for i in range(0, len(rest) - batch_size + 1, batch_size)]
    return batches


def make_loader(
    dataset: DetectionDataset,
    batches,
    workers: int,
    size_divisible: int = 32,
    prefetch_batches: int = 2,
) -> DataLoader:
    """`prefetch_batches` per worker are loaded ahead (more when a step draws several)."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        prefetch_factor=prefetch_batches if workers else None,
        collate_fn=functools.partial(collate, size_divisible=size_divisible),
        # its own generator: creating the iterator must not consume the global RNG, or a
        # resumed run would sample differently from an uninterrupted one
        generator=torch.Generator().manual_seed(0),
    )
