"""`podkit data stats`: counts and sizes as fed, checked against the annotations by hand."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from podkit.cli import app


def write_set(folder):
    """Two 200x100 images; boxes 10, 40 and 120 px wide; one reaches outside, one is empty."""
    (folder / "img").mkdir(parents=True)
    for i in (1, 2):
        Image.new("RGB", (200, 100)).save(folder / "img" / f"{i}.png")
    anns = [
        (1, [0, 0, 10, 10], 1),
        (1, [50, 20, 40, 40], 2),
        (2, [70, 0, 120, 90], 2),
        (2, [190, 50, 20, 20], 1),  # clipped to 10 x 20
        (2, [5, 5, 0, 8], 1),  # empty: dropped
    ]
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100} for i in (1, 2)],
        "annotations": [
            {
                "id": k + 1,
                "image_id": im,
                "bbox": b,
                "category_id": c,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (im, b, c) in enumerate(anns)
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }
    (folder / "ann.json").write_text(json.dumps(data))
    return folder / "ann.json"


def test_stats_of_a_coco_json_as_the_config_feeds_it(tmp_path):
    ann = write_set(tmp_path)
    config = tmp_path / "cfg.yaml"
    config.write_text(
        "model: {num_classes: 3}\ndata: {min_size: [200], test_min_size: 200, max_size: 1000}\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "data",
            "stats",
            str(ann),
            "--images",
            str(tmp_path / "img"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    (stats,) = json.loads((tmp_path / "out/stats.json").read_text())
    assert (tmp_path / "out/stats.png").stat().st_size > 1000
    scale = 2.0  # shorter side 100 -> 200
    want = sorted(scale * np.sqrt([10 * 10, 40 * 40, 120 * 90, 10 * 20]))
    assert sorted(stats["box_sizes"]) == [round(v, 2) for v in want]
    assert stats["objects"] == 4 and stats["clipped"] == 1 and stats["dropped"] == 1
    assert stats["classes"] == {"a": 2, "b": 2, "c": 0}
    assert stats["objects_per_image"] == {"mean": 2.0, "max": 2, "without": 0}
    small = sum(v < 32 for v in want) / 4
    assert stats["shares"]["small"] == small and stats["fed_min_size"] == 200
    assert any("clipped" in w for w in stats["warnings"])
    # the COCO recipe's anchors (32..512 on strides 4..64) miss the 20 px box as fed
    assert 0 < stats["anchor_match"] < 1


def test_stats_refuses_what_it_cannot_read(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "stats", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and "expected a config" in result.output
    ann = write_set(tmp_path)
    result = runner.invoke(app, ["data", "stats", str(ann)])
    assert result.exit_code == 2 and "--images" in result.output
