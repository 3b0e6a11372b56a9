import json

import pytest
import torch

from podkit.models import build_detector, tiny_model_config
from podkit.train.hooks import TrainState
from podkit.train.loop import train
from podkit.train.methods import build_hooks
from podkit.train.methods.dynamic_rcnn import DynamicRCNN
from tests.conftest import tiny_config


def state_at(iteration, model=None):
    return TrainState(iteration, 1000, model, draw_batch=None)


def test_statistics_of_a_hand_built_batch():
    hook = DynamicRCNN(k_iou=2, k_beta=1)
    stats = {
        "proposal_ious": [torch.tensor([0.9, 0.1, 0.8, 0.7]), torch.tensor([0.5, 0.6])],
        # mean(|dx|, |dy|): 0.2, 0.05, 0.5, 0.3 -> the (1 * 2 images)-th smallest is 0.2
        "pos_reg_targets": torch.tensor(
            [[0.1, -0.3, 9, 9], [0.05, 0.05, 9, 9], [-1.0, 0.0, 9, 9], [0.3, 0.3, 9, 9]]
        ),
        "num_images": 2,
    }
    iou, beta = hook.statistics(stats)
    assert iou == pytest.approx((0.8 + 0.5) / 2)  # the 2nd largest IoU of each image, averaged
    assert beta == pytest.approx(0.2)
    empty = {
        "proposal_ious": [torch.zeros(0)],
        "pos_reg_targets": torch.zeros(0, 4),
        "num_images": 1,
    }
    iou, beta = hook.statistics(empty)
    assert iou != iou and beta != beta  # NaN: nothing to record
    hook.loss(state_at(0), {}, empty)
    assert hook.iou_history == [] and hook.beta_history == []


def test_updates_every_interval_with_clamps_and_guard():
    hook = DynamicRCNN(interval=3, initial_iou=0.4, initial_beta=1.0)
    hook.iou_history, hook.beta_history = [0.5, 0.6, 0.7], [0.3, 0.1, 0.2]
    hook.after_step(state_at(2))  # not an update iteration
    assert (hook.iou_threshold, hook.beta) == (0.4, 1.0)
    hook.after_step(state_at(3))
    assert hook.iou_threshold == pytest.approx(0.6) and hook.beta == pytest.approx(0.2)
    assert hook.iou_history == [] and hook.beta_history == []
    hook.iou_history, hook.beta_history = (
        [0.2, 0.3],
        [2.0, 3.0],
    )  # mean below, median above the start
    hook.after_step(state_at(6))
    assert hook.iou_threshold == pytest.approx(0.4) and hook.beta == pytest.approx(1.0)
    hook.beta = 0.25
    hook.beta_history = [0.0, 0.0, 1e-9]  # a collapsed median leaves beta alone
    hook.after_step(state_at(9))
    assert hook.beta == 0.25
    metrics = state_at(10)
    hook.after_step(metrics)
    assert metrics.metrics == {"iou_threshold": hook.iou_threshold, "beta": 0.25}


def test_state_round_trip_and_model_attributes():
    hook = DynamicRCNN(interval=2)
    hook.iou_threshold, hook.beta, hook.iou_history, hook.beta_history = 0.55, 0.3, [0.6], [0.2]
    other = DynamicRCNN(interval=2)
    other.load_state_dict(hook.state_dict())
    assert other.state_dict() == hook.state_dict()
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3))
    other.before_step(state_at(0, model), None)
    assert model.roi_heads.iou_threshold == 0.55 and model.roi_heads.smooth_l1_beta == 0.3
    with pytest.raises(ValueError, match="two-stage"):
        other.before_step(state_at(0, build_detector(tiny_model_config("retinanet", 3))), None)


def test_built_from_config_and_trains(synth_set, tmp_path):
    assert isinstance(build_hooks([{"name": "dynamic_rcnn", "interval": 2}])[0], DynamicRCNN)
    with pytest.raises(ValueError, match="unknown method 'dst2'"):
        build_hooks([{"name": "dst2"}])
    with pytest.raises(ValueError, match="dynamic_rcnn"):
        build_hooks([{"name": "dynamic_rcnn", "k_iuo": 3}])
    cfg = tiny_config(
        synth_set,
        "methods=[{name: dynamic_rcnn, interval: 2, k_iou: 5, k_beta: 2}]",
        "data.val.ann=''",
        max_iter=4,
    )
    result = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all("iou_threshold" in r and "beta" in r for r in lines)
    assert lines[-1]["iou_threshold"] >= 0.4 and 0 < lines[-1]["beta"] <= 1.0
    assert result.model.roi_heads.iou_threshold == pytest.approx(lines[-2]["iou_threshold"])
    hooks_state = torch.load(tmp_path / "run/last.pt", weights_only=True)["hooks"]["dynamic_rcnn"]
    assert hooks_state["iou_threshold"] == lines[-1]["iou_threshold"]
