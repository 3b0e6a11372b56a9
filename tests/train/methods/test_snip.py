import json
import math

import pytest
import torch

from podkit.data.loader import Batch
from podkit.evaluation.evaluate import predict, predict_at
from podkit.evaluation.image_pyramid import PYRAMIDS, get_pyramid, keep_in_range, merge_detections
from podkit.models import ImageBatch, build_detector, tiny_model_config
from podkit.ops import box_iou
from podkit.train.hooks import TrainState
from podkit.train.loop import train
from podkit.train.methods import build_hooks
from podkit.train.methods.snip import SNIP, crop_to_chips, mark_invalid, resize_batch
from tests.conftest import arch_overrides, tiny_config
from tests.ops.nms_reference import direct_soft_nms


def square(cx, cy, side):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def batch_of(boxes_per_image, size=(100, 100), original=(100, 100)):
    """Random images as fed at `size`, their records `original` in size."""
    n = len(boxes_per_image)
    targets = [
        {
            "boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.arange(len(b)),
            "ignore": torch.zeros(0, 4),
        }
        for b in boxes_per_image
    ]
    meta = [{"image_id": i, "original_size": original} for i in range(n)]
    images = ImageBatch(torch.rand(n, 3, *size), [size] * n, [size] * n)
    return Batch(images, targets, meta)


def test_presets_keep_the_papers_ratios():
    coco, synth = PYRAMIDS["coco"], PYRAMIDS["synthetic"]
    assert [r.min_size for r in coco] == [1400, 800, 480]
    assert [r.train_range for r in coco] == [(0, 80), (40, 160), (120, math.inf)]
    for a, b in zip(coco, synth, strict=True):
        assert b.min_size / 256 == pytest.approx(a.min_size / 800, abs=0.01)
        assert b.train_range[1] / b.min_size == pytest.approx(a.train_range[1] / a.min_size, 0.01)
        assert b.test_range[0] / b.min_size == pytest.approx(a.test_range[0] / a.min_size, 0.01)
    with pytest.raises(ValueError, match="unknown pyramid"):
        get_pyramid("imagenet")
    with pytest.raises(ValueError, match="lo < hi"):
        get_pyramid([[100, 200, 50, 10]])


def test_valid_range_marking_in_original_pixels():
    # fed at 100 px from a 50 px original (x2); the resolution doubles again (x4 overall)
    sides = [8, 24, 36, 60]  # as fed; original 4, 12, 18, 30
    batch = batch_of([[square(50, 50, s) for s in sides]], original=(50, 50))
    hook = SNIP(pyramid=[[200, 1000, 10, 20]])
    out = hook.before_step(TrainState(0, 1, None, None), batch)
    target = out.targets[0]
    assert out.images.sizes == [(200, 200)] and out.images.tensor.shape[-2:] == (224, 224)
    # valid: originals 12 and 18, now x4 -> 48 and 72 px sides
    sides_now = (target["boxes"][:, 2] - target["boxes"][:, 0]).tolist()
    assert sides_now == pytest.approx([48, 72]) and target["labels"].tolist() == [1, 2]
    ignored = (target["ignore"][:, 2] - target["ignore"][:, 0]).tolist()
    assert sorted(ignored) == pytest.approx([16, 120])
    assert target["proposal_range"].tolist() == pytest.approx([40, 80])  # 10..20 x 4
    # boxes stayed on their objects: centres scale with the image
    assert target["boxes"][0, :2].tolist() == pytest.approx([100 - 24, 100 - 24])


