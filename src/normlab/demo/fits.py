"""Growth of a positive profile through depth, fitted stage by stage: the line and
log-line fits behind the signal propagation checks (Hoedt et al. 2022, Fig. 4) and Beyond
BatchNorm's Claims 1-2."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..diagnostics import linear_fit


@dataclass(frozen=True)
class StageFit:
    """Fits of one stretch (a stage of blocks) of a positive profile through depth.

    Attributes:
        stage: the stage's name ("layer2").
        blocks: its number of points.
        slope, linear_r2: the slope and R² of the line fit value ≈ slope·l + b, l the block index.
        log_r2, factor: the R² of the line fit log(value) ≈ a·l + b, and e^a: the growth per
            block of an exponential fit.
        ratio: the stage's last value over its first.
    """

    stage: str
    blocks: int
    slope: float
    linear_r2: float
    log_r2: float
    factor: float
    ratio: float


def stage_fit(stage: str, values: Sequence[float], start: int = 0) -> StageFit:
    """The :class:`StageFit` of ``values`` (2 or more, all positive) at block indices
    ``start``, ``start + 1``, ... A constant stretch has slope 0 and R² NaN."""
    values = [float(v) for v in values]
    if len(values) < 2 or not all(v > 0 for v in values):
        raise ValueError(
            f"stage {stage!r}: a growth fit needs 2 or more positive values, got {values}"
        )
    depth = range(start, start + len(values))
    line = linear_fit(depth, values)
    log = linear_fit(depth, [math.log(v) for v in values])
    ratio = values[-1] / values[0]
    return StageFit(stage, len(values), line.slope, line.r2, log.r2, math.exp(log.slope), ratio)


@dataclass(frozen=True)
class DepthGrowth:
    """How a positive profile through depth grows: a :class:`StageFit` per stage, in depth
    order, and ``ratio``, the profile's last value over its first (the stem's)."""

    stages: list[StageFit]
    ratio: float

    @property
    def deepest(self) -> StageFit:
        """The fit of the last stage, the one furthest from the input."""
        return self.stages[-1]

    @property
    def largest_stage_ratio(self) -> float:
        """The largest last-over-first ratio within a stage."""
        return max(s.ratio for s in self.stages)


def stage_labels(names: Sequence[str]) -> list[str | None]:
    """The stage of each point of a depth profile, read off its module name: "layer2" for the
    block "layer2.3", None for a top-level module such as "stem"."""
    return [name.rsplit(".", 1)[0] if "." in name else None for name in names]


def depth_growth(values: Sequence[float], stages: Sequence[str | None]) -> DepthGrowth:
    """Fits of every stage of ``values``: a stage is a run of equal labels in ``stages``
    (:func:`stage_labels`); None marks a point of no stage, such as the stem."""
    values = [float(v) for v in values]
    if len(values) != len(stages) or len(values) < 2:
        raise ValueError(
            f"depth_growth needs one stage label per value and 2 or more values, got "
            f"{len(values)} values and {len(stages)} labels"
        )
    runs: list[tuple[str, int, int]] = []  # (stage, first index, end index)
    for index, label in enumerate(stages):
        if label is None:
            continue
        if runs and runs[-1][0] == label and runs[-1][2] == index:
            runs[-1] = (label, runs[-1][1], index + 1)
        else:
            runs.append((label, index, index + 1))
    if not runs:
        raise ValueError("depth_growth found no stage: every label is None")
    if not values[0] > 0:
        raise ValueError(f"depth_growth needs a positive first value, got {values[0]}")
    fits = [stage_fit(label, values[first:end], first) for label, first, end in runs]
    return DepthGrowth(fits, values[-1] / values[0])
