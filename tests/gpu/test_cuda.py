"""The CUDA paths, run by `make gpu-check` on a machine with an NVIDIA GPU (skipped elsewhere):
AMP training steps, nccl DDP over the GPUs present, the onnxruntime CUDA provider, TVM's
`cuda` target and torch.compile, each against the CPU or eager reference."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from podkit.export import ExportOptions, check_parity, export_checkpoint, sample_image, torch_runner
from podkit.export.parity import compare_outputs
from podkit.export.wrap import ExportWrapper
from podkit.models.checkpoint import load_detector
from podkit.train.loop import train
from tests.conftest import ROOT, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def test_amp_training_steps_on_cuda(synth_set, tmp_path):
    """fp16 autocast with a grad scaler: finite losses, and the weights move."""
    cfg = tiny_config(synth_set, "train.device=cuda", "train.amp=true", "data.val.ann=''",
                      max_iter=6)  # fmt: skip
    result = train(cfg, tmp_path / "run")
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log) and result.iteration == 6
    assert next(result.model.parameters()).is_cuda


def test_nccl_ddp_keeps_ranks_in_sync(synth_set, tmp_path):
    gpus = torch.cuda.device_count()
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PODKIT_TEST_DEVICE": "cuda"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(gpus), str(ROOT / "tests/train/ddp_worker.py"), str(synth_set), str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(gpus)]
    assert all(r["world"] == gpus and r["backend"] == "nccl" for r in ranks)
    for key, value in ranks[0]["sums"].items():
        for other in ranks[1:]:
            assert abs(value - other["sums"][key]) <= 1e-4 * max(1.0, abs(value)), key


def test_torch_compile_on_cuda_matches_eager(checkpoints):
    model, _, _, _ = load_detector(checkpoints("retinanet", "baseline"))
    wrapper = ExportWrapper(model)
    image = sample_image((128, 128))
    eager = torch_runner(wrapper, "cuda")(image)
    compiled = torch_runner(wrapper, "cuda", compile=True)(image)
    report = compare_outputs(wrapper.output_names, eager, compiled)
    assert report["ok"] and report["detections"] > 0, report


@pytest.mark.parametrize("variant", ["baseline", "fd", "gsl"])
def test_onnxruntime_cuda_provider(checkpoints, tmp_path, variant):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
    from podkit.export import load

    path = tmp_path / "m.onnx"
    export_checkpoint(checkpoints("faster_rcnn_fpn", variant), "onnx", path,
                      ExportOptions((128, 160)), log=str)  # fmt: skip
    runner = load(path, "cuda")
    assert runner.providers[0] == "CUDAExecutionProvider"  # not a silent CPU fallback
    model, _, _, _ = load_detector(checkpoints("faster_rcnn_fpn", variant))
    report = check_parity(ExportWrapper(model), runner, (128, 160))
    assert report["ok"], report


def test_tvm_cuda_target(checkpoints, tmp_path):
    tvm = pytest.importorskip("tvm")
    if not tvm.cuda(0).exist:
        pytest.skip("this TVM build has no CUDA runtime")
    report = export_checkpoint(checkpoints("retinanet", "baseline"), "tvm", tmp_path / "m.so",
                               ExportOptions((128, 128), device="cuda"), log=str)  # fmt: skip
    assert all(p["ok"] for p in report["parity"])
