"""High-precision reference moments E[φ(U)], Var[φ(U)], U ~ N(μ, s²), by mpmath.

Independent of normlab's equations: adaptive Gauss–Legendre quadrature (``mp.quad``, which
raises the degree until successive estimates agree to ``DPS`` digits) of the whole φ against the
Gaussian density in u, on [μ - 12s, μ + 12s] (outside, the density is below 1e-31 of its peak)
split at φ's kink (u = 0), at the scale of φ's curvature around it (|u| = 1, 4, 16, 48: where
tanh, sigmoid, silu, softplus and gelu meet their asymptotes) and at μ + k·s (k = 0, ±1, ±3,
±6), so that every feature of the integrand, whatever its width relative to s, spans whole
intervals on which the integrand is analytic. The variance is integrated around the mean,
∫ (φ - E)² N, never as E[φ²] - E².
"""

from __future__ import annotations

from functools import lru_cache

import mpmath as mp

DPS = 32

MP_PHI = {
    "relu": lambda u: u if u > 0 else mp.mpf(0),
    "leaky_relu": lambda u: u if u > 0 else mp.mpf(0.01) * u,
    "gelu": lambda u: u * mp.ncdf(u),
    "silu": lambda u: u / (1 + mp.exp(-u)),
    "tanh": mp.tanh,
    "sigmoid": lambda u: 1 / (1 + mp.exp(-u)),
    "elu": lambda u: u if u > 0 else mp.expm1(u),
    "softplus": lambda u: mp.log1p(mp.exp(u)),
    "identity": lambda u: u,
}

_NEAR_ZERO = (0, 1, -1, 4, -4, 16, -16, 48, -48)
_SPREAD = (0, 1, -1, 3, -3, 6, -6, 12, -12)


def _breakpoints(mu: mp.mpf, s: mp.mpf) -> list:
    lo, hi = mu - 12 * s, mu + 12 * s
    inner = {mu + k * s for k in _SPREAD} | {mp.mpf(p) for p in _NEAR_ZERO if lo < p < hi}
    return sorted(inner)


def _moments(act: str, mu: mp.mpf, s: mp.mpf) -> tuple[float, float]:
    phi = MP_PHI[act]
    s = abs(s)
    if s == 0:
        return float(phi(mu)), 0.0
    # φ(u) - E at u ~ μ carries the rounding of φ(μ): log10(|μ|/s) more digits keep DPS of them
    with mp.workdps(DPS + max(0, int(mp.log10(1 + abs(mu) / s)))):
        return _integrate(phi, mu, s)


def _integrate(phi, mu: mp.mpf, s: mp.mpf) -> tuple[float, float]:
    points = _breakpoints(mu, s)
    norm = 1 / (s * mp.sqrt(2 * mp.pi))

    def integral(f):
        def integrand(u):
            return f(u) * mp.exp(-(((u - mu) / s) ** 2) / 2) * norm

        return mp.quad(integrand, points, method="gauss-legendre")

    mean = integral(phi)
    var = integral(lambda u: (phi(u) - mean) ** 2)
    return float(mean), float(var)


@lru_cache(maxsize=4096)
def mp_moments(act: str, mu: float, s: float) -> tuple[float, float]:
    """(E, Var) of φ(U), U ~ N(μ, s²), rounded to float64 from ``DPS``-digit integrals; s = 0
    gives the point mass (φ(μ), 0)."""
    with mp.workdps(DPS):
        return _moments(act, mp.mpf(mu), mp.mpf(s))


@lru_cache(maxsize=4096)
def mp_proxy_moments(
    act: str, gamma: float, beta: float, proxy_mean: float, proxy_std: float
) -> tuple[float, float]:
    """(E, Var) of φ(γY + β), Y ~ N(proxy_mean, proxy_std²), for the given float64 values
    taken as exact: μ = γ·proxy_mean + β and s = γ·proxy_std are formed in ``DPS`` digits."""
    with mp.workdps(DPS + 20):  # μ and s exact: float64 products and sums need < 2·53 bits more
        gamma, beta = mp.mpf(gamma), mp.mpf(beta)
        mu, s = gamma * mp.mpf(proxy_mean) + beta, gamma * mp.mpf(proxy_std)
    with mp.workdps(DPS):
        return _moments(act, mu, s)


def mp_relu_moments(mu: float, s: float) -> tuple[float, float]:
    """relu's closed form (E = μΦ + sϕ, E[relu²] = (μ² + s²)Φ + μsϕ at t = μ/s) in ``DPS``
    digits: a check of the integrator, not of normlab."""
    with mp.workdps(DPS):
        mu, s = mp.mpf(mu), mp.mpf(s)
        t = mu / s
        cdf, pdf = mp.ncdf(t), mp.npdf(t)
        mean = mu * cdf + s * pdf
        second = (mu * mu + s * s) * cdf + mu * s * pdf
        return float(mean), float(second - mean * mean)
