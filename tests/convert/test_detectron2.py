"""Detectron2 model-zoo files: every tensor of the published layouts lands in exactly one
podkit tensor; the `.pkl` is read by an unpickler that admits arrays only; the two places
where podkit's tensors are not Detectron2's as they stand (BGR input, size-major anchors)
compute what Detectron2 computes.

The layouts are the state dicts of Detectron2's faster_rcnn_R_50_FPN_1x, faster_rcnn_R_50_C4_1x
and retinanet_R_50_FPN_1x as their modules define them (detectron2/modeling): ResNet
`stem.conv1` and `resN.i.{conv1,conv2,conv3,shortcut}` each with a FrozenBN `.norm`
(backbone/resnet.py; under `backbone.bottom_up` with an FPN, `backbone` alone in C4, whose
res5 is `roi_heads.res5`), `fpn_lateral{2..5}` / `fpn_output{2..5}` (backbone/fpn.py; 3..5 and
`top_block.p6` on C5 / `p7` for RetinaNet), StandardRPNHead `conv`, `objectness_logits`,
`anchor_deltas` (proposal_generator/rpn.py), FastRCNNConvFCHead `fc1`, `fc2` and
FastRCNNOutputLayers `cls_score` (81), `bbox_pred` (320), RetinaNetHead `cls_subnet.{0,2,4,6}`,
`bbox_subnet`, `cls_score` (9 x 80), `bbox_pred` (9 x 4)."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from podkit.convert import convert_weights
from podkit.convert.detectron2 import PIXEL_MEAN_BGR
from podkit.models.checkpoint import load_checkpoint, load_detector
from tests.conftest import invoke, one_line_error


def norm(name: str, channels: int) -> dict[str, tuple]:
    return {
        f"{name}.norm.{leaf}": (channels,)
        for leaf in ("weight", "bias", "running_mean", "running_var")
    }


def block(name: str, inp: int, planes: int, first: bool) -> dict[str, tuple]:
    keys = {f"{name}.conv1.weight": (planes, inp, 1, 1), **norm(f"{name}.conv1", planes),
            f"{name}.conv2.weight": (planes, planes, 3, 3), **norm(f"{name}.conv2", planes),
            f"{name}.conv3.weight": (planes * 4, planes, 1, 1), **norm(f"{name}.conv3", planes * 4)}  # fmt: skip
    if first:
        keys |= {
            f"{name}.shortcut.weight": (planes * 4, inp, 1, 1),
            **norm(f"{name}.shortcut", planes * 4),
        }
    return keys


def resnet(prefix: str, stages: int = 4) -> dict[str, tuple]:
    keys = {f"{prefix}stem.conv1.weight": (64, 3, 7, 7), **norm(f"{prefix}stem.conv1", 64)}
    inp = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        if stage < stages:
            for i in range(blocks):
                keys |= block(f"{prefix}res{stage + 2}.{i}", inp, planes, i == 0)
                inp = planes * 4
    return keys


def conv(name: str, out: int, inp: int, k: int) -> dict[str, tuple]:
    return {f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)}


def rpn(channels: int, anchors: int) -> dict[str, tuple]:
    head = "proposal_generator.rpn_head"
    return (conv(f"{head}.conv", channels, channels, 3) | conv(f"{head}.objectness_logits", anchors, channels, 1)
            | conv(f"{head}.anchor_deltas", 4 * anchors, channels, 1))  # fmt: skip


def predictor(features: int) -> dict[str, tuple]:
    p = "roi_heads.box_predictor"
    return {f"{p}.cls_score.weight": (81, features), f"{p}.cls_score.bias": (81,),
            f"{p}.bbox_pred.weight": (320, features), f"{p}.bbox_pred.bias": (320,)}  # fmt: skip


def faster_rcnn_fpn() -> dict[str, tuple]:
    keys = resnet("backbone.bottom_up.")
    for level, c in zip(range(2, 6), (256, 512, 1024, 2048), strict=True):
        keys |= conv(f"backbone.fpn_lateral{level}", 256, c, 1) | conv(
            f"backbone.fpn_output{level}", 256, 256, 3
        )
    keys |= rpn(256, 3) | predictor(1024)
    return keys | {"roi_heads.box_head.fc1.weight": (1024, 12544), "roi_heads.box_head.fc1.bias": (1024,),
                   "roi_heads.box_head.fc2.weight": (1024, 1024), "roi_heads.box_head.fc2.bias": (1024,)}  # fmt: skip


def faster_rcnn_c4() -> dict[str, tuple]:
    keys = resnet("backbone.", stages=3) | rpn(1024, 15) | predictor(2048)
    for i in range(3):
        keys |= block(f"roi_heads.res5.{i}", 1024 if i == 0 else 2048, 512, i == 0)
    return keys


def retinanet() -> dict[str, tuple]:
    keys = resnet("backbone.bottom_up.")
    for level, c in zip(range(3, 6), (512, 1024, 2048), strict=True):
        keys |= conv(f"backbone.fpn_lateral{level}", 256, c, 1) | conv(
            f"backbone.fpn_output{level}", 256, 256, 3
        )
    keys |= conv("backbone.top_block.p6", 256, 2048, 3) | conv("backbone.top_block.p7", 256, 256, 3)
    for i in (0, 2, 4, 6):
        keys |= conv(f"head.cls_subnet.{i}", 256, 256, 3) | conv(
            f"head.bbox_subnet.{i}", 256, 256, 3
        )
    return keys | conv("head.cls_score", 9 * 80, 256, 3) | conv("head.bbox_pred", 36, 256, 3)


LAYOUTS = {"faster_rcnn_R_50_FPN_1x": faster_rcnn_fpn, "faster_rcnn_R_50_C4_1x": faster_rcnn_c4,
           "retinanet_R_50_FPN_1x": retinanet}  # fmt: skip


def model_zoo_pkl(path, layout: dict[str, tuple]) -> dict[str, np.ndarray]:
    """A file as Detectron2's model zoo publishes it: a pickle of numpy arrays."""
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in layout.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    return arrays


