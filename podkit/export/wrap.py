"""Deployable form of a podkit detector: one image tensor in, flat tensors out.

All the special cases of tracing live here, none in the models:

- NMS and RoIAlign are `torch.library` custom ops (`podkit::nms`, `podkit::roi_align`) whose
  eager implementation is podkit's own op and whose ONNX translation is the standard
  `NonMaxSuppression` / `RoiAlign` (half_pixel) node (`ONNX_TRANSLATIONS`), so every backend
  that reads ONNX runs them natively.
- Data-dependent filtering becomes masking: a box that the eager code would drop (too small,
  under the score threshold) gets a score the NMS node's `score_threshold` rejects, so the
  graph keeps static shapes up to the NMS outputs and computes the same detections.
- Multi-level RoIAlign pools every RoI from every level and selects its level with `where`
  (a handful of small RoiAligns instead of a data-dependent split).
- GSL convs run through `grid_sample_conv`, the direct definition: one fixed graph for any
  learned scale, where the fast blend picks its convs by the value of the scales.
- A batch of N images (N fixed at export): the backbone runs on the batch, the
  post-processing on each image in turn (unrolled in the graph; NMS never mixes images).
  The images are RGB in [0, 1], (N, 3, H, W), H and W multiples of 32; boxes come back in
  their pixels.

With `nms=True` the outputs are `boxes` (N, D, 4), `scores` (N, D), `labels` (N, D), each
image's rows padded with zeros to D = `max_detections`, and `num_detections` (N,), each
image's count. With `nms=False` (batch 1 only) they are the raw head outputs: RetinaNet
`logits` (A, C), `deltas` (A, 4), `anchors` (A, 4); Faster R-CNN `class_logits` (P, C + 1),
`box_deltas` (P, 4 C), `proposals` (P, 4) (the RPN's own NMS stays in the graph: a
two-stage detector has no proposals without it).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from podkit.models.faster_rcnn import FasterRCNN
from podkit.models.gsl import GlobalScaleConv, grid_sample_conv
from podkit.models.retinanet import RetinaNet
from podkit.models.rpn import flatten_level
from podkit.ops import clip_boxes_to_image
from podkit.ops.nms import nms as greedy_nms
from podkit.ops.roi_align import roi_align as podkit_roi_align

SIZE_MULTIPLE = 32


@torch.library.custom_op("podkit::nms", mutates_args=())
def nms_op(
    boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_output: int
) -> Tensor:
    """Greedy NMS over the boxes scoring above `score_threshold`: kept indices by decreasing
    score, at most `max_output` (ONNX NonMaxSuppression with one batch and one class)."""
    candidates = torch.where(scores > score_threshold)[0]
    keep = greedy_nms(boxes[candidates], scores[candidates], iou_threshold)
    return candidates[keep[:max_output]]


@nms_op.register_fake
def _nms_fake(boxes, scores, iou_threshold, score_threshold, max_output):
    count = torch.library.get_ctx().new_dynamic_size(max=max_output)
    return boxes.new_empty((count,), dtype=torch.int64)


@torch.library.custom_op("podkit::roi_align", mutates_args=())
def roi_align_op(
    features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int
) -> Tensor:
    """RoIAlign with aligned=True (ONNX RoiAlign, coordinate_transformation_mode half_pixel)."""
    return podkit_roi_align(features, rois, output_size, spatial_scale, sampling_ratio)


@roi_align_op.register_fake
def _roi_align_fake(features, rois, output_size, spatial_scale, sampling_ratio):
    return features.new_empty((rois.shape[0], features.shape[1], output_size, output_size))


def _onnx_nms(boxes, scores, iou_threshold: float, score_threshold: float, max_output: int):
    from onnxscript import opset18 as op

    selected = op.NonMaxSuppression(
        op.Unsqueeze(boxes, [0]),
        op.Unsqueeze(scores, [0, 1]),
        op.Constant(value_ints=[max_output]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )  # (K, 3): batch, class, box
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


def _onnx_roi_align(features, rois, output_size: int, spatial_scale: float, sampling_ratio: int):
    from onnxscript import opset18 as op

    batch = op.Cast(op.Reshape(op.Slice(rois, [0], [1], [1]), [-1]), to=7)  # int64
    return op.RoiAlign(
        features,
        op.Slice(rois, [1], [5], [1]),
        batch,
        mode="avg",
        output_height=output_size,
        output_width=output_size,
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
        coordinate_transformation_mode="half_pixel",
    )


ONNX_TRANSLATIONS = {nms_op._opoverload: _onnx_nms, roi_align_op._opoverload: _onnx_roi_align}


class GridSampleScaleConv(nn.Module):
    """A GlobalScaleConv computed through `grid_sample_conv`: the same function, one graph."""

    def __init__(self, conv: GlobalScaleConv) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        return grid_sample_conv(x, c.weight, c.bias, c.scales(x), c.stride)


def _swap_gsl(model: nn.Module) -> nn.Module:
    """A copy of `model` whose GSL convs go through grid_sample (the original is untouched)."""
    if not any(isinstance(m, GlobalScaleConv) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GlobalScaleConv):
                setattr(module, name, GridSampleScaleConv(child))
    return model


def _batched(boxes: Tensor, groups: Tensor) -> Tensor:
    """Shift each group's boxes apart so one NMS acts per group (classes, levels)."""
    span = boxes.max() - boxes.min() + 1
    return boxes + (groups.to(boxes) * span)[:, None]


