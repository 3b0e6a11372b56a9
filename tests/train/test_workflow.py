"""The workflow of MMDetection / Ultralytics users: RUN/best.pt by a validation metric (kept
right across --resume), an EMA of the weights, and TensorBoard / MLflow logs that hold what
metrics.jsonl holds."""

import json
import math

import pytest
import torch
from torch import nn

from podkit.models.checkpoint import load_checkpoint
from podkit.train import loop
from podkit.train.ema import ModelEMA
from podkit.train.loop import train
from tests.conftest import invoke, losses_of, tiny_config


def test_ema_follows_the_ultralytics_recurrence():
    """ema_n = d_n ema_{n-1} + (1 - d_n) w_n, d_n = decay (1 - exp(-n / warmup)), computed
    here in plain Python for one weight driven through known values."""
    layer = nn.Linear(1, 1, bias=False)
    ema = ModelEMA(layer, decay=0.9, warmup=3)
    expected = layer.weight.item()
    for n, value in enumerate([1.0, -2.0, 0.5, 4.0, 3.0], start=1):
        with torch.no_grad():
            layer.weight.fill_(value)
        ema.update(layer)
        d = 0.9 * (1 - math.exp(-n / 3))
        expected = d * expected + (1 - d) * value
        assert ema.state_dict()["weight"].item() == pytest.approx(expected, rel=1e-6)
    with ema.applied_to(layer):
        assert layer.weight.item() == pytest.approx(expected, rel=1e-6)
    assert layer.weight.item() == 3.0


def test_ema_weights_are_what_the_checkpoint_evaluates_and_exports(synth_set, tmp_path):
    cfg = tiny_config(synth_set, "train.ema={decay: 0.5, warmup: 1}", max_iter=3)
    result = train(cfg, tmp_path / "run")
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert ckpt["ema_updates"] == 3
    moved = [
        k for k in ckpt["model"] if not torch.equal(ckpt["model"][k], ckpt["trained_model"][k])
    ]
    assert moved  # the average lags the trained weights
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    from podkit.evaluation.artefacts import evaluate_path

    scored = evaluate_path(tmp_path / "run/last.pt", [])
    assert scored["AP"] == pytest.approx(result.metrics["AP"], abs=1e-9)


def scripted_ap(monkeypatch, values):
    """Evaluations return the next AP of `values` (the other metrics 0)."""
    values = iter(values)

    def fake(model, dataset, cfg, device, **kwargs):
        return {"AP": next(values), "AP50": 0.0}

    monkeypatch.setattr(loop, "evaluate", fake)


def test_best_checkpoint_is_the_best_evaluation_and_survives_resume(
    synth_set, tmp_path, monkeypatch
):
    """APs 1, 3 at iterations 2 and 4, then 2, 2.5 at 6 and 8 after --resume: best.pt stays
    the iteration-4 weights (a run that forgot its best would take iteration 6's)."""
    run = tmp_path / "run"
    common = ("train.eval_every=2", "train.best_metric=AP", "train.checkpoint_every=2",
              "train.keep_checkpoints=true")  # fmt: skip
    scripted_ap(monkeypatch, [1.0, 3.0])
    train(tiny_config(synth_set, *common, max_iter=4), run)
    best = load_checkpoint(run / "best.pt")
    assert best["best"] == {"metric": "AP", "value": 3.0, "iteration": 4}
    scripted_ap(monkeypatch, [2.0, 2.5])
    train(tiny_config(synth_set, *common, max_iter=8), run, resume=True)
    best = load_checkpoint(run / "best.pt")
    assert best["best"]["iteration"] == 4 and best["iteration"] == 4
    at_4 = load_checkpoint(run / "iter_4.pt")["model"]
    assert all(torch.equal(best["model"][k], at_4[k]) for k in at_4)
    assert best["classes"] and best["config"]["train"]["best_metric"] == "AP"
    code, text = invoke("info", run / "best.pt")
    assert code == 0 and "AP 3.00 at iteration 4" in text


def test_best_metric_must_be_a_metric_with_a_validation_set(synth_set, tmp_path):
    with pytest.raises(ValueError, match="train.best_metric: one of AP, AP50"):
        train(tiny_config(synth_set, "train.best_metric=mAP"), tmp_path / "a")
    with pytest.raises(ValueError, match="needs a validation set"):
        train(tiny_config(synth_set, "train.best_metric=AP", "data.val.ann="), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tensorboard_and_mlflow_hold_what_metrics_jsonl_holds(synth_set, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    train(tiny_config(synth_set, "train.log=[jsonl, tensorboard, mlflow]", max_iter=3), run)
    rows = losses_of(run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [r["iter"] for r in rows]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    final = json.loads((run / "eval.json").read_text())
    assert events.Scalars("val/AP")[-1].value == pytest.approx(final["AP"], rel=1e-6)

    client = MlflowClient((run / "mlruns").resolve().as_uri())
    run_id = (run / "mlflow_run_id").read_text().strip()
    history = client.get_metric_history(run_id, "loss_cls")
    assert [m.step for m in history] == [r["iter"] for r in rows]
    assert [m.value for m in history] == pytest.approx([r["loss_cls"] for r in rows], rel=1e-6)
    assert client.get_metric_history(run_id, "val_AP")[-1].value == pytest.approx(final["AP"])
    assert client.get_run(run_id).data.params["train.max_iter"] == "3"


def test_a_missing_logger_package_is_one_line_before_the_run(synth_set, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a)
    )
    with pytest.raises(
        ValueError,
        match=r"train.log: mlflow needs the mlflow package \(pip install 'podkit\[mlflow\]'\)",
    ):
        train(tiny_config(synth_set, "train.log=[mlflow]"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