@pytest.mark.parametrize("arch", LAYOUTS)
def test_every_tensor_lands_in_exactly_one_podkit_tensor(arch, tmp_path):
    """Matched by their values as multisets (conv1's channel flip and the anchor reordering
    move values, never change them): a bijection between the file's arrays and podkit's
    tensors, the normalisation's two buffers aside."""
    arrays = model_zoo_pkl(tmp_path / "w.pkl", LAYOUTS[arch]())
    convert_weights(tmp_path / "w.pkl", "detectron2", arch, tmp_path / "c.pt", log=lambda _: None)
    ours = load_checkpoint(tmp_path / "c.pt")["model"]
    by_values = {np.sort(v.ravel()).tobytes(): k for k, v in arrays.items()}
    assert len(by_values) == len(arrays)
    landed = [by_values.get(np.sort(v.numpy().ravel()).tobytes()) for k, v in ours.items()
              if not k.startswith("backbone.normalize.")]  # fmt: skip
    assert None not in landed and sorted(landed) == sorted(arrays)


def test_rgb_input_computes_detectron2s_bgr_stem(tmp_path):
    """Detectron2: conv1((BGR * 255 - PIXEL_MEAN) / 1); podkit: conv1'(normalize(RGB))."""
    arrays = model_zoo_pkl(tmp_path / "w.pkl", faster_rcnn_fpn())
    convert_weights(tmp_path / "w.pkl", "detectron2", "faster_rcnn_R_50_FPN_1x", tmp_path / "c.pt",
                    log=lambda _: None)  # fmt: skip
    model, _, _, _ = load_detector(tmp_path / "c.pt")
    rgb = torch.rand(1, 3, 64, 64)
    bgr255 = rgb.flip(1) * 255 - torch.tensor(PIXEL_MEAN_BGR).view(1, 3, 1, 1)
    theirs = F.conv2d(
        bgr255,
        torch.from_numpy(arrays["backbone.bottom_up.stem.conv1.weight"]),
        stride=2,
        padding=3,
    )
    ours = model.backbone.body.conv1(model.backbone.normalize(rgb))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-3)


