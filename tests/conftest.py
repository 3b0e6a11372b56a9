import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from podkit.cli import app
from podkit.config import load_config
from podkit.data.synthetic import write_split
from podkit.train.hooks import Hook

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one thread each
    torch.set_num_threads(1)


def invoke(*args) -> tuple[int, str]:
    """`podkit ARGS...` in this process: (exit code, output)."""
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_line_error(code: int, out: str, *needles: str) -> None:
    """Exit 2, and the output ends in one `error:` line holding every needle (notes printed
    before the refusal, such as a clipped warm-up, may precede it)."""
    assert code == 2, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, out
    assert "Traceback" not in out
    for needle in needles:
        assert needle in lines[-1], (needle, out)


def losses_of(run: Path) -> list[dict]:
    """A run folder's metrics.jsonl, one dict per logged iteration."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class CtrlCAt(Hook):
    """Presses Ctrl-C (a real SIGINT) after the given iteration."""

    name = "ctrl_c"

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self, state):
        if state.iteration == self.iteration:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches (verified images) in a temporary folder, not the user's ~/.cache."""
    os.environ["PODKIT_CACHE"] = str(tmp_path_factory.mktemp("podkit-cache"))


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> Path:
    """A small synthetic COCO set (16 train, 8 val images around 128 px), made once."""
    out = tmp_path_factory.mktemp("synth")
    write_split(out, "train", 16, 128, seed=0)
    write_split(out, "val", 8, 128, seed=0)
    return out


def tiny_overrides(data: Path, max_iter: int = 4) -> list[str]:
    """Overrides that make configs/tiny/faster_rcnn_fpn.yaml run in seconds on `data`."""
    return [
        f"data.train.ann={data}/annotations/train.json",
        f"data.train.images={data}/train",
        f"data.val.ann={data}/annotations/val.json",
        f"data.val.images={data}/val",
        "data.min_size=[128]",
        "data.max_size=160",
        "data.test_min_size=128",
        f"train.max_iter={max_iter}",
        "train.batch_size=2",
        "train.warmup_iters=2",
        "train.log_every=1",
        "train.checkpoint_every=0",
        "train.workers=0",
        "train.lr=0.01",
        "model.fpn_channels=32",
        "model.roi_heads.representation_size=64",
        # fp32 NCHW: at 128 px and batch 2 bf16 autocast costs more than it saves
        # (test_loop covers the bf16 channels_last path)
        "train.amp=false",
        "train.channels_last=false",
    ]


def arch_overrides(arch: str) -> list[str]:
    """The tiny config as `arch` (RetinaNet with one-conv heads, to stay fast)."""
    return ["model.arch=retinanet", "model.retinanet.num_convs=1"] if arch == "retinanet" else []


def tiny_config(data: Path, *extra: str, max_iter: int = 4):
    return load_config(
        ROOT / "configs/tiny/faster_rcnn_fpn.yaml", [*tiny_overrides(data, max_iter), *extra]
    )
