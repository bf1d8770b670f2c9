r"""Moments of an activation of a Gaussian: E[φ(U)] and Var[φ(U)] for U ~ N(μ, s²).

These are the proxy moments of Proxy Normalization (Labatie et al. 2021, Eq. 7) once the
proxy's affine transform is folded in: with Y ~ N(β̃, (1+γ̃)²), γ·Y + β ~ N(μ, s²) with
μ = γβ̃ + β and s = γ(1+γ̃). Everything here is a function of (μ, s), elementwise and
differentiable, and exact for every finite (μ, s):

* Piecewise-linear φ (relu, leaky relu, identity) and elu have closed forms, written with the
  standard normal pdf ϕ and cdf Φ at t = μ/|s| so that no term overflows as s → 0, and with
  variances that are sums of non-negative terms (no E[φ²] - E² cancellation at |μ| ≫ s).
* Smooth φ (tanh, sigmoid, silu, softplus, gelu) use, for |s| <= :data:`SPLIT_SCALE` = 2, the
  trapezoidal rule in z = (u - μ)/s on [-L, L]. For φ analytic in a strip |Im u| < d the rule
  converges geometrically, with error ~ exp(-2π d / (|s| h)) for node spacing h, far faster
  than Gauss–Hermite, whose nodes spread to ±sqrt(2K). The variance is summed around the mean
  (two passes), never as E[φ²] - E[φ]², so it stays accurate when it is small.
* For |s| > 2 the trapezoid would need nodes in proportion to |s| (φ's curvature, of width ~1
  in u, shrinks to ~1/|s| in z). There φ is split into a base P with closed-form moments
  (sign for tanh, the unit step for sigmoid, relu for silu, softplus and gelu) and a residual
  r = φ - P that decays like e^{-|u|} or faster and is smooth on each side of 0
  (:class:`Split`). The moments of r and Cov(P, r) are Gauss–Legendre sums in u over fixed
  panels of [-R, R], r tabulated once at the nodes, weighted by the density N(u; μ, s²)
  (:func:`split_moments`). One exp per node and channel: cheaper than the trapezoid itself.

Checked against 32-digit adaptive integration (mpmath) over |μ| <= 3e4, |s| <= 2e4 (see
``tests/layers/test_proxy_moments_range.py``): E and Var within 1e-6·|exact| + 1e-9 in float64,
typically 1e-11 relative.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .._checks import cached, first_order_only, tracing, unknown

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

Moments = tuple[Tensor, Tensor]


def _positive(s: Tensor) -> Tensor:
    """|s| kept away from zero.

    The floor is tiny^(1/3) (1e-103 in float64), not tiny: autograd's ∂t/∂s = -μ/s² of
    t = μ/s must stay finite (0·inf would make a NaN gradient) for any |μ| up to 1e102. Below
    it every moment is that of the point mass at μ to within 1e-103·|φ'|."""
    return s.abs().clamp_min(torch.finfo(s.dtype).tiny ** (1.0 / 3.0))


_T_MAX = 40.0  # Φ(±40) is 0 or 1 and ϕ(40) = 0 in float64: |t| beyond changes nothing


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


@dataclass(frozen=True)
class MomentRule:
    """Closed-form moments of φ(U), U ~ N(μ, s²) (s > 0), with their vector-Jacobian product.

    ``forward(μ, s) -> (E, Var, saved)`` and ``vjp(saved, grad_E, grad_Var) -> (grad_μ, grad_s)``:
    what a single autograd node needs, in as few tensor ops as possible (PN's hot path).
    """

    forward: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, tuple[Tensor, ...]]]
    vjp: Callable[[tuple[Tensor, ...], Tensor, Tensor], tuple[Tensor, Tensor]]