def test_one_resolution_per_batch_where_an_image_has_a_valid_gt():
    """The paper's mini-batches hold one resolution: drawn among those where an image of the
    batch has a valid GT; an image without one there trains with its objects ignored."""
    small, large = square(30, 30, 10), square(50, 50, 80)
    hook = SNIP(pyramid=[[100, 1000, 0, 20], [50, 1000, 20, math.inf], [25, 1000, 500, 600]])
    state = TrainState(0, 1, None, None)
    seen = set()
    for _ in range(20):
        out = hook.before_step(state, batch_of([[small], [large]]))
        hook.after_step(state)
        resolution = state.metrics["snip_resolution"]
        assert len(set(resolution)) == 1 and resolution[0] in (100, 50)  # never the empty 25
        assert len(set(out.images.sizes)) == 1  # no padded mix of sizes
        seen.add(resolution[0])
        # the image invalid at the drawn resolution keeps its object as an ignore region
        assert sorted(len(t["boxes"]) for t in out.targets) == [0, 1]
        assert sum(len(t["ignore"]) for t in out.targets) == 1
    assert seen == {100, 50}


def test_mixed_resolutions_give_each_image_one_where_it_has_a_valid_gt():
    """mix_resolutions: each image of the batch at its own valid resolution."""
    small, large, edge = square(30, 30, 10), square(50, 50, 80), square(50, 50, 20)
    hook = SNIP(pyramid=[[100, 1000, 0, 20], [50, 1000, 20, math.inf]], seed=1,
                mix_resolutions=True)  # fmt: skip
    state = TrainState(0, 1, None, None)
    for _ in range(6):
        out = hook.before_step(state, batch_of([[small], [large]]))
        hook.after_step(state)
        assert state.metrics["snip_resolution"] == [100, 50]  # the only valid one of each
        assert [len(t["boxes"]) for t in out.targets] == [1, 1]
        assert state.metrics["snip_valid_objects"] == 2
        assert out.images.sizes == [(100, 100), (50, 50)]
    seen = set()
    for _ in range(20):  # valid at both (bounds included): both are drawn
        hook.before_step(state, batch_of([[edge]]))
        hook.after_step(state)
        seen.add(state.metrics["snip_resolution"][0])
    assert seen == {100, 50}


def test_the_default_pyramid_is_fitted_to_the_recipes_test_size(synth_set):
    cfg = tiny_config(synth_set)  # test size 128, loaded at 128
    hook = SNIP()
    notes = hook.setup(cfg)
    assert [r.min_size for r in hook.pyramid] == [256, 128, 64]  # fit:128
    assert notes and "upsampled to 256" in notes[0] and "data.min_size=[256]" in notes[0]
    cfg.data.min_size = [256]
    assert SNIP().setup(cfg) == []
    coco = get_pyramid("coco")
    assert coco[1].rpn_range == (0, 160)  # the paper's RPN at 800 px
    assert get_pyramid("synthetic")[1].rpn_range == pytest.approx((0, 160 * 256 / 800))


def test_rpn_range_gives_the_rpn_its_own_valid_gts():
    """The paper's 800 px RPN on [0, 160] while the R-CNN has [40, 160]: a GT under 40 px
    trains the RPN (its best anchor is a positive) and is an ignore region for the R-CNN."""
    tiny_box, mid = square(40, 40, 12), square(80, 80, 40)
    res = get_pyramid([[128, 1000, 20, 100, 0, 100]])[0]
    target = mark_invalid(
        {"boxes": torch.tensor([tiny_box, mid]), "labels": torch.tensor([0, 1])}, 1.0, res
    )
    assert target["boxes"].tolist() == [mid] and target["ignore"].tolist() == [tiny_box]
    assert target["rpn"]["boxes"].tolist() == [tiny_box, mid] and len(target["rpn"]["ignore"]) == 0
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    features = model.backbone(torch.rand(1, 3, 128, 128))
    anchors = torch.cat(
        model.rpn.anchor_generator(
            [f.shape[-2:] for f in features], model.backbone.strides, features[0].device
        )
    )
    best = box_iou(torch.tensor([tiny_box]), anchors)[0].argmax()
    for t, positive in (
        (target, True),
        ({k: v for k, v in target.items() if k != "rpn"}, False),
    ):
        seen = []
        sampler = model.rpn.sampler
        model.rpn.sampler = lambda labels, seen=seen, sampler=sampler: (
            seen.append(labels) or sampler(labels)
        )
        model.rpn(features, model.backbone.strides, [(128, 128)], [t])
        model.rpn.sampler = sampler
        assert (int(seen[0][best]) == 1) == positive


