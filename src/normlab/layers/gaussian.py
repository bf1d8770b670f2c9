r"""Moments of an activation of a Gaussian: E[φ(U)] and Var[φ(U)] for U ~ N(μ, s²).

These are the proxy moments of Proxy Normalization (Labatie et al. 2021, Eq. 7) once the
proxy's affine transform is folded in: with Y ~ N(β̃, (1+γ̃)²), γ·Y + β ~ N(μ, s²) with
μ = γβ̃ + β and s = γ(1+γ̃). Everything here is a function of (μ, s), elementwise and
differentiable.

* Piecewise-linear φ (relu, leaky relu, identity) and elu have closed forms, written with the
  standard normal pdf ϕ and cdf Φ at t = μ/|s| so that no term overflows as s → 0.
* Smooth φ without a closed form use the trapezoidal rule in z = (u - μ)/s on [-L, L]. For φ
  analytic in a strip |Im u| < d (tanh, sigmoid, silu, softplus, gelu) the rule converges
  geometrically, with error ~ exp(-2π d / (|s| h)) for node spacing h, far faster than
  Gauss–Hermite, whose nodes spread to ±sqrt(2K). The variance is summed around the mean
  (two passes), never as E[φ²] - E[φ]², so it stays accurate when it is small.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import cached, first_order_only, tracing

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

Moments = tuple[Tensor, Tensor]


def _pdf(t: Tensor) -> Tensor:
    return torch.exp(-0.5 * t * t) * _INV_SQRT_2PI


def _standardize(mu: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """|s| kept away from zero, and t = μ/|s|."""
    s = s.abs().clamp_min(torch.finfo(s.dtype).tiny)
    return s, mu / s


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


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
    s, _ = _standardize(mu, s)
    return closed_form_moments(mu, s, RELU_RULE)


def leaky_relu_moments(mu: Tensor, s: Tensor, slope: float) -> Moments:
    """E and Var of leaky_relu(U) = αU + (1-α)relu(U).

    Var = α²s² + (1-α)²Var[relu U] + 2α(1-α)s²Φ(t), using Cov(U, relu U) = s²Φ(t).
    """
    s, t = _standardize(mu, s)
    mean_r, var_r = closed_form_moments(mu, s, RELU_RULE)
    a, b = slope, 1.0 - slope
    mean = a * mu + b * mean_r
    var = a * a * s * s + b * b * var_r + 2.0 * a * b * s * s * torch.special.ndtr(t)
    return mean, var


def identity_moments(mu: Tensor, s: Tensor) -> Moments:
    return mu, s * s


def elu_moments(mu: Tensor, s: Tensor) -> Moments:
    """E and Var of elu(U) (α = 1): U on U > 0, e^U - 1 on U ≤ 0.

    With the lognormal partial moments E[e^{kU}; U ≤ 0] = exp(kμ + k²s²/2) Φ(-t - ks),
    evaluated in log space (log Φ) so that large s does not overflow.
    """
    s, t = _standardize(mu, s)
    cdf, upper, pdf = torch.special.ndtr(t), torch.special.ndtr(-t), _pdf(t)
    e1 = torch.exp(mu + 0.5 * s * s + torch.special.log_ndtr(-t - s))
    e2 = torch.exp(2.0 * mu + 2.0 * s * s + torch.special.log_ndtr(-t - 2.0 * s))
    mean_pos = mu * cdf + s * pdf
    mean = mean_pos + e1 - upper
    second = (mu * mu + s * s) * cdf + mu * s * pdf + e2 - 2.0 * e1 + upper
    return mean, (second - mean * mean).clamp_min(0.0)


_nodes_cache: dict[tuple[int, float, torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}


def trapezoid_nodes(
    count: int, half_width: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Nodes z_k on [-L, L] and weights ∝ ϕ(z_k), normalised to sum to one."""
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


def quadrature_moments(
    fn: Callable[[Tensor], Tensor],
    mu: Tensor,
    s: Tensor,
    nodes: int = 128,
    half_width: float = 10.0,
) -> Moments:
    """E and Var of fn(U) by the trapezoidal rule in z, U = μ + s·z, z ~ N(0, 1)."""
    z, w = trapezoid_nodes(nodes, half_width, mu.dtype, mu.device)
    values = fn(mu.unsqueeze(-1) + s.unsqueeze(-1) * z)
    mean = values @ w
    var = (values - mean.unsqueeze(-1)).square() @ w
    return mean, var
