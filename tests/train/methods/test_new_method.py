"""A new training method is one file and one table row: it trains through the config's
`methods:` list, tunes the detector only through its controls, and `podkit plot` draws the
figure it declares."""

import json

import pytest

from podkit.train import methods
from podkit.train.loop import train
from podkit.train.plot import plot_run
from tests.conftest import tiny_config
from tests.train.methods.iou_ramp import IoURamp


def test_a_sixth_method_from_one_file_and_one_row(synth_set, tmp_path, monkeypatch):
    monkeypatch.setitem(methods.METHODS, "iou_ramp", IoURamp)
    cfg = tiny_config(
        synth_set, "methods=[{name: iou_ramp, start: 0.3, end: 0.7}]", "data.val.ann=''",
        max_iter=5,
    )  # fmt: skip
    result = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    ramp = [r["ramp_threshold"] for r in lines]
    assert ramp == pytest.approx([0.3 + 0.4 * i / 4 for i in range(5)])
    assert result.model.controls.rcnn_iou_threshold == pytest.approx(0.7)
    assert all(r["ramp_positives"] is not None for r in lines)
    written = {p.name for p in plot_run(tmp_path / "run")}
    assert "iou_ramp.png" in written and "ramp_threshold.png" not in written
    assert "ramp_positives.png" in written  # a logged value without a figure gets its own
    with pytest.raises(ValueError, match="iou_ramp"):
        methods.build_hooks([{"name": "iou_ramp", "start": 0.8, "end": 0.2}])