def test_reordered_heads_score_the_same_anchor_boxes(tmp_path):
    """Detectron2's cell anchors run size-major (for size: for ratio); each podkit anchor
    (ratio-major) must get the row Detectron2 gives the same box."""
    arrays = model_zoo_pkl(tmp_path / "w.pkl", retinanet())
    convert_weights(tmp_path / "w.pkl", "detectron2", "retinanet_R_50_FPN_1x", tmp_path / "c.pt",
                    log=lambda _: None)  # fmt: skip
    model, _, _, _ = load_detector(tmp_path / "c.pt")
    sizes = [32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)]
    theirs = []  # detectron2/modeling/anchor_generator.py generate_cell_anchors
    for size in sizes:
        for ratio in (0.5, 1.0, 2.0):
            w = (size**2 / ratio) ** 0.5
            theirs.append([-w / 2, -ratio * w / 2, w / 2, ratio * w / 2])
    ours = model.anchor_generator.cell[0].tolist()
    cls = torch.from_numpy(arrays["head.cls_score.weight"]).reshape(9, 80, 256, 3, 3)
    box = torch.from_numpy(arrays["head.bbox_pred.weight"]).reshape(9, 4, 256, 3, 3)
    our_cls = model.head.cls_logits.weight.reshape(9, 80, 256, 3, 3)
    our_box = model.head.bbox_pred.weight.reshape(9, 4, 256, 3, 3)
    for j, anchor in enumerate(ours):
        k = min(range(9), key=lambda i: np.abs(np.subtract(theirs[i], anchor)).max())
        assert np.abs(np.subtract(theirs[k], anchor)).max() < 1e-4
        assert torch.equal(our_cls[j], cls[k]) and torch.equal(our_box[j], box[k])


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
    class RunsCode:
        def __reduce__(self):
            return (print, ("this pickle ran code",))

    with open(tmp_path / "hostile.pkl", "wb") as f:
        pickle.dump({"model": {"x": RunsCode()}}, f, protocol=2)
    args = ("--from", "detectron2", "--arch", "faster_rcnn_R_50_FPN_1x")
    code, out = invoke("convert", tmp_path / "hostile.pkl", *args, "--out", tmp_path / "a.pt")
    one_line_error(code, out, "hostile.pkl: a pickle that would run code (", "print)")
    assert "this pickle ran code" not in out
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps({"model": {"x": np.zeros(3)}}, protocol=2)[:40])
    code, out = invoke("convert", tmp_path / "cut.pkl", *args, "--out", tmp_path / "b.pt")
    one_line_error(code, out, "cut.pkl: not a readable Detectron2 .pkl")
    torch.save(
        {"meta": {}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "m.pth"
    )
    code, out = invoke("convert", tmp_path / "m.pth", *args, "--out", tmp_path / "c.pt")
    one_line_error(code, out, "m.pth: an MMDetection checkpoint", "not --from detectron2")
    model_zoo_pkl(tmp_path / "retina.pkl", retinanet())
    code, out = invoke("convert", tmp_path / "retina.pkl", *args, "--out", tmp_path / "d.pt")
    one_line_error(code, out, "retina.pkl: not detectron2's faster_rcnn_R_50_FPN_1x")
    assert not list(tmp_path.glob("*.pt"))


def test_pod_starts_from_detectron2s_c4_as_it_is(tmp_path):
    """POD's detector: a GSL network initialised from the converted C4 model (stride in the
    1x1 convs, RPN and res5 on res4) detects what the converted model detects."""
    from podkit.config import config_from_dict, to_dict
    from podkit.models import build_detector
    from podkit.train.loop import load_model_weights
    from tests.convert.conftest import assert_same_detections, inputs

    arrays = {k: inputs.tensor_for(k, s) for k, s in faster_rcnn_c4().items()}
    with open(tmp_path / "c4.pkl", "wb") as f:
        pickle.dump({"model": arrays}, f)
    convert_weights(tmp_path / "c4.pkl", "detectron2", "faster_rcnn_R_50_C4_1x", tmp_path / "c4.pt",
                    log=lambda _: None)  # fmt: skip
    # 100 proposals, not 1000: C4 runs res5 on each, half a minute per forward on a CPU
    model, cfg, _, _ = load_detector(tmp_path / "c4.pt", ["model.rpn.post_nms_top_n_test=100"])
    assert model.backbone.body.layer2[0].conv1.stride == (2, 2)
    gsl = build_detector(config_from_dict(to_dict(cfg), ["model.gsl=true"]).model)
    load_model_weights(gsl, tmp_path / "c4.pt")
    assert_same_detections(model, gsl, 2, 192, 256, least=6)
