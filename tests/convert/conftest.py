"""torchvision's COCO detectors with regenerated weights (studies/reference_inputs.py), saved as
torchvision lays them out and converted by podkit, once per test session."""

from pathlib import Path

import numpy as np
import pytest
import torch

from podkit.convert import convert_weights
from studies import reference_inputs as inputs

REFERENCE = Path(__file__).with_name("torchvision_reference.npz")
ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn")


def torchvision_state(arch: str) -> dict:
    """The state dict torchvision's `arch` holds, from the reference file's key list."""
    ref = np.load(REFERENCE)
    names = [str(n) for n in ref[f"{arch}/keys"]]
    shapes = [tuple(int(x) for x in s.split(",") if x) for s in ref[f"{arch}/shapes"]]
    return {
        n: torch.from_numpy(np.array(inputs.tensor_for(f"{arch}/{n}", s)))
        for n, s in zip(names, shapes, strict=True)
    }


@pytest.fixture(scope="session")
def torchvision_files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """arch -> (torchvision's weights file, the podkit checkpoint converted from it)."""
    folder = tmp_path_factory.mktemp("tv")
    paths = {}
    for arch in ARCHS:
        source, converted = folder / f"{arch}.pth", folder / f"{arch}.pt"
        torch.save(torchvision_state(arch), source)
        convert_weights(source, "torchvision", arch, converted, log=lambda _: None)
        paths[arch] = (source, converted)
    return paths


@pytest.fixture(scope="session")
def converted(torchvision_files) -> dict[str, Path]:
    return {arch: pair[1] for arch, pair in torchvision_files.items()}


def assert_same_detections(model, other, seed: int, height: int, width: int, least: int) -> None:
    """`other` detects on a generated scene what `model` detects (at least `least` boxes):
    scores within 1e-4, boxes within 1e-2 px."""
    from podkit.ops.image_batch import ImageBatch

    pixels = torch.from_numpy(inputs.scene(seed, height, width)).permute(2, 0, 1)
    batch = ImageBatch.from_tensors([pixels], 32)
    with torch.inference_mode():
        ours, theirs = model.eval()(batch).detections[0], other.eval()(batch).detections[0]
    assert len(ours["scores"]) >= least
    torch.testing.assert_close(theirs["scores"], ours["scores"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(theirs["boxes"], ours["boxes"], atol=1e-2, rtol=1e-4)
