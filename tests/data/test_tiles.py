"""Tiled training data: each tile holds the boxes mostly inside it, clipped; a box mostly
outside is an ignore region there; the loader feeds the tile's own pixels; training and
`data stats` take data.tile."""

import json

import numpy as np
import torch
from PIL import Image

from podkit.data.loader import DetectionDataset, Sample
from podkit.data.records import Record
from podkit.data.tiles import tile_records
from podkit.train.loop import train
from tests.conftest import invoke, tiny_config


def test_boxes_split_between_tiles_by_their_visible_share(tmp_path):
    """Tiles of 100 px at overlap 0.2 on a 180 x 100 image start at x 0 and 80."""
    boxes = np.array([[10, 10, 30, 30], [70, 40, 95, 60], [150, 5, 175, 20]], np.float32)
    rec = Record(7, tmp_path / "x.png", 180, 100, boxes, np.array([0, 1, 2]))
    tiles, cut = tile_records([rec], 100, 0.2, 0.5)
    assert [t.crop for t in tiles] == [(0, 0, 100, 100), (80, 0, 180, 100)]
    first, second = tiles
    # box 1 (x 70-95) lies wholly in the first tile; in the second 15 of its 25 px (0.6)
    assert first.boxes.tolist() == [[10, 10, 30, 30], [70, 40, 95, 60]]
    assert second.boxes.tolist() == [[0, 40, 15, 60], [70, 5, 95, 20]]
    assert second.labels.tolist() == [1, 2] and first.labels.tolist() == [0, 1]
    tiles, cut = tile_records([rec], 100, 0.2, 0.7)  # now 0.6 visible is too little
    assert tiles[1].boxes.tolist() == [[70, 5, 95, 20]] and tiles[1].ignore.tolist() == [
        [0, 40, 15, 60]
    ]
    assert cut == 1


def test_the_loader_feeds_the_tiles_own_pixels(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (100, 180, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    rec = Record(
        1, tmp_path / "x.png", 180, 100, np.array([[90, 10, 120, 40]], np.float32), np.array([0])
    )
    tiles, _ = tile_records([rec], 100, 0.2, 0.5)
    image, target, _ = DetectionDataset(tiles, 1000)[Sample(1, 100, False)]
    assert image.shape == (3, 100, 100)
    expected = torch.from_numpy(pixels[:, 80:180]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image, expected)
    assert target["boxes"].tolist() == [[10, 10, 40, 40]]


def test_tiles_of_one_image_decode_it_once_within_the_cache_limit(tmp_path, monkeypatch):
    """With a cache the loader decodes a source image once for all its tiles, gives the same
    pixels as without, and forgets the least recently used image beyond `cache_mb`."""
    import podkit.data.loader as loader

    rng = np.random.default_rng(0)
    records = []
    for k in range(2):  # two 500 x 500 images: 0.72 MiB of pixels each
        Image.fromarray(rng.integers(0, 255, (500, 500, 3), dtype=np.uint8)).save(
            tmp_path / f"{k}.png"
        )
        records.append(Record(k + 1, tmp_path / f"{k}.png", 500, 500, np.zeros((0, 4), np.float32),
                              np.zeros(0, np.int64)))  # fmt: skip
    tiles, _ = tile_records(records, 320, 0.2, 0.5)
    first, second = ([i for i, t in enumerate(tiles) if t.file == r.file] for r in records)
    assert len(first) == len(second) == 4  # tiles at 0 and 180 px along each side
    decoded = []
    real = loader.load_image
    monkeypatch.setattr(loader, "load_image", lambda f: decoded.append(f) or real(f))
    cached, plain = DetectionDataset(tiles, 1000, cache_mb=2), DetectionDataset(tiles, 1000)
    for i in first:
        a = cached[Sample(i, 320, False)][0]
        torch.testing.assert_close(a, plain[Sample(i, 320, False)][0])
    assert decoded.count(records[0].file) == 1 + 4  # cached once; uncached once per tile
    decoded.clear()
    for i in (second[0], second[1], first[0]):  # both fit in 2 MiB: no eviction yet
        cached[Sample(i, 320, False)]
    assert decoded == [records[1].file]
    small = DetectionDataset(tiles, 1000, cache_mb=1)  # room for one image at a time
    decoded.clear()
    for i in (first[0], second[0], first[1]):
        small[Sample(i, 320, False)]
    assert decoded == [records[0].file, records[1].file, records[0].file]


def test_training_and_data_stats_take_data_tile(synth_set, tmp_path):
    tile = "data.tile={size: 64, overlap: 0.25, min_visible: 0.5}"
    result = train(tiny_config(synth_set, tile, "data.min_size=[64]", max_iter=2), tmp_path / "run")
    assert result.status == "finished"
    cfg_file = tmp_path / "run/config.yaml"
    code, out = invoke("data", "stats", cfg_file, "--out", tmp_path / "stats")
    assert code == 0, out
    assert "training images ->" in " ".join(out.split())
    stats = {s["split"]: s for s in json.loads((tmp_path / "stats/stats.json").read_text())}
    assert stats["train"]["images"] == 144  # the tiles, as they are fed
    assert max(stats["train"]["image_sizes"]["width"]) <= 64
