"""Brute-force NMS and soft-NMS: the independent references podkit's NMS is tested against."""

import math

import torch


def pair_iou(a: list[float], b: list[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes, in Python floats (float64)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_force_nms(boxes, scores, threshold):
    """The textbook sequential algorithm, one box at a time."""
    b = boxes.tolist()
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(pair_iou(b[i], b[j]) <= threshold for j in keep):
            keep.append(i)
    return keep


def nms_per_group(boxes, scores, groups, threshold):
    """Indices kept by the brute force on each group alone, merged by decreasing score."""
    kept = []
    for g in groups.unique().tolist():
        members = torch.where(groups == g)[0]
        kept += [
            int(members[i]) for i in brute_force_nms(boxes[members], scores[members], threshold)
        ]
    return sorted(kept, key=lambda i: (-float(scores[i]), i))


def direct_soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method):
    """Bodla et al.'s Algorithm 1, written with Python floats."""
    b = boxes.tolist()
    s = [float(x) for x in scores]
    remaining = list(range(len(b)))
    picked = []
    remaining = [i for i in remaining if s[i] >= score_threshold]
    while remaining:
        m = max(remaining, key=lambda i: (s[i], -i))
        picked.append((m, s[m]))
        remaining.remove(m)
        for i in remaining:
            o = pair_iou(b[m], b[i])
            if method == "linear":
                s[i] *= (1 - o) if o > iou_threshold else 1.0
            else:
                s[i] *= math.exp(-o * o / sigma)
        remaining = [i for i in remaining if s[i] >= score_threshold]
    return picked