def test_paper_anchor_rule_excludes_positives_near_an_invalid_gt():
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    features = model.backbone(torch.rand(1, 3, 128, 128))
    anchors = torch.cat(
        model.rpn.anchor_generator(
            [f.shape[-2:] for f in features], model.backbone.strides, features[0].device
        )
    )
    # a valid GT on a square anchor near the centre, an invalid (larger) one over it
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    sides = anchors[:, 2:] - anchors[:, :2]
    square_ones = (sides[:, 0] == sides[:, 1]) & (sides[:, 0] >= 24)
    pick = torch.where(square_ones)[0][((centre[square_ones] - 64).abs().sum(1)).argmin()]
    valid = anchors[pick].tolist()
    side = valid[2] - valid[0]
    invalid = [valid[0], valid[1], valid[2] + 0.5 * side, valid[3] + 0.5 * side]
    res = get_pyramid([[128, 1000, 0.5 * side, 1.2 * side]])[0]
    raw = {"boxes": torch.tensor([valid, invalid]), "labels": torch.tensor([0, 1])}
    iou_valid = box_iou(anchors, torch.tensor([valid]))[:, 0]
    iou_invalid = box_iou(anchors, torch.tensor([invalid]))[:, 0]
    both = (iou_valid >= 0.7) & (iou_invalid > 0.3)
    assert both.any()
    labels = {}
    for rule in ("negatives", "paper"):
        target = mark_invalid(raw, 1.0, res, exclude=rule == "paper")
        seen = []
        sampler = model.rpn.sampler
        model.rpn.sampler = lambda x, seen=seen, sampler=sampler: seen.append(x) or sampler(x)
        model.rpn(features, model.backbone.strides, [(128, 128)], [target])
        model.rpn.sampler = sampler
        labels[rule] = seen[0]
    assert (labels["negatives"][both] == 1).all() and (labels["paper"][both] == -1).all()
    far = iou_invalid == 0
    assert torch.equal(labels["negatives"][far], labels["paper"][far])
    with pytest.raises(ValueError, match="anchor_rule"):
        SNIP(anchor_rule="all")


def test_rcnn_ignore_threshold_follows_the_heads_iou_threshold():
    """A proposal at IoU 0.6 to an invalid GT: ignored under a 0.5 head, a negative under a
    0.7 one (Dynamic R-CNN raises the threshold; what it calls negative is not ignored)."""
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    invalid = square(60, 60, 40)
    near = [40.0, 40.0, 80.0, 66.0]  # IoU 0.65 with the invalid GT
    assert 0.6 < float(box_iou(torch.tensor([near]), torch.tensor([invalid]))) < 0.7
    target = {"boxes": torch.tensor([square(20, 20, 10)]), "labels": torch.tensor([1]),
              "ignore": torch.tensor([invalid])}  # fmt: skip
    kept = {}
    for threshold in (0.5, 0.7):
        props, *_ = model.roi_heads.sample([torch.tensor([near])], [target], threshold)
        kept[threshold] = any(p.tolist() == pytest.approx(near) for p in props[0])
    assert kept == {0.5: False, 0.7: True}


def test_greedy_chips_cover_every_valid_object():
    corners = [square(30, 30, 20), square(270, 30, 20), square(30, 270, 20), square(270, 270, 20)]
    batch = batch_of([corners], size=(300, 300), original=(300, 300))
    out = crop_to_chips(batch, 128, 50, __import__("random").Random(0))
    assert len(out.targets) == 4 and out.images.sizes == [(128, 128)] * 4
    assert sum(len(t["boxes"]) for t in out.targets) == 4  # each object whole in some chip
    capped = crop_to_chips(batch, 128, 50, __import__("random").Random(0), max_chips=2)
    assert len(capped.targets) == 2


