"""Proxy moments E[φ(γY+β)], Var[φ(γY+β)], Y ~ N(β̃, (1+γ̃)²) (PN paper Eq. 7).

The reference is an independent adaptive integration (scipy.integrate.quad) of the Gaussian
integral, split at φ's kinks, with float64 throughout.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

import normlab
from normlab.layers import PUBLISHED_GAINS, activation_names, get_activation

NUMPY_PHI = {
    "relu": lambda u: np.maximum(u, 0.0),
    "leaky_relu": lambda u: np.where(u > 0, u, 0.01 * u),
    "gelu": lambda u: u * special.ndtr(u),
    "silu": lambda u: u * special.expit(u),
    "tanh": np.tanh,
    "sigmoid": special.expit,
    "elu": lambda u: np.where(u > 0, u, np.expm1(np.minimum(u, 0.0))),
    "softplus": lambda u: np.logaddexp(0.0, u),
    "identity": lambda u: u,
}


def scipy_moments(act: str, mu: float, s: float) -> tuple[float, float]:
    """E and Var of φ(μ + s·Z), Z ~ N(0,1), by adaptive quadrature over z ∈ [-14, 14]."""
    phi = NUMPY_PHI[act]
    kink = [-mu / s] if s != 0 and abs(mu / s) < 14 else []
    points = sorted({*kink, *np.linspace(-8, 8, 17)})

    def integral(f):
        with warnings.catch_warnings():  # quad warns of round-off once it is below 1e-13
            warnings.simplefilter("ignore", integrate.IntegrationWarning)
            value, _ = integrate.quad(
                lambda z: f(mu + s * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
                -14,
                14,
                points=points,
                limit=400,
                epsabs=1e-15,
                epsrel=1e-13,
            )
        return value

    mean = integral(phi)
    var = integral(lambda u: (phi(u) - mean) ** 2)
    return mean, var


def test_registry_has_the_papers_activations():
    assert set(NUMPY_PHI) == set(activation_names())


@pytest.mark.parametrize("act", sorted(NUMPY_PHI))
@settings(max_examples=12, deadline=None)
@given(
    gamma=st.floats(-3, 3),
    beta=st.floats(-3, 3),
    proxy_beta=st.floats(-1, 1),
    proxy_gamma=st.floats(-0.5, 0.5),
)
def test_exact_moments_match_independent_integration(act, gamma, beta, proxy_beta, proxy_gamma):
    """Issue bar: <= 1e-6 relative error over |γ|<=3, |β|<=3, |β̃|<=1, |γ̃|<=0.5 for every φ."""
    mean, var = normlab.proxy_moments(
        act,
        torch.tensor(gamma, dtype=torch.float64),
        beta,
        proxy_beta,
        1.0 + proxy_gamma,
    )
    ref_mean, ref_var = scipy_moments(act, gamma * proxy_beta + beta, gamma * (1 + proxy_gamma))
    assert float(mean) == pytest.approx(ref_mean, rel=1e-6, abs=1e-12)
    assert float(var) == pytest.approx(ref_var, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("act", sorted(NUMPY_PHI))
def test_exact_moments_on_the_corners_of_the_validated_range(act):
    corners = [
        (g, b, bt, gt) for g in (-3, 3) for b in (-3, 3) for bt in (-1, 1) for gt in (-0.5, 0.5)
    ]
    g, b, bt, gt = (torch.tensor(c, dtype=torch.float64) for c in zip(*corners, strict=True))
    mean, var = normlab.proxy_moments(act, g, b, bt, 1 + gt)
    for i, (gi, bi, bti, gti) in enumerate(corners):
        ref_mean, ref_var = scipy_moments(act, gi * bti + bi, gi * (1 + gti))
        assert float(mean[i]) == pytest.approx(ref_mean, rel=1e-6, abs=1e-12)
        assert float(var[i]) == pytest.approx(ref_var, rel=1e-6, abs=1e-12)


def test_relu_closed_form_at_standard_normal():
    mean, var = normlab.proxy_moments("relu", torch.tensor(1.0, dtype=torch.float64), 0.0)
    assert float(mean) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-15)
    assert float(var) == pytest.approx(0.5 - 1 / (2 * math.pi), rel=1e-14)


@pytest.mark.parametrize("act", sorted(NUMPY_PHI))
def test_degenerate_proxy_gives_point_mass(act):
    """γ = 0: φ(γY + β) = φ(β) is constant."""
    beta = torch.tensor([-2.0, 0.3, 1.7], dtype=torch.float64)
    mean, var = normlab.proxy_moments(act, torch.zeros(3, dtype=torch.float64), beta)
    expected = torch.from_numpy(NUMPY_PHI[act](beta.numpy()))
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_broadcasting_dtypes_and_devices_follow_the_inputs():
    gamma = torch.rand(4, 1)
    beta = torch.rand(1, 5)
    mean, var = normlab.proxy_moments("gelu", gamma, beta, 0.1, torch.tensor(1.2))
    assert mean.shape == var.shape == (4, 5)
    assert mean.dtype == var.dtype == torch.float32
    half_mean, _ = normlab.proxy_moments("relu", gamma.half(), beta.half())
    assert half_mean.dtype == torch.float32
    floats_mean, _ = normlab.proxy_moments("tanh", 1.0, 0.5)
    assert floats_mean.dtype == torch.get_default_dtype()


@pytest.mark.parametrize("act", sorted(NUMPY_PHI))
def test_gradients_reach_every_argument(act):
    """gradcheck in float64 w.r.t. γ, β, β̃ and the proxy std (1 + γ̃)."""
    gen = torch.Generator().manual_seed(0)
    args = [
        (torch.rand(5, generator=gen, dtype=torch.float64) * 2 + 0.2),
        (torch.rand(5, generator=gen, dtype=torch.float64) * 2 - 1),
        (torch.rand(5, generator=gen, dtype=torch.float64) - 0.5),
        (torch.rand(5, generator=gen, dtype=torch.float64) * 0.6 + 0.7),
    ]
    args = [a.requires_grad_() for a in args]

    def fn(g, b, pm, ps):
        return normlab.proxy_moments(act, g, b, pm, ps)

    assert torch.autograd.gradcheck(fn, args)


def test_reference_estimator_is_the_midpoint_quantile_rule():
    """K = 200 midpoint quantiles sqrt(2)·erfinv(2(i+0.5)/K - 1), biased variance."""
    k = 200
    q = math.sqrt(2) * special.erfinv(2 * (np.arange(k) + 0.5) / k - 1)
    gamma, beta, pm, ps = 1.3, -0.4, 0.2, 0.9
    for act, phi in NUMPY_PHI.items():
        values = phi(gamma * (pm + ps * q) + beta)
        mean, var = normlab.proxy_moments(
            act, torch.tensor(gamma, dtype=torch.float64), beta, pm, ps, method="reference"
        )
        assert float(mean) == pytest.approx(values.mean(), rel=1e-12, abs=1e-14)
        assert float(var) == pytest.approx(values.var(), rel=1e-12, abs=1e-14)


def test_reference_estimator_underestimates_the_variance():
    """Midpoint quantiles miss the tails: their variance of Y itself is below 1."""
    _, var = normlab.proxy_moments(
        "identity", torch.tensor(1.0, dtype=torch.float64), 0.0, method="reference"
    )
    assert 0.99 < float(var) < 1.0


def test_activation_gains_are_exact():
    """γ_φ = 1/sqrt(Var[φ(Z)]); relu's is sqrt(2 / (1 - 1/π)); the others against scipy."""
    assert normlab.activation_gain("relu") == pytest.approx(
        math.sqrt(2 / (1 - 1 / math.pi)), rel=1e-14
    )
    for act in NUMPY_PHI:
        _, var = scipy_moments(act, 0.0, 1.0)
        assert normlab.activation_gain(act) == pytest.approx(var**-0.5, rel=1e-7)


def test_published_gains_differ_only_by_sampling_error():
    """Brock et al.'s table was sampled: within 1e-3 relative of the exact values."""
    for act, published in PUBLISHED_GAINS.items():
        assert normlab.activation_gain(act) == pytest.approx(published, rel=1e-3)


def test_bad_method_and_activation_raise_clear_errors():
    with pytest.raises(ValueError, match="valid choices: exact, reference"):
        normlab.proxy_moments("relu", 1.0, 0.0, method="sampled")
    with pytest.raises(ValueError, match="Did you mean 'relu'"):
        normlab.proxy_moments("reul", 1.0, 0.0)


def test_quadrature_node_counts_are_part_of_the_registry():
    """Smooth φ: the trapezoid's nodes (for |s| <= 2) and the split (beyond) are registered."""
    for name in ("gelu", "silu", "tanh", "sigmoid", "softplus"):
        activation = get_activation(name)
        assert activation.closed_form is None
        assert activation.quadrature_nodes >= 48
        assert activation.split is not None
    for name in ("relu", "leaky_relu", "elu", "identity"):
        assert get_activation(name).closed_form is not None
