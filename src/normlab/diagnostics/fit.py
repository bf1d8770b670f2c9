r"""Least-squares line fits, with their coefficient of determination R².

Used where the papers read a trend off a plot: the exponential growth of gradient norms with
depth (Beyond BatchNorm, Fig. 8: a line through log-norm vs layer index) and the linear growth of
the stable rank in sqrt(width / group size) (Beyond BatchNorm, Fig. 6a).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._checks import check_reals


@dataclass(frozen=True)
class LinearFit:
    """y ≈ slope·x + intercept, fitted by least squares over ``points`` points; ``r2`` is
    1 − SS_res / SS_tot (1 for a perfect fit; NaN when every y is equal)."""

    slope: float
    intercept: float
    r2: float
    points: int

    def __call__(self, x: float) -> float:
        return self.slope * x + self.intercept


def linear_fit(x: Sequence[float], y: Sequence[float]) -> LinearFit:
    """Least-squares line through the points (x_i, y_i); needs two distinct finite x values."""
    xs = np.asarray(check_reals("x", x), dtype=np.float64)
    ys = np.asarray(check_reals("y", y), dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(
            f"linear_fit needs two 1-d sequences of equal length, got shapes {xs.shape} and "
            f"{ys.shape}"
        )
    if xs.size < 2:
        raise ValueError(f"a line fit needs at least 2 points, got {xs.size}")
    bad = ~(np.isfinite(xs) & np.isfinite(ys))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"linear_fit got a non-finite point at index {index}: ({xs[index]}, {ys[index]})"
        )
    dx = xs - xs.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError(f"a line fit needs at least two distinct x values, got only {xs[0]}")
    slope = float(dx @ (ys - ys.mean())) / sxx
    intercept = float(ys.mean()) - slope * float(xs.mean())
    residual = ys - (slope * xs + intercept)
    total = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else math.nan
    return LinearFit(slope, intercept, r2, int(xs.size))