def test_fitted_pyramid_puts_valid_objects_at_20_to_100_px():
    pyramid = get_pyramid("fit:448")
    assert [r.min_size for r in pyramid] == [896, 448, 224]
    factors = [2.0, 1.0, 0.5]
    for k, (res, f) in enumerate(zip(pyramid, factors, strict=True)):
        lo, hi = res.train_range
        assert (lo * f, hi * f) == ((0 if k == 0 else 20), (math.inf if k == 2 else 100))
        assert res.test_range[0] <= lo and res.test_range[1] >= hi
    with pytest.raises(ValueError, match="fit:SIZE"):
        get_pyramid("fit:big")


def test_rpn_anchors_near_invalid_gts_are_neither_positive_nor_negative():
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    valid, invalid = square(40, 40, 24), square(90, 80, 50)
    target = {
        "boxes": torch.tensor([valid]),
        "labels": torch.tensor([0]),
        "ignore": torch.tensor([invalid]),
    }
    seen = []
    sampler = model.rpn.sampler
    model.rpn.sampler = lambda labels: seen.append(labels.clone()) or sampler(labels)
    features = model.backbone(torch.rand(1, 3, 128, 128))
    model.rpn(features, model.backbone.strides, [(128, 128)], [target])
    labels = seen[0]
    anchors = torch.cat(
        model.rpn.anchor_generator(
            [f.shape[-2:] for f in features], model.backbone.strides, features[0].device
        )
    )
    to_valid = box_iou(anchors, target["boxes"])[:, 0]
    to_invalid = box_iou(anchors, target["ignore"])[:, 0]
    near = (to_invalid > 0.3) & (to_valid < 0.3)
    assert near.sum() > 0 and (labels[near] == -1).all()
    assert (labels[to_valid >= 0.7] == 1).all()
    far = (to_invalid == 0) & (to_valid < 0.3)
    assert (labels[far] == 0).all()


def test_retinanet_ignores_anchors_on_invalid_gts_in_both_losses():
    model = build_detector(tiny_model_config("retinanet", 3)).train()
    features = model.backbone(torch.rand(1, 3, 128, 128))
    logits, deltas = model.head(features)
    anchors = model.anchor_generator(
        [f.shape[-2:] for f in features], model.backbone.strides, features[0].device
    )
    invalid = torch.tensor([square(64, 64, 60)])
    target = {
        "boxes": torch.tensor([square(20, 20, 16)]),
        "labels": torch.tensor([1]),
        "ignore": invalid,
    }
    all_anchors = torch.cat(anchors)
    near = box_iou(all_anchors, invalid)[:, 0] > 0.3
    far = (box_iou(all_anchors, invalid)[:, 0] == 0) & (
        box_iou(all_anchors, target["boxes"])[:, 0] < 0.4
    )
    assert near.any()

    def total(change):
        lg = [x.detach().clone() for x in logits]
        flat = torch.cat(lg, dim=1)
        flat[0, change] += 5.0
        split = list(torch.split(flat, [x.shape[1] for x in lg], dim=1))
        losses, _ = model.loss(anchors, split, [d.detach() for d in deltas], [target])
        return sum(losses.values()).item()

    base = total(torch.zeros_like(near))
    assert total(near) == pytest.approx(base, abs=1e-6)  # ignored anchors contribute nothing
    assert total(far) > base + 1e-3  # a negative anchor raised: the loss grows


def test_rcnn_drops_out_of_range_proposals_before_sampling():
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    model.roi_heads.sampler.batch_size_per_image = 1000  # keep everything
    proposals = torch.tensor([square(50, 50, s) for s in (6, 20, 30, 45, 90)])
    gt = torch.tensor([square(52, 52, 30)])
    target = {
        "boxes": gt,
        "labels": torch.tensor([2]),
        "ignore": torch.zeros(0, 4),
        "proposal_range": torch.tensor([16.0, 50.0]),
    }
    props, labels, *_ = model.roi_heads.sample([proposals], [target], 0.5)
    sides = sorted((props[0][:, 2] - props[0][:, 0]).tolist())
    assert sides == pytest.approx([20, 30, 30, 45])  # 6 and 90 dropped; the GT appended
    assert (labels == 2).sum() >= 2  # the 30 px proposal and the GT itself


