import json

import pytest
import torch

from podkit.data.loader import Batch
from podkit.models import ImageBatch, build_detector, tiny_model_config
from podkit.models.checkpoint import load_checkpoint
from podkit.models.output import TrainingStats
from podkit.train.hooks import TrainState
from podkit.train.loop import train
from podkit.train.methods.dst import DynamicScaleTraining, make_collage
from tests.conftest import tiny_config


def painted_batch(size, boxes_per_image, value):
    """Images of zeros with each box painted with `value` (one channel)."""
    h, w = size
    tensor = torch.zeros(len(boxes_per_image), 3, h, w)
    targets, meta = [], []
    for i, boxes in enumerate(boxes_per_image):
        for x1, y1, x2, y2 in boxes:
            tensor[i, 0, y1:y2, x1:x2] = value
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.arange(len(boxes)),
            }
        )
        meta.append({"image_id": 100 * value + i, "original_size": (h, w)})
    return Batch(
        ImageBatch(tensor, [(h, w)] * len(boxes_per_image), [(h, w)] * len(boxes_per_image)),
        targets,
        meta,
    )


@pytest.mark.parametrize("grid", [2, 3])
def test_collage_boxes_land_on_their_pixels(grid):
    sizes = [
        (64, 96),
        (96, 64),
        (64, 64),
        (128, 96),
        (64, 160),
        (96, 96),
        (64, 96),
        (80, 64),  # every box lies inside every image
        (128, 128),
    ]
    batches = [
        painted_batch(sizes[j], [[(8, 12, 40, 44)], [(20, 4, 60, 30)]], j + 1)
        for j in range(grid * grid)
    ]
    collage = make_collage(batches, grid)
    height, width = 64, 96  # the first batch's padded size
    assert collage.images.tensor.shape == (2, 3, height, width)
    for i, target in enumerate(collage.targets):
        image = collage.images.tensor[i, 0]
        assert len(target["boxes"]) == grid * grid
        for j, box in enumerate(target["boxes"].tolist()):
            x1, y1, x2, y2 = box
            inside = image[int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1]
            assert inside.numel() and bool((inside == j + 1).all()), (i, j)
            # no pixel of source j outside its box (one pixel of slack for nearest rounding)
            painted = torch.nonzero(image == j + 1)
            assert (
                painted[:, 0].min() >= y1 - 1
                and painted[:, 0].max() <= y2
                and painted[:, 1].min() >= x1 - 1
                and painted[:, 1].max() <= x2
            )
        assert target["labels"].tolist() == [0] * (grid * grid)
    assert collage.meta[0]["image_id"] == [100 * (j + 1) for j in range(grid * grid)]


def test_collage_drops_boxes_below_the_minimum_size():
    batches = [painted_batch((64, 64), [[(0, 0, 30, 30), (40, 40, 50, 50)]], 1) for _ in range(4)]
    collage = make_collage(batches, 2, min_box_size=10)  # 10 px boxes become 5 px
    assert len(collage.targets[0]["boxes"]) == 4
    # the shrunk boxes become ignore regions where they landed, one per quadrant
    ignore = collage.targets[0]["ignore"]
    cells = [(0, 0), (32, 0), (0, 32), (32, 32)]
    assert sorted(ignore.tolist()) == sorted([[x + 20, y + 20, x + 25, y + 25] for x, y in cells])


def stats(small, medium, large, cls=(0.0, 0.0, 0.0)):
    return TrainingStats(
        reg_loss_by_size=torch.tensor([small, medium, large]), cls_loss_by_size=torch.tensor(cls)
    )


def step(hook, s, iteration=1):
    state = TrainState(iteration, 10, None, draw_batch=None)
    hook.observe(state, s)
    hook.after_step(state)
    return state


def test_decision_rule_on_scripted_ratios():
    hook = DynamicScaleTraining(tau=0.1)
    assert hook.collage_next  # r_s starts at 0: the first batch is a collage
    for (s, m, large), collage in [
        ((1, 2, 7), True),
        ((2, 2, 6), False),
        ((0, 0, 0), True),
        ((0.5, 9, 0.5), True),
        ((3, 0, 1), False),
    ]:
        state = step(hook, stats(s, m, large))
        assert hook.collage_next is collage and state.metrics["dst_small_ratio"] == pytest.approx(
            s / (s + m + large) if s + m + large else 0
        )
    joint = DynamicScaleTraining(tau=0.1, feedback="joint")
    step(joint, stats(0.0, 1.0, 1.0, cls=(2.0, 1.0, 1.0)))  # (0 + 2) / (2 + 4) = 1/3
    assert joint.ratio == pytest.approx(1 / 3) and not joint.collage_next
    cls = DynamicScaleTraining(tau=0.1, feedback="cls")
    step(cls, stats(5.0, 0.0, 0.0, cls=(0.1, 0.9, 1.0)))
    assert cls.ratio == pytest.approx(0.05) and cls.collage_next
    always = DynamicScaleTraining(feedback="always")
    assert all(step(always, stats(9, 0, 0)) and always.collage_next for _ in range(3))
    draws = [DynamicScaleTraining(feedback="random", seed=3) for _ in range(2)]
    seq = [[step(h, stats(1, 1, 1)) and h.collage_next for _ in range(20)] for h in draws]
    assert seq[0] == seq[1] and 0 < sum(seq[0]) < 20
    with pytest.raises(ValueError, match="feedback"):
        DynamicScaleTraining(feedback="loss")
    with pytest.raises(ValueError, match="square"):
        DynamicScaleTraining(k=6)


