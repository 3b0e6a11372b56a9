"""Bad input through the command line: exit code 2, one line naming the file (and key or id),
and nothing the user already had is changed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from podkit.config import TrainConfig
from podkit.data.synthetic import write_split
from podkit.models.checkpoint import load_checkpoint, save_checkpoint
from podkit.train.hooks import Hook
from podkit.train.loop import lr_factor, train
from tests.conftest import ROOT, invoke, one_line_error, tiny_config, tiny_overrides

CONFIG = ROOT / "configs/tiny/faster_rcnn_fpn.yaml"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def sets(*items: str) -> list[str]:
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-iteration tiny run trained from its own folder with relative paths, whose
    folder held a stale lock (its process is gone): returns (folder, cli output)."""
    root = tmp_path_factory.mktemp("reliability")
    write_split(root / "data", "train", 8, 128, seed=3)
    write_split(root / "data", "val", 4, 128, seed=3)
    (root / "run").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / "run/.lock").write_text(str(dead.pid))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        relative = [o.replace(str(root) + "/", "") for o in tiny_overrides(root / "data", 2)]
        code, out = invoke("train", CONFIG, "--out", "run", *sets(
            *relative, "train.checkpoint_every=1", "train.warmup_iters=200"))  # fmt: skip
    finally:
        os.chdir(cwd)
    assert code == 0, out
    return root / "run", out


