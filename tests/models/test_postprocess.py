"""The detectors' post-processing (one traceable form, eager and exported alike) computes the
textbook steps: filter, then NMS per group, then the top detections. Each reference below
filters with Python indexing and suppresses with the brute-force sequential NMS per group."""

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from podkit.models import build_detector, tiny_model_config
from podkit.ops import clip_boxes_to_image
from tests.ops.nms_reference import nms_per_group


def assert_same_detections(det, boxes, scores, labels):
    torch.testing.assert_close(det["boxes"], boxes)
    torch.testing.assert_close(det["scores"], scores)
    assert det["labels"].tolist() == labels.tolist()


def random_boxes(n, g, size=200.0):
    xy = torch.rand(n, 2, generator=g) * size
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60], dim=1)


def test_rpn_proposals_are_topk_decode_clip_filter_nms_per_level():
    rpn = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).rpn.eval()
    g = torch.Generator().manual_seed(0)
    counts = [300, 120, 40]
    anchors = [random_boxes(n, g) for n in counts]
    logits = [torch.randn(n, generator=g) * 3 for n in counts]
    deltas = [torch.randn(n, 4, generator=g) for n in counts]
    deltas[0][:20, 2:] = -6.0  # boxes far under min_size: dropped
    size, pre_n, post_n = (150, 170), 100, 60
    proposals = rpn.propose_image(anchors, logits, deltas, size, pre_n, post_n)

    boxes_l, scores_l, levels_l = [], [], []
    for level, (a, s, d) in enumerate(zip(anchors, logits, deltas, strict=True)):
        top = s.argsort(descending=True)[:pre_n]
        boxes_l.append(clip_boxes_to_image(rpn.box_coder.decode(d[top], a[top]), size))
        scores_l.append(s[top])
        levels_l.append(torch.full((len(top),), level))
    boxes, scores, levels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(levels_l)
    side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    wide = torch.where(side >= rpn.config.min_size)[0]
    assert len(wide) < len(boxes)  # the filter is exercised
    keep = wide[nms_per_group(boxes[wide], scores[wide], levels[wide], rpn.nms_threshold)]
    torch.testing.assert_close(proposals, boxes[keep[:post_n]])


def test_rcnn_detections_are_threshold_nms_per_class_top_k():
    heads = build_detector(tiny_model_config("faster_rcnn_fpn", 3)).roi_heads.eval()
    g = torch.Generator().manual_seed(1)
    proposals = random_boxes(80, g)
    class_logits = torch.randn(80, 4, generator=g) * 2
    box_deltas = torch.randn(80, 12, generator=g) * 0.2
    box_deltas[:5, 2:4] = -10.0  # class 0 boxes of 5 proposals collapse under 0.01 px
    size = (180, 200)
    det = heads.postprocess_image(class_logits, box_deltas, proposals, size)

    cfg = heads.config
    scores = F.softmax(class_logits, -1)[:, :3].reshape(-1)
    boxes = clip_boxes_to_image(heads.box_coder.decode(box_deltas, proposals).reshape(-1, 4), size)
    labels = torch.arange(3).repeat(80)
    side = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    candidates = torch.where((scores > cfg.score_threshold) & (side >= 1e-2))[0]
    keep = candidates[
        nms_per_group(boxes[candidates], scores[candidates], labels[candidates], cfg.nms_threshold)
    ][: cfg.detections_per_image]
    assert len(keep) > 10
    assert_same_detections(det, boxes[keep], scores[keep], labels[keep])


@pytest.mark.parametrize("topk", [1000, 25])
def test_retinanet_detections_are_threshold_topk_nms_per_class(topk):
    model = build_detector(tiny_model_config("retinanet", 3)).eval()
    model.config = dataclasses.replace(model.config, topk_candidates=topk)
    g = torch.Generator().manual_seed(2)
    counts = [200, 60]
    anchors = [random_boxes(n, g) for n in counts]
    logits = [torch.randn(n, 3, generator=g) * 2 - 2 for n in counts]
    deltas = [torch.randn(n, 4, generator=g) * 0.2 for n in counts]
    size = (190, 210)
    det = model.postprocess_image(anchors, logits, deltas, size)

    cfg = model.config
    boxes_l, scores_l, labels_l = [], [], []
    for a, lg, d in zip(anchors, logits, deltas, strict=True):
        scores = torch.sigmoid(lg).reshape(-1)
        above = torch.where(scores > cfg.score_threshold)[0]  # the paper: threshold, then top-k
        above = above[scores[above].argsort(descending=True)[:topk]]
        boxes_l.append(model.box_coder.decode(d[above // 3], a[above // 3]))
        scores_l.append(scores[above])
        labels_l.append(above % 3)
    boxes = clip_boxes_to_image(torch.cat(boxes_l), size)
    scores, labels = torch.cat(scores_l), torch.cat(labels_l)
    keep = nms_per_group(boxes, scores, labels, cfg.nms_threshold)[: cfg.detections_per_image]
    assert len(keep) > 10
    assert_same_detections(det, boxes[keep], scores[keep], labels[keep])