def test_input_feedback_counts_small_boxes_of_the_batch():
    hook = DynamicScaleTraining(feedback="input", tau=0.3)
    hook.collage_next = False
    batch = painted_batch(
        (64, 64), [[(0, 0, 10, 10), (0, 0, 40, 40)], [(0, 0, 20, 20), (0, 0, 50, 60)]], 1
    )
    hook.before_step(TrainState(0, 10, None, draw_batch=None), batch)
    step(hook, stats(0, 0, 0))
    assert hook.ratio == pytest.approx(0.5) and not hook.collage_next


def test_small_loss_ratio_from_a_detector():
    model = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).train()
    images = [torch.rand(3, 128, 128)]
    small_only = [
        {
            "boxes": torch.tensor([[10.0, 10, 30, 30], [60, 60, 84, 80]]),
            "labels": torch.tensor([0, 1]),
        }
    ]
    out = model(images, small_only)
    assert out.stats.reg_loss_by_size[0] > 0 and out.stats.reg_loss_by_size[1:].sum() == 0
    hook = DynamicScaleTraining(tau=0.1)
    step(hook, out.stats)
    assert hook.ratio == 1.0 and not hook.collage_next


def test_state_round_trip():
    a = DynamicScaleTraining(feedback="random", seed=5)
    for _ in range(7):
        step(a, stats(1, 1, 1))
    b = DynamicScaleTraining(feedback="random", seed=99)
    b.load_state_dict(a.state_dict())
    assert [step(a, stats(1, 1, 1)) and a.collage_next for _ in range(10)] == [
        step(b, stats(1, 1, 1)) and b.collage_next for _ in range(10)
    ]


def test_training_with_dst_alone_and_with_dynamic_rcnn_on_gsl(synth_set, tmp_path):
    for name, methods, extra in (
        ("dst", "[{name: dst}]", "train.workers=1"),  # a worker prefetching 2k batches
        ("both", "[{name: dst, k: 9}, {name: dynamic_rcnn, interval: 2}]", "model.gsl=true"),
    ):
        run = tmp_path / name
        cfg = tiny_config(
            synth_set,
            f"methods={methods}",
            "data.val.ann=''",
            extra,
            max_iter=3,
        )
        train(cfg, run)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert lines[0]["dst_collage"] == 1  # the first batch is always a collage
        assert all("dst_small_ratio" in r for r in lines)
        collages = sum(r["dst_collage"] for r in lines)
        k = 9 if name == "both" else 4
        # every collage iteration drew k batches from the stream, a regular one 1
        assert load_checkpoint(run / "last.pt")["data_position"] == 3 + collages * (k - 1)
        if name == "both":
            assert "iou_threshold" in lines[-1]


def test_tau_auto_is_the_median_feedback_of_the_first_iterations():
    hook = DynamicScaleTraining(tau="auto", auto_iters=5)
    assert not hook.collage_next  # calibrating: regular batches
    shares = [0.3, 0.1, 0.5, 0.2, 0.4]  # median 0.3
    for k, share in enumerate(shares):
        state = step(hook, stats(share, 1 - share, 0.0))
        if k < len(shares) - 1:
            assert hook.tau is None and not hook.collage_next
    assert hook.tau == pytest.approx(0.3) and state.metrics["dst_tau"] == pytest.approx(0.3)
    assert not hook.collage_next  # 0.4 > tau
    step(hook, stats(0.2, 0.8, 0.0))
    assert hook.collage_next  # 0.2 <= tau
    resumed = DynamicScaleTraining(tau="auto", auto_iters=5)
    resumed.load_state_dict(hook.state_dict())
    assert resumed.tau == hook.tau and resumed.collage_next
    half = DynamicScaleTraining(tau="auto", auto_iters=5)
    for share in shares[:2]:
        step(half, stats(share, 1 - share, 0.0))
    again = DynamicScaleTraining(tau="auto", auto_iters=5)
    again.load_state_dict(half.state_dict())  # interrupted while calibrating
    for share in shares[2:]:
        step(again, stats(share, 1 - share, 0.0))
    assert again.tau == pytest.approx(0.3)
    with pytest.raises(ValueError, match="tau"):
        DynamicScaleTraining(tau="median")
    with pytest.raises(ValueError, match="auto"):
        DynamicScaleTraining(tau="auto", feedback="always")


def test_collage_cells_keep_each_images_aspect_ratio():
    """The canvas is the first batch's (64x128: cells 32x64). A square image, and a wide one
    padded square by its batch, go into their cells scaled by one factor each: their square
    objects stay square, and the padding of a batch never becomes image."""
    wide = painted_batch((64, 128), [[(16, 16, 48, 48)]], 1)
    square = painted_batch((128, 128), [[(32, 32, 96, 96)]], 2)
    padded = torch.zeros(1, 3, 128, 128)
    padded[..., :64, :] = painted_batch((64, 128), [[(16, 16, 48, 48)]], 3).images.tensor
    padded_wide = Batch(ImageBatch(padded, [(64, 128)], [(64, 128)]), wide.targets, wide.meta)
    collage = make_collage([wide, square, padded_wide, square], 2)
    boxes = collage.targets[0]["boxes"]
    sides = boxes[:, 2:] - boxes[:, :2]
    assert torch.allclose(sides[:, 0], sides[:, 1]), boxes  # every object stays square
    assert boxes[1].tolist() == [64 + 8, 8, 64 + 24, 24]  # the square image scaled 1/4
    assert boxes[2].tolist() == [8, 32 + 8, 24, 32 + 24]  # the padded wide one 1/2: its cell
    cell = collage.images.tensor[0, 0, :32, 64:]
    assert bool((cell[:, 32:] == 0).all())  # right of the square image: empty
    assert int((cell == 2).sum()) == 16 * 16
