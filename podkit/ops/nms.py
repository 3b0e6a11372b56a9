"""Non-maximum suppression: exact greedy NMS without a Python loop over boxes, and soft-NMS.

Greedy NMS keeps box i (in descending score order) iff no kept box before it overlaps it by
more than the threshold. Boxes are processed in blocks of `_BLOCK`: a block first drops
every box that an already kept box (of earlier blocks) suppresses, one vectorised IoU
test against the kept set only; inside the block, keep = not any_{j < i}(keep_j and S_ji)
is a triangular system whose unique solution the iteration "keep all, then re-apply"
reaches in as many rounds as the longest suppression chain (a handful in practice). The
result is the same kept set, in the same order, as the sequential algorithm, at a cost of
about N * kept + N * _BLOCK IoUs instead of N^2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from podkit.ops.boxes import box_iou

_BLOCK = 512
# Up to this many boxes batched_nms runs one NMS on group-shifted boxes; above, one per group.
_BATCHED_NMS_DENSE_LIMIT = 1000


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy NMS, in decreasing score order."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = boxes[order].float()
    keep = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    kept = torch.empty((0,), dtype=torch.int64, device=boxes.device)
    for start in range(0, len(order), _BLOCK):
        block = boxes[start : start + _BLOCK]
        candidates = torch.arange(len(block), device=boxes.device)
        if kept.numel():
            candidates = torch.where(~(box_iou(boxes[kept], block) > iou_threshold).any(dim=0))[0]
        if candidates.numel() == 0:
            continue
        cand_boxes = block[candidates]
        suppresses = torch.triu(box_iou(cand_boxes, cand_boxes) > iou_threshold, diagonal=1)
        alive = torch.ones(len(candidates), dtype=torch.bool, device=boxes.device)
        while True:
            # a box dies iff a currently alive, higher-scoring box overlaps it
            new_alive = ~(suppresses & alive[:, None]).any(dim=0)
            if torch.equal(new_alive, alive):
                break
            alive = new_alive
        chosen = start + candidates[alive]
        keep[chosen] = True
        kept = torch.cat([kept, chosen])
    return order[keep]


def _apart(boxes: Tensor, idxs: Tensor) -> Tensor:
    """Boxes shifted group by group so far apart that boxes of two groups never overlap."""
    return boxes + (idxs.to(boxes) * (boxes.max() - boxes.min() + 1))[:, None]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently per group `idxs` (class or level); indices by decreasing score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.shape[0] <= _BATCHED_NMS_DENSE_LIMIT:
        return nms(_apart(boxes, idxs), scores, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for group in torch.unique(idxs):
        members = torch.where(idxs == group)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


@torch.library.custom_op("podkit::nms", mutates_args=())
def detection_nms(
    boxes: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    score_threshold: float,
    max_output: int,
) -> Tensor:
    """NMS per group over the boxes scoring above `score_threshold`: kept indices by decreasing
    score, at most `max_output`. The detectors' one NMS step, eager and exported alike: a
    custom op, so an export keeps it as one node (ONNX NonMaxSuppression, podkit.export.wrap)
    and the boxes the eager code would drop become scores under the threshold, not a
    data-dependent filter."""
    candidates = torch.where(scores > score_threshold)[0]
    keep = batched_nms(boxes[candidates], scores[candidates], groups[candidates], iou_threshold)
    return candidates[keep[:max_output]]


@detection_nms.register_fake
def _detection_nms_fake(boxes, scores, groups, iou_threshold, score_threshold, max_output):
    count = torch.library.get_ctx().new_dynamic_size(max=max_output)
    return boxes.new_empty((count,), dtype=torch.int64)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "linear",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al. 2017): decay overlapping scores instead of removing boxes.

    linear: s *= 1 - IoU where IoU > iou_threshold; gaussian: s *= exp(-IoU^2 / sigma).
    Returns (indices into `boxes`, their decayed scores), in the order boxes were picked;
    boxes whose score falls below `score_threshold` are dropped. Sequential by nature: each
    pick changes the scores of the rest, so it loops over picks (one vectorised update each).
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'linear' or 'gaussian', got {method!r}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device), scores[:0]
    ious = box_iou(boxes, boxes)
    current = scores.clone().float()
    alive = current >= score_threshold
    picked, picked_scores = [], []
    for _ in range(n):
        if not bool(alive.any()):
            break
        i = int(torch.argmax(torch.where(alive, current, torch.full_like(current, -1.0))))
        picked.append(i)
        picked_scores.append(current[i].clone())
        alive[i] = False
        overlap = ious[i]
        if method == "linear":
            decay = torch.where(overlap > iou_threshold, 1.0 - overlap, torch.ones_like(overlap))
        else:
            decay = torch.exp(-(overlap * overlap) / sigma)
        current = torch.where(alive, current * decay, current)
        alive &= current >= score_threshold
    index = torch.tensor(picked, dtype=torch.int64, device=boxes.device)
    return index, torch.stack(picked_scores).to(scores.dtype)


def batched_soft_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "linear",
) -> tuple[Tensor, Tensor]:
    """Soft-NMS independently per group `idxs`: groups shifted apart have IoU 0 with each
    other, which decays no score (linear: not above the threshold; gaussian: exp(0) = 1)."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device), scores[:0]
    return soft_nms(_apart(boxes, idxs), scores, iou_threshold, sigma, score_threshold, method)
