"""Brute-force NMS and soft-NMS: the independent references podkit's NMS is tested against."""

import math

import torch

from podkit.ops import box_iou


def brute_force_nms(boxes, scores, threshold):
    """The textbook sequential algorithm, one box at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if all(box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= threshold for j in keep):
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

    def iou(i, j):
        ix = max(0.0, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
        iy = max(0.0, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
        inter = ix * iy
        area = lambda k: (b[k][2] - b[k][0]) * (b[k][3] - b[k][1])  # noqa: E731
        return inter / (area(i) + area(j) - inter)

    remaining = [i for i in remaining if s[i] >= score_threshold]
    while remaining:
        m = max(remaining, key=lambda i: (s[i], -i))
        picked.append((m, s[m]))
        remaining.remove(m)
        for i in remaining:
            o = iou(m, i)
            if method == "linear":
                s[i] *= (1 - o) if o > iou_threshold else 1.0
            else:
                s[i] *= math.exp(-o * o / sigma)
        remaining = [i for i in remaining if s[i] >= score_threshold]
    return picked
