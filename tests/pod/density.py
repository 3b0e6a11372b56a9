"""Density of connections (POD, section 3.3): how much a layer's receptive field weighs each
input offset, averaged over its filters, with every tap counted as 1.

A GSL conv at scale d spreads its outer taps bilinearly: along one axis, offsets 0 (weight
1), +-floor(d) (1 - frac) and +-(floor(d) + 1) (frac). The FD replacement puts a share
(1 - alpha) of its filters at +-floor(d) and alpha at +-ceil(d): with alpha = frac the 1-D
densities are equal. In 2-D the GSL density is the product of the two axes' while FD
moves whole filters, so they agree in total and centre, and in each axis' marginal when
the two fractions are equal: the paper's 2-D simplification.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any


def gsl_density_1d(d: float) -> dict[int, float]:
    low = math.floor(d)
    f = d - low
    density: dict[int, float] = defaultdict(float)
    density[0] += 1.0
    for sign in (-1, 1):
        density[sign * low] += 1 - f
        density[sign * (low + 1)] += f
    return {k: v for k, v in density.items() if v > 0}


def gsl_density_2d(d_h: float, d_w: float) -> dict[tuple[int, int], float]:
    dh, dw = gsl_density_1d(d_h), gsl_density_1d(d_w)
    return {(a, b): va * vb for a, va in dh.items() for b, vb in dw.items()}


def fd_density_2d(layer_plan: dict[str, Any]) -> dict[tuple[int, int], float]:
    """Density of an FD layer from its plan entry: each part's taps, weighted by its share."""
    total = sum(p["out_channels"] for p in layer_plan["parts"])
    density: dict[tuple[int, int], float] = defaultdict(float)
    for part in layer_plan["parts"]:
        share = part["out_channels"] / total
        rows = _taps(part["dilation"][0], part["kernel"][0])
        cols = _taps(part["dilation"][1], part["kernel"][1])
        for r, nr in rows.items():
            for c, nc in cols.items():
                density[(r, c)] += share * nr * nc
    return dict(density)


def fd_density_1d(dilations: list[int], shares: list[float]) -> dict[int, float]:
    """1-D FD density: parts at the given dilations holding the given shares of filters."""
    density: dict[int, float] = defaultdict(float)
    for d, share in zip(dilations, shares, strict=True):
        for offset, n in _taps(d, 1 if d == 0 else 3).items():
            density[offset] += share * n
    return {k: v for k, v in density.items() if v > 0}


def _taps(dilation: int, kernel: int) -> dict[int, int]:
    """Offsets of a 1-D kernel's taps with their multiplicity (a size-1 kernel of summed taps
    stands for all three at offset 0)."""
    if kernel == 1:
        return {0: 3}
    return {-dilation: 1, 0: 1, dilation: 1} if dilation else {0: 3}


def marginal(density: dict[tuple[int, int], float], axis: int) -> dict[int, float]:
    out: dict[int, float] = defaultdict(float)
    for key, v in density.items():
        out[key[axis]] += v
    return dict(out)
