import json

import numpy as np
import pytest
import torch

from podkit.data.loader import Sample, collate, eval_batches, training_batches
from podkit.data.records import Record
from podkit.data.synthetic import dataset_statistics, preset_style, write_split
from podkit.data.transforms import resize_scale


def test_synthetic_is_deterministic_and_has_the_scale_imbalance(tmp_path):
    a = write_split(tmp_path / "a", "train", 120, 160, seed=3)
    b = write_split(tmp_path / "b", "train", 120, 160, seed=3)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/train/000007.png").read_bytes() == (
        tmp_path / "b/train/000007.png"
    ).read_bytes()
    stats = dataset_statistics(a)
    assert 0.3 < stats["instances_small"] < 0.5
    assert 0.35 < stats["images_with_small"] < 0.65
    assert 0.6 < stats["images_with_medium"] < 0.85
    assert 0.7 < stats["images_with_large"] < 0.92
    data = json.loads(a.read_text())
    for ann in data["annotations"][:50]:  # boxes lie inside their image
        im = data["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert (
            x >= 0 and y >= 0 and x + w <= im["width"] and y + h <= im["height"] and w > 0 and h > 0
        )


def test_scale_preset_spans_4_px_to_most_of_the_image(tmp_path):
    path = write_split(tmp_path, "val", 60, preset_style("scale"), seed=0)
    data = json.loads(path.read_text())
    sides = [s for im in data["images"] for s in (im["width"], im["height"])]
    assert min(sides) >= 384 and max(sides) < 512
    objects = [a["bbox"] for a in data["annotations"] if not a["iscrowd"]]
    sizes = sorted((w * h) ** 0.5 for _, _, w, h in objects)
    assert sizes[0] < 8 and sizes[-1] > 300  # ~4 px to most of a 384-512 px image
    stats = dataset_statistics(path)
    assert 0.3 < stats["images_with_small"] < 0.7 and stats["instances_small"] > 0.3
    with pytest.raises(ValueError, match="standard preset"):
        preset_style("scale", 300)
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        preset_style("huge")


def test_resize_scale_caps_the_longer_side():
    assert resize_scale(100, 300, 200, 400) == pytest.approx(400 / 300)
    assert resize_scale(100, 150, 200, 400) == 2.0


def test_collate_pads_to_32_and_keeps_original_sizes():
    items = [
        (
            torch.rand(3, 50, 70),
            {"boxes": torch.zeros(0, 4)},
            {"image_id": 1, "original_size": (100, 140)},
        ),
        (
            torch.rand(3, 64, 33),
            {"boxes": torch.zeros(0, 4)},
            {"image_id": 2, "original_size": (64, 33)},
        ),
    ]
    batch = collate(items)
    assert batch.images.tensor.shape == (2, 3, 64, 96)
    assert batch.images.sizes == [(50, 70), (64, 33)]
    assert batch.images.original_sizes == [(100, 140), (64, 33)]
    assert torch.equal(batch.images.tensor[0, :, :50, :70], items[0][0])
    assert batch.images.tensor[0, :, 50:, :].abs().sum() == 0


def records(n):
    return [
        Record(i, None, 40 if i % 3 else 20, 30, np.zeros((0, 4)), np.zeros(0)) for i in range(n)
    ]


def take(stream, k):
    return [next(stream) for _ in range(k)]


def test_stream_is_deterministic_resumable_and_grouped():
    recs = records(20)
    full = take(training_batches(recs, 4, [100, 200], 0.5, seed=1), 12)
    assert full == take(training_batches(recs, 4, [100, 200], 0.5, seed=1), 12)
    assert full[7:] == take(training_batches(recs, 4, [100, 200], 0.5, seed=1, start=7), 5)
    for epoch in (full[:5], full[5:10]):  # 20 images, batch 4: 5 batches an epoch
        assert sorted(s.index for b in epoch for s in b) == list(range(20))
        mixed = [
            b for b in epoch if len({recs[s.index].width >= recs[s.index].height for s in b}) > 1
        ]
        assert len(mixed) <= 1  # only the leftovers of the two orientation groups mix
    assert full != take(training_batches(recs, 4, [100, 200], 0.5, seed=2), 12)


def test_lopsided_small_set_still_yields_batches():
    recs = (
        records(5) + [Record(9, None, 10, 30, np.zeros((0, 4)), np.zeros(0))] * 3
    )  # 5 wide, 3 tall
    batches = take(training_batches(recs, 8, [100], 0.0, seed=0), 3)
    assert all(len(b) == 8 for b in batches)


def test_ranks_split_each_global_batch():
    recs = records(24)
    whole = take(training_batches(recs, 4, [100], 0.0, seed=0, aspect_grouping=False), 6)
    r0 = take(
        training_batches(recs, 4, [100], 0.0, seed=0, rank=0, world_size=2, aspect_grouping=False),
        6,
    )
    r1 = take(
        training_batches(recs, 4, [100], 0.0, seed=0, rank=1, world_size=2, aspect_grouping=False),
        6,
    )
    for w, a, b in zip(whole, r0, r1, strict=True):
        assert [(s.index, s.seed) for s in w] == [(s.index, s.seed) for s in a + b]
    with pytest.raises(ValueError, match="not divisible"):
        next(training_batches(recs, 3, [100], 0.0, seed=0, world_size=2))


def test_eval_batches_cover_every_image_once():
    batches = eval_batches(7, 3, 128)
    assert [[s.index for s in b] for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert all(s == Sample(s.index, 128, False) for b in batches for s in b)


def test_sites_preset_is_deterministic_with_a_site_shift(tmp_path):
    from podkit.data.sites import write_sites_split

    a = write_sites_split(tmp_path / "a", "train", 6, [0], seed=0)
    b = write_sites_split(tmp_path / "b", "train", 6, [0], seed=0)
    assert a.read_text() == b.read_text()
    assert (tmp_path / "a/train/000003.png").read_bytes() == (
        tmp_path / "b/train/000003.png"
    ).read_bytes()
    other = write_sites_split(tmp_path / "a", "val", 6, [1, 2], seed=0)
    data = json.loads(a.read_text())
    assert [c["name"] for c in data["categories"]] == ["vehicle"]
    boxes = [x["bbox"] for x in data["annotations"] if not x["iscrowd"]]
    assert len(boxes) >= 6 * 8 * 0.7  # dense: 8-40 vehicles a tile, a few hidden
    sides = [(w * h) ** 0.5 for _, _, w, h in boxes]
    assert min(sides) > 4 and max(sides) < 70
    assert all(x >= 0 and y >= 0 and x + w <= 320 and y + h <= 320 for x, y, w, h in boxes)

    def ground(path, folder):  # the median colour of a tile: mostly ground
        from PIL import Image

        names = [im["file_name"] for im in json.loads(path.read_text())["images"]]
        return np.median(
            [np.median(np.asarray(Image.open(folder / n)), axis=(0, 1)) for n in names], axis=0
        )

    train_ground = ground(a, tmp_path / "a/train")
    val_grounds = [ground(other, tmp_path / "a/val")]
    assert np.abs(train_ground - val_grounds[0]).max() > 10  # another site, another ground
