"""Augmentation: every geometric op moves each box with its pixels (the box is painted into
the image before the op and found again after it), and the augmented stream is a function
of the sample alone."""

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from podkit.config import AugmentConfig
from podkit.data.augment import augment, photometric, shift_hue
from podkit.data.loader import DetectionDataset, Sample, training_batches
from podkit.data.records import Record
from podkit.data.transforms import Annotated, crop, hflip, mosaic, resize, rot90, vflip

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def painted(w: int, h: int, boxes: list[list[int]]) -> Annotated:
    """A grey image with box i filled in COLOURS[i] (label i); integer boxes cover pixel
    columns x1 .. x2 - 1."""
    image = Image.new("RGB", (w, h), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=COLOURS[i])
    return Annotated(
        image,
        np.array(boxes, np.float32).reshape(-1, 4),
        np.arange(len(boxes), dtype=np.int64),
        np.zeros((0, 4), np.float32),
    )


def extent(image: Image.Image, colour: tuple[int, int, int], near=None) -> list[int] | None:
    """The box of the pixels nearest to `colour` (more than half-way from grey), only within
    `near` = (box, margin) when given (a mosaic repeats colours)."""
    pixels = np.asarray(image, np.float32)
    distance = np.abs(pixels - np.array(colour, np.float32)).max(axis=2)
    if near is not None:
        (x1, y1, x2, y2), margin = near
        window = np.zeros_like(distance, bool)
        window[
            max(0, int(y1 - margin)) : int(y2 + margin), max(0, int(x1 - margin)) : int(x2 + margin)
        ] = True
        distance[~window] = 255
    ys, xs = np.nonzero(distance < 64)
    if not len(xs):
        return None
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def assert_boxes_on_their_pixels(a: Annotated, tolerance: float) -> None:
    for box, label in zip(a.boxes, a.labels, strict=True):
        found = extent(a.image, COLOURS[label], (box, tolerance + 2))
        assert found is not None, f"label {label}: its pixels are gone"
        assert np.abs(np.array(found) - box).max() <= tolerance, (label, found, box.tolist())


BOXES = [[10, 5, 30, 20], [50, 30, 90, 58], [0, 40, 12, 60]]


@pytest.mark.parametrize(
    "op",
    [hflip, vflip, lambda a: rot90(a, 1), lambda a: rot90(a, 2), lambda a: rot90(a, 3)],
    ids=["hflip", "vflip", "rot90", "rot180", "rot270"],
)
def test_flips_and_quarter_turns_move_boxes_exactly_with_the_pixels(op):
    out = op(painted(100, 64, BOXES))
    assert_boxes_on_their_pixels(out, tolerance=0)
    assert out.labels.tolist() == [0, 1, 2]


def test_quarter_turns_swap_the_sides_and_four_come_back():
    a = painted(100, 64, BOXES)
    assert rot90(a, 1).size == (64, 100)
    back = rot90(rot90(a, 3), 1)
    assert back.boxes.tolist() == a.boxes.tolist()
    assert np.array_equal(np.asarray(back.image), np.asarray(a.image))


def test_resize_scales_boxes_with_the_pixels():
    out = resize(painted(100, 64, BOXES), 160, 1000)  # x2.5
    assert out.size == (250, 160)
    assert out.boxes[0].tolist() == [25, 12.5, 75, 50]
    assert_boxes_on_their_pixels(out, tolerance=1.5)  # bilinear edges


def test_crop_clips_kept_boxes_and_makes_cut_ones_ignore_regions():
    a = painted(100, 64, BOXES)
    # window x 20..80, y 0..64: box 0 keeps half of its width (10 of 20 px), box 1 keeps
    # 30 of 40 px, box 2 lies outside
    out = crop(a, 20, 0, 80, 64, keep=0.6)
    assert out.size == (60, 64)
    assert out.labels.tolist() == [1]
    assert out.boxes.tolist() == [[30, 30, 60, 58]]
    assert out.ignore.tolist() == [[0, 5, 10, 20]]  # box 0, cut to less than 60 %
    assert_boxes_on_their_pixels(out, tolerance=0)
    assert extent(out.image, COLOURS[0]) == [0, 5, 10, 20]  # the ignore region is on box 0
    assert crop(a, 20, 0, 80, 64, keep=0.5).labels.tolist() == [0, 1]


def test_mosaic_places_every_box_on_its_pixels():
    parts = [painted(100, 64, [BOXES[0]]), painted(80, 80, [[20, 20, 60, 44]])]
    parts += [painted(64, 100, [[5, 60, 40, 95]]), painted(100, 64, [[70, 10, 100, 64]])]
    for k, part in enumerate(parts):  # colour per source image
        part.labels[:] = k
        part.image = painted(*part.size, []).image
        ImageDraw.Draw(part.image).rectangle(
            tuple(part.boxes[0, :2].astype(int)) + tuple(part.boxes[0, 2:].astype(int) - 1),
            fill=COLOURS[k],
        )
    out = mosaic(parts, 200, 160, 90, 70)
    assert out.size == (200, 160)
    assert sorted(out.labels.tolist()) == [0, 1, 2, 3]
    assert_boxes_on_their_pixels(out, tolerance=1.5)
    for box, (qx0, qy0, qx1, qy1) in zip(
        out.boxes,
        [(0, 0, 90, 70), (90, 0, 200, 70), (0, 70, 90, 160), (90, 70, 200, 160)],
        strict=True,
    ):  # each source stays in its quadrant
        assert qx0 <= box[0] and box[2] <= qx1 and qy0 <= box[1] and box[3] <= qy1


