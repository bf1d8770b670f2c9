r"""Fused tails of the activation step: what follows the per-channel affine, as one autograd node.

An activation step computes tail(w·ỹ + b) where the affine (w, b) can run inside the normalizer's
native kernel. These tails save no more for backward than a plain φ would (the output, or φ's
input), and recompute cheap elementwise work instead:

* :func:`channel_max` — max(u, c_c) with a per-channel c: the TLU of FRN, and the whole of
  PN with relu, where c + relu(v) = max(v + c, c) once the shift c is folded into the bias.
* :func:`scale_shift_act` — φ(u)·a_c + c_c, PN for any φ: saves the output (when φ' is a
  function of φ, as for tanh or sigmoid) or else u, and recomputes φ, φ'.
* :func:`proxy_norm_step` — the whole of PN after a normalizer, (u, γ, β, β̃, γ̃) -> z: the proxy
  moments of every channel and the tail as one node.

On CPU the last two run normlab's C++ kernels (``csrc/pn_tail.cpp``, :mod:`~.compiled`) for the
built-in φ: one vectorised pass forward, one backward that applies φ' and sums Σ g·φ(u) and Σ g
per channel (a's and c's gradients), and, in :func:`proxy_norm_step`, the moments with their
Jacobian in the same node. The Python nodes below are the reference they are tested against,
and run elsewhere (other devices, autocast dtypes, registered φ).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import batch_channel_view, channel_sum, channel_view, first_order_only, tracing
from .activations import Activation, get_activation
from .compiled import kernels
from .gaussian import SPLIT_SCALE, trapezoid_nodes

# the built-in φ in the order of pn_tail.cpp's ActId
KERNEL_ACTIVATIONS = (
    "relu",
    "leaky_relu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "elu",
    "softplus",
    "identity",
)


def masked_grad(grad: Tensor, out: Tensor, threshold: Tensor) -> Tensor:
    """grad where out = max(u, c) took u (out > c), else 0; c is a channel view. Recomputes the
    mask with one subtraction, whose buffer then holds the result. The mask is taken in out's
    (and grad's) dtype: under autocast out may be bfloat16 against a float32 c, and
    threshold_backward needs one dtype."""
    if threshold.dtype != out.dtype:
        threshold = threshold.to(out.dtype)
    above = out - threshold
    return torch.ops.aten.threshold_backward.grad_input(grad, above, 0, grad_input=above)


class _ChannelMax(torch.autograd.Function):
    """out = max(u, c_c). ``shift`` semantics: out = c + relu(u - c̄), c̄ = c held fixed."""

    @staticmethod
    def forward(ctx, u: Tensor, c: Tensor, shift: bool, inplace: bool) -> Tensor:
        c_view = channel_view(c, u.dim())
        if inplace:
            ctx.mark_dirty(u)
            out = torch.maximum(u, c_view, out=u)
        else:
            out = torch.maximum(u, c_view)
        ctx.shift = shift
        ctx.save_for_backward(out, c_view)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        first_order_only("_ChannelMax")
        out, c_view = ctx.saved_tensors
        grad_u = masked_grad(grad, out, c_view)
        grad_c = None
        if ctx.needs_input_grad[1]:
            grad_c = channel_sum(grad) if ctx.shift else channel_sum(grad - grad_u)
        return grad_u, grad_c, None, None


def channel_max(u: Tensor, c: Tensor, shift: bool = False, inplace: bool = False) -> Tensor:
    """max(u, c) with c per channel (shape (C,)).

    With ``shift=False`` the gradients are the true partials (∂/∂c = 1[u ≤ c]): FRN's TLU. With
    ``shift=True`` the result is read as c + relu(u - c) where u already contains c through a
    detached path, so c receives the total gradient Σ grad: PN with relu. ``inplace=True``
    overwrites u, which must then be a fresh intermediate that no backward needs (the output of
    a normalizer or an affine), as ``nn.ReLU(inplace=True)`` after a BatchNorm.

    While tracing (:func:`~normlab._checks.tracing`) it is torch.clamp_min(u, c), out of place
    (same values, NaN included; its autograd gives ties u = c, a null set, to u); with
    ``shift=True`` it adds c - c̄ (exactly 0 for finite c) to route Σ grad to c. Not
    torch.maximum: AOTAutograd (torch 2.13) returns wrong GroupNorm gradients for
    maximum(group_norm(x), c) on channels-last x, and clamp_min's backward avoids that.
    """
    if tracing():
        c_view = channel_view(c, u.dim())
        if not shift:
            return torch.clamp_min(u, c_view)
        return torch.clamp_min(u, c_view.detach()) + (c_view - c_view.detach())
    return _ChannelMax.apply(u, c, shift, inplace)


class _ScaleShiftAct(torch.autograd.Function):
    """out = φ(u)·a_c + c_c. Saves the output when φ' is a function of φ (then φ(u) = (out - c)/a,
    a > 0) and out is float32 or float64, else u; φ(u) is recomputed in backward and φ' applied
    by torch's fused kernel. A half-precision out (autocast) rounds φ(u)·a + c to c's scale, which
    can flip the sign of a small recovered φ(u) and with it a leaky relu's slope: u is exact."""

    @staticmethod
    def forward(ctx, u: Tensor, scale: Tensor, shift: Tensor, act: Activation) -> Tensor:
        scale_view, shift_view = channel_view(scale, u.dim()), channel_view(shift, u.dim())
        value = act.fn(u)
        # φ(u) is fresh and ours to overwrite, unless φ = identity handed u itself back
        out = (value * scale_view if value is u else value.mul_(scale_view)).add_(shift_view)
        ctx.act, ctx.keeps_output = act, act.saves_output and out.dtype in _WIDE
        ctx.save_for_backward(out if ctx.keeps_output else u, scale_view, shift_view)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        first_order_only("_ScaleShiftAct")
        saved, scale_view, shift_view = ctx.saved_tensors
        act: Activation = ctx.act
        # φ(u), recomputed: (out - c)/a, exactly 0 where out = c, or φ of the saved u
        value = (saved - shift_view).div_(scale_view) if ctx.keeps_output else act.fn(saved)
        grad_value = grad * scale_view
        operand = value if act.saves_output else saved
        if operand.dtype != grad_value.dtype:  # torch's backward kernels need one dtype
            operand = operand.to(grad_value.dtype)
        grad_u = act.backward(grad_value, operand)
        grad_shift = channel_sum(grad) if ctx.needs_input_grad[2] else None
        grad_scale = channel_sum(value.mul_(grad)) if ctx.needs_input_grad[1] else None
        return grad_u, grad_scale, grad_shift, None


