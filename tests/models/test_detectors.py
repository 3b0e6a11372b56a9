import pytest
import torch

from podkit.models import (
    ARCHS,
    DetectorOutput,
    ImageBatch,
    ModelConfig,
    build_detector,
    tiny_model_config,
)


def two_images():
    images = [torch.rand(3, 96, 128), torch.rand(3, 80, 112)]
    targets = [
        {
            "boxes": torch.tensor([[10.0, 12, 40, 50], [60, 20, 120, 90], [5, 60, 20, 75]]),
            "labels": torch.tensor([0, 2, 1]),
        },
        {"boxes": torch.tensor([[30.0, 10, 90, 70]]), "labels": torch.tensor([1])},
    ]
    return images, targets


@pytest.mark.parametrize("arch", ARCHS)
def test_train_step_eval_and_empty_targets(arch):
    model = build_detector(tiny_model_config(arch, 3))
    images, targets = two_images()
    model.train()
    out = model(images, targets)
    assert isinstance(out, DetectorOutput) and out.detections == []
    loss = sum(out.losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # per-level losses add up to the total of the head they describe
    levels = out.stats.level_losses
    if arch == "retinanet":
        assert levels["retinanet"].sum().item() == pytest.approx(loss.item(), rel=1e-4)
    else:
        rpn = out.losses["loss_rpn_cls"] + out.losses["loss_rpn_box"]
        assert levels["rpn"].sum().item() == pytest.approx(rpn.item(), rel=1e-4)
        rcnn = out.losses["loss_cls"] + out.losses["loss_box_reg"]
        assert levels["rcnn"].sum().item() == pytest.approx(rcnn.item(), rel=1e-4)
        assert len(out.stats.proposal_ious) == 2
        assert len(levels["rpn"]) == (5 if arch == "faster_rcnn_fpn" else 1)
        assert len(levels["rcnn"]) == (4 if arch == "faster_rcnn_fpn" else 1)  # P2-P5: no RoI on P6
        assert out.stats.pos_reg_targets.shape[1] == 4
    assert out.stats.reg_loss_by_size.shape == (3,)
    # an image without boxes trains as all negatives
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    out = model(images, empty)
    assert all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out.detections) == 2 and out.losses == {}
    for det in out.detections:
        assert det["boxes"].shape[1] == 4 and len(det["scores"]) == len(det["labels"]) <= 100


@pytest.mark.parametrize("arch", ARCHS)
def test_detections_are_in_original_image_coordinates(arch):
    model = build_detector(tiny_model_config(arch, 3)).eval()
    # lower the score threshold so an untrained model returns boxes
    if arch == "retinanet":
        model.config.score_threshold = 0.0
    else:
        model.roi_heads.config.score_threshold = 0.0
    image = torch.rand(3, 64, 96)
    batch = ImageBatch.from_tensors([image])
    batch.original_sizes = [(128, 192)]  # the loader had halved the image
    with torch.no_grad():
        det = model(batch).detections[0]
        det_fed = model([image]).detections[0]
    assert len(det["boxes"]) > 0
    assert torch.allclose(det["boxes"], det_fed["boxes"] * 2)
    assert det_fed["boxes"][:, 2].max() <= 96 and det_fed["boxes"][:, 3].max() <= 64


def test_level_weights_reweight_the_loss():
    model = build_detector(tiny_model_config("retinanet", 3)).train()
    images, targets = two_images()
    torch.manual_seed(1)
    base = model(images, targets)
    weights = torch.tensor([2.0, 1.0, 0.5, 1.0, 3.0])
    model.controls.level_weights["retinanet"] = weights
    torch.manual_seed(1)
    weighted = model(images, targets)
    expected = (base.stats.level_losses["retinanet"] * weights).sum()
    assert sum(weighted.losses.values()).item() == pytest.approx(expected.item(), rel=1e-4)


def test_faster_rcnn_trains_under_its_controls():
    """The losses follow the controls a method tunes: zero level weights silence a head, a
    huge SmoothL1 beta makes the R-CNN box loss ~0 (0.5 d^2 / beta), a threshold of 1 leaves
    only the GT rows positive."""
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    images, targets = two_images()
    base = model(images, targets).losses
    assert base["loss_rpn_cls"] > 0 and base["loss_box_reg"] > 0
    controls = model.controls
    controls.level_weights = {"rpn": torch.zeros(5), "rcnn": torch.zeros(4)}
    silent = model(images, targets).losses
    assert all(float(v.detach()) == 0 for v in silent.values())
    controls.level_weights = {"rpn": None, "rcnn": None}
    controls.rcnn_smooth_l1_beta = 1e9
    assert 0 < float(model(images, targets).losses["loss_box_reg"].detach()) < 1e-6
    positives = {}
    for threshold in (0.0, 1.0):  # every proposal positive; only the GT rows (not counted)
        controls.rcnn_iou_threshold = threshold
        positives[threshold] = len(model(images, targets).stats.pos_reg_targets)
    assert positives[0.0] > 0 and positives[1.0] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_overfits_two_images(arch):
    """30 steps on two images drive the training loss below half its start."""
    config = tiny_model_config(arch, 3)
    config.roi_heads.batch_size_per_image = 32  # C4 runs res5 on each sampled RoI: seconds
    model = build_detector(config).train()
    images, targets = two_images()
    params = [p for p in model.parameters() if p.requires_grad]
    # Adam: SGD needs hundreds of steps before RetinaNet's focal classification moves
    opt = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(30):
        loss = sum(model(images, targets).losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.5 * losses[0], losses


def test_build_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch: must be one of faster_rcnn_fpn"):
        build_detector(ModelConfig(arch="yolo"))


def test_training_without_targets_is_an_error():
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    with pytest.raises(ValueError, match="targets"):
        model([torch.rand(3, 64, 64)])


@pytest.mark.parametrize("arch", ARCHS)
def test_the_mode_alone_decides_losses_or_detections(arch):
    """One switch, as torchvision: eval gives the same detections with or without targets
    (and no losses); training needs targets."""
    model = build_detector(tiny_model_config(arch, 3)).eval()
    images, targets = two_images()
    with torch.no_grad():
        plain, with_targets = model(images), model(images, targets)
    assert with_targets.losses == {} and with_targets.stats.level_losses == {}
    assert len(plain.detections) == len(with_targets.detections) == 2
    for a, b in zip(plain.detections, with_targets.detections, strict=True):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    with pytest.raises(ValueError, match="training mode needs targets"):
        model.train()(images)


@pytest.mark.parametrize("extra", ["p6p7", "p6p7_c5", "p6p7_c5_linear"])
def test_retinanet_extra_levels_as_each_framework_builds_them(extra):
    """P6 from P5 or C5, P7 from P6 with or without a ReLU between, computed by hand."""
    import torch.nn.functional as F

    from podkit.models.fpn import FPN

    torch.manual_seed(0)
    fpn = FPN([8, 16], [16, 32], 4, extra)
    c4, c5 = torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)
    p4, p5, p6, p7 = fpn([c4, c5])
    source = c5 if "c5" in extra else p5
    expected6 = F.conv2d(source, fpn.p6.weight, fpn.p6.bias, stride=2, padding=1)
    into7 = expected6 if extra.endswith("linear") else F.relu(expected6)
    torch.testing.assert_close(p6, expected6)
    torch.testing.assert_close(p7, F.conv2d(into7, fpn.p7.weight, fpn.p7.bias, stride=2, padding=1))