def _pad(x: Tensor, rows: int) -> Tensor:
    """Pad the first dimension with zeros up to `rows` (a concat and a static slice: no shape
    arithmetic, which TVM's ONNX importer cannot follow through a data-dependent size)."""
    return torch.cat([x, x.new_zeros((rows, *x.shape[1:]))])[:rows]


class ExportWrapper(nn.Module):
    """A batch of images (N, 3, H, W) -> flat tensors (see the module docstring)."""

    def __init__(self, model: nn.Module, nms: bool = True, max_detections: int = 100) -> None:
        super().__init__()
        if not isinstance(model, (FasterRCNN, RetinaNet)):
            raise TypeError(f"cannot export a {type(model).__name__}: not a podkit detector")
        self.model = _swap_gsl(model).eval()
        self.nms = nms
        self.max_detections = max_detections

    @property
    def output_names(self) -> list[str]:
        if self.nms:
            return ["boxes", "scores", "labels", "num_detections"]
        if isinstance(self.model, RetinaNet):
            return ["logits", "deltas", "anchors"]
        return ["class_logits", "box_deltas", "proposals"]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        size = (images.shape[-2], images.shape[-1])
        model = self.model
        features = model.backbone(images)
        # the heads' convs run on the whole batch; only the post-processing is per image
        if isinstance(model, RetinaNet):
            post, head, generator = self._retinanet, model.head, model.anchor_generator
        else:
            post, head, generator = self._faster_rcnn, model.rpn.head, model.rpn.anchor_generator
        logits, deltas = head(features)
        anchors = self._anchors(generator, features, model.backbone.strides)

        def image(i: int) -> tuple[Tensor, ...]:
            one = ([x[i : i + 1] for x in xs] for xs in (features, logits, deltas))
            return post(*one, anchors, size)

        if not self.nms:
            if images.shape[0] != 1:
                raise ValueError("raw outputs (nms=False) are exported for batch 1 only")
            return image(0)
        # each image's detections, then (N, D, ...) and the counts (N,)
        per_image = zip(*(image(i) for i in range(images.shape[0])), strict=True)
        return tuple(torch.stack(x) if k < 3 else torch.cat(x) for k, x in enumerate(per_image))

    def _anchors(self, generator, features: list[Tensor], strides: list[int]) -> list[Tensor]:
        return [
            generator.compute(level, f.shape[-2:], stride, f.device)
            for level, (f, stride) in enumerate(zip(features, strides, strict=True))
        ]

    def _detections(self, boxes: Tensor, scores: Tensor, labels: Tensor, cfg) -> tuple:
        keep = nms_op(
            _batched(boxes, labels),
            scores,
            cfg.nms_threshold,
            cfg.score_threshold,
            min(cfg.detections_per_image, self.max_detections),
        )
        return (
            _pad(boxes[keep], self.max_detections),
            _pad(scores[keep], self.max_detections),
            _pad(labels[keep], self.max_detections),
            (keep >= 0).sum().reshape(1),  # the count, from data rather than from a shape
        )

    def _retinanet(self, features, logits, deltas, anchors, size) -> tuple[Tensor, ...]:
        """One image's detections from its head outputs (its features are not needed)."""
        model = self.model
        cfg = model.config
        if not self.nms:
            return torch.cat(logits, 1)[0], torch.cat(deltas, 1)[0], torch.cat(anchors)
        boxes_l, scores_l, labels_l = [], [], []
        c = model.num_classes
        for a, lg, d in zip(anchors, logits, deltas, strict=True):
            scores = torch.sigmoid(lg[0]).reshape(-1)
            # the top candidates; those under the score threshold fall at the NMS node
            top, idx = scores.topk(torch.sym_min(cfg.topk_candidates, scores.shape[0]))
            # indices are >= 0, so truncation is floor division; `//` would export a sign fix-up
            # (Equal on booleans) that TVM's LLVM codegen rejects
            anchor_idx = torch.div(idx, c, rounding_mode="trunc")
            boxes_l.append(model.box_coder.decode(d[0, anchor_idx], a[anchor_idx]))
            scores_l.append(top)
            labels_l.append(idx - anchor_idx * c)
        boxes = clip_boxes_to_image(torch.cat(boxes_l), size)
        return self._detections(boxes, torch.cat(scores_l), torch.cat(labels_l), cfg)

    def _faster_rcnn(self, features, logits, deltas, anchors, size) -> tuple[Tensor, ...]:
        """One image's detections from its features and RPN head outputs."""
        model = self.model
        strides = model.backbone.strides
        proposals = self._proposals(logits, deltas, anchors, size)
        heads = model.roi_heads
        features, strides = features[: heads.pool_levels], strides[: heads.pool_levels]
        rois = torch.cat([proposals.new_zeros((proposals.shape[0], 1)), proposals], dim=1)
        pooler = heads.pooler
        levels = pooler.levels(proposals, strides)
        pooled = None
        for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
            x = roi_align_op(feature, rois, pooler.output_size, 1.0 / stride, pooler.sampling_ratio)
            pooled = (
                x
                if pooled is None
                else torch.where((levels == level)[:, None, None, None], x, pooled)
            )
        class_logits, box_deltas = heads.predictor(heads.box_head(pooled))
        if not self.nms:
            return class_logits, box_deltas, proposals
        cfg = heads.config
        c = heads.num_classes
        scores = F.softmax(class_logits, dim=-1)[:, :c].reshape(-1)
        boxes = clip_boxes_to_image(
            heads.box_coder.decode(box_deltas, proposals).reshape(-1, 4), size
        )
        # class of each (proposal, class) pair, by broadcasting (a `repeat` by the proposal
        # count would be shape arithmetic on a data-dependent size)
        labels = (
            torch.zeros_like(class_logits[:, :c], dtype=torch.int64) + torch.arange(c)
        ).reshape(-1)
        wide = ((boxes[:, 2] - boxes[:, 0]) >= 1e-2) & ((boxes[:, 3] - boxes[:, 1]) >= 1e-2)
        scores = torch.where(wide, scores, torch.zeros_like(scores))  # <= threshold: dropped
        return self._detections(boxes, scores, labels, cfg)

    def _proposals(self, logits, deltas, anchors, size) -> Tensor:
        """The RPN's `propose` for one image, with its filtering as masking."""
        rpn = self.model.rpn
        cfg = rpn.config
        boxes_l, scores_l, levels_l = [], [], []
        for level, (a, lg, d) in enumerate(zip(anchors, logits, deltas, strict=True)):
            s = flatten_level(lg, 1)[0, :, 0]
            top, idx = s.topk(torch.sym_min(cfg.pre_nms_top_n_test, s.shape[0]))
            d = flatten_level(d, 4)[0]
            boxes_l.append(rpn.box_coder.decode(d[idx], a[idx]))
            scores_l.append(top)
            levels_l.append(torch.full_like(idx, level))
        boxes = clip_boxes_to_image(torch.cat(boxes_l), size)
        scores, levels = torch.cat(scores_l), torch.cat(levels_l)
        wide = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_size) & (
            (boxes[:, 3] - boxes[:, 1]) >= cfg.min_size
        )
        # objectness logits -> softplus: positive and in the same order (TVM's NMS mishandles
        # scores <= 0), so the boxes the eager code drops can sit at -1 under a threshold of 0
        scores = torch.where(wide, F.softplus(scores), torch.full_like(scores, -1.0))
        keep = nms_op(
            _batched(boxes, levels), scores, rpn.nms_threshold, 0.0, cfg.post_nms_top_n_test
        )
        # anchors centred in the image survive clipping, so there is always a proposal; saying
        # so lets the exporter trace the C4 head's convs over a data-dependent RoI count
        torch._check(keep.shape[0] > 0)
        return boxes[keep]


def check_input_size(height: int, width: int) -> None:
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or min(height, width) < 64:
        raise ValueError(
            f"input size {height}x{width}: height and width must be multiples of "
            f"{SIZE_MULTIPLE} and at least 64 (the detector's strides need it)"
        )
