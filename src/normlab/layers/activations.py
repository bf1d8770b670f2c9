r"""The activation functions φ of the activation step, with what Proxy Normalization needs of them.

Each registered φ carries torch's backward kernel for it (so fused backward passes recompute
instead of storing)
and how its Gaussian moments E[φ(U)], Var[φ(U)], U ~ N(μ, s²), are computed exactly: a closed form,
or for smooth φ a trapezoidal quadrature for |s| <= 2 and a split of φ into a closed-form base and
a localised residual beyond (:mod:`normlab.layers.gaussian`). For every built-in φ both moments
are within 1e-6·|exact| + 1e-9 for all |μ| <= 3e4, |s| <= 2e4 (|γ| <= 1e4, |β| <= 1e4,
|β̃| <= 2, 1 + γ̃ in [0.25, 2]), checked against 32-digit adaptive integration.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import unknown
from . import gaussian

LEAKY_RELU_SLOPE = 0.01


@dataclass(frozen=True)
class Activation:
    """One φ of the registry.

    Attributes:
        name: registry key, as given in ``act="..."``.
        fn: φ itself, elementwise.
        backward: (grad, saved) -> grad·φ'(u), torch's fused backward kernel for φ, which may
            write into grad's storage; ``saved`` is φ(u) when ``saves_output``, else u.
        saves_output: whether φ' is a function of φ(u) (relu, tanh, sigmoid, ...), so that a
            backward pass can keep the output alone, as torch does.
        closed_form: (μ, s) -> (E, Var) of φ(N(μ, s²)) in closed form, or None for quadrature.
        moment_rule: closed-form moments with their vector-Jacobian product, where known: PN
            then computes its whole per-channel scale and shift as a single autograd node.
        quadrature_nodes: trapezoid nodes on [-quadrature_half_width, quadrature_half_width].
        split: φ = P + r for |s| > 2 (:class:`~normlab.layers.gaussian.Split`); without one
            the trapezoid serves every s, accurate only as far as its nodes resolve φ
            (|s| <= 4.5 for the default 128 nodes on [-10, 10] and a φ as smooth as tanh).
        threshold_form: φ(u) = max(u, 0), so that c + φ(v) = max(v + c, c): PN's shift folds
            into a threshold.
        description: one line for listings.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    backward: Callable[[Tensor, Tensor], Tensor]
    description: str
    saves_output: bool = False
    closed_form: Callable[[Tensor, Tensor], gaussian.Moments] | None = None
    moment_rule: gaussian.MomentRule | None = None
    quadrature_nodes: int = 128
    quadrature_half_width: float = 10.0
    split: gaussian.Split | None = None
    threshold_form: bool = False

    def derivative(self, u: Tensor) -> Tensor:
        """φ'(u), elementwise, from the backward kernel."""
        return self.backward(torch.ones_like(u), self.fn(u) if self.saves_output else u)

    def moments(self, mu: Tensor, s: Tensor) -> gaussian.Moments:
        """E[φ(U)] and Var[φ(U)] for U ~ N(μ, s²), exactly (closed form or quadrature)."""
        if self.closed_form is not None:
            return self.closed_form(mu, s)
        derivative = gaussian.Derivative(self.backward, self.saves_output)
        return gaussian.smooth_moments(
            self.fn,
            mu,
            s,
            self.quadrature_nodes,
            self.quadrature_half_width,
            self.split,
            derivative,
        )


_REGISTRY: dict[str, Activation] = {}
_ALIASES: dict[str, str] = {}


def register_activation(activation: Activation, aliases: tuple[str, ...] = ()) -> Activation:
    """Add ``activation`` to the registry (and its aliases); return it.

    Without a ``closed_form``, its proxy moments use the trapezoidal quadrature, which is exact to
    ~1e-6 only for φ analytic near the real axis (as the built-in smooth φ) and, without a
    ``split``, only for moderate |s| (|γ| <= 3 or so). For φ with a kink in φ or its low
    derivatives (e.g. softsign, |u|), give a closed form or many more nodes.
    """
    for name in (activation.name, *aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"activation {name!r} is already registered")
    _REGISTRY[activation.name] = activation
    for alias in aliases:
        _ALIASES[alias] = activation.name
    return activation


def get_activation(name: str | Activation) -> Activation:
    """The registered φ called ``name`` (or an alias); unknown names suggest the closest."""
    if isinstance(name, Activation):
        return name
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise unknown("activation", name, activation_names(aliases=True))
    return _REGISTRY[key]