def test_chips_keep_boxes_on_their_pixels():
    inside, cut = square(150, 150, 20), [170, 140, 260, 160]
    batch = batch_of([[inside, cut]], size=(300, 300), original=(300, 300))
    batch.images.tensor.zero_()
    x1, y1, x2, y2 = map(int, inside)
    batch.images.tensor[0, 0, y1:y2, x1:x2] = 1.0
    out = crop_to_chips(batch, 64, 50, __import__("random").Random(0))
    assert out.images.sizes == [(64, 64)]
    (box,) = out.targets[0]["boxes"].tolist()  # the cut box lost > half: now an ignore region
    bx1, by1, bx2, by2 = map(int, box)
    assert out.images.tensor[0, 0, by1:by2, bx1:bx2].min() == 1.0
    assert out.images.tensor[0, 0].sum() == 20 * 20
    assert len(out.targets[0]["ignore"]) == 1


def test_merge_matches_soft_nms_per_class_and_nms():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + 10 + torch.rand(30, 2, generator=g) * 30], dim=1)
    scores = torch.rand(30, generator=g)
    labels = torch.randint(0, 2, (30,), generator=g)
    dets = [
        {"boxes": boxes[:15], "scores": scores[:15], "labels": labels[:15]},
        {"boxes": boxes[15:], "scores": scores[15:], "labels": labels[15:]},
    ]
    merged = merge_detections(dets, "soft_nms_linear", 0.3, max_detections=1000)
    expected = []
    for c in (0, 1):
        idx = torch.where(labels == c)[0]
        picked = direct_soft_nms(boxes[idx], scores[idx], 0.3, 0.5, 0.001, "linear")
        expected += [(s, int(idx[i])) for i, s in picked]
    expected.sort(reverse=True)
    assert merged["scores"].tolist() == pytest.approx([s for s, _ in expected], abs=1e-6)
    assert merged["boxes"].tolist() == boxes[[i for _, i in expected]].tolist()
    top = merge_detections(dets, "soft_nms_gaussian", max_detections=5)
    assert len(top["scores"]) == 5 and (top["scores"][:-1] >= top["scores"][1:]).all()
    hard = merge_detections(dets, "nms", 0.5)
    for i in range(len(hard["boxes"])):  # brute force: no two kept boxes of a class overlap
        same = hard["labels"] == hard["labels"][i]
        iou = box_iou(hard["boxes"][i : i + 1], hard["boxes"][same])[0]
        assert (iou > 0.5).sum() == 1
    with pytest.raises(ValueError, match="merge must be"):
        merge_detections(dets, "wbf")


def test_keep_in_range_uses_sqrt_area():
    det = {
        "boxes": torch.tensor([square(50, 50, 10), [0, 0, 40, 10], square(50, 50, 30)]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([0, 1, 2]),
    }
    assert keep_in_range(det, (15, 25))["labels"].tolist() == [1]  # sqrt(400) = 20


def test_multiscale_inference_merges_every_resolution(synth_set):
    cfg = tiny_config(synth_set, "eval.snip=true", "eval.pyramid=synthetic", "eval.max_images=3")
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    for m in model.roi_heads.predictor.modules():  # spread scores: many detections per image
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.5)
    model.roi_heads.config.score_threshold = 0.0
    from podkit.data import load_dataset

    dataset = load_dataset(cfg.data.val)
    merged, ids = predict(model, dataset, cfg, "cpu")
    per_res = []
    for res in PYRAMIDS["synthetic"]:
        dets, ids_r = predict_at(model, dataset.records[:3], cfg, "cpu", res.min_size, res.max_size)
        assert ids_r == ids
        per_res.append([keep_in_range(d, res.test_range) for d in dets])
    for i in range(3):
        expected = merge_detections([p[i] for p in per_res], "soft_nms_linear", 0.3)
        assert torch.equal(merged[i]["boxes"], expected["boxes"])
        assert len(merged[i]["boxes"]) <= 100
    assert sum(len(p[0]["boxes"]) for p in per_res) > 0


