r"""Verdicts on the papers' claims, written from the numbers of a sweep.

A claim compares groups of runs (the seeds of one setting) by a metric. Three comparisons:

* ``greater(A, B)``  "A > B":  holds when mean(A) − mean(B) > 2·SE, partly when the difference
  has the claimed sign but is within 2·SE;
* ``at_least(A, B)`` "A ≥ B":  holds when mean(A) − mean(B) ≥ −2·SE (A is not significantly
  worse), fails otherwise;
* ``close(A, B)``   "A ≈ B":  holds when |mean(A) − mean(B)| ≤ max(2·SE, tolerance);

with SE = sqrt(s_A²/n_A + s_B²/n_B) the standard error of the difference of the means (s the
sample standard deviations over seeds). A verdict of a whole reproduction is ``reproduced`` when
every claim holds, ``partly`` when some hold (or hold partly), ``not at this scale`` otherwise.

``spearman`` is the rank correlation with a permutation p-value, for Beyond BatchNorm's Fig. 5.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"
REPRODUCED, PARTLY_REPRODUCED, NOT_REPRODUCED = "reproduced", "partly", "not at this scale"


@dataclass(frozen=True)
class Group:
    """The values of one setting over seeds."""

    label: str
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def describe(self, scale: float = 100.0) -> str:
        return (
            f"{self.label} {self.mean * scale:.2f} ± {self.std * scale:.2f} (n={len(self.values)})"
        )


@dataclass(frozen=True)
class Claim:
    """One claim, the numbers behind it and its verdict."""

    text: str
    measured: str
    verdict: str


def standard_error(a: Group, b: Group) -> float:
    """Standard error of mean(a) − mean(b)."""
    return math.sqrt(a.std**2 / len(a.values) + b.std**2 / len(b.values))


def _measured(a: Group, b: Group, scale: float) -> str:
    diff, se = a.mean - b.mean, standard_error(a, b)
    return (
        f"{a.describe(scale)} vs {b.describe(scale)}: difference {diff * scale:+.2f} "
        f"(2·SE {2 * se * scale:.2f})"
    )


def greater(text: str, a: Group, b: Group, scale: float = 100.0) -> Claim:
    diff, se = a.mean - b.mean, standard_error(a, b)
    verdict = HOLDS if diff > 2 * se and diff > 0 else PARTLY if diff > 0 else FAILS
    return Claim(text, _measured(a, b, scale), verdict)


def at_least(text: str, a: Group, b: Group, scale: float = 100.0) -> Claim:
    diff, se = a.mean - b.mean, standard_error(a, b)
    return Claim(text, _measured(a, b, scale), HOLDS if diff >= -2 * se else FAILS)


def close(text: str, a: Group, b: Group, tolerance: float, scale: float = 100.0) -> Claim:
    diff, se = a.mean - b.mean, standard_error(a, b)
    verdict = HOLDS if abs(diff) <= max(2 * se, tolerance) else FAILS
    measured = f"{_measured(a, b, scale)}, tolerance {tolerance * scale:.2f}"
    return Claim(text, measured, verdict)


def overall(claims: Sequence[Claim]) -> str:
    """``reproduced`` / ``partly`` / ``not at this scale`` from the claims' verdicts."""
    if not claims:
        raise ValueError("no claim to judge")
    if all(c.verdict == HOLDS for c in claims):
        return REPRODUCED
    if any(c.verdict in (HOLDS, PARTLY) for c in claims):
        return PARTLY_REPRODUCED
    return NOT_REPRODUCED


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


@dataclass(frozen=True)
class Correlation:
    rho: float
    p_value: float  # two-sided, by permutation
    n: int


def spearman(
    x: Sequence[float], y: Sequence[float], permutations: int = 20_000, seed: int = 0
) -> Correlation:
    """Spearman's ρ of ``x`` and ``y`` (Pearson correlation of their ranks) and its two-sided
    permutation p-value (the fraction of shuffles of y with |ρ| at least as large)."""
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"need two sequences of equal length >= 3, got {len(x)} and {len(y)}")
    rx, ry = _ranks(x), _ranks(y)
    rho = _pearson(rx, ry)
    generator, shuffled, extreme = random.Random(seed), list(ry), 0
    for _ in range(permutations):
        generator.shuffle(shuffled)
        extreme += abs(_pearson(rx, shuffled)) >= abs(rho) - 1e-12
    return Correlation(rho, (extreme + 1) / (permutations + 1), len(x))