def activation_names(aliases: bool = False) -> list[str]:
    names = list(_REGISTRY)
    return names + list(_ALIASES) if aliases else names


_aten = torch.ops.aten

# Backward kernels: (grad, saved) -> grad·φ'(u), saved = φ(u) or u as the activation declares.
# Each is torch's own fused kernel for φ, writing into grad's storage (callers pass a fresh grad).


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    return _aten.threshold_backward.grad_input(grad, out, 0, grad_input=grad)


def _leaky_relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    # leaky_relu(u) > 0 exactly where u > 0
    return _aten.leaky_relu_backward.grad_input(grad, out, LEAKY_RELU_SLOPE, True, grad_input=grad)


def _gelu_backward(grad: Tensor, u: Tensor) -> Tensor:
    return _aten.gelu_backward.grad_input(grad, u, approximate="none", grad_input=grad)


def _silu_backward(grad: Tensor, u: Tensor) -> Tensor:
    return _aten.silu_backward.grad_input(grad, u, grad_input=grad)


def _tanh_backward(grad: Tensor, out: Tensor) -> Tensor:
    return _aten.tanh_backward.grad_input(grad, out, grad_input=grad)


def _sigmoid_backward(grad: Tensor, out: Tensor) -> Tensor:
    return _aten.sigmoid_backward.grad_input(grad, out, grad_input=grad)


def _elu_backward(grad: Tensor, out: Tensor) -> Tensor:
    return _aten.elu_backward.grad_input(grad, 1.0, 1.0, 1.0, True, out, grad_input=grad)


def _softplus_backward(grad: Tensor, u: Tensor) -> Tensor:
    return _aten.softplus_backward.grad_input(grad, u, 1.0, 20.0, grad_input=grad)


def _identity(u: Tensor) -> Tensor:
    return u


def _identity_backward(grad: Tensor, _out: Tensor) -> Tensor:
    return grad


register_activation(
    Activation(
        "relu",
        F.relu,
        _relu_backward,
        "max(u, 0)",
        saves_output=True,
        closed_form=gaussian.relu_moments,
        moment_rule=gaussian.RELU_RULE,
        threshold_form=True,
    )
)
register_activation(
    Activation(
        "leaky_relu",
        functools.partial(F.leaky_relu, negative_slope=LEAKY_RELU_SLOPE),
        _leaky_relu_backward,
        f"max(u, {LEAKY_RELU_SLOPE}u)",
        saves_output=True,
        closed_form=functools.partial(gaussian.leaky_relu_moments, slope=LEAKY_RELU_SLOPE),
    )
)
register_activation(
    Activation(
        "gelu",
        F.gelu,
        _gelu_backward,
        "u·Φ(u), the exact (erf) form",
        quadrature_nodes=48,
        quadrature_half_width=7.5,
        split=gaussian.GELU_SPLIT,
    )
)
register_activation(
    Activation(
        "silu",
        F.silu,
        _silu_backward,
        "u·sigmoid(u)",
        quadrature_nodes=48,
        quadrature_half_width=7.5,
        split=gaussian.SILU_SPLIT,
    ),
    aliases=("swish",),
)
register_activation(
    Activation(
        "tanh",
        torch.tanh,
        _tanh_backward,
        "tanh(u)",
        saves_output=True,
        quadrature_nodes=80,
        quadrature_half_width=7.5,
        split=gaussian.TANH_SPLIT,
    )
)
register_activation(
    Activation(
        "sigmoid",
        torch.sigmoid,
        _sigmoid_backward,
        "1/(1+e^-u)",
        saves_output=True,
        quadrature_nodes=48,
        quadrature_half_width=7.5,
        split=gaussian.SIGMOID_SPLIT,
    )
)
register_activation(
    Activation(
        "elu",
        F.elu,
        _elu_backward,
        "u if u > 0 else e^u - 1",
        saves_output=True,
        closed_form=gaussian.elu_moments,
    )
)
register_activation(
    Activation(
        "softplus",
        F.softplus,
        _softplus_backward,
        "log(1 + e^u)",
        quadrature_nodes=48,
        quadrature_half_width=7.5,
        split=gaussian.SOFTPLUS_SPLIT,
    )
)
register_activation(
    Activation(
        "identity",
        _identity,
        _identity_backward,
        "u (no nonlinearity)",
        saves_output=True,
        closed_form=gaussian.identity_moments,
    ),
    aliases=("linear", "none"),
)


# torch's module for each built-in φ: what convert's reverse conversion and fold build
TORCH_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "identity": nn.Identity,
}
