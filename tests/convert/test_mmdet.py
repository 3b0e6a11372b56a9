"""MMDetection 3 checkpoints: every tensor of the published layouts lands in exactly one
podkit tensor; the training record beside the weights is read without running anything.

The layouts below are the state dicts of mmdet's faster-rcnn_r50_fpn_1x_coco and
retinanet_r50_fpn_1x_coco as their modules define them: ResNet-50 (torchvision's names;
mmdet/models/backbones/resnet.py), FPN ConvModules `neck.{lateral,fpn}_convs.i.conv`
(necks/fpn.py; RetinaNet's fpn_convs.3 takes C5, 2048 channels), RPNHead `rpn_conv`,
`rpn_cls` (3 anchors, sigmoid), `rpn_reg`; Shared2FCBBoxHead `shared_fcs.{0,1}`, `fc_cls`
(81), `fc_reg` (320); RetinaHead `{cls,reg}_convs.i.conv`, `retina_cls` (9 x 80), `retina_reg`."""

import sys
import types

import numpy as np
import pytest
import torch

from podkit.convert import convert_weights
from podkit.models.checkpoint import load_checkpoint
from tests.conftest import invoke, one_line_error


def resnet50(prefix: str) -> dict[str, tuple]:
    keys = {f"{prefix}conv1.weight": (64, 3, 7, 7)}
    keys |= bn(f"{prefix}bn1", 64)
    inplanes = 64
    for layer, (blocks, planes) in enumerate(
        zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1
    ):
        for i in range(blocks):
            block = f"{prefix}layer{layer}.{i}."
            keys[f"{block}conv1.weight"] = (planes, inplanes, 1, 1)
            keys |= bn(f"{block}bn1", planes)
            keys[f"{block}conv2.weight"] = (planes, planes, 3, 3)
            keys |= bn(f"{block}bn2", planes)
            keys[f"{block}conv3.weight"] = (planes * 4, planes, 1, 1)
            keys |= bn(f"{block}bn3", planes * 4)
            if i == 0:
                keys[f"{block}downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys |= bn(f"{block}downsample.1", planes * 4)
            inplanes = planes * 4
    return keys


def bn(name: str, channels: int) -> dict[str, tuple]:
    out = {
        f"{name}.{leaf}": (channels,) for leaf in ("weight", "bias", "running_mean", "running_var")
    }
    return out | {f"{name}.num_batches_tracked": ()}


def conv(name: str, out: int, inp: int, k: int) -> dict[str, tuple]:
    return {f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)}


def faster_rcnn() -> dict[str, tuple]:
    keys = resnet50("backbone.")
    for i, c in enumerate((256, 512, 1024, 2048)):
        keys |= conv(f"neck.lateral_convs.{i}.conv", 256, c, 1)
        keys |= conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3)
    keys |= conv("rpn_head.rpn_conv", 256, 256, 3) | conv("rpn_head.rpn_cls", 3, 256, 1)
    keys |= conv("rpn_head.rpn_reg", 12, 256, 1)
    head = "roi_head.bbox_head."
    return keys | {
        f"{head}fc_cls.weight": (81, 1024), f"{head}fc_cls.bias": (81,),
        f"{head}fc_reg.weight": (320, 1024), f"{head}fc_reg.bias": (320,),
        f"{head}shared_fcs.0.weight": (1024, 256 * 7 * 7), f"{head}shared_fcs.0.bias": (1024,),
        f"{head}shared_fcs.1.weight": (1024, 1024), f"{head}shared_fcs.1.bias": (1024,),
    }  # fmt: skip


