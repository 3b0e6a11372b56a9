import json
import os
import subprocess
import sys

import pytest
import torch

from podkit.config import Config
from podkit.models import build_detector, tiny_model_config
from podkit.models.output import TrainingControls, TrainingStats
from podkit.train.hooks import TrainState
from podkit.train.loop import train
from podkit.train.methods import build_hooks
from podkit.train.methods.dynamic_rcnn import DynamicRCNN
from tests.conftest import ROOT, tiny_config


def state_at(iteration, controls=None):
    return TrainState(iteration, 1000, controls or TrainingControls(), draw_batch=None)


def test_statistics_of_a_hand_built_batch():
    hook = DynamicRCNN(k_iou=2, k_beta=1)
    stats = TrainingStats(
        proposal_ious=[torch.tensor([0.9, 0.1, 0.8, 0.7]), torch.tensor([0.5, 0.6])],
        # mean(|dx|, |dy|): 0.2, 0.05, 0.5, 0.3 -> the (1 * 2 images)-th smallest is 0.2
        pos_reg_targets=torch.tensor(
            [[0.1, -0.3, 9, 9], [0.05, 0.05, 9, 9], [-1.0, 0.0, 9, 9], [0.3, 0.3, 9, 9]]
        ),
        num_images=2,
    )
    iou, beta = hook.statistics(stats)
    assert iou == pytest.approx((0.8 + 0.5) / 2)  # the 2nd largest IoU of each image, averaged
    assert beta == pytest.approx(0.2)
    empty = TrainingStats(
        proposal_ious=[torch.zeros(0)],
        pos_reg_targets=torch.zeros(0, 4),
        num_images=1,
    )
    iou, beta = hook.statistics(empty)
    assert iou != iou and beta != beta  # NaN: nothing to record
    hook.observe(state_at(0), empty)
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
    assert hook.beta_statistic == pytest.approx(2.5)  # logged: beta capped at its start
    hook.beta = 0.25
    hook.beta_history = [0.0, 0.0, 1e-9]  # a collapsed median leaves beta alone
    hook.after_step(state_at(9))
    assert hook.beta == 0.25
    metrics = state_at(10)
    hook.after_step(metrics)
    assert metrics.metrics == {
        "iou_threshold": hook.iou_threshold,
        "beta": 0.25,
        "beta_statistic": 0.0,  # the collapsed median it refused
        "beta_zero_share": 1.0,  # every statistic of the interval was ~0 (1e-9 too)
    }


def test_state_round_trip_and_the_controls_it_sets():
    hook = DynamicRCNN(interval=2)
    hook.iou_threshold, hook.beta, hook.iou_history, hook.beta_history = 0.55, 0.3, [0.6], [0.2]
    other = DynamicRCNN(interval=2)
    other.load_state_dict(hook.state_dict())
    assert other.state_dict() == hook.state_dict()
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3))
    other.before_step(state_at(0, model.controls), None)
    assert (model.controls.rcnn_iou_threshold, model.controls.rcnn_smooth_l1_beta) == (0.55, 0.3)
    retinanet = build_detector(tiny_model_config("retinanet", 3))
    with pytest.raises(ValueError, match="two-stage"):
        other.before_step(state_at(0, retinanet.controls), None)


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
    assert result.model.controls.rcnn_iou_threshold == pytest.approx(lines[-2]["iou_threshold"])
    hooks_state = torch.load(tmp_path / "run/last.pt", weights_only=True)["hooks"]["dynamic_rcnn"]
    assert hooks_state["iou_threshold"] == lines[-1]["iou_threshold"]


def test_k_scaled_to_the_roi_batch_when_unset():
    """K_I = 75 and K_beta = 10 of the paper's 512 RoIs per image, scaled to this head's 128."""
    cfg = Config()
    cfg.model.roi_heads.batch_size_per_image = 128
    hook = DynamicRCNN()
    hook.setup(cfg)
    assert (hook.k_iou, hook.k_beta) == (19, 2)  # round(75 / 4), round(10 / 4)
    ious = torch.linspace(1.0, 0.01, 100)  # 1.0, 0.99, ...: the 19th largest is 0.82
    targets = torch.tensor([[e, e, 0.0, 0.0] for e in (0.5, 0.1, 0.3, 0.2)])
    iou, beta = hook.statistics(
        TrainingStats(proposal_ious=[ious], pos_reg_targets=targets, num_images=1)
    )
    assert iou == pytest.approx(float(ious.sort(descending=True).values[18]))
    assert beta == pytest.approx(0.2)  # the 2nd smallest of 0.5, 0.1, 0.3, 0.2
    assert DynamicRCNN(k_iou=7).k_iou == 7  # set explicitly: kept


@pytest.mark.parametrize("half", ["assign", "smooth_l1"])
def test_ablation_switches_leave_the_other_half_at_the_recipe(half):
    controls = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).controls
    recipe = (controls.rcnn_iou_threshold, controls.rcnn_smooth_l1_beta)
    hook = DynamicRCNN(**{half: False})
    hook.iou_threshold, hook.beta = 0.6, 0.3
    state = state_at(0, controls)
    hook.before_step(state, None)
    now = (controls.rcnn_iou_threshold, controls.rcnn_smooth_l1_beta)
    assert now == ((recipe[0], 0.3) if half == "assign" else (0.6, recipe[1]))
    hook.after_step(state)
    assert set(state.metrics) == {"beta"} if half == "assign" else {"iou_threshold"}
    with pytest.raises(ValueError, match="nothing to do"):
        DynamicRCNN(assign=False, smooth_l1=False)


def test_ddp_rank_without_positives_keeps_the_statistic(tmp_path):
    """2 gloo processes: rank 1 has no proposals or positives; both ranks record rank 0's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ROOT / "tests/train/methods/dynamic_rcnn_ddp_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["iou_history"] == pytest.approx([0.9])
        assert report["beta_history"] == pytest.approx([0.3])  # mean(|0.2|, |0.4|)


def test_the_statistics_leave_the_ground_truth_rows_out():
    """The R-CNN head adds each GT to its proposals (IoU 1, regression target 0): Dynamic
    R-CNN's statistics are over the proposals, as the paper's, so no row of the positives'
    targets is the zero of a GT and every IoU belongs to a proposal."""
    heads = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).roi_heads.train()
    gt = torch.tensor([[10.0, 10, 50, 60], [70, 20, 110, 90], [20, 80, 60, 120]])
    shifted = torch.cat([gt + 2, gt - 3])  # overlapping proposals: positives, non-zero targets
    far = torch.tensor([[200.0, 200, 230, 240]] * 20)  # negatives
    proposals = torch.cat([shifted, far])
    target = {"boxes": gt, "labels": torch.tensor([0, 1, 2])}
    *_, ious, pos = heads.sample([proposals], [target], 0.5)
    assert len(ious[0]) == len(proposals)  # the 3 GT rows are not among them
    assert float(ious[0][: len(shifted)].min()) > 0.5 and float(ious[0].max()) < 1.0
    assert len(pos) == len(shifted)  # every shifted proposal, and no GT row
    assert bool((pos[:, :2].abs().mean(dim=1) > 0).all())
    hook = DynamicRCNN(k_iou=1, k_beta=1)
    _, beta = hook.statistics(TrainingStats(proposal_ious=ious, pos_reg_targets=pos, num_images=1))
    assert beta > 0  # with the GT rows in, the smallest target is 0 and beta could never move
