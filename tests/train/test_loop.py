import json

import pytest
import torch

from podkit.config import TrainConfig
from podkit.models.checkpoint import load_checkpoint, save_checkpoint
from podkit.train.hooks import Hook
from podkit.train.loop import NonFiniteLossError, lr_factor, train
from tests.conftest import CtrlCAt, losses_of, tiny_config


class PoisonLoss(Hook):
    """A NaN R-CNN box loss at the third iteration (`every`: from it on), through the
    SmoothL1 beta control."""

    name = "poison"

    def __init__(self, every: bool = False) -> None:
        self.every, self.recipe_beta = every, None

    def before_step(self, state, batch):
        if self.recipe_beta is None:
            self.recipe_beta = state.controls.rcnn_smooth_l1_beta
        poisoned = state.iteration == 2 or self.every and state.iteration > 2
        state.controls.rcnn_smooth_l1_beta = float("nan") if poisoned else self.recipe_beta
        return batch


AUGMENTED = [
    "data.augment.color=0.8", "data.augment.blur=0.3", "data.augment.scale=[0.8, 1.25]",
    "data.augment.crop=0.5", "data.augment.rot90=0.5", "data.augment.mosaic=0.5",
    "model.anchors=auto",
]  # fmt: skip


@pytest.mark.parametrize(
    "extra",
    [[], ["train.amp=true", "train.channels_last=true"], AUGMENTED,
     ["train.ema={decay: 0.9, warmup: 2}"]],
    ids=["fp32", "bf16", "augmented", "ema"],
)  # fmt: skip
def test_interrupted_and_resumed_run_logs_the_same_losses(synth_set, tmp_path, extra):
    """Also under bf16 autocast with channels_last (the tiny recipes' CPU mode), with every
    augmentation and fitted anchors (the resumed run must not refit them), and with the
    weights' moving average (the resumed run continues the average and the trained weights)."""
    cfg = tiny_config(synth_set, "data.min_size=[96, 128]", "data.flip=0.5", *extra, max_iter=6)
    straight = train(cfg, tmp_path / "straight")
    assert straight.status == "finished" and straight.iteration == 6
    interrupted = train(cfg, tmp_path / "resumed", hooks=[CtrlCAt(3)])
    assert interrupted.status == "interrupted" and interrupted.iteration == 3
    assert load_checkpoint(tmp_path / "resumed/last.pt")["iteration"] == 3
    resumed = train(cfg, tmp_path / "resumed", resume=True)
    assert resumed.status == "finished" and resumed.iteration == 6
    a, b = losses_of(tmp_path / "straight"), losses_of(tmp_path / "resumed")
    assert [r["iter"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box_reg", "lr"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["iter"], key)
    saved = load_checkpoint(tmp_path / "resumed/last.pt")["config"]["model"]
    assert saved["anchors"] == ("fitted" if extra is AUGMENTED else "config")
    final_a = load_checkpoint(tmp_path / "straight/last.pt")["model"]
    final_b = load_checkpoint(tmp_path / "resumed/last.pt")["model"]
    for k in final_a:
        assert torch.allclose(final_a[k].float(), final_b[k].float(), atol=1e-5), k


def test_run_folder_contents(synth_set, tmp_path):
    result = train(tiny_config(synth_set, max_iter=2), tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {
        "config.yaml",
        "last.pt",
        "metrics.jsonl",
        "eval.json",
    }
    ckpt = torch.load(tmp_path / "run/last.pt", weights_only=True)
    assert set(ckpt) >= {
        "model",
        "optimizer",
        "scheduler",
        "hooks",
        "rng",
        "iteration",
        "data_position",
        "config",
    }
    assert ckpt["config"]["train"]["max_iter"] == 2
    assert set(json.loads((tmp_path / "run/eval.json").read_text())) == set(result.metrics)
    assert set(losses_of(tmp_path / "run")[0]) >= {"iter", "loss", "lr", "loss_cls", "time"}
    train(
        tiny_config(synth_set, "data.val.ann=null", max_iter=1), tmp_path / "run", overwrite=True
    )  # a new run, same folder, no validation: the old run's files are gone
    assert [r["iter"] for r in losses_of(tmp_path / "run")] == [1]
    assert not (tmp_path / "run/eval.json").exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(synth_set, tmp_path):
    cfg = tiny_config(synth_set, "train.checkpoint_every=1", max_iter=5)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss at iteration 3: loss_box_reg=nan; the last good checkpoint .*last.pt is kept",
    ):
        train(cfg, tmp_path / "run", hooks=[PoisonLoss()])
    assert load_checkpoint(tmp_path / "run/last.pt")["iteration"] == 2


def test_non_finite_loss_before_any_checkpoint_saves_the_last_good_weights(synth_set, tmp_path):
    cfg = tiny_config(synth_set, max_iter=5)  # checkpoint_every 0: only at the end
    with pytest.raises(NonFiniteLossError, match=r"weights after iteration 2 were saved to"):
        train(cfg, tmp_path / "run", hooks=[PoisonLoss()])
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert ckpt["iteration"] == 2 and ckpt["data_position"] == 2  # the failed batch comes again
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values())


def test_nan_policy_skip_drops_the_step_and_counts_it(synth_set, tmp_path):
    cfg = tiny_config(synth_set, "train.nan_policy=skip", max_iter=4)
    result = train(cfg, tmp_path / "run", hooks=[PoisonLoss()])
    assert result.status == "finished" and result.iteration == 4
    rows = losses_of(tmp_path / "run")
    assert [r.get("skipped_steps", 0) for r in rows] == [0, 0, 1, 1]
    cfg = tiny_config(synth_set, "train.nan_policy=skip", "train.max_skipped_steps=1", max_iter=6)
    with pytest.raises(NonFiniteLossError, match=r"1 steps skipped in a row"):
        train(cfg, tmp_path / "run2", hooks=[PoisonLoss(every=True)])


def test_num_classes_mismatch_is_a_clear_error(synth_set, tmp_path):
    with pytest.raises(
        ValueError, match="model.num_classes is 3 but the training set has 10 classes"
    ):
        train(tiny_config(synth_set, "model.num_classes=3"), tmp_path / "run")


def test_lr_schedule_warmup_and_steps():
    cfg = TrainConfig(
        max_iter=90, warmup_iters=10, warmup_factor=0.1, steps=[2 / 3, 8 / 9], gamma=0.1
    )
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(5, cfg) == pytest.approx(0.55)
    assert lr_factor(10, cfg) == 1.0
    assert lr_factor(59, cfg) == 1.0
    assert lr_factor(60, cfg) == pytest.approx(0.1)
    assert lr_factor(80, cfg) == pytest.approx(0.01)


def test_checkpoint_is_atomic_and_rejects_non_checkpoints(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a podkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt: not a podkit checkpoint .*never unpickles"):
        load_checkpoint(tmp_path / "junk.pt")
