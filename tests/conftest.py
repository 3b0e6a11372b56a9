import os
from pathlib import Path

import pytest
import torch

from podkit.config import load_config
from podkit.data.synthetic import write_split

ROOT = Path(__file__).resolve().parents[1]


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
