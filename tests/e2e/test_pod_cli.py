import json

import torch

from podkit.models.checkpoint import load_checkpoint
from tests.conftest import ROOT, invoke, tiny_overrides

CONFIG = ROOT / "configs/tiny/faster_rcnn_fpn.yaml"


def sets(*overrides):
    return [x for o in overrides for x in ("--set", o)]


def test_gsl_scales_decompose_fd_wt(synth_set, tmp_path):
    base = tiny_overrides(synth_set, max_iter=3)
    code, out = invoke("train", CONFIG, "--out", tmp_path / "gsl", *sets(*base, "model.gsl=true"))
    assert code == 0, out
    code, out = invoke(
        "scales",
        tmp_path / "gsl/last.pt",
        "--images",
        4,
        "--out",
        tmp_path / "scales.json",
        "--plot",
        tmp_path / "scales.png",
    )
    assert code == 0, out
    scales = json.loads((tmp_path / "scales.json").read_text())
    assert scales["images"] == 4 and len(scales["layers"]) == 12
    assert set(scales["layers"][0]) == {"name", "d_h_mean", "d_h_std", "d_w_mean", "d_w_std"}
    assert (tmp_path / "scales.png").stat().st_size > 1000
    code, out = invoke(
        "decompose",
        tmp_path / "gsl/last.pt",
        "--scales",
        tmp_path / "scales.json",
        "--out",
        tmp_path / "fd.pt",
        "--plan",
        tmp_path / "plan.json",
    )
    assert code == 0, out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [p["name"] for p in plan] == [layer["name"] for layer in scales["layers"]]
    assert set(plan[0]) == {"name", "d_h", "d_w", "alpha", "channel_multiple", "parts"}
    fd = load_checkpoint(tmp_path / "fd.pt")
    assert fd["config"]["model"]["gsl"] is False and fd["config"]["model"]["fd_plan"] == plan
    assert not any("scale_predictor" in k for k in fd["model"])
    code, out = invoke("eval", tmp_path / "fd.pt", "--out", tmp_path / "fd_eval.json")
    assert code == 0, out
    # FD-WT: finetune from the transferred weights; FD: the same architecture from scratch
    code, out = invoke(
        "train",
        CONFIG,
        "--out",
        tmp_path / "fdwt",
        *sets(
            *tiny_overrides(synth_set, max_iter=1),
            f"model.fd_plan={tmp_path / 'plan.json'}",
            f"model.init_from={tmp_path / 'fd.pt'}",
            "train.lr=0.0",
        ),
    )
    assert code == 0, out
    finetuned = load_checkpoint(tmp_path / "fdwt/last.pt")["model"]
    for key, value in fd["model"].items():  # lr 0: weights unchanged (BN statistics aside)
        if "running" not in key and "num_batches" not in key:
            assert torch.allclose(finetuned[key], value), key
    code, out = invoke(
        "train",
        CONFIG,
        "--out",
        tmp_path / "fd_scratch",
        *sets(*tiny_overrides(synth_set, max_iter=1), f"model.fd_plan={tmp_path / 'plan.json'}"),
    )
    assert code == 0, out


def test_decompose_errors(synth_set, tmp_path):
    code, out = invoke(
        "train",
        CONFIG,
        "--out",
        tmp_path / "plain",
        *sets(*tiny_overrides(synth_set, max_iter=1), "data.val.ann=''"),
    )
    assert code == 0, out
    code, out = invoke("scales", tmp_path / "plain/last.pt", "--images", 2)
    assert code == 2 and "not a GSL checkpoint" in out
    (tmp_path / "bad.json").write_text("{")
    code, out = invoke(
        "decompose",
        tmp_path / "plain/last.pt",
        "--scales",
        tmp_path / "bad.json",
        "--out",
        tmp_path / "x.pt",
    )
    assert code == 2 and "bad.json: malformed JSON" in out
