import pytest
import torch

from podkit.ops import (
    BoxCoder,
    box_area,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
    size_bucket,
)


def random_boxes(n, size=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = (
        torch.rand(n, 2, generator=g) * size / 2 + 2.0
    )  # side ratios < 62.5: inside the coder clamp
    return torch.cat([xy, xy + wh], dim=1)


def test_box_iou_matches_pairwise_formula():
    a, b = random_boxes(7, seed=1), random_boxes(5, seed=2)
    iou = box_iou(a, b)
    for i in range(7):
        for j in range(5):
            ix = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            iy = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = ix * iy
            union = (
                (a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
                + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
                - inter
            )
            assert iou[i, j].item() == pytest.approx(float(inter / union), abs=1e-6)


def test_box_iou_degenerate_boxes_give_zero_not_nan():
    a = torch.tensor([[5.0, 5, 5, 5]])
    assert box_iou(a, a).item() == 0.0
    assert box_area(torch.tensor([[3.0, 3, 1, 1]])).item() == 0.0


def test_clip_and_remove_small():
    boxes = torch.tensor([[-5.0, -3, 20, 30], [10, 10, 10.5, 40]])
    clipped = clip_boxes_to_image(boxes, (25, 15))
    assert clipped.tolist() == [[0, 0, 15, 25], [10, 10, 10.5, 25]]
    assert remove_small_boxes(clipped, 1.0).tolist() == [0]


def test_size_bucket_uses_coco_thresholds():
    side = torch.tensor([31.9, 32.0, 95.9, 96.0])
    boxes = torch.stack([torch.zeros(4), torch.zeros(4), side, side], dim=1)
    assert size_bucket(boxes).tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_round_trip(weights):
    coder = BoxCoder(weights)
    ref, gt = random_boxes(50, seed=3).double(), random_boxes(50, seed=4).double()
    assert torch.allclose(coder.decode(coder.encode(gt, ref), ref), gt, atol=1e-9)
    ref32, gt32 = ref.float(), gt.float()
    assert torch.allclose(coder.decode(coder.encode(gt32, ref32), ref32), gt32, atol=1e-3)


def test_box_coder_clamps_scale_and_decodes_class_specific():
    coder = BoxCoder()
    ref = torch.tensor([[0.0, 0, 10, 10]])
    huge = torch.tensor([[0.0, 0, 100.0, 100.0, 0, 0, 0, 0]])
    out = coder.decode(huge, ref)
    assert out.shape == (1, 8)
    assert torch.isfinite(out).all()
    assert (out[0, 2] - out[0, 0]).item() == pytest.approx(10 * 1000 / 16, rel=1e-4)
    assert out[0, 4:].tolist() == [0, 0, 10, 10]
