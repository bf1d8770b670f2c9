"""Exact proxy moments over the whole parameter range (issue 12, item 2).

E[φ(γY + β)] and Var[φ(γY + β)], Y ~ N(proxy_mean, proxy_std²), for every built-in φ and every
|γ| <= 1e4, |β| <= 1e4, proxy_mean in [-2, 2], proxy_std in [0.25, 2]: s = γ·proxy_std from 0 to
2e4 and |μ| = |γ·proxy_mean + β| up to 3e4. The reference is 32-digit adaptive integration by
mpmath (:mod:`tests.layers.mp_moments`), at the given float64 parameters taken as exact.

The criterion, for E and Var alike, is

    |normlab - exact| <= 1e-6·|exact| + 1e-9,

relative where the moment is of order one or more, absolute (a fixed 1e-9, no scaling) where it
vanishes: a tanh mean at β = 0 is 0 by symmetry and a sigmoid variance at β = -1e4 is e^-1e4, so
no relative bound can hold there; 1e-9 is far below what PN adds to a variance (ε = 0.03) and
below float32's resolution of any moment of order one. Moments that grow with s (Var ~ s² up to
4e8) are held to the relative bound, which the absolute floor does not loosen.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab
from normlab.layers import gaussian
from normlab.layers.activations import activation_names, get_activation

from .mp_moments import mp_moments, mp_proxy_moments, mp_relu_moments

DOUBLE = torch.float64
REL, ABS = 1e-6, 1e-9
ACTS = sorted(activation_names())
SMOOTH = ["gelu", "silu", "tanh", "sigmoid", "softplus"]


def error_ratio(value: float, exact: float) -> float:
    """|value - exact| / (REL·|exact| + ABS): at most 1 passes."""
    return abs(value - exact) / (REL * abs(exact) + ABS)


def moments64(act, gamma, beta, proxy_mean, proxy_std):
    args = [torch.as_tensor(v, dtype=DOUBLE) for v in (gamma, beta, proxy_mean, proxy_std)]
    mean, var = normlab.proxy_moments(act, *args)
    return mean.tolist(), var.tolist()


def assert_matches_mpmath(act, params):
    """Every (γ, β, proxy_mean, proxy_std) in ``params``, computed as one batch."""
    mean, var = moments64(act, *zip(*params, strict=True))
    for i, p in enumerate(params):
        ref_mean, ref_var = mp_proxy_moments(act, *p)
        assert error_ratio(mean[i], ref_mean) <= 1, (act, p, "mean", mean[i], ref_mean)
        assert error_ratio(var[i], ref_var) <= 1, (act, p, "var", var[i], ref_var)


def test_the_integrator_agrees_with_closed_forms():
    """The reference itself: relu's closed form and identity's moments, in 32 digits."""
    for mu, s in [(0.3, 1.0), (-50.0, 20.0), (3e4, 2e4), (-3.0, 0.5), (1.0, 1e-6)]:
        for got, want in zip(mp_moments("relu", mu, s), mp_relu_moments(mu, s), strict=True):
            assert got == pytest.approx(want, rel=1e-14, abs=1e-300)
        mean, var = mp_moments("identity", mu, s)
        assert mean == pytest.approx(mu, rel=1e-14, abs=1e-25)
        assert var == pytest.approx(s * s, rel=1e-14)


# -- the whole range, sampled -----------------------------------------------------------------


def signed_log(low: int, high: int):
    """0, or ±10^e with e uniform in [low, high]: every scale of the range equally often."""
    magnitude = st.floats(low, high).map(lambda e: 10.0**e)
    return st.one_of(
        st.just(0.0), st.tuples(st.sampled_from([-1.0, 1.0]), magnitude).map(math.prod)
    )


PARAMS = st.tuples(signed_log(-7, 4), signed_log(-7, 4), st.floats(-2.0, 2.0), st.floats(0.25, 2.0))


@pytest.mark.parametrize("act", ACTS)
@settings(max_examples=6, deadline=None)
@given(params=st.lists(PARAMS, min_size=4, max_size=4))
def test_moments_match_mpmath_over_the_range(act, params):
    """γ and β at every scale from 1e-7 to 1e4, either sign (24 points per φ by default)."""
    assert_matches_mpmath(act, params)


@pytest.mark.slow
@pytest.mark.parametrize("act", ACTS)
@settings(max_examples=100, deadline=None)
@given(params=st.lists(PARAMS, min_size=8, max_size=8))
def test_moments_match_mpmath_over_the_range_thoroughly(act, params):
    assert_matches_mpmath(act, params)


@pytest.mark.parametrize("act", SMOOTH)
@settings(max_examples=5, deadline=None)
@given(
    mu=st.floats(-60.0, 60.0),
    s=st.floats(0.5, 8.0),
)
def test_moments_around_the_switch(act, mu, s):
    """|s| near SPLIT_SCALE = 2, where the trapezoid hands over to the split, at μ where the
    residual r dominates (|μ| ~ s² for tanh's variance, for instance)."""
    assert_matches_mpmath(act, [(s, mu, 0.0, 1.0), (-s, mu, 0.0, 1.0), (1.0, mu, 0.0, s)])


# -- hard cases -------------------------------------------------------------------------------

HARD = [
    (30.0, 0.0, 0.0, 1.0),  # tanh was 1.2% off here
    (100.0, 0.5, 0.3, 1.0),  # and 0.8% here
    (1e4, 0.0, 0.0, 2.0),  # the largest s, 2e4
    (-1e4, 1e4, 2.0, 2.0),  # the largest |μ|, 3e4, with s = -2e4
    (1e4, -1e4, 1.0, 0.25),  # μ = 0 exactly at s = 2.5e3
    (1.0, 1e4, 0.0, 1.0),  # μ ≫ s
    (1e-3, 1e4, 1.0, 1.0),  # μ ≫ s, Var = 1e-6: elu's E[elu²] - E² lost every digit
    (1.0, -1e4, 0.0, 1.0),  # μ ≪ -s: moments that vanish
    (0.5, -20.0, 0.0, 1.0),  # t = -40: relu's tails
    (0.5, 15.0, 0.0, 1.0),  # t = 30
    (1e-8, 1.7, 0.3, 1.0),  # γ → 0: the point mass
    (1e-4, -0.3, 2.0, 2.0),
    (0.0, 2.5, 1.0, 1.0),  # γ = 0 exactly
    (2.0, 0.7, 0.0, 1.0),  # s exactly at the switch
    (1.0, 0.7, 0.0, 2.0),
    (2.0 * (1 + 1e-12), 0.7, 0.0, 1.0),  # either side of it
    (2.0 * (1 - 1e-12), 0.7, 0.0, 1.0),
    (2.0, 9.0, 0.0, 1.0),  # tanh at the switch, where Var is 1e-4 and comes from u ~ 1
    (2.5, -6.0, 0.5, 0.8),
    (3.0, 20.0, 0.0, 1.0),  # μ ~ 2s²: the residual's tail against the density's
]


@pytest.mark.parametrize("act", ACTS)
def test_hard_cases(act):
    assert_matches_mpmath(act, HARD)


@pytest.mark.parametrize("act", SMOOTH)
def test_both_branches_agree_at_the_switch(act):
    """At |s| = 2 the trapezoid and the split are both exact: no step in E or Var."""
    split = get_activation(act).split
    activation = get_activation(act)
    mu = torch.linspace(-30, 30, 61, dtype=DOUBLE)
    s = torch.full_like(mu, gaussian.SPLIT_SCALE)
    near = gaussian.quadrature_moments(
        activation.fn, mu, s, activation.quadrature_nodes, activation.quadrature_half_width
    )
    far = gaussian.split_moments(split, mu, s)
    for a, b in zip(near, far, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# -- float32 and half precision ---------------------------------------------------------------


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_results_are_the_float64_ones_rounded(act, dtype):
    """float32 (and half) parameters are computed in float64: the result is the float64 moment
    of the same parameter values, rounded once to float32."""
    params = [p for p in HARD if all(abs(v) < 6e4 for v in p)]
    args = [torch.tensor(c, dtype=dtype) for c in zip(*params, strict=True)]
    mean, var = normlab.proxy_moments(act, *args)
    assert mean.dtype == var.dtype == torch.float32
    mean64, var64 = normlab.proxy_moments(act, *(a.to(DOUBLE) for a in args))
    assert torch.equal(mean, mean64.float())
    assert torch.equal(var, var64.float())


def test_float32_gelu_at_a_huge_shift():
    """β = 1e6 in float32: Var = 1 to float32's precision (the float32 quadrature gave 0.9898)."""
    mean, var = normlab.proxy_moments("gelu", torch.ones(3), torch.tensor([1e6, -1e6, 3e4]))
    assert mean[[0, 2]].tolist() == [1e6, 3e4]
    assert abs(float(mean[1])) < 1e-30
    assert (var[[0, 2]] - 1).abs().max() <= 2**-23
    assert float(var[1]) < 1e-30


@pytest.mark.parametrize("act", ACTS)
def test_float32_matches_mpmath(act):
    """float32 results within float32 rounding (2^-24 relative, twice for margin) of the exact
    moments of the float32 parameters, plus the float64 criterion's floor."""
    params = [(30.0, 0.5, 0.25, 1.0), (1.5, 8.0, -1.0, 0.75), (-700.0, 0.125, 0.5, 1.5)]
    args = [torch.tensor(c, dtype=torch.float32) for c in zip(*params, strict=True)]
    mean, var = normlab.proxy_moments(act, *args)
    for i, p in enumerate(params):
        for got, exact in zip((mean[i], var[i]), mp_proxy_moments(act, *p), strict=True):
            assert abs(float(got) - exact) <= 2**-23 * abs(exact) + ABS, (act, p, got, exact)


# -- gradients --------------------------------------------------------------------------------

GRAD_POINTS = [  # γ, β, proxy_mean, proxy_std
    (1.0, 0.3, 0.2, 0.9),
    (1.9, -0.5, 0.1, 1.05),  # s = 1.995: the trapezoid
    (2.1, -0.5, 0.1, 0.95),  # s = 1.995 ... and 2.005: the split
    (2.0, 0.4, 0.0, 1.0005),
    (30.0, 5.0, -0.3, 1.2),
    (-100.0, 20.0, 0.7, 0.5),
    (8.0, 60.0, 0.0, 1.0),  # μ = 60, s = 8: the residual's tail
    (1e-3, 2.0, 1.0, 1.0),
    (0.8, -6.0, 0.0, 0.7),
    (-2.5, -7.0, 0.3, 1.1),
]


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_in_both_regimes_and_at_the_switch(act):
    args = [
        torch.tensor(c, dtype=DOUBLE, requires_grad=True) for c in zip(*GRAD_POINTS, strict=True)
    ]
    assert torch.autograd.gradcheck(lambda *a: normlab.proxy_moments(act, *a), args)


@pytest.mark.parametrize("act", ["gelu", "tanh", "elu", "leaky_relu"])
def test_gradcheck_with_broadcasting(act):
    """The fused nodes (trapezoid, closed forms) on broadcast (2, 3) parameters."""
    gamma = torch.tensor([[0.7], [2.6]], dtype=DOUBLE, requires_grad=True)
    beta = torch.tensor([-1.5, 0.2, 3.0], dtype=DOUBLE, requires_grad=True)
    proxy_std = torch.tensor([0.9, 1.1, 0.8], dtype=DOUBLE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda g, b, p: normlab.proxy_moments(act, g, b, 0.3, p), (gamma, beta, proxy_std)
    )


@pytest.mark.parametrize("act", ACTS)
def test_gradients_stay_finite_at_the_extremes(act):
    """torch.where selects a branch; the other one, at clamped inputs, must not make a NaN."""
    params = [
        (1e4, -1e4, 2.0, 2.0),
        (-1e4, 1e4, -2.0, 0.25),
        (1e-300, 5.0, 1.0, 1.0),
        (0.0, -3.0, 0.0, 1.0),
        (1.0, 1e300, 0.0, 1.0),
        (1e150, 0.0, 0.0, 1.0),
    ]
    args = [torch.tensor(c, dtype=DOUBLE, requires_grad=True) for c in zip(*params, strict=True)]
    mean, var = normlab.proxy_moments(act, *args)
    finite = torch.isfinite(mean[:4]).all() and torch.isfinite(var[:4]).all()
    assert finite, (mean, var)
    (mean[:4].sum() + var[:4].sum()).backward()
    for a in args:
        assert torch.isfinite(a.grad).all(), (act, args)


@pytest.mark.parametrize("act", SMOOTH)
@pytest.mark.parametrize("points", [GRAD_POINTS[:2], GRAD_POINTS], ids=["near", "mixed"])
def test_the_branch_free_path_matches_the_eager_cpu_path(act, points, monkeypatch):
    """Accelerators and tracers run both branches everywhere and select; eager CPU runs the
    split on the entries with |s| > 2 only (none: the trapezoid alone). Same values and
    gradients either way."""
    args = [torch.tensor(c, dtype=DOUBLE) for c in zip(*points, strict=True)]

    def run():
        leaves = [a.clone().requires_grad_() for a in args]
        mean, var = normlab.proxy_moments(act, *leaves)
        (mean.sum() + 2 * var.sum()).backward()
        return mean, var, *(leaf.grad for leaf in leaves)

    eager = run()
    monkeypatch.setattr(gaussian, "_far_entries", lambda s: None)
    for a, b in zip(eager, run(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-300)


def test_compiled_moments_match_eager_in_both_regimes():
    """torch.compile (fullgraph: no data-dependent branch, no numpy) runs both branches and
    selects: the eager values and gradients; the node cache keeps no traced tensor."""
    args = [torch.tensor(c, dtype=DOUBLE) for c in zip(*GRAD_POINTS[:6], strict=True)]

    def run(fn):
        leaves = [a.clone().requires_grad_() for a in args]
        mean, var = fn(*leaves)
        (mean.sum() + 2 * var.sum()).backward()
        return mean.detach(), var.detach(), *(leaf.grad for leaf in leaves)

    def moments(*a):
        return normlab.proxy_moments("tanh", *a)

    compiled = torch.compile(moments, backend="aot_eager", fullgraph=True)
    for a, b in zip(run(moments), run(compiled), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    fake = torch._subclasses.fake_tensor.FakeTensor
    cached = [t for pair in gaussian._split_cache.values() for t in pair]
    assert cached
    assert not any(isinstance(t, fake) for t in cached)


# -- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("points", "error"),
    [(0, ValueError), (1, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)],
)
def test_reference_points_must_be_an_integer_of_at_least_two(points, error):
    with pytest.raises(error, match=rf"points must be an integer >= 2, got {points!r}"):
        normlab.proxy_moments("relu", 1.0, 0.0, method="reference", points=points)


def test_a_layer_with_one_reference_point_says_so():
    """ProxyNormAct(points=1) would run the one-quantile estimator, Var = 0: refused when built."""
    with pytest.raises(ValueError, match="points must be an integer >= 2, got 1"):
        normlab.layers.ProxyNormAct(4, "gelu", method="reference", points=1)


def test_reference_with_two_points():
    """K = 2: the quantiles ±Φ⁻¹(3/4), whose biased variance is Φ⁻¹(3/4)²."""
    mean, var = normlab.proxy_moments(
        "identity", torch.tensor(1.0, dtype=DOUBLE), 0.0, method="reference", points=2
    )
    q = math.sqrt(2) * torch.special.erfinv(torch.tensor(0.5, dtype=DOUBLE))
    assert float(mean) == pytest.approx(0.0, abs=1e-15)
    assert float(var) == pytest.approx(float(q) ** 2, rel=1e-14)


@pytest.mark.parametrize("act", ["relu", "identity", "tanh"])
def test_arguments_broadcast_to_every_shape(act):
    """The proxy std (or any argument) may carry more dims than the others."""
    gamma, beta = torch.tensor([1.0, 30.0, 0.5], dtype=DOUBLE), torch.zeros(3, dtype=DOUBLE)
    proxy_std = torch.tensor([[1.0], [2.0]], dtype=DOUBLE)
    mean, var = normlab.proxy_moments(act, gamma, beta, 0.1, proxy_std)
    assert mean.shape == var.shape == (2, 3)
    for i in range(2):
        row = normlab.proxy_moments(act, gamma, beta, 0.1, proxy_std[i])
        torch.testing.assert_close(mean[i], row[0].expand(3), rtol=1e-14, atol=0)
        torch.testing.assert_close(var[i], row[1].expand(3), rtol=1e-14, atol=0)


def test_shapes_that_do_not_broadcast_name_the_arguments():
    with pytest.raises(ValueError, match=r"gamma \(3,\), beta \(4,\)") as info:
        normlab.proxy_moments("gelu", torch.ones(3), torch.zeros(4))
    assert "broadcast" in str(info.value)
    with pytest.raises(ValueError, match=r"gamma \(2, 3\), beta \(3,\), proxy_std \(2,\)"):
        normlab.proxy_moments("relu", torch.ones(2, 3), torch.zeros(3), 0.0, torch.ones(2))


@pytest.mark.parametrize("name", ["gamma", "beta", "proxy_mean", "proxy_std"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_arguments_raise_naming_the_argument(name, value):
    args = {"gamma": 1.0, "beta": 0.0, "proxy_mean": 0.0, "proxy_std": 1.0, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a finite number, got {value!r}"):
        normlab.proxy_moments("tanh", **args)


def test_non_number_arguments_raise_naming_the_argument():
    with pytest.raises(TypeError, match=r"beta must be a finite number, got '0\.5'"):
        normlab.proxy_moments("tanh", 1.0, "0.5")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("method", ["exact", "reference"])
def test_non_finite_tensor_entries_give_nan_at_their_positions(act, method):
    """Documented NaN propagation: no check reads the tensors back (PN calls this at every
    step), but a NaN or ±inf entry never yields finite moments, even for bounded φ (tanh of
    β = inf would otherwise be E = 1, Var = 0). The other entries are unaffected."""
    nan, inf = math.nan, math.inf
    gamma = torch.tensor([1.0, nan, inf, 1.0, 1.0, 1.0, 1.0, 3.0], dtype=DOUBLE)
    beta = torch.tensor([0.5, 0.0, 0.0, inf, -inf, 0.0, 0.0, -1.0], dtype=DOUBLE)
    proxy_mean = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, nan, 0.0, 0.2], dtype=DOUBLE)
    proxy_std = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, inf, 1.0], dtype=DOUBLE)
    mean, var = normlab.proxy_moments(act, gamma, beta, proxy_mean, proxy_std, method=method)
    assert torch.isnan(torch.stack([mean[1:7], var[1:7]])).all()
    assert torch.isfinite(torch.stack([mean[[0, 7]], var[[0, 7]]])).all()
