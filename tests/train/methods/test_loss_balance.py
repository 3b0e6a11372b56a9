import json

import pytest
import torch

from podkit.models.output import TrainingStats
from podkit.train.hooks import TrainState
from podkit.train.loop import train
from podkit.train.methods.loss_balance import AVW, RLO, action_weights, update_probs
from tests.conftest import arch_overrides, tiny_config


def test_action_weights_by_hand():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # sum 15
    rates = torch.tensor([0.1, 0.5, -0.2, 0.3, 0.0])
    assert action_weights(0, losses, rates, 1.5).tolist() == pytest.approx(
        [1, 1.2, 1, 1.4, 1]
    )  # largest r: levels 1, 3
    assert action_weights(1, losses, rates, 1.5).tolist() == pytest.approx(
        [1.1, 1.2, 1, 1, 1]
    )  # smallest loss: 0, 1
    assert action_weights(2, losses, rates, 1.5).tolist() == pytest.approx(
        [1, 1, 1, 1.4, 1.5]
    )  # largest loss: 3, 4
    assert action_weights(3, losses, rates, 1.5).tolist() == [1, 1, 1, 1, 1]


def feed(hook, rows, start=0):
    """Per-iteration per-level losses of one head, through loss() and after_step()."""
    state = None
    for k, row in enumerate(rows, start=start + 1):
        state = TrainState(k, 100, None, draw_batch=None)
        hook.observe(state, TrainingStats({"retinanet": torch.tensor(row)}))
        hook.after_step(state)
    return state


def test_avw_on_a_scripted_sequence():
    hook = AVW(interval=3, lam=1.5)
    state = feed(hook, [[1.0, 2.0, 4.0], [3.0, 2.0, 4.0], [2.0, 2.0, 7.0]])
    # variances (unbiased): 1, 0, 3; r = (1 - var) / (1 + 1e-5): ~0, ~1, ~-2 -> levels 1 and 0
    # interval sums 6, 6, 15 (27): w = 1 + 1.5 * 6 / 27 for both
    assert state.metrics["level_weights"] == pytest.approx(
        [1 + 1.5 * 6 / 27, 1 + 1.5 * 6 / 27, 1.0]
    )
    # next interval: variances 0, 4, 0 -> r = (1 - 0) / (1 + 1e-5), (0 - 4) / (0 + 1e-5), (3 - 0) / (3 + 1e-5)
    state = feed(hook, [[2.0, 0.0, 5.0], [2.0, 2.0, 5.0], [2.0, 4.0, 5.0]], start=3)
    assert state.metrics["level_weights"] == pytest.approx(
        [1 + 1.5 * 6 / 27, 1.0, 1 + 1.5 * 15 / 27]
    )


def test_rlo_probability_updates():
    p = update_probs([0.25] * 4, 0, +3.0, 0.01)
    assert p == pytest.approx([0.26, 0.74 / 3, 0.74 / 3, 0.74 / 3]) and sum(p) == pytest.approx(1)
    p = update_probs([0.25] * 4, 2, -0.5, 0.01)
    assert p[2] == pytest.approx(0.24) and sum(p) == pytest.approx(1)
    assert update_probs([0.25] * 4, 1, 0.0, 0.01) == pytest.approx(
        [0.25] * 4
    )  # no change, no reward
    top = update_probs([0.9, 0.05, 0.03, 0.02], 0, 1.0, 0.01)
    assert top[0] == 0.9 and sum(top) == pytest.approx(1)
    low = update_probs([0.1, 0.3, 0.3, 0.3], 0, -1.0, 0.01)
    assert low[0] == 0.1 and sum(low) == pytest.approx(1)


def test_rlo_rewards_the_previous_action_by_the_drop_of_the_total_loss():
    hook = RLO(interval=2, gamma=0.01, seed=0)
    feed(hook, [[3.0, 3.0], [3.0, 3.0]])  # first interval: an action is drawn, nothing rewarded
    first = hook.action
    assert hook.probs == [0.25] * 4 and first is not None
    state = feed(hook, [[1.0, 1.0], [1.0, 1.0]], start=2)  # the total fell: reward +1
    assert hook.probs[first] == pytest.approx(0.26) and sum(hook.probs) == pytest.approx(1)
    assert (
        state.metrics["rlo_probs"] == pytest.approx(hook.probs, abs=1e-6)
        and state.metrics["rlo_action"] == hook.action
    )
    second, before = hook.action, list(hook.probs)
    feed(hook, [[5.0, 5.0], [5.0, 5.0]], start=4)  # the total rose: reward -1
    assert hook.probs[second] == pytest.approx(max(0.1, before[second] - 0.01))