GEOMETRY = AugmentConfig(scale=[0.6, 1.6], crop=0.7, crop_min=0.5, vflip=0.5, rot90=0.5)


@pytest.mark.parametrize("seed", range(12))
def test_the_whole_geometric_pipeline_keeps_boxes_on_their_pixels(seed):
    a = painted(120, 90, BOXES + [[70, 66, 110, 86]])
    others = [painted(100, 64, BOXES)]
    cfg = AugmentConfig(**{**vars(GEOMETRY), "mosaic": 0.5})
    out = augment(
        a, cfg, np.random.default_rng(seed), 96, 200, bool(seed % 2), lambda i: others[i], 1
    )
    assert_boxes_on_their_pixels(out, tolerance=2.0)
    for region in out.ignore:  # cut boxes stay on (part of) their pixels
        assert region[2] > region[0] and region[3] > region[1]


def test_photometric_ops_against_independent_references():
    image = Image.new("RGB", (8, 8), (200, 40, 40))
    r, g, b = np.asarray(shift_hue(image, 1 / 3), np.float32)[0, 0] / 255
    h = colorsys.rgb_to_hsv(r, g, b)[0]
    assert h == pytest.approx(
        (colorsys.rgb_to_hsv(200 / 255, 40 / 255, 40 / 255)[0] + 1 / 3) % 1, abs=0.01
    )
    grey = photometric(image, AugmentConfig(grayscale=1.0), np.random.default_rng(0))
    assert np.ptp(np.asarray(grey), axis=2).max() == 0
    darker = AugmentConfig(color=1.0, brightness=0.5, contrast=0, saturation=0, hue=0)
    means = [
        np.asarray(photometric(image, darker, np.random.default_rng(s)), np.float32).mean()
        for s in range(20)
    ]
    base = np.asarray(image, np.float32).mean()
    assert 0.5 * base - 1 <= min(means) < base < max(means) <= 1.5 * base + 1


def write_images(tmp_path, n: int) -> list[Record]:
    records = []
    for i in range(n):
        a = painted(96, 72, [[8 + i, 10, 40 + i, 30], [50, 40, 90, 70]])
        a.image.save(tmp_path / f"{i}.png")
        records.append(Record(i, tmp_path / f"{i}.png", 96, 72, a.boxes, a.labels))
    return records


def test_augmented_samples_depend_on_their_seed_alone(tmp_path):
    cfg = AugmentConfig(color=0.8, blur=0.3, scale=[0.5, 1.5], crop=0.5, rot90=0.5, mosaic=0.5)
    dataset = DetectionDataset(write_images(tmp_path, 4), 200, cfg)
    batches = training_batches(dataset.records, 4, [64, 80], 0.5, seed=3)
    samples = [s for _ in range(3) for s in next(batches)]
    first = [dataset[s] for s in samples]
    np.random.seed(1), torch.manual_seed(1)  # global state must not matter
    again = [dataset[s] for s in reversed(samples)][::-1]
    for (x, t, _), (y, u, _) in zip(first, again, strict=True):
        assert torch.equal(x, y) and torch.equal(t["boxes"], u["boxes"])
    differ = sum(not torch.equal(a[0], b[0]) if a[0].shape == b[0].shape else 1
                 for a, b in zip(first, first[1:], strict=False))  # fmt: skip
    assert differ >= len(first) - 2
    # a resumed stream asks for the same samples (same seeds) from its position on
    resumed = training_batches(dataset.records, 4, [64, 80], 0.5, seed=3, start=1)
    assert next(resumed) == samples[4:8]


def test_without_augmentation_the_dataset_only_resizes_and_flips(tmp_path):
    records = write_images(tmp_path, 1)
    plain = DetectionDataset(records, 200)
    off = DetectionDataset(records, 200, AugmentConfig())
    sample = Sample(0, 144, True, (0, 0, 0))
    (x, t, _), (y, u, _) = plain[sample], off[sample]
    assert torch.equal(x, y) and torch.equal(t["boxes"], u["boxes"])
    assert t["boxes"][0].tolist() == [192 - 80, 20, 192 - 16, 60]  # x2, then mirrored


def test_augment_config_refuses_what_it_cannot_mean():
    with pytest.raises(ValueError, match="crop: must be a probability"):
        AugmentConfig(crop=1.5)
    with pytest.raises(ValueError, match="scale: must be null or"):
        AugmentConfig(scale=[1.5, 0.5])
