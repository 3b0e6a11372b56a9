import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from podkit.cli import app
from podkit.config import load_config
from podkit.data.synthetic import write_split
from podkit.export import onnx as onnx_export
from podkit.export.wrap import ExportWrapper
from podkit.train.hooks import Hook

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one thread each
    torch.set_num_threads(1)  # onnxruntime and OpenVINO follow PyTorch's count (runtime_threads)
    os.environ["TVM_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"  # subprocesses: the installed wheel's demo, DDP ranks


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


def export_key(model: torch.nn.Module, *options) -> str:
    """What an ONNX export depends on: the modules (their repr holds every dilation and
    split), every tensor of the state, and the export's options."""
    digest = hashlib.sha256(repr(model).encode() + repr(options).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@pytest.fixture(autouse=True, scope="session")
def _each_onnx_export_once(tmp_path_factory):
    """The ONNX exporter takes 10-40 s even on a tiny detector, and many export tests start
    from the same FP32 file (ONNX, OpenVINO, Triton and INT8 of one checkpoint at one size):
    each distinct (model, weights, options) is exported once in a test run, and a later
    export of the same is a copy of that file. The xdist workers share the folder."""
    root = tmp_path_factory.getbasetemp()
    store = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "onnx_exports"
    store.mkdir(exist_ok=True)
    export = onnx_export.export

    def export_once(model, path, input_size=(512, 512), dynamic=False, nms=True, opset=18,
                    max_detections=100, batch=1):  # fmt: skip
        options = (tuple(input_size), dynamic, nms, opset, max_detections, batch)
        stored = store / f"{export_key(model, *options)}.onnx"
        if not stored.is_file():
            wrapper = export(model, path, *options)
            partial = stored.with_suffix(f".{os.getpid()}.partial")
            shutil.copyfile(path, partial)
            os.replace(partial, stored)  # whole or absent for the other worker
            return wrapper
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stored, path)
        return ExportWrapper(model.cpu().eval(), nms, max_detections, any_batch=batch is None)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "export", export_once)
        yield


# Files that take a minute or more, longest first: with `--no-loadscope-reorder` the two
# xdist workers start on these, instead of ending on one of them alone (xdist's default
# order is by the number of tests in a file, which puts these few-test files last).
LONG_FILES_FIRST = (
    "tests/export/test_targets.py",
    "tests/export/test_openvino.py",
    "tests/export/test_artefact_accuracy.py",
    "tests/e2e/test_cli.py",
    "tests/convert/test_convert.py",
    "tests/export/test_triton.py",
    "tests/e2e/test_training_cli.py",
    "tests/export/test_wrap.py",
    "tests/export/test_bench_latency.py",
)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