_WIDE = (torch.float32, torch.float64)
_CPU = torch.device("cpu")


def kernel_activation(act: Activation) -> int | None:
    """φ's id in the C++ tails, or None for a φ registered by the user (or a modified copy)."""
    try:
        index = KERNEL_ACTIVATIONS.index(act.name)
    except ValueError:
        return None
    return index if get_activation(act.name) is act else None


def _tail_kernels(u: Tensor, per_channel: tuple[Tensor, ...]):
    """The C++ tails where they apply to u and the per-channel tensors (CPU, one float32 or
    float64 dtype, u NCHW-contiguous or channels-last), else None."""
    if u.device.type != "cpu" or u.dtype not in (torch.float32, torch.float64) or u.dim() < 2:
        return None
    if not (u.is_contiguous() or u.is_contiguous(memory_format=torch.channels_last)):
        return None
    if any(t.dtype != u.dtype or t.device.type != "cpu" for t in per_channel):
        return None
    return kernels("normlab_tails")


def scale_shift_act(u: Tensor, scale: Tensor, shift: Tensor, act: Activation) -> Tensor:
    """φ(u)·scale + shift with per-channel scale and shift (shape (C,)), scale > 0; while
    tracing, the same three ops, differentiated by autograd."""
    if tracing():
        return act.fn(u) * batch_channel_view(scale, u) + batch_channel_view(shift, u)
    index = kernel_activation(act)
    compiled = None if index is None else _tail_kernels(u, (scale, shift))
    if compiled is not None:
        return compiled.scale_shift_act(u, scale.contiguous(), shift.contiguous(), index)
    return _ScaleShiftAct.apply(u, scale, shift, act)


class NonFiniteShiftError(ValueError):
    """PN's shift c = -E·a came out non-finite in one of the C++ nodes (:func:`proxy_norm_step`,
    :func:`~.group_norm_pn.group_norm_threshold_pn`): some PN parameter is, and the caller
    names it."""


def proxy_norm_step(
    u: Tensor,
    params: tuple[Tensor, Tensor, Tensor, Tensor],
    act: Activation,
    eps: float,
    check_finite: bool,
    inplace: bool = False,
) -> tuple[Tensor, Tensor] | None:
    """PN's activation step z = φ(u)·a + c (PN paper Eq. 7) from u = γỹ + β and ``params`` =
    (γ, β, β̃, γ̃), with a, c from the exact proxy moments, as one C++ autograd node returning
    (z, a), a = (Var + ε)^(-1/2) per channel and differentiable as z is; None where
    it does not apply, and the caller computes the moments in Python: no C++ moments for φ
    (only relu and the φ computed by the trapezoid have them), u or the parameters unfit for
    the kernels (see :func:`_tail_kernels`), or some channel with |γ(1 + γ̃)| beyond the
    trapezoid's range (:data:`~.gaussian.SPLIT_SCALE`), where the split takes over. Raises
    :class:`NonFiniteShiftError` when ``check_finite`` and c is not finite. With ``inplace``
    (u a fresh intermediate that no backward needs, as a :class:`~.act.Plan`'s tail receives)
    z overwrites u where the node keeps z for backward (φ' a function of φ: relu, tanh, ...),
    which saves an allocation, as ``nn.ReLU(inplace=True)`` does."""
    index = kernel_activation(act)
    if index is None or not (act.name == "relu" or act.closed_form is None):
        return None
    compiled = _tail_kernels(u, params)
    if compiled is None or any(not p.is_contiguous() for p in params):
        return None
    z, w = trapezoid_nodes(act.quadrature_nodes, act.quadrature_half_width, torch.float64, _CPU)
    try:
        out = compiled.proxy_norm_step(
            u, *params, index, z, w, SPLIT_SCALE, eps, check_finite, inplace
        )
    except ValueError as error:  # the kernel's only ValueError
        raise NonFiniteShiftError(str(error)) from None
    return (out[0], out[1]) if out else None