_constants: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def constant(value: float, like: Tensor) -> Tensor | float:
    """``value`` as a cached 0-d tensor of ``like``'s dtype and device. Eager PyTorch wraps a
    Python scalar operand into a fresh tensor at every op (about 2 µs, as much as the op itself
    on C-sized vectors); PN's hot path multiplies by these instead. While tracing, the plain
    float (a graph constant)."""
    if tracing():
        return value
    key = (value, like.dtype, like.device)
    found = _constants.get(key)
    if found is None:
        with torch.inference_mode(False):
            found = _constants[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return found


def _relu_forward(mu: Tensor, s: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """E = μΦ + sϕ and Var = E[U²; U>0] - E² = E·(μQ - sϕ) + s²Φ, with Φ, ϕ at t = μ/s and
    Q = 1 - Φ computed as erfc (not by subtraction); no t² term overflows as s → 0. Out of
    place, so that autograd can also differentiate it (as tracers do)."""
    half = constant(0.5, mu)
    z = torch.div(mu, s) * constant(_INV_SQRT_2, mu)
    cdf = torch.special.erfc(-z) * half
    upper = torch.special.erfc(z) * half
    pdf = torch.exp(-z.square()) * constant(_INV_SQRT_2PI, mu)
    s_pdf = s * pdf
    mean = torch.addcmul(s_pdf, mu, cdf)
    var = ((mu * upper - s_pdf) * mean).addcmul(s * s, cdf).clamp_min(0.0)
    return mean, var, (s, cdf, upper, pdf, mean)


def _relu_vjp(saved: tuple[Tensor, ...], grad_mean: Tensor, grad_var: Tensor):
    """∂E/∂μ = Φ, ∂E/∂s = ϕ, ∂Var/∂μ = 2EQ, ∂Var/∂s = 2(sΦ - Eϕ)."""
    s, cdf, upper, pdf, mean = saved
    grad_mu = torch.addcmul(grad_mean * cdf, grad_var, mean * upper, value=2.0)
    slope_s = torch.addcmul(s * cdf, mean, pdf, value=-1.0)
    grad_s = torch.addcmul(grad_mean * pdf, grad_var, slope_s, value=2.0)
    return grad_mu, grad_s


RELU_RULE = MomentRule(_relu_forward, _relu_vjp)


class _ClosedFormMoments(torch.autograd.Function):
    """E and Var of φ(N(μ, s²)) from a :class:`MomentRule`, as one autograd node."""

    @staticmethod
    def forward(ctx, mu: Tensor, s: Tensor, rule: MomentRule) -> Moments:
        mean, var, saved = rule.forward(mu, s)
        ctx.rule = rule
        ctx.save_for_backward(*saved)
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor):
        first_order_only("_ClosedFormMoments")
        return (*ctx.rule.vjp(ctx.saved_tensors, grad_mean, grad_var), None)


def closed_form_moments(mu: Tensor, s: Tensor, rule: MomentRule) -> Moments:
    """E and Var from ``rule``: one autograd node in eager mode, the rule's ops (differentiated
    by autograd) while tracing."""
    if tracing():
        return rule.forward(mu, s)[:2]
    return _ClosedFormMoments.apply(mu, s, rule)


def relu_moments(mu: Tensor, s: Tensor) -> Moments:
    """E and Var of relu(U), U ~ N(μ, s²), in closed form."""
    return closed_form_moments(mu, _positive(s), RELU_RULE)


def _leaky_relu_forward(
    mu: Tensor, s: Tensor, slope: float
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """E and Var of leaky_relu(U) = αU + (1-α)relu(U), α = ``slope``, from relu's:

        E = αμ + (1-α)E_r,   Var = s²(α² + 2α(1-α)Φ) + (1-α)²Var_r,

    using Cov(U, relu U) = s²Φ(t); every term is non-negative for α in [0, 1]."""
    mean_r, var_r, saved = _relu_forward(mu, s)
    a, b = slope, 1.0 - slope
    cdf = saved[1]
    mean = torch.add(mean_r * constant(b, mu), mu, alpha=a)
    coef = torch.add(cdf * constant(2.0 * a * b, mu), constant(a * a, mu))
    var = torch.addcmul(var_r * constant(b * b, mu), s * s, coef)
    return mean, var, (*saved, mu)


def _leaky_relu_vjp(saved: tuple[Tensor, ...], grad_mean: Tensor, grad_var: Tensor, slope: float):
    """With relu's partials (:func:`_relu_vjp`) and ∂(s²Φ)/∂μ = sϕ, ∂(s²Φ)/∂s = 2sΦ - μϕ:

    ∂E/∂μ = α + (1-α)Φ,   ∂E/∂s = (1-α)ϕ,
    ∂Var/∂μ = (1-α)²·2E_rQ + 2α(1-α)sϕ,
    ∂Var/∂s = 2α²s + (1-α)²·2(sΦ - E_rϕ) + 2α(1-α)(2sΦ - μϕ).
    """
    s, cdf, upper, pdf, mean_r, mu = saved
    a, b = slope, 1.0 - slope
    slope_mu = torch.addcmul(mean_r * upper * (2.0 * b * b), s, pdf, value=2.0 * a * b)
    relu_s = torch.addcmul(s * cdf, mean_r, pdf, value=-1.0)
    cross_s = torch.addcmul(s * cdf * 2.0, mu, pdf, value=-1.0)
    slope_s = (relu_s * (2.0 * b * b)).add_(cross_s, alpha=2.0 * a * b).add_(s, alpha=2.0 * a * a)
    grad_mu = torch.addcmul(grad_mean * (cdf * b + a), grad_var, slope_mu)
    grad_s = torch.addcmul(grad_mean * pdf * b, grad_var, slope_s)
    return grad_mu, grad_s


@functools.cache
def leaky_relu_rule(slope: float) -> MomentRule:
    """leaky_relu's closed-form moments and their VJP as a :class:`MomentRule` (one per slope)."""
    return MomentRule(
        functools.partial(_leaky_relu_forward, slope=slope),
        functools.partial(_leaky_relu_vjp, slope=slope),
    )


def leaky_relu_moments(mu: Tensor, s: Tensor, slope: float) -> Moments:
    """E and Var of leaky_relu(U), U ~ N(μ, s²), in closed form (:func:`_leaky_relu_forward`)."""
    return closed_form_moments(mu, _positive(s), leaky_relu_rule(slope))


def identity_moments(mu: Tensor, s: Tensor) -> Moments:
    return mu, s * s


def _partial_lognormal(k: float, mu: Tensor, s: Tensor, t: Tensor, gauss: Tensor) -> Tensor:
    """m_k = E[e^{kU}; U ≤ 0] = exp(kμ + k²s²/2)·Φ(-a), a = t + ks, without overflow;
    ``gauss`` = e^{-t²/2}.

    For a ≥ 0, Φ(-a) = erfcx(a/√2)·e^{-a²/2}/2 and the exponents cancel to exactly -t²/2
    (kμ = kst): m_k = e^{-t²/2}·erfcx(a/√2)/2, every factor at most 1. For a < 0,
    kμ + k²s²/2 = ks·a - k²s²/2 < 0 and Φ(-a) ∈ [1/2, 1]: the direct form. Each form is evaluated
    at inputs clamped to its own side, so that neither overflows where the other is selected."""
    a = torch.add(t, s, alpha=k)
    upper = gauss * torch.special.erfcx(a.clamp_min(0.0) * constant(_INV_SQRT_2, mu))
    exponent = torch.addcmul(mu * constant(k, mu), s, s, value=0.5 * k * k).clamp_max(0.0)
    lower = torch.exp(exponent) * torch.special.erfc(a.clamp_max(0.0) * constant(_INV_SQRT_2, mu))
    return torch.where(a >= 0, upper, lower) * constant(0.5, mu)


def _elu_forward(mu: Tensor, s: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """E and Var of elu(U) (α = 1): U on U > 0, e^U - 1 on U ≤ 0.

    elu = relu + g with g(u) = e^{min(u, 0)} - 1 ≤ 0, and relu·g = 0 everywhere, so that
    Cov(relu, g) = -E[relu]·E[g] ≥ 0 and

        Var = Var[relu] + Var[g] - 2·E[relu]·E[g],

    a sum of non-negative terms: no cancellation however large μ is against s (the form
    E[elu²] - E² loses every digit of s² at μ ≫ s). With p = Φ(t), q = Φ(-t), relu's moments
    as in :func:`_relu_forward` and the partial lognormal moments m_k = E[e^{kU}; U ≤ 0]
    (:func:`_partial_lognormal`),

        E[g] = m₁ - q,   Var[g] = (m₂ - m₁²) + p·(q - 2m₁).
    """
    t = torch.div(mu, s).clamp(-_T_MAX, _T_MAX)
    z = t * constant(_INV_SQRT_2, mu)
    half = constant(0.5, mu)
    p, q = torch.special.erfc(-z) * half, torch.special.erfc(z) * half
    gauss = torch.exp(-z.square())
    s_pdf = s * gauss * constant(_INV_SQRT_2PI, mu)
    mean_relu = torch.addcmul(s_pdf, mu, p)
    var_relu = ((mu * q - s_pdf) * mean_relu).addcmul(s * s, p)
    m1, m2 = (_partial_lognormal(k, mu, s, t, gauss) for k in (1.0, 2.0))
    mean_g = m1 - q
    var_g = (m2 - m1 * m1).addcmul(p, q - 2.0 * m1).clamp_min(0.0)
    mean = mean_relu + mean_g
    var = (var_relu + var_g).addcmul(mean_relu, mean_g, value=-2.0).clamp_min(0.0)
    return mean, var, (s, p, m1, m2, mean, mean_relu)


def _elu_vjp(saved: tuple[Tensor, ...], grad_mean: Tensor, grad_var: Tensor):
    """With f = elu, E[h(U)]' in μ is E[h'], in s is s·E[h''] (Stein; f' and (f²)' are
    continuous), f'' = e^u·1[u < 0] and ff' = relu(u) + (e^u - 1)e^u·1[u < 0]:

        ∂E/∂μ = p + m₁,   ∂E/∂s = s·m₁,
        ∂Var/∂μ = 2(E[relu] + m₂ - m₁ - E·(p + m₁)),   ∂Var/∂s = 2s(p + 2m₂ - m₁ - E·m₁).
    """
    s, p, m1, m2, mean, mean_relu = saved
    slope = p + m1
    var_mu = (mean_relu + m2 - m1).addcmul(mean, slope, value=-1.0)
    var_s = (p + 2.0 * m2 - m1).addcmul(mean, m1, value=-1.0) * s
    grad_mu = torch.addcmul(grad_mean * slope, grad_var, var_mu, value=2.0)
    grad_s = torch.addcmul(grad_mean * s * m1, grad_var, var_s, value=2.0)
    return grad_mu, grad_s


ELU_RULE = MomentRule(_elu_forward, _elu_vjp)


def elu_moments(mu: Tensor, s: Tensor) -> Moments:
    """E and Var of elu(U), U ~ N(μ, s²), in closed form (:func:`_elu_forward`)."""
    return closed_form_moments(mu, _positive(s), ELU_RULE)


_nodes_cache: dict[tuple[int, float, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def trapezoid_nodes(
    count: int, half_width: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Nodes z_k on [-L, L] and weights ∝ ϕ(z_k), normalised to sum to one.

    While tracing, both are graph constants made from Python floats (:func:`_trapezoid_values`),
    so that a compiled graph computes no linspace, exp or sum for them at each call."""
    if tracing():
        z, w = _trapezoid_values(count, half_width)
        return (
            torch.tensor(z, dtype=dtype, device=device),
            torch.tensor(w, dtype=dtype, device=device),
        )
    return cached(
        _nodes_cache,
        (count, half_width, dtype, device),
        lambda: _trapezoid_nodes(count, half_width, dtype, device),
    )


def _trapezoid_nodes(
    count: int, half_width: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    z = torch.linspace(-half_width, half_width, count, dtype=torch.float64)
    w = torch.exp(-0.5 * z * z)
    return z.to(dtype=dtype, device=device), (w / w.sum()).to(device=device, dtype=dtype)


def _trapezoid_values(count: int, half_width: float) -> tuple[list[float], list[float]]:
    """:func:`_trapezoid_nodes` in Python floats (float64), for tracers: the nodes as
    torch.linspace places them (from both ends towards the middle), weights ϕ(z_k)/Σϕ."""
    step = 2.0 * half_width / (count - 1) if count > 1 else 0.0
    half = count // 2
    z = [
        -half_width + step * k if k < half else half_width - step * (count - 1 - k)
        for k in range(count)
    ]
    gauss = [math.exp(-0.5 * v * v) for v in z]
    total = math.fsum(gauss)
    return z, [g / total for g in gauss]


def quadrature_moments(
    fn: Callable[[Tensor], Tensor],
    mu: Tensor,
    s: Tensor,
    nodes: int = 128,
    half_width: float = 10.0,
    derivative: Derivative | None = None,
) -> Moments:
    """E and Var of fn(U) by the trapezoidal rule in z, U = μ + s·z, z ~ N(0, 1).

    With ``derivative`` (φ's backward kernel, see :class:`Derivative`), a gradient to record and
    no tracer, one autograd node (:class:`_TrapezoidMoments`) whose backward is four tensor ops;
    else the same sums, differentiated by autograd where needed."""
    z, w = trapezoid_nodes(nodes, half_width, mu.dtype, mu.device)
    needs_grad = torch.is_grad_enabled() and (mu.requires_grad or s.requires_grad)
    if derivative is not None and needs_grad and not tracing():
        if mu.shape != s.shape:
            mu, s = torch.broadcast_tensors(mu, s)
        return _TrapezoidMoments.apply(mu, s, z, w, fn, derivative)
    values = fn(torch.addcmul(mu.unsqueeze(-1), s.unsqueeze(-1), z))
    if tracing():  # weighted sums as reductions, which Inductor fuses (a matmul stays extern)
        mean = (values * w).sum(-1)
        var = ((values - mean.unsqueeze(-1)).square() * w).sum(-1)
        return mean, var
    mean = values @ w
    var = (values - mean.unsqueeze(-1)).square() @ w
    return mean, var


@dataclass(frozen=True)
class Derivative:
    """φ' as a fused kernel: ``backward(grad, saved) -> grad·φ'(u)`` (it may write into grad),
    with ``saved`` = φ(u) where ``saves_output``, else u (:class:`~.activations.Activation`)."""

    backward: Callable[[Tensor, Tensor], Tensor]
    saves_output: bool


class _TrapezoidMoments(torch.autograd.Function):
    """The trapezoid's E = Σ w φ(u) and Var = Σ w (φ(u) - E)², u = μ + s·z, as one node.

    With c = φ(u) - E (Σ w c = 0 removes E's own dependence from ∂Var):

        ∂E/∂μ = Σ w φ',   ∂E/∂s = Σ w z φ',   ∂Var/∂μ = 2 Σ w c φ',   ∂Var/∂s = 2 Σ w z c φ',

    so that both gradients are sums of g = (ḡ_E + 2ḡ_Var·c)·φ'(u): one addcmul, φ's fused
    backward kernel and two matrix-vector products, where autograd runs some thirty ops."""

    @staticmethod
    def forward(ctx, mu, s, z, w, fn, derivative):
        u = torch.addcmul(mu.unsqueeze(-1), s.unsqueeze(-1), z)
        values = fn(u)
        mean = values @ w
        centred = values - mean.unsqueeze(-1)
        var = centred.square() @ w
        ctx.save_for_backward(values if derivative.saves_output else u, centred, z, w)
        ctx.derivative = derivative
        return mean, var

    @staticmethod
    def backward(ctx, grad_mean, grad_var):
        first_order_only("the proxy moments' quadrature")
        saved, centred, z, w = ctx.saved_tensors
        g = torch.addcmul(grad_mean.unsqueeze(-1), grad_var.unsqueeze(-1), centred, value=2.0)
        g = ctx.derivative.backward(g, saved)
        return g @ w, g @ (w * z), None, None, None, None


# -- smooth φ at any scale: the trapezoid for small |s|, a split φ = P + r for large |s| --------

SPLIT_SCALE = 2.0
"""|s| above which :func:`smooth_moments` switches from the trapezoid in z to the split."""


def _sign_residual(u: Tensor) -> Tensor:
    """tanh(u) - sign(u) = -sign(u)·2/(e^{2|u|} + 1)."""
    return -u.sign() * 2.0 / (torch.exp(2.0 * u.abs()) + 1.0)


def _step_residual(u: Tensor) -> Tensor:
    """sigmoid(u) - H(u) = -sign(u)·sigmoid(-|u|)."""
    return -u.sign() * torch.sigmoid(-u.abs())


def _silu_residual(u: Tensor) -> Tensor:
    """u·sigmoid(u) - relu(u) = -|u|·sigmoid(-|u|)."""
    return -u.abs() * torch.sigmoid(-u.abs())


def _gelu_residual(u: Tensor) -> Tensor:
    """u·Φ(u) - relu(u) = -|u|·Φ(-|u|)."""
    return -u.abs() * torch.special.ndtr(-u.abs())


def _softplus_residual(u: Tensor) -> Tensor:
    """log(1 + e^u) - relu(u) = log1p(e^{-|u|})."""
    return torch.log1p(torch.exp(-u.abs()))


@dataclass(frozen=True)
class Split:
    """φ = P + r: a base P with closed-form Gaussian moments and a residual r localised at 0.

    Attributes:
        base: "relu" (P = max(u, 0)), "sign" (P = sign u) or "step" (P = 1[u > 0]).
        residual: r = φ - P, elementwise on float64 tensors; it is only evaluated once, at the
            quadrature nodes, and cached.
        support: R with |r(u)| <= 1e-17 for |u| >= R: the nodes cover [-R, R].
        breaks: panel ends on [0, R] (mirrored on [-R, 0]), each panel carrying ``order``
            Gauss–Legendre nodes; r is analytic on each side of 0, so each panel converges
            geometrically.
        order: Gauss–Legendre nodes per panel.
        nodes, weights: the Gauss–Legendre nodes u_k > 0 of the panels and their weights, as
            floats, made on construction (by numpy, which tracers cannot run).
        table: :func:`split_nodes`' nodes on [-R, R] and table, as float64 values made on
            construction, from which tracers take them as graph constants.
    """

    base: str
    residual: Callable[[Tensor], Tensor]
    breaks: tuple[float, ...]
    order: int = 10
    nodes: tuple[float, ...] = field(init=False, repr=False, compare=False)
    weights: tuple[float, ...] = field(init=False, repr=False, compare=False)
    table: tuple[list[float], list[list[float]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.base not in ("relu", "sign", "step"):
            raise unknown("split base", self.base, ("relu", "sign", "step"))
        x, w = np.polynomial.legendre.leggauss(self.order)
        ends = np.asarray(self.breaks, dtype=np.float64)
        half, mid = (ends[1:] - ends[:-1])[:, None] / 2, (ends[1:] + ends[:-1])[:, None] / 2
        object.__setattr__(self, "nodes", tuple((mid + half * x).ravel().tolist()))
        object.__setattr__(self, "weights", tuple((half * w).ravel().tolist()))
        u, table = _split_nodes(self, torch.float64, torch.device("cpu"))
        object.__setattr__(self, "table", (u.tolist(), table.tolist()))

    @property
    def support(self) -> float:
        return self.breaks[-1]


_split_cache: dict[tuple[Split, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def split_nodes(split: Split, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Nodes u_k on [-R, R] and the table w_k·(r_k·1[u_k > 0], r_k·1[u_k < 0], r_k², r_k·u_k⁺)
    (4 × K), w_k the Gauss–Legendre weights: what :func:`split_moments` contracts with the
    Gaussian density at the nodes. While tracing, graph constants made from ``split.table``."""
    if tracing():
        u, table = split.table
        return (
            torch.tensor(u, dtype=dtype, device=device),
            torch.tensor(table, dtype=dtype, device=device),
        )
    return cached(_split_cache, (split, dtype, device), lambda: _split_nodes(split, dtype, device))


def _split_nodes(split: Split, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    u_pos = torch.tensor(split.nodes, dtype=torch.float64)
    w_pos = torch.tensor(split.weights, dtype=torch.float64)
    u, weights = torch.cat([-u_pos.flip(0), u_pos]), torch.cat([w_pos.flip(0), w_pos])
    r = split.residual(u)
    positive = (u > 0).to(torch.float64)
    table = torch.stack([r * positive, r * (1 - positive), r * r, r * u.clamp_min(0.0)], dim=-1)
    table = (table * weights.unsqueeze(-1)).T.contiguous()
    return u.to(dtype=dtype, device=device), table.to(dtype=dtype, device=device)


TANH_SPLIT = Split("sign", _sign_residual, (0.0, 1.5, 4.0, 8.0, 14.0, 20.0))
SIGMOID_SPLIT = Split("step", _step_residual, (0.0, 1.5, 4.0, 8.0, 14.0, 24.0, 40.0))
SILU_SPLIT = Split("relu", _silu_residual, (0.0, 1.5, 4.0, 8.0, 14.0, 24.0, 44.0))
GELU_SPLIT = Split("relu", _gelu_residual, (0.0, 1.5, 3.5, 6.0, 9.5))
SOFTPLUS_SPLIT = Split("relu", _softplus_residual, (0.0, 1.5, 4.0, 8.0, 14.0, 24.0, 40.0))


def split_moments(split: Split, mu: Tensor, s: Tensor) -> Moments:
    """E and Var of φ(U), U ~ N(μ, s²), s > 0, from the split φ = P + r (:class:`Split`):

        E[φ] = E[P] + E[r],   Var[φ] = Var[P] + 2·Cov(P, r) + Var[r],

    with E[P], Var[P] in closed form, E[r] = Σ_k w_k r_k N(u_k; μ, s²) over the nodes of
    [-R, R], Var[r] = E[r²] - E[r]² (r = 0 outside [-R, R], so that the mass outside counts
    as it should), and Cov(P, r) = E[(P - E[P])·r] summed with P - E[P] known on each side of 0:

        relu:  Cov = E[u⁺·r] - E[P]·E[r]
        sign:  Cov = 2·(Q·E[r; u > 0] - Φ·E[r; u < 0])   (P - E[P] = 2Q above 0, -2Φ below)
        step:  Cov = Q·E[r; u > 0] - Φ·E[r; u < 0]

    with Φ = Φ(μ/s) and Q = 1 - Φ computed as Φ(-μ/s), so that the centred step is exact on
    each side however close Φ is to 1; for relu, E[u⁺·r] lives on [0, R], where u⁺ <= R, so
    that it is at most R·E[|r|] and the difference loses nothing to a large E[P].

    Accurate for s >= :data:`SPLIT_SCALE` (μ and s of one shape), where the density varies
    slowly on the panels; μ/s is clamped to ±1e6·√2, where the density is 0 at every node
    anyway, so that no μ overflows or makes a NaN gradient."""
    u, table = split_nodes(split, mu.dtype, mu.device)
    # density ∝ exp(-y²), y = (u - μ)/(s√2); |μ|/s clamped where exp(-y²) is 0 at every node
    scale = constant(_INV_SQRT_2, s) / s
    shift = (mu * scale).clamp(-1e6, 1e6)
    y = torch.addcmul(shift.unsqueeze(-1), scale.unsqueeze(-1), u, value=-1.0)
    norm = scale * constant(_INV_SQRT_PI, s)
    if tracing():  # one fused reduction over the nodes for the four sums, no extern matmul
        density = y.square().neg().exp()
        sums = (density.unsqueeze(-2) * table).sum(-1) * norm.unsqueeze(-1)
        r_pos, r_neg, r_square, r_u = sums.unbind(-1)
    else:
        density = y.square().neg_().exp_()
        flat = density.reshape(-1, u.shape[0])
        sums = (table @ flat.T) * norm.reshape(1, -1)
        r_pos, r_neg, r_square, r_u = (row.reshape(mu.shape) for row in sums.unbind(0))
    mean_r = r_pos + r_neg
    if split.base == "relu":
        mean_p, var_p, _ = _relu_forward(mu, s)
        cov = r_u - mean_p * mean_r
    else:
        z = mu / s * constant(_INV_SQRT_2, mu)
        cdf, upper = (torch.special.erfc(v) * constant(0.5, mu) for v in (-z, z))
        if split.base == "sign":
            mean_p, var_p = cdf - upper, 4.0 * cdf * upper
            cov = 2.0 * (upper * r_pos - cdf * r_neg)
        else:
            mean_p, var_p = cdf, cdf * upper
            cov = upper * r_pos - cdf * r_neg
    var = var_p + 2.0 * cov + (r_square - mean_r * mean_r)
    return mean_p + mean_r, var.clamp_min(0.0)


def _far_entries(s: Tensor) -> Tensor | None:
    """The flat indices of the |s| > :data:`SPLIT_SCALE`, in eager mode on a CPU (reading s
    back costs nothing there); None on accelerators (no host sync) and while tracing (no
    data-dependent shapes). NaN entries count as near: the trapezoid then makes them NaN."""
    if tracing() or s.device.type != "cpu":
        return None
    far = s.detach().abs().reshape(-1) > SPLIT_SCALE
    return far.nonzero().squeeze(1) if bool(far.any()) else far.new_empty(0, dtype=torch.long)


def smooth_moments(
    fn: Callable[[Tensor], Tensor],
    mu: Tensor,
    s: Tensor,
    nodes: int,
    half_width: float,
    split: Split | None,
    derivative: Derivative | None = None,
) -> Moments:
    """E and Var of a smooth φ(U), U ~ N(μ, s²), for any finite μ and s.

    |s| <= :data:`SPLIT_SCALE`: the trapezoid in z (:func:`quadrature_moments`), geometrically
    convergent for φ analytic in a strip; beyond, the split (:func:`split_moments`), where the
    trapezoid would need nodes in proportion to |s|. Each branch runs on inputs clamped to its
    own range, so that neither makes an inf or NaN (nor a NaN gradient) where the other is
    taken. Eager on a CPU, the split runs on the entries that need it only (none, in PN's
    usual |γ| ≈ 1) and overwrites them; on an accelerator (no host sync) and while tracing (no
    data-dependent shape), both branches run everywhere and torch.where picks. φ without a
    split: the trapezoid alone.
    """
    if mu.shape != s.shape:
        mu, s = torch.broadcast_tensors(mu, s)
    far = None if split is None else _far_entries(s)
    if split is None or (far is not None and far.numel() == 0):
        # the trapezoid's nodes are symmetric: s may be signed
        return quadrature_moments(fn, mu, s, nodes, half_width, derivative)
    small = s.clamp(-SPLIT_SCALE, SPLIT_SCALE)
    mean_q, var_q = quadrature_moments(fn, mu, small, nodes, half_width, derivative)
    if far is not None:
        mean_s, var_s = split_moments(split, mu.reshape(-1)[far], s.reshape(-1)[far].abs())
        mean = mean_q.reshape(-1).index_put((far,), mean_s).view(mu.shape)
        var = var_q.reshape(-1).index_put((far,), var_s).view(mu.shape)
        return mean, var
    s = s.abs()
    mean_s, var_s = split_moments(split, mu, s.clamp_min(SPLIT_SCALE))
    near = s <= SPLIT_SCALE
    return torch.where(near, mean_q, mean_s), torch.where(near, var_q, var_s)
