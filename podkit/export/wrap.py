"""Deployable form of a podkit detector: one image tensor in, flat tensors out.

The wrapper runs the detector's own inference (`detect`: the same code as eager evaluation,
written in a traceable form in the models) and adds only what is about export:

- NMS and RoIAlign are `torch.library` custom ops of podkit.ops (`podkit::nms`,
  `podkit::roi_align`); here is their ONNX translation, the standard `NonMaxSuppression` /
  `RoiAlign` (half_pixel) node (`ONNX_TRANSLATIONS`), so every backend that reads ONNX runs
  them natively.
- GSL convs run through `grid_sample_conv`, the direct definition: one fixed graph for any
  learned scale, where the fast blend picks its convs by the value of the scales.
- The norm after an FD split conv is folded into its parts: onnxruntime folds a
  BatchNormalization into the Conv before it, but not through the parts' Concat, where it
  stays one more pass over the activations (and a float island in an INT8 graph).
- Flat outputs: a batch of N images, RGB in [0, 1], (N, 3, H, W), H and W multiples of 32;
  boxes come back in their pixels. N is fixed at export (each image's post-processing
  unrolled in the graph), or with `any_batch` free: the backbone runs on the whole batch and
  the rest, image by image, in an ONNX `Scan` (torch's `scan`), the one loop an exported
  graph can run a data-dependent number of times.

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
from torch._higher_order_ops.scan import scan

from podkit.models.faster_rcnn import FasterRCNN
from podkit.models.gsl import GlobalScaleConv, grid_sample_conv
from podkit.models.resnet import FrozenBatchNorm2d
from podkit.models.retinanet import RetinaNet
from podkit.models.split_conv import SplitConv, fold_norm
from podkit.ops.nms import detection_nms
from podkit.ops.roi_align import roi_align_op

SIZE_MULTIPLE = 32


def _onnx_nms(boxes, scores, groups, iou_threshold: float, score_threshold: float, max_output: int):
    from onnxscript import opset18 as op

    # groups apart: each box shifted by group * (coordinate span + 1), so NMS acts per group
    span = op.Add(
        op.Sub(op.ReduceMax(boxes, keepdims=0), op.ReduceMin(boxes, keepdims=0)),
        op.Constant(value_float=1.0),
    )
    shift = op.Mul(op.Cast(groups, to=1), span)  # float32
    selected = op.NonMaxSuppression(
        op.Unsqueeze(op.Add(boxes, op.Unsqueeze(shift, [1])), [0]),
        op.Unsqueeze(scores, [0, 1]),
        op.Constant(value_ints=[max_output]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
    )  # (K, 3): batch, class, box
    return op.Reshape(op.Slice(selected, [2], [3], [1]), [-1])


def _onnx_roi_align(
    features, rois, output_size: int, spatial_scale: float, sampling_ratio: int, aligned: bool
):
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
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )


ONNX_TRANSLATIONS = {
    detection_nms._opoverload: _onnx_nms,
    roi_align_op._opoverload: _onnx_roi_align,
}


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


def _pad(x: Tensor, rows: int) -> Tensor:
    """Pad the first dimension with zeros up to `rows` (a concat and a static slice: no shape
    arithmetic, which TVM's ONNX importer cannot follow through a data-dependent size)."""
    return torch.cat([x, x.new_zeros((rows, *x.shape[1:]))])[:rows]


def _norm_after(module: nn.Module, name: str, child: nn.Module) -> nn.Module | None:
    """The frozen/eval norm `bnK` that follows `child` = `convK` if that is a SplitConv (the
    ResNet blocks' naming), else None."""
    if not (isinstance(child, SplitConv) and name.startswith("conv")):
        return None
    norm = getattr(module, "bn" + name[4:], None)
    return norm if isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)) else None


def _fold_split_conv_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` whose split convs carry their norms (`fold_norm`; the original is
    untouched)."""
    if not any(_norm_after(m, n, c) for m in model.modules() for n, c in m.named_children()):
        return model
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            norm = _norm_after(module, name, child)
            if norm is not None:
                fold_norm(child, norm)
                setattr(module, "bn" + name[4:], nn.Identity())
    return model


class ExportWrapper(nn.Module):
    """A batch of images (N, 3, H, W) -> flat tensors (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        nms: bool = True,
        max_detections: int = 100,
        any_batch: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model, (FasterRCNN, RetinaNet)):
            raise TypeError(f"cannot export a {type(model).__name__}: not a podkit detector")
        if any_batch and not nms:
            raise ValueError("raw outputs (nms=False) are exported for batch 1 only")
        self.model = _fold_split_conv_norms(_swap_gsl(model)).eval()
        if any_batch:
            # tracing `scan` with parameters that require grad fails (torch 2.13): a frozen copy
            self.model = copy.deepcopy(self.model).requires_grad_(False)
        self.nms = nms
        self.max_detections = max_detections
        self.any_batch = any_batch

    @property
    def output_names(self) -> list[str]:
        if self.nms:
            return ["boxes", "scores", "labels", "num_detections"]
        if isinstance(self.model, RetinaNet):
            return ["logits", "deltas", "anchors"]
        return ["class_logits", "box_deltas", "proposals"]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        features = model.backbone(images)
        size = (images.shape[-2], images.shape[-1])
        if self.any_batch:  # the batch size is a free dimension: no Python list of it
            return self._scan_images(features, size)
        sizes = [size] * images.shape[0]
        if not self.nms:
            if images.shape[0] != 1:
                raise ValueError("raw outputs (nms=False) are exported for batch 1 only")
            return self._raw_outputs(features, sizes)
        rows = [self._padded(x) for x in model.detect(features, sizes)]
        return tuple(torch.stack(column) for column in zip(*rows, strict=True))

    def _padded(self, detections: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """One image's boxes (D, 4), scores (D,), labels (D,) padded to D rows, and its count."""
        d = self.max_detections
        return (
            _pad(detections["boxes"], d),
            _pad(detections["scores"], d),
            _pad(detections["labels"], d),
            # the count from data rather than from a shape (TVM's importer needs it)
            (detections["labels"][:d] >= 0).sum(),
        )

    def _scan_images(self, features: list[Tensor], size: tuple[int, int]) -> tuple[Tensor, ...]:
        """`detect` on each image's features in turn (a Scan over the batch axis)."""

        def one_image(carry: Tensor, image_features: list[Tensor]):
            features = [f.unsqueeze(0) for f in image_features]
            return carry.clone(), self._padded(self.model.detect(features, [size])[0])

        _, outputs = scan(one_image, features[0].new_zeros(1), features)
        return tuple(outputs)

    def _raw_outputs(self, features: list[Tensor], sizes: list[tuple[int, int]]) -> tuple:
        model = self.model
        if isinstance(model, RetinaNet):
            logits, deltas = model.head(features)
            return (
                torch.cat(logits, 1)[0],
                torch.cat(deltas, 1)[0],
                torch.cat(model.anchors(features)),
            )
        strides = model.backbone.strides
        proposals, _, _ = model.rpn(features, strides, sizes)
        class_logits, box_deltas = model.roi_heads.predict(features, strides, proposals)
        return class_logits, box_deltas, proposals[0]


def check_input_size(height: int, width: int) -> None:
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or min(height, width) < 64:
        raise ValueError(
            f"input size {height}x{width}: height and width must be multiples of "
            f"{SIZE_MULTIPLE} and at least 64 (the detector's strides need it)"
        )
