"""Verdicts from numbers: the comparison rules, the overall verdict and Spearman's ρ."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from normlab.experiments import claims as c


def group(*values: float) -> c.Group:
    return c.Group("g", tuple(values))


def test_standard_error_of_the_difference_of_means():
    a, b = group(1.0, 2.0, 3.0), group(0.0, 4.0)
    assert c.standard_error(a, b) == pytest.approx(math.sqrt(1.0 / 3 + 8.0 / 2))


def test_greater_holds_only_beyond_two_standard_errors():
    assert c.greater("", group(0.9, 0.91, 0.92), group(0.8, 0.81, 0.82)).verdict == c.HOLDS
    noisy = c.greater("", group(0.9, 0.7, 0.95), group(0.8, 0.85, 0.78))
    assert noisy.verdict == c.PARTLY  # the right sign, within the noise
    assert c.greater("", group(0.7, 0.71), group(0.8, 0.81)).verdict == c.FAILS
    assert c.greater("", group(0.8, 0.8), group(0.8, 0.8)).verdict == c.FAILS  # equal: not greater


def test_at_least_fails_only_when_significantly_worse():
    assert c.at_least("", group(0.79, 0.81), group(0.8, 0.82)).verdict == c.HOLDS
    assert c.at_least("", group(0.70, 0.71, 0.70), group(0.8, 0.81, 0.8)).verdict == c.FAILS


def test_close_uses_the_larger_of_noise_and_tolerance():
    exact = group(0.800, 0.800)
    assert c.close("", group(0.805, 0.805), exact, tolerance=0.01).verdict == c.HOLDS
    assert c.close("", group(0.83, 0.83), exact, tolerance=0.01).verdict == c.FAILS
    wide = group(0.70, 0.96)  # std 0.18: two standard errors cover a 3-point difference
    assert c.close("", wide, exact, tolerance=0.01).verdict == c.HOLDS


def test_measured_text_names_both_groups_and_the_difference():
    claim = c.greater("A > B", c.Group("a", (0.9, 0.92)), c.Group("b", (0.8, 0.8)))
    assert claim.measured.startswith("a 91.00 ± 1.41 (n=2) vs b 80.00 ± 0.00 (n=2)")
    assert "difference +11.00" in claim.measured


def test_overall_verdict():
    held, part, failed = (c.Claim("", "", v) for v in (c.HOLDS, c.PARTLY, c.FAILS))
    assert c.overall([held, held]) == c.REPRODUCED
    assert c.overall([held, failed]) == c.PARTLY_REPRODUCED
    assert c.overall([part, failed]) == c.PARTLY_REPRODUCED
    assert c.overall([failed, failed]) == c.NOT_REPRODUCED
    with pytest.raises(ValueError, match="no claim"):
        c.overall([])


def test_spearman_against_scipy():
    scipy = pytest.importorskip("scipy.stats")
    x = [0.3, 0.1, 0.5, 0.5, 0.9, 0.2, 0.7]
    y = [1.0, 3.0, 0.5, 0.7, 0.1, 2.0, 0.2]
    result = c.spearman(x, y)
    assert result.rho == pytest.approx(scipy.spearmanr(x, y).statistic, abs=1e-12)
    assert result.p_value < 0.05
    assert result.n == 7


@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=12, unique=True))
def test_spearman_of_a_monotone_map_is_one(x):
    assert c.spearman(x, [v**3 for v in x], permutations=10).rho == pytest.approx(1.0)
    assert c.spearman(x, [-v for v in x], permutations=10).rho == pytest.approx(-1.0)


def test_spearman_of_unrelated_orders_is_not_significant():
    x = list(range(8))
    result = c.spearman(x, [3, 6, 0, 5, 1, 7, 2, 4])
    assert abs(result.rho) < 0.5
    assert result.p_value > 0.2


def test_spearman_refuses_short_or_unequal_input():
    with pytest.raises(ValueError, match="equal length >= 3"):
        c.spearman([1, 2], [1, 2])
    with pytest.raises(ValueError, match="equal length"):
        c.spearman([1, 2, 3], [1, 2])
