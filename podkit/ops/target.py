"""What a detector trains on, per image: the one place its keys are defined."""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class Target(TypedDict, total=False):
    """One image's training target, boxes in as-fed pixels (x1, y1, x2, y2).

    `boxes` and `labels` are required; the rest are optional and every head reads them the
    same way, whichever method (SNIP, DST, augmentation) or data set wrote them.
    """

    boxes: Tensor  # (G, 4) the objects to detect
    labels: Tensor  # (G,) their classes in [0, C)
    # (I, 4) crowd boxes or objects a method leaves out: an anchor or proposal overlapping
    # one is neither a positive nor a negative
    ignore: Tensor
    # (E, 4) like `ignore`, but positives near one are removed too (SNIP's paper rule)
    exclude: Tensor
    # (2,) [lo, hi] of sqrt(area): the R-CNN stage trains only on proposals in this range
    proposal_range: Tensor
    # the RPN's own GTs where they differ from the R-CNN's (`boxes`, `ignore`, `exclude`)
    rpn: Target
