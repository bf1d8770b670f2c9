r"""GroupNorm (or LN, IN) followed by relu Proxy Normalization, as one autograd node.

The GN+PN step of the PN paper (Eqs. 3 and 7) for φ = relu, in training:

    (weight, bias, c) = fold(γ, β, β̃, γ̃)                  (:mod:`~.threshold_fold`)
    u = GN(x)·weight + bias                                  (torch's native group_norm kernel)
    z = max(u, c)                                            (in place on u)

Run as separate nodes (fold, F.group_norm, channel max) this costs three Python autograd nodes
per layer; here the fold, torch's native group_norm and its native backward run inside one
node. Backward saves what GN + ReLU save (GN's input and statistics, and z), masks the incoming
gradient where z > c, hands it to ``native_group_norm_backward`` (which returns the gradients of
weight and bias), and adds c's gradient Σ grad.

On CPU the same node is written in C++ (``csrc/group_norm_pn.cpp``, built and loaded by
:mod:`normlab.layers.compiled`): no Python on the per-layer path, the fold in double precision,
and the mask and Σ grad in one pass over the gradient.

Tracers (torch.compile, torch.export and with it ONNX export, torch.jit.trace) see neither node:
under :func:`~normlab._checks.tracing` the step is :func:`traced_group_norm_threshold_pn`, the
same equations as standard differentiable ATen ops, which Inductor fuses and which export to
ONNX and TorchScript as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import batch_channel_view, channel_sum, channel_view, first_order_only, tracing
from .compiled import kernels
from .gaussian import MomentRule
from .tails import NonFiniteShiftError, masked_grad
from .threshold_fold import fold, fold_vjp, threshold_is_finite


def native_layout(x: Tensor) -> Tensor:
    """x in a memory format the native group_norm kernels take as is: channels-last stays
    channels-last on CPU (as in F.group_norm), anything else becomes contiguous."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if x.device.type == "cpu" and channels_last:
        return x
    return x.contiguous()


class GroupNormThresholdPN(torch.autograd.Function):
    """(x, γ, β, β̃, γ̃) -> (z, c): GN with ``groups`` groups, then relu-PN; c is returned
    (non-differentiable) so that the caller can check it is finite."""

    @staticmethod
    def forward(ctx, x, gamma, beta, proxy_beta, proxy_gamma, groups, norm_eps, eps, rule):
        (weight, bias, shift), fold_saved = fold(gamma, beta, proxy_beta, proxy_gamma, eps, rule)
        x = native_layout(x)
        n, c = x.shape[:2]
        hw = math.prod(x.shape[2:])
        out, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, hw, groups, norm_eps)
        threshold = channel_view(shift, x.dim())
        torch.maximum(out, threshold, out=out)
        ctx.rule, ctx.sizes = rule, (n, c, hw, groups)
        ctx.save_for_backward(x, mean, rstd, weight, out, threshold, *fold_saved)
        ctx.mark_non_differentiable(shift)
        return out, shift

    @staticmethod
    def backward(ctx, grad, _grad_shift):
        first_order_only("GroupNormThresholdPN")
        x, mean, rstd, weight, out, threshold, *fold_saved = ctx.saved_tensors
        grad_u = masked_grad(grad, out, threshold)
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            grad_u, x, mean, rstd, weight, *ctx.sizes, [ctx.needs_input_grad[0], True, True]
        )
        grad_shift = channel_sum(grad)
        grads = fold_vjp(tuple(fold_saved), ctx.rule, grad_weight, grad_bias, grad_shift)
        return grad_x, *grads, None, None, None, None


def group_norm_threshold_pn(
    x: Tensor,
    params: tuple[Tensor, Tensor, Tensor, Tensor],
    groups: int,
    norm_eps: float,
    eps: float,
    rule: MomentRule,
    check_finite: bool = True,
) -> Tensor:
    """relu-PN(GN(x)) with PN parameters ``params`` = (γ, β, β̃, γ̃).

    Runs normlab's C++ node (:mod:`normlab.layers.compiled`) for contiguous float32/float64 CPU
    tensors, and :class:`GroupNormThresholdPN` otherwise; while tracing (torch.compile,
    torch.export, jit.trace), :func:`traced_group_norm_threshold_pn`. Raises
    :class:`NonFiniteShiftError` when ``check_finite`` and the threshold is not finite."""
    if tracing():
        return traced_group_norm_threshold_pn(x, params, groups, norm_eps, eps, rule)
    compiled = kernels() if _compiled_kernel_applies(x, params) else None
    if compiled is not None:
        try:
            out, _ = compiled.group_norm_threshold_pn(
                x, *params, groups, norm_eps, eps, check_finite
            )
        except ValueError as error:  # the kernel's only ValueError
            raise NonFiniteShiftError(str(error)) from None
        return out
    out, shift = GroupNormThresholdPN.apply(x, *params, groups, norm_eps, eps, rule)
    if check_finite and not threshold_is_finite(shift):
        raise NonFiniteShiftError("non-finite Proxy Normalization parameters")
    return out


def _compiled_kernel_applies(x: Tensor, params: tuple[Tensor, ...]) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.is_contiguous()
        and all(p.dtype == x.dtype and p.is_contiguous() for p in params)
    )


def traced_group_norm_threshold_pn(
    x: Tensor,
    params: tuple[Tensor, Tensor, Tensor, Tensor],
    groups: int,
    norm_eps: float,
    eps: float,
    rule: MomentRule,
) -> Tensor:
    """The same step as standard differentiable ops, for tracers: the fold, F.group_norm with
    the folded affine, max(u, c) as clamp_min (see :func:`~.tails.channel_max`). Autograd
    differentiates all three (the bias carries c, so c's partials through the bias and the max
    add up to Σ grad, as in the fused node); Inductor fuses the max into GroupNorm's epilogue,
    and export, ONNX and TorchScript see ATen ops only."""
    (weight, bias, shift), _ = fold(*params, eps, rule)
    out = F.group_norm(x, groups, weight, bias, norm_eps)
    return torch.clamp_min(out, batch_channel_view(shift, x))
