"""Runs a new user starts from the command line finish: a method switched on with its
defaults, methods combined, a paper recipe on a machine without CUDA, a diverging run, and
INT8 export of a checkpoint whose training set is not on this machine."""

import json
import shutil

import torch

from podkit.models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import ROOT, invoke, one_line_error, tiny_overrides

TINY = ROOT / "configs/tiny/faster_rcnn_fpn.yaml"


def train(config, out, *overrides):
    sets = [x for o in overrides for x in ("--set", o)]
    return invoke("train", config, "--out", out, *sets)


def logged(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_snip_with_its_defaults_trains_on_a_small_recipe(synth_set, tmp_path):
    """SNIP's default pyramid is fitted to the recipe's test size (128 px here: 256/128/64),
    not the paper's 1400-800-480 px, so the tiny recipe trains with finite losses."""
    run = tmp_path / "run"
    code, out = train(
        TINY, run, *tiny_overrides(synth_set, max_iter=3), "data.val.ann=", "methods=[{name: snip}]"
    )
    assert code == 0, out
    assert "upsampled to 256" in " ".join(out.split()) and (run / "last.pt").exists()
    rows = logged(run)
    assert len(rows) == 3 and all(r["loss"] is not None and r["loss"] < 100 for r in rows)
    assert {s for r in rows for s in r["snip_resolution"]} <= {64, 128, 256}


def test_dst_with_dynamic_rcnn_trains_and_writes_its_checkpoint(tmp_path):
    """The failing run as a user made it: the tiny recipe's own lr (0.04) and warm-up (clipped
    to 7 of 30 iterations) on `data synth --size 160 --seed 4`; without gradient clipping a
    collage batch diverged there (loss 2e19, then NaN at iteration 19)."""
    data = tmp_path / "s"
    code, out = invoke("data", "synth", data, "--train", 16, "--val", 4, "--size", 160, "--seed", 4)
    assert code == 0, out
    run = tmp_path / "run"
    sets = [f"data.train.ann={data}/annotations/train.json", f"data.train.images={data}/train",
            "data.val.ann=", "model.num_classes=10", "train.max_iter=30", "train.workers=0",
            "methods=[{name: dst}, {name: dynamic_rcnn}]"]  # fmt: skip
    code, out = train(TINY, run, *sets)
    assert code == 0, out
    assert load_checkpoint(run / "last.pt")["iteration"] == 30
    rows = logged(run)
    assert all(r["loss"] is not None and r["loss"] < 100 for r in rows)
    assert {"dst_collage", "iou_threshold", "beta"} <= set(rows[-1])


def test_a_paper_recipe_runs_where_there_is_no_cuda(synth_set, tmp_path):
    code, out = train(
        ROOT / "configs/faster_rcnn_r50_fpn_1x.yaml", tmp_path / "run",
        *tiny_overrides(synth_set, max_iter=1), "model.num_classes=10",
        "model.backbone_weights=null", "data.val.ann=",
    )  # fmt: skip
    assert code == 0, out
    assert "train.device auto: training on cpu (no CUDA device)" in " ".join(out.split())


def test_a_diverging_run_stops_in_one_line_keeping_its_checkpoint(synth_set, tmp_path):
    run = tmp_path / "run"
    code, out = train(TINY, run, *tiny_overrides(synth_set, max_iter=30), "train.lr=1e12",
                      "train.clip_grad_norm=null", "train.checkpoint_every=1", "data.val.ann=")  # fmt: skip
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if ln.startswith("stopped:"))
    assert "non-finite loss at iteration" in line and "last.pt is kept" in " ".join(out.split())
    ckpt = load_checkpoint(run / "last.pt")
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values())
    assert "Traceback" not in out


def test_int8_without_the_training_set_asks_for_calibration_images(tiny_run, synth_set, tmp_path):
    """A checkpoint from another machine records a training set this one does not have: one
    line before any export; --calib-data calibrates on the images given instead."""
    ckpt = load_checkpoint(tiny_run / "last.pt")
    ckpt["config"]["data"]["train"]["ann"] = "/elsewhere/train.json"
    moved = tmp_path / "moved.pt"
    save_checkpoint(ckpt, moved)
    args = ("export", moved, "--target", "onnx", "--int8", "--input-size", "128x128")
    code, out = invoke(*args, "--out", tmp_path / "a.onnx")
    one_line_error(code, out, "/elsewhere/train.json is not on this machine", "--calib-data")
    assert not (tmp_path / "a.onnx").exists()
    images = tmp_path / "mine"
    shutil.copytree(synth_set / "val", images)
    code, out = invoke(*args, "--out", tmp_path / "b.onnx", "--calib-data", images, "--calib", 4)
    assert code == 0, out
    assert "calibrating INT8 on 4 --calib-data images" in out and (tmp_path / "b.onnx").exists()