def feed_heads(hook, rows):
    """Per-iteration losses of several heads: rows of {head: per-level losses}."""
    states = []
    for k, row in enumerate(rows, start=1):
        state = TrainState(k, 100, None, draw_batch=None)
        hook.observe(state, TrainingStats({h: torch.tensor(v) for h, v in row.items()}))
        hook.after_step(state)
        states.append(state)
    return states


def test_heads_with_at_most_top_levels_keep_weight_1():
    """The C4 RPN and R-CNN have one level: boosting 'the top 2' would scale the whole head."""
    rows = [{"rpn": [a], "rcnn": [b, a], "retinanet": [a, b, 1.0]} for a, b in
            [(1.0, 3.0), (2.0, 1.0), (4.0, 2.0), (1.0, 1.0)]]  # fmt: skip
    states = feed_heads(AVW(interval=2), rows)
    last = states[-1].metrics
    assert last["level_weights_rpn"] == [1.0] and last["level_weights_rcnn"] == [1.0, 1.0]
    assert sum(w > 1 for w in last["level_weights_retinanet"]) == 2  # three levels: boosted
    notes = [s.metrics["loss_balance_note"] for s in states if "loss_balance_note" in s.metrics]
    assert notes == ["heads with at most 2 levels keep weight 1: rpn (1), rcnn (2)"]
    one = feed_heads(AVW(interval=2, top=1), rows)[-1].metrics
    assert sum(w > 1 for w in one["level_weights_rcnn"]) == 1  # top=1: two levels are enough


def test_ablation_switches_actions_and_heads():
    rows = [{"rpn": [1.0 + k % 3, 2.0, 3.0], "rcnn": [1.0, 2.0, k % 2 + 1.0]} for k in range(40)]
    hook = RLO(interval=2, seed=3, actions=["avw", "uniform"], heads=["rpn"])
    states = feed_heads(hook, rows)
    assert {s.metrics["rlo_action"] for s in states[1:]} <= {0, 3}  # only the actions allowed
    assert len(hook.probs) == 2 and sum(hook.probs) == pytest.approx(1)
    assert hook.probs != [0.5, 0.5]  # rewarded along the way
    assert set(hook.weights) == {"rpn"} and "level_weights" in states[-1].metrics  # rcnn: untouched
    with pytest.raises(ValueError, match="actions"):
        RLO(actions=["bold"])
    with pytest.raises(ValueError, match="heads"):
        AVW(heads=["fpn"])


def test_state_round_trip_continues_identically():
    rows = [[float(i % 3), float(i % 5), 1.0 + i % 2] for i in range(12)]
    a = RLO(interval=3, seed=4)
    feed(a, rows[:7])
    b = RLO(interval=3, seed=99)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    sa, sb = feed(a, rows[7:], start=7), feed(b, rows[7:], start=7)
    assert sa.metrics == sb.metrics and a.probs == b.probs


@pytest.mark.parametrize("arch,method", [("retinanet", "rlo"), ("faster_rcnn_fpn", "avw")])
def test_training_sets_the_heads_level_weights(synth_set, tmp_path, arch, method):
    cfg = tiny_config(
        synth_set,
        *arch_overrides(arch),
        f"methods=[{{name: {method}, interval: 2}}]",
        "data.val.ann=''",
        max_iter=5,
    )
    result = train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    if arch == "retinanet":
        weights = result.model.controls.level_weights["retinanet"]
        assert len(lines[-1]["level_weights"]) == 5 and weights is not None
        assert "rlo_probs" in lines[-1] and sum(lines[-1]["rlo_probs"]) == pytest.approx(
            1, abs=1e-5
        )
    else:
        assert (
            len(lines[-1]["level_weights_rpn"]) == 5 and len(lines[-1]["level_weights_rcnn"]) == 4
        )
        assert all(w is not None for w in result.model.controls.level_weights.values())