@pytest.mark.parametrize(
    "item,key",
    [
        ("train.lr=.nan", "train.lr"),
        ("train.max_iter=-5", "train.max_iter"),
        ("model.width=0", "model.width"),
        ("train.device=tpu", "train.device"),
        ("train.log_every=0", "train.log_every"),
        ("data.size_divisible=0", "data.size_divisible"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.min_size=[]", "data.min_size"),
        ("model.rpn.nms_threshold=1.5", "model.rpn.nms_threshold"),
        ("eval.merge=wbf", "eval.merge"),
    ],
)
def test_out_of_range_options_name_the_key(tmp_path, item, key):
    code, out = invoke("train", CONFIG, "--out", tmp_path / "run", "--set", item)
    one_line_error(code, out, key)
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_never_overwritten_by_accident(run, tmp_path):
    folder, _ = run
    before = snapshot(folder)
    code, out = invoke(
        "train", CONFIG, "--out", folder, *sets(*tiny_overrides(folder.parent / "data", 2))
    )
    one_line_error(code, out, str(folder), "--resume", "--overwrite")
    code, out = invoke("train", CONFIG, "--out", folder, "--set", "data.train.ann=typo.json")
    one_line_error(code, out, "typo.json")
    assert snapshot(folder) == before


def test_a_second_training_on_the_same_folder_stops(tmp_path, synth_set):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text(str(os.getpid()))  # a live trainer holds it
    code, out = invoke("train", CONFIG, "--out", folder, *sets(*tiny_overrides(synth_set, 2)))
    one_line_error(code, out, f"another training (pid {os.getpid()})")
    assert snapshot(folder) == {".lock": str(os.getpid()).encode()}


def test_stale_lock_taken_over_and_released(run):
    folder, _ = run
    assert not (folder / ".lock").exists()
    assert load_checkpoint(folder / "last.pt")["iteration"] == 2


def test_saved_paths_work_from_any_folder(run, tmp_path, monkeypatch):
    folder, _ = run
    saved = load_checkpoint(folder / "last.pt")["config"]["data"]["val"]
    assert Path(saved["ann"]).is_absolute() and Path(saved["images"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    code, out = invoke("eval", folder / "last.pt", "--out", "deep/new/eval.json")
    assert code == 0, out
    assert "(percent)" in out
    assert json.loads((tmp_path / "deep/new/eval.json").read_text()) == json.loads(
        (folder / "eval.json").read_text()
    )


def test_resume_reads_the_runs_own_config(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run[0], folder)
    code, out = invoke("train", "--resume", "--out", folder, "--set", "model.gsl=true")
    one_line_error(code, out, "last.pt: does not fit the model of this config")
    code, out = invoke("train", "--resume", "--out", folder, "--set", "train.max_iter=3")
    assert code == 0, out
    assert load_checkpoint(folder / "last.pt")["iteration"] == 3
    cfg = load_checkpoint(folder / "last.pt")["config"]
    assert cfg["data"]["min_size"] == [128] and cfg["train"]["batch_size"] == 2  # the run's --set
    code, out = invoke("train", "--out", tmp_path / "other")
    one_line_error(code, out, "give a config file")


def test_warmup_never_exceeds_a_quarter_of_the_run(run):
    _, out = run
    assert "train.warmup_iters 200 clipped to 0" in out
    cfg = TrainConfig(max_iter=12, warmup_iters=200, warmup_factor=0.001, steps=[2 / 3])
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert [lr_factor(i, cfg) for i in (3, 7)] == [1.0, 1.0]  # warm-up over at 12 // 4
    assert lr_factor(8, cfg) == pytest.approx(0.1)


def test_corrupt_and_oversized_images_stop_at_start(tmp_path):
    data = tmp_path / "data"
    write_split(data, "train", 4, 96, seed=1)
    write_split(data, "val", 2, 96, seed=1)
    overrides = sets(*tiny_overrides(data, 2))
    images = json.loads((data / "annotations/train.json").read_text())["images"]
    code, out = invoke("train", CONFIG, "--out", tmp_path / "run", *overrides,
                       "--set", "data.max_image_pixels=1000")  # fmt: skip
    one_line_error(code, out, "train.json: image id", "over the limit", "data.max_image_pixels")
    victim = data / "train" / images[2]["file_name"]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated mid-file
    code, out = invoke("train", CONFIG, "--out", tmp_path / "run", *overrides)
    one_line_error(code, out, f"image id {images[2]['id']}", str(victim), "corrupt")
    assert not (tmp_path / "run").exists()


def test_verified_images_are_cached_by_size_and_mtime(synth_set, monkeypatch, tmp_path):
    from podkit.data import verify
    from podkit.data.records import Record

    monkeypatch.setenv("PODKIT_CACHE", str(tmp_path / "cache"))
    files = sorted((synth_set / "train").iterdir())[:3]
    records = [Record(i, f, 0, 0, None, None) for i, f in enumerate(files)]
    decoded = []
    real = verify.decode
    monkeypatch.setattr(verify, "decode", lambda p, w, m: decoded.append(p) or real(p, w, m))
    verify.verify_images(records, "set", 10**8)
    verify.verify_images(records, "set", 10**8)
    assert decoded == files  # the second pass decodes nothing
    os.utime(files[1], ns=(0, 0))
    verify.verify_images(records, "set", 10**8)
    assert decoded == [*files, files[1]]


def test_init_from_refuses_missing_blocks(run, tmp_path):
    folder, _ = run
    code, out = invoke("train", CONFIG, "--out", tmp_path / "r34", *sets(
        *tiny_overrides(folder.parent / "data", 2), "model.depth=34",
        f"model.init_from={folder / 'last.pt'}"))  # fmt: skip
    one_line_error(code, out, "loaded", "backbone.body.layer1.2", "model.init_partial=true")
    assert not (tmp_path / "r34").exists()


def test_init_from_reports_what_it_loaded(run):
    from podkit.models import build_detector
    from podkit.models.checkpoint import load_detector
    from podkit.train.loop import load_model_weights

    _, cfg, _, _ = load_detector(run[0] / "last.pt")
    cfg.model.depth = 34
    model = build_detector(cfg.model)
    report = load_model_weights(model, run[0] / "last.pt", allow_partial=True)
    own = {k: v for k, v in model.state_dict().items() if "num_batches" not in k}
    ckpt = load_checkpoint(run[0] / "last.pt")["model"]
    shared = [k for k in own if k in ckpt]
    assert 0 < len(shared) < len(own)
    assert f"loaded {len(shared)} of {len(own)} tensors" in report
    assert all(torch.equal(own[k], ckpt[k]) for k in shared)


class FailAt(Hook):
    name = "fail"

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_step(self, state, batch):
        if state.iteration + 1 == self.iteration:
            raise RuntimeError("a loader worker died")
        return batch


def test_an_error_mid_run_keeps_the_work_done(synth_set, tmp_path):
    cfg = tiny_config(synth_set, max_iter=4)
    with pytest.raises(RuntimeError, match="worker died"):
        train(cfg, tmp_path / "run", hooks=[FailAt(3)])
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert ckpt["iteration"] == 2 and ckpt["data_position"] == 2  # the failed draw is undone
    assert not (tmp_path / "run/.lock").exists()
    assert train(cfg, tmp_path / "run", resume=True).iteration == 4


def test_unreadable_outputs_and_checkpoints_are_one_line(run, tmp_path):
    folder, _ = run
    (tmp_path / "file").write_text("")
    code, out = invoke("eval", folder / "last.pt", "--out", tmp_path / "file/eval.json")
    one_line_error(code, out, "file/eval.json")
    save_checkpoint({"model": {}, "config": {"model": {"arch": "retinanet"}}}, tmp_path / "old.pt")
    code, out = invoke("info", tmp_path / "old.pt")
    assert code == 0 and "retinanet R?" in out and "baseline" in out, out
    (tmp_path / "cut.pt").write_bytes((folder / "last.pt").read_bytes()[:1000])
    code, out = invoke("info", tmp_path / "cut.pt")
    one_line_error(code, out, "cut.pt: not a podkit checkpoint", "never unpickles")
    assert "weights_only" not in out


def test_export_options_that_cannot_apply_are_refused(run, tmp_path):
    folder, _ = run
    code, out = invoke("export", folder / "last.pt", "--target", "onnx", "--out",
                       tmp_path / "m.onnx", "--fp16", "--int8")  # fmt: skip
    one_line_error(code, out, "choose one precision")
    code, out = invoke("export", folder / "last.pt", "--target", "tvm", "--out",
                       tmp_path / "m.so", "--int8")  # fmt: skip
    one_line_error(code, out, "FP32 only")
    code, out = invoke("export", folder / "last.pt", "--target", "onnx", "--out",
                       tmp_path / "m.onnx", "--batch", "2", "--no-nms")  # fmt: skip
    one_line_error(code, out, "--batch 2")
    code, out = invoke("export", folder / "last.pt", "--target", "onnx", "--out",
                       tmp_path / "m.onnx", "--dynamic-batch", "--no-nms")  # fmt: skip
    one_line_error(code, out, "--dynamic-batch with --no-nms")
    code, out = invoke("export", folder / "last.pt", "--target", "onnx", "--out",
                       tmp_path / "m.onnx", "--dynamic-batch", "--fp16")  # fmt: skip
    one_line_error(code, out, "--fp16 and --dynamic-batch")
    code, out = invoke("export", folder / "last.pt", "--target", "onnx")
    one_line_error(code, out, "--out is required")
    assert list(tmp_path.iterdir()) == []


def test_help_and_version_without_torch():
    code = "import sys, podkit.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    rc, out = invoke("--version")
    assert rc == 0 and out.startswith("podkit ")
