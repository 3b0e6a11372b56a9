"""torchvision's own outputs for podkit's converter test (tests/convert/test_torchvision.py).

Run in an environment that has torchvision (it does not load beside podkit's CPU torch):
    python3 -m venv ~/tvref && ~/tvref/bin/pip install torch==2.14.0 torchvision==0.29.1 numpy
    ~/tvref/bin/python -m studies.torchvision_reference --out tests/convert/torchvision_reference.npz

For each architecture: the model built as its COCO weights run (v1: FrozenBatchNorm with eps
0, as torchvision's builders set for the COCO_V1 weights; v2: BatchNorm in eval mode), its tensors set from
studies/reference_inputs.tensor_for, two generated scenes fed at their own size (no resize, no
padding), and what torchvision computes: the RPN's proposals (Faster R-CNN) and the final
detections. podkit never computes any of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models.detection import (
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    retinanet_resnet50_fpn,
)
from torchvision.ops import FrozenBatchNorm2d

from studies.reference_inputs import IMAGE_SIZE, SEEDS, scene, tensor_for

BUILDERS = {
    "fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn,
    "fasterrcnn_resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2,
    "retinanet_resnet50_fpn": retinanet_resnet50_fpn,
}


def frozen(module: torch.nn.Module, eps: float) -> torch.nn.Module:
    """Every BatchNorm2d replaced by FrozenBatchNorm2d(eps), as the pretrained builders do."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=eps))
        else:
            frozen(child, eps)
    return module


def build(arch: str, size: tuple[int, int] = IMAGE_SIZE) -> torch.nn.Module:
    """torchvision's `arch` with the regenerated weights, fed at `size` (H, W) unresized."""
    h, w = size
    model = BUILDERS[arch](weights=None, weights_backbone=None, min_size=h, max_size=w)
    if not arch.endswith("_v2"):  # v1's COCO weights: FrozenBN with eps 0; v2 keeps BatchNorm
        frozen(model.backbone.body, eps=0.0)
    state = {
        k: torch.from_numpy(np.array(tensor_for(f"{arch}/{k}", tuple(v.shape))))
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    return model.eval()


@torch.inference_mode()
def outputs(arch: str, model: torch.nn.Module, images: list[torch.Tensor]) -> dict:
    out = {}
    if arch.startswith("fasterrcnn"):
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        for i, p in enumerate(proposals):
            out[f"{arch}/proposals/{i}"] = p.numpy()
    for i, det in enumerate(model(images)):
        for key in ("boxes", "scores", "labels"):
            out[f"{arch}/{key}/{i}"] = det[key].numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    images = [torch.from_numpy(scene(s, *IMAGE_SIZE)).permute(2, 0, 1).contiguous() for s in SEEDS]
    result = {
        "versions": np.array(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    }
    for arch in BUILDERS:
        model = build(arch)
        state = model.state_dict()  # the layout the test regenerates the weights in
        result[f"{arch}/keys"] = np.array(list(state))
        result[f"{arch}/shapes"] = np.array([",".join(map(str, v.shape)) for v in state.values()])
        result |= outputs(arch, model, images)
        counts = [len(result[f"{arch}/scores/{i}"]) for i in range(len(images))]
        print(f"{arch}: detections per image {counts}", flush=True)
    np.savez_compressed(args.out, **result)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
