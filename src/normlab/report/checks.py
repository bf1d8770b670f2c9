"""Checks: a paper's claim, the value measured, what was expected, and whether it held.

A report lists every check, failures included and marked: a claim that does not hold is a
result, never something to hide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .._checks import check_number, is_real

Measured = float | int | str | bool | None | Sequence[float]


@dataclass(frozen=True)
class Check:
    """One claim checked against a measurement.

    Attributes:
        claim: the statement, in the paper's words ("BN's P1/P is ~0 at every layer").
        measured: the measured value (a number, a string, or a short list).
        expected: what the claim requires, as text ("≤ 0.05", "1 ± 0.01").
        passed: whether the measurement satisfies the claim.
    """

    claim: str
    measured: Measured
    expected: str
    passed: bool

    def to_dict(self) -> dict[str, object]:
        """{"claim", "measured", "expected", "passed"} (``measured`` not yet JSON-safe)."""
        return {
            "claim": self.claim,
            "measured": self.measured,
            "expected": self.expected,
            "passed": bool(self.passed),
        }

    @classmethod
    def at_most(cls, claim: str, measured: float, bound: float) -> Check:
        """measured ≤ bound (a NaN measurement fails)."""
        bound = check_number("bound", bound)
        return cls(claim, measured, f"≤ {bound:.4g}", _finite(measured) and measured <= bound)

    @classmethod
    def at_least(cls, claim: str, measured: float, bound: float) -> Check:
        """measured ≥ bound (a NaN measurement fails)."""
        bound = check_number("bound", bound)
        return cls(claim, measured, f"≥ {bound:.4g}", _finite(measured) and measured >= bound)

    @classmethod
    def close(cls, claim: str, measured: float, expected: float, tolerance: float) -> Check:
        """|measured − expected| ≤ tolerance."""
        expected = check_number("expected", expected)
        tolerance = check_number("tolerance", tolerance, 0.0)
        ok = _finite(measured) and abs(measured - expected) <= tolerance
        return cls(claim, measured, f"{expected:.4g} ± {tolerance:.2g}", ok)


def _finite(value: object) -> bool:
    """Whether ``value`` is a finite real number: an int, a float or a numpy scalar (a numpy
    float32 is no Python float, and a check of one must not fail for its type), not a bool."""
    return is_real(value) and math.isfinite(value)


def summarize(checks: Sequence[Check]) -> dict[str, object]:
    """Counts of the checks: total, passed, failed, and whether all passed."""
    passed = sum(1 for c in checks if c.passed)
    return {
        "checks": len(checks),
        "passed": passed,
        "failed": len(checks) - passed,
        "all_passed": passed == len(checks),
    }