def retinanet() -> dict[str, tuple]:
    keys = resnet50("backbone.")
    for i, c in enumerate((512, 1024, 2048)):
        keys |= conv(f"neck.lateral_convs.{i}.conv", 256, c, 1)
        keys |= conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3)
    keys |= conv("neck.fpn_convs.3.conv", 256, 2048, 3) | conv("neck.fpn_convs.4.conv", 256, 256, 3)
    for i in range(4):
        keys |= conv(f"bbox_head.cls_convs.{i}.conv", 256, 256, 3)
        keys |= conv(f"bbox_head.reg_convs.{i}.conv", 256, 256, 3)
    return (
        keys
        | conv("bbox_head.retina_cls", 9 * 80, 256, 3)
        | conv("bbox_head.retina_reg", 36, 256, 3)
    )


LAYOUTS = {"faster-rcnn_r50_fpn_1x_coco": faster_rcnn, "retinanet_r50_fpn_1x_coco": retinanet}


def random_state(layout: dict[str, tuple]) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    return {
        k: torch.tensor(0) if k.endswith("num_batches_tracked")
        else torch.from_numpy(rng.standard_normal(s).astype(np.float32))
        for k, s in layout.items()
    }  # fmt: skip


@pytest.mark.parametrize("arch", LAYOUTS)
def test_every_tensor_lands_in_exactly_one_podkit_tensor(arch, tmp_path):
    source = random_state(LAYOUTS[arch]())
    torch.save({"meta": {"epoch": 12, "CLASSES": ("person",)}, "state_dict": source},
               tmp_path / "w.pth")  # fmt: skip
    convert_weights(tmp_path / "w.pth", "mmdet", arch, tmp_path / "c.pt", log=lambda _: None)
    ckpt = load_checkpoint(tmp_path / "c.pt")
    ours = {k: v for k, v in ckpt["model"].items() if not k.endswith("num_batches_tracked")}
    weights = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    # each podkit tensor is set by exactly one source tensor, and none is left unused
    landed = {}
    for name, value in ours.items():
        if name.startswith("backbone.normalize."):
            continue
        sources = [
            k for k, v in weights.items() if v.shape == value.shape and torch.equal(v, value)
        ]
        assert len(sources) == 1, (name, sources)
        landed[sources[0]] = name
    assert sorted(landed) == sorted(weights)
    assert len(ours) - 2 == len(weights)  # + the normalisation's mean and std
    assert ckpt["classes"][0] == "person" and len(ckpt["classes"]) == 80
    assert ckpt["config"]["model"]["category_ids"][-1] == 90  # COCO's ids, with their gaps


def test_the_training_record_is_read_without_running_anything(tmp_path, monkeypatch):
    """mmengine's message hub beside the weights: its classes are placeholders, never built."""
    built = []

    class HistoryBuffer:
        def __init__(self, *args):
            built.append(args)

        def __setstate__(self, state):
            built.append(state)

    module = types.ModuleType("mmengine.logging.history_buffer")
    HistoryBuffer.__module__ = module.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    for parent in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    state = random_state(faster_rcnn())
    record = {"meta": {"message_hub": {"loss": HistoryBuffer()}}, "state_dict": state}
    torch.save(record, tmp_path / "w.pth")
    built.clear()
    for name in ("mmengine", "mmengine.logging", module.__name__):
        monkeypatch.delitem(sys.modules, name)
    arch = "faster-rcnn_r50_fpn_1x_coco"
    code, out = invoke("convert", tmp_path / "w.pth", "--from", "mmdet", "--arch", arch,
                       "--out", tmp_path / "c.pt")  # fmt: skip
    assert code == 0, out
    assert built == []
    code, out = invoke("convert", tmp_path / "w.pth", "--from", "torchvision", "--arch",
                       "fasterrcnn_resnet50_fpn", "--out", tmp_path / "d.pt")  # fmt: skip
    one_line_error(code, out, "w.pth: an MMDetection checkpoint", "not --from torchvision")
    code, out = invoke("convert", tmp_path / "w.pth", "--from", "mmdet", "--arch",
                       "retinanet_r50_fpn_1x_coco", "--out", tmp_path / "e.pt")  # fmt: skip
    one_line_error(code, out, "w.pth: not mmdet's retinanet_r50_fpn_1x_coco", "missing")
