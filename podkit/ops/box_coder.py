"""Encoding of boxes as deltas (dx, dy, dw, dh) relative to reference boxes (R-CNN style)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes targets relative to proposals/anchors and decodes predictions back.

    `weights` scale the deltas (10, 10, 5, 5 for the R-CNN head) so that the regression
    targets have roughly unit variance; dw/dh are clamped before `exp` so a wild prediction
    cannot overflow.
    """

    def __init__(
        self,
        weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
        scale_clamp: float = DEFAULT_SCALE_CLAMP,
    ) -> None:
        self.weights = weights
        self.scale_clamp = scale_clamp

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """Deltas that turn `reference_boxes` into `gt_boxes` (both (N, 4))."""
        wx, wy, ww, wh = self.weights
        ref_w = reference_boxes[:, 2] - reference_boxes[:, 0]
        ref_h = reference_boxes[:, 3] - reference_boxes[:, 1]
        ref_x = reference_boxes[:, 0] + 0.5 * ref_w
        ref_y = reference_boxes[:, 1] + 0.5 * ref_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0]
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1]
        gt_x = gt_boxes[:, 0] + 0.5 * gt_w
        gt_y = gt_boxes[:, 1] + 0.5 * gt_h
        dx = wx * (gt_x - ref_x) / ref_w
        dy = wy * (gt_y - ref_y) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """Boxes from deltas. `deltas` is (N, 4 * K) for K class-specific boxes per reference."""
        reference_boxes = reference_boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        ctr_x = reference_boxes[:, 0] + 0.5 * widths
        ctr_y = reference_boxes[:, 1] + 0.5 * heights
        deltas = deltas.reshape(deltas.shape[0], deltas.shape[-1] // 4, 4)
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        boxes = torch.stack(
            (
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ),
            dim=2,
        )
        return boxes.reshape(deltas.shape[0], deltas.shape[1] * 4)