def test_resize_batch_scales_boxes_with_the_image():
    batch = batch_of([[square(40, 60, 20)]], size=(100, 75), original=(200, 150))
    out, scales = resize_batch(batch, get_pyramid([[50, 1000, 0, 1000]])[0])
    assert out.images.sizes == [(67, 50)] and scales[0] == pytest.approx(1 / 3, abs=2e-3)
    assert out.targets[0]["boxes"][0].tolist() == pytest.approx(
        [30 * 50 / 75, 50 * 67 / 100, 50 * 50 / 75, 70 * 67 / 100]
    )


def test_state_round_trip_and_order_check():
    a = SNIP(pyramid="synthetic", seed=3)
    big = batch_of(
        [[square(50, 50, 40)], [square(30, 30, 10)]], size=(256, 256), original=(256, 256)
    )
    state = TrainState(0, 1, None, None)
    for _ in range(3):
        a.before_step(state, big)
    b = SNIP(pyramid="synthetic", seed=8)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    picks = []
    for hook in (a, b):
        seq = []
        for _ in range(5):
            hook.before_step(state, big)
            hook.after_step(state)
            seq.append(state.metrics["snip_resolution"])
        picks.append(seq)
    assert picks[0] == picks[1]
    with pytest.raises(ValueError, match="put snip after dst"):
        build_hooks([{"name": "snip"}, {"name": "dst"}])


@pytest.mark.filterwarnings("ignore:snip")
@pytest.mark.parametrize(
    "arch,methods",
    [
        ("faster_rcnn_fpn", "[{name: snip, pyramid: synthetic, chip_size: 160}]"),
        ("retinanet", "[{name: snip, pyramid: synthetic}]"),
        (
            "faster_rcnn_fpn",
            "[{name: dst}, {name: snip, pyramid: synthetic}, {name: rlo, interval: 2}]",
        ),
    ],
)
def test_training_step_with_snip_and_with_dst_and_rlo(synth_set, tmp_path, arch, methods):
    cfg = tiny_config(
        synth_set,
        *arch_overrides(arch),
        f"methods={methods}",
        "data.val.ann=''",
        "data.min_size=[160]",
        max_iter=3,
    )
    train(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert all(set(r["snip_resolution"]) <= {448, 256, 154} for r in lines)
    assert all(math.isfinite(r["loss"]) for r in lines)
    if "dst" in methods:
        assert lines[0]["dst_collage"] == 1 and "rlo_probs" in lines[-1]


@pytest.mark.filterwarnings("ignore:snip")
def test_snip_dst_rlo_resume_exactly(synth_set, tmp_path):
    from tests.conftest import CtrlCAt

    methods = "[{name: dst}, {name: snip, pyramid: synthetic, seed: 4}, {name: rlo, interval: 2}]"
    cfg = tiny_config(synth_set, f"methods={methods}", "data.val.ann=''", max_iter=5)
    train(cfg, tmp_path / "straight")
    interrupted = train(cfg, tmp_path / "resumed", hooks=[*build_hooks(cfg.methods), CtrlCAt(2)])
    assert interrupted.iteration == 2
    train(cfg, tmp_path / "resumed", resume=True)
    logs = [
        [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("straight", "resumed")
    ]
    for a, b in zip(*logs, strict=True):
        for key in (
            "snip_resolution",
            "snip_valid_objects",
            "dst_collage",
            "rlo_action",
            "rlo_probs",
        ):
            assert a[key] == b[key], (a["iter"], key)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
