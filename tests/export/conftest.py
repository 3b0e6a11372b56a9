"""Tiny checkpoints (baseline, GSL, FD) whose scores spread out, so NMS has work to do, and a
validation set whose ground truth is a checkpoint's own detections (artefact accuracy).

The ground truth is the checkpoint's own most confident detections (an untrained detector
scores ~0 AP on the real boxes, which any artefact would match): the checkpoint then scores a
high AP, and a box the artefact maps back to the wrong pixels, a resize that differs, or a lost
detection lowers the artefact's."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from podkit.config import to_dict
from podkit.data import load_dataset
from podkit.evaluation.artefacts import open_detector
from podkit.evaluation.evaluate import predict_at
from podkit.models import build_detector
from podkit.models.checkpoint import save_checkpoint
from podkit.models.gsl import gsl_convs
from podkit.pod.decompose import make_plan
from tests.conftest import tiny_config

VARIANTS = ("baseline", "gsl", "fd")


def _spread_scores(model: torch.nn.Module) -> None:
    """Random heads instead of the prior-initialised ones: an untrained detector scores
    every box alike, which would make the parity of its detections a test of tie-breaking."""
    g = torch.Generator().manual_seed(1)
    std = 0.3
    if hasattr(model, "head"):  # RetinaNet
        layers = [model.head.cls_logits, model.head.bbox_pred]
        torch.nn.init.zeros_(model.head.cls_logits.bias)
        if model.config.head_norm == "gn":  # unit-variance features: 0.3-std logits would
            # push every score to sigmoid ~1, hundreds tied within 1e-6
            std = model.head.cls_logits.weight[0].numel() ** -0.5
    else:
        layers = [
            model.rpn.head.cls_logits,
            model.roi_heads.predictor.cls_score,
            model.roi_heads.predictor.bbox_pred,
        ]
    for layer in layers:
        layer.weight.data = torch.randn(layer.weight.shape, generator=g) * std
    for _, conv in gsl_convs(model):  # learned scales that differ between layers and images
        conv.scale_predictor.weight.data = torch.randn(
            conv.scale_predictor.weight.shape, generator=g
        )


def make_checkpoint(out: Path, data: Path, arch: str, variant: str) -> Path:
    # GSL in layer4 only (a stride-2 and stride-1 GSL conv each): every GSL conv exports alike,
    # and they dominate the export time (dynamic FPN: 122 s with 12 GSL convs, 73 s with 4)
    gsl = ["model.gsl=true", "model.gsl_stages=[layer4]"] if variant == "gsl" else []
    cfg = tiny_config(data, f"model.arch={arch}", *gsl)
    if variant == "fd":
        gsl_cfg = tiny_config(data, f"model.arch={arch}", "model.gsl=true")
        names = [n for n, _ in gsl_convs(build_detector(gsl_cfg.model))]
        scales = {n: (1.3 + 0.1 * (i % 5), 0.8 + 0.3 * (i % 3)) for i, n in enumerate(names)}
        cfg.model.fd_plan = make_plan(build_detector(gsl_cfg.model), scales, channel_multiple=1)
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    _spread_scores(model)
    path = out / f"{arch}_{variant}.pt"
    save_checkpoint({"model": model.state_dict(), "config": to_dict(cfg), "iteration": 0}, path)
    return path


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, synth_set):
    """Lazily made checkpoints: checkpoints(arch, variant) -> path."""
    out = tmp_path_factory.mktemp("ckpt")
    made: dict = {}

    def get(arch: str = "faster_rcnn_fpn", variant: str = "baseline") -> Path:
        if (arch, variant) not in made:
            made[arch, variant] = make_checkpoint(out, synth_set, arch, variant)
        return made[arch, variant]

    return get


@pytest.fixture(scope="module")
def val_set(synth_set, tmp_path_factory) -> list[str]:
    """The val images at 256x192, fed at 128x96 (half size: boxes are mapped back), a size
    with no padding, so the checkpoint and a static 96x128 artefact see the same pixels; the
    boxes are the checkpoint's own (`pseudo_ground_truth`)."""
    out = tmp_path_factory.mktemp("val256")
    data = json.loads((synth_set / "annotations" / "val.json").read_text())
    for image in data["images"]:
        with Image.open(synth_set / "val" / image["file_name"]) as im:
            im.convert("RGB").resize((256, 192), Image.BILINEAR).save(out / image["file_name"])
        image.update(width=256, height=192)
    data["annotations"] = []
    (out / "val.json").write_text(json.dumps(data))
    return [f"data.val.ann={out / 'val.json'}", f"data.val.images={out}",
            "data.test_min_size=96", "data.max_size=128", "eval.batch_size=3"]  # fmt: skip


def detections_of(path, overrides):
    detector, cfg, _, device = open_detector(path, overrides)
    records = load_dataset(cfg.data.val).records
    return predict_at(detector, records, cfg, device, cfg.data.test_min_size, cfg.data.max_size)


@pytest.fixture(scope="module")
def reference(checkpoints, val_set):
    """The checkpoint's detections on the val set, and the image ids."""
    return detections_of(checkpoints(), val_set)


def pseudo_ground_truth(reference, overrides, out: Path, per_image: int = 4) -> list[str]:
    """The val set with each image's top detections of the checkpoint as its boxes."""
    ann = Path(overrides[0].split("=", 1)[1])
    data = json.loads(ann.read_text())
    detections, image_ids = reference
    for det, image_id in zip(detections, image_ids, strict=True):
        for box, label in zip(
            det["boxes"][:per_image].tolist(), det["labels"][:per_image].tolist(), strict=True
        ):
            w, h = box[2] - box[0], box[3] - box[1]
            data["annotations"].append(
                {
                    "id": len(data["annotations"]) + 1,
                    "image_id": image_id,
                    "iscrowd": 0,
                    "category_id": data["categories"][label]["id"],
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                }  # fmt: skip
            )
    path = out / "pseudo_val.json"
    path.write_text(json.dumps(data))
    return [f"data.val.ann={path}", *overrides[1:]]
