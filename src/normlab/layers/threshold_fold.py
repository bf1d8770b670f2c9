r"""Proxy Normalization with relu folded into the normalizer's affine (PN paper Eq. 7).

For φ(u) = max(u, 0), PN's per-channel scale a = (Var + ε)^(-1/2) > 0 and shift c = -E·a give

    z = a·φ(γỹ + β) + c = max(γa·ỹ + (βa + c), c),

so the whole activation step is the affine (weight γa, bias βa + c) run inside the normalizer's
kernel, then one max against the per-channel threshold c. :func:`fold` computes (weight, bias,
c) from (γ, β, β̃, γ̃) with the closed-form moments of φ(N(μ, s²)), μ = γβ̃ + β, s = |γ(1 + γ̃)|,
and :func:`fold_vjp` is its vector-Jacobian product, written by hand so that the whole map is a
single autograd node (or part of one, see :mod:`normlab.layers.group_norm_pn`).

The bias carries βa only as far as gradients go: c reaches the output through the threshold,
whose tail returns c's whole gradient Σ grad (``channel_max(..., shift=True)``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import first_order_only
from .gaussian import MomentRule, constant

Folded = tuple[Tensor, Tensor, Tensor]


def fold(
    gamma: Tensor,
    beta: Tensor,
    proxy_beta: Tensor,
    proxy_gamma: Tensor,
    eps: float,
    rule: MomentRule,
) -> tuple[Folded, tuple[Tensor, ...]]:
    """(weight γa, bias βa + c, threshold c) and the tensors :func:`fold_vjp` needs.

    Out of place, so that autograd can differentiate it too: while tracing, normlab runs it
    without :class:`ThresholdFold`, and then the bias carries c's gradient as well (the tail is
    the plain max(u, c), whose partials add up to the same total)."""
    signed_s = torch.addcmul(gamma, gamma, proxy_gamma)
    s = signed_s.abs().clamp_min(torch.finfo(signed_s.dtype).tiny)
    mean, var, moments = rule.forward(torch.addcmul(beta, gamma, proxy_beta), s)
    scale = (var + constant(eps, var)).rsqrt()
    shift = -(mean * scale)
    folded = (gamma * scale, torch.addcmul(shift, beta, scale), shift)
    params = (gamma, beta, proxy_beta, proxy_gamma)
    return folded, (*params, signed_s.sign(), scale, mean, *moments)


def fold_vjp(
    saved: tuple[Tensor, ...],
    rule: MomentRule,
    grad_weight: Tensor,
    grad_bias: Tensor,
    grad_shift: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of (γ, β, β̃, γ̃) from those of (weight, bias, threshold)."""
    gamma, beta, proxy_beta, proxy_gamma, sign, scale, mean, *moments = saved
    # a = (Var + ε)^(-1/2), c = -E·a: ∂/∂Var through a, ∂/∂E through c
    grad_scale = torch.addcmul(grad_weight * gamma, grad_bias, beta)
    grad_var = torch.addcmul(grad_scale, grad_shift, mean, value=-1.0)
    grad_var.mul_(scale.pow(3)).mul_(constant(-0.5, scale))
    grad_mu, grad_s = rule.vjp(tuple(moments), (grad_shift * scale).neg_(), grad_var)
    grad_s.mul_(sign)
    # μ = γβ̃ + β, s = |γ(1 + γ̃)|, weight = γa, bias = βa + c̄
    grad_gamma = torch.addcmul(grad_s, grad_mu, proxy_beta).addcmul_(grad_s, proxy_gamma)
    grad_gamma.addcmul_(grad_weight, scale)
    grad_beta = torch.addcmul(grad_mu, grad_bias, scale)
    return grad_gamma, grad_beta, grad_mu * gamma, grad_s * gamma


def threshold_is_finite(shift: Tensor) -> bool:
    """c = -E·a is finite unless some PN parameter is not (one reduction, one read-back)."""
    return math.isfinite(shift.sum().item())


class ThresholdFold(torch.autograd.Function):
    """:func:`fold` as one autograd node: (γ, β, β̃, γ̃, ε, rule) -> (weight, bias, threshold)."""

    @staticmethod
    def forward(ctx, gamma, beta, proxy_beta, proxy_gamma, eps, rule):
        folded, saved = fold(gamma, beta, proxy_beta, proxy_gamma, eps, rule)
        ctx.rule = rule
        ctx.save_for_backward(*saved)
        return folded

    @staticmethod
    def backward(ctx, grad_weight, grad_bias, grad_shift):
        first_order_only("ThresholdFold")
        grads = fold_vjp(ctx.saved_tensors, ctx.rule, grad_weight, grad_bias, grad_shift)
        return *grads, None, None
