import json

import pytest

from podkit.train.plot import plot_run
from tests.conftest import invoke


def test_plot_writes_a_png_per_thing_shown(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {
            "iter": i,
            "loss": 2.0 / i,
            "loss_cls": 1.0 / i,
            "loss_box_reg": 1.0 / i,
            "lr": 0.01,
            "time": 0.1,
            "dst_small_ratio": 0.05 * (i % 3),
            "dst_collage": int(i % 3 == 1),
            "iou_threshold": 0.4 + 0.01 * i,
            "beta": 1.0 / i,
            "level_weights": [1.0, 1.5, 1.0],
        }
        for i in range(1, 8)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(run, tmp_path / "plots")
    assert sorted(p.name for p in written) == [
        "dst_small_ratio.png",
        "dynamic_rcnn.png",
        "level_weights.png",
        "losses.png",
        "lr.png",
    ]
    assert all(p.stat().st_size > 5000 for p in written)
    code, out = invoke("plot", run)
    assert code == 0 and "losses.png" in out


def test_plot_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"iter": 1, "loss": 1, "lr": 0.1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        plot_run(tmp_path)
