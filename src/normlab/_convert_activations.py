r"""What an activation is, for :mod:`normlab.convert`: torch's activation modules, their functional
forms and tensor methods, and normlab's activation steps, each with its normlab φ name where the
arguments match normlab's φ (relu, silu, gelu, tanh, sigmoid, elu, leaky_relu with slope 0.01,
softplus with β = 1), or the reason normlab has none (ReLU6, Hardswish, approximate GELU, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import ActivationStep
from .layers.activations import LEAKY_RELU_SLOPE


@dataclass(frozen=True)
class FoundActivation:
    """An activation found in the model: its normlab φ name (None where normlab has none),
    how to name it, and the normlab activation step it is, if it is one."""

    name: str | None
    label: str
    step: ActivationStep | None = None
    why: str = ""


_MODULE_ACTIVATIONS: tuple[tuple[type[nn.Module], str, Callable[[Any], str]], ...] = (
    (nn.ReLU, "relu", lambda m: ""),
    (nn.SiLU, "silu", lambda m: ""),
    (nn.Tanh, "tanh", lambda m: ""),
    (nn.Sigmoid, "sigmoid", lambda m: ""),
    (nn.GELU, "gelu", lambda m: "" if m.approximate == "none" else "approximate GELU"),
    (nn.ELU, "elu", lambda m: "" if m.alpha == 1.0 else f"alpha={m.alpha}"),
    (
        nn.LeakyReLU,
        "leaky_relu",
        lambda m: "" if m.negative_slope == LEAKY_RELU_SLOPE else f"slope={m.negative_slope}",
    ),
    (nn.Softplus, "softplus", lambda m: "" if m.beta == 1 else f"beta={m.beta}"),
)
_OTHER_ACTIVATION_MODULES = (
    nn.ReLU6,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.PReLU,
    nn.RReLU,
    nn.SELU,
    nn.CELU,
    nn.LogSigmoid,
    nn.Softsign,
    nn.Tanhshrink,
)

# φ name and the extra parameters (name, required value or None for any) of functional forms.
_FUNCTIONS: dict[Callable, tuple[str, str, tuple[tuple[str, Any], ...]]] = {}
for _fn, _label, _name, _params in (
    (F.relu, "F.relu", "relu", (("inplace", None),)),
    (F.relu_, "F.relu_", "relu", ()),
    (torch.relu, "torch.relu", "relu", ()),
    (torch.relu_, "torch.relu_", "relu", ()),
    (F.silu, "F.silu", "silu", (("inplace", None),)),
    (F.gelu, "F.gelu", "gelu", (("approximate", "none"),)),
    (F.tanh, "F.tanh", "tanh", ()),
    (torch.tanh, "torch.tanh", "tanh", ()),
    (F.sigmoid, "F.sigmoid", "sigmoid", ()),
    (torch.sigmoid, "torch.sigmoid", "sigmoid", ()),
    (F.elu, "F.elu", "elu", (("alpha", 1.0), ("inplace", None))),
    (F.leaky_relu, "F.leaky_relu", "leaky_relu", (("negative_slope", 0.01), ("inplace", None))),
    (F.softplus, "F.softplus", "softplus", (("beta", 1.0), ("threshold", None))),
):
    _FUNCTIONS.setdefault(_fn, (_label, _name, _params))
_OTHER_FUNCTIONS = {
    F.relu6: "F.relu6",
    F.hardtanh: "F.hardtanh",
    F.hardswish: "F.hardswish",
    F.hardsigmoid: "F.hardsigmoid",
    F.mish: "F.mish",
    F.selu: "F.selu",
    F.celu: "F.celu",
    F.prelu: "F.prelu",
    F.logsigmoid: "F.logsigmoid",
}
_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}
_METHODS |= {"tanh": "tanh", "tanh_": "tanh"}


def module_activation(module: nn.Module) -> FoundActivation | None:
    """The activation a module is, or None if it is not one."""
    if isinstance(module, ActivationStep):
        return FoundActivation(module.activation.name, type(module).__name__, module)
    for kind, name, unsupported in _MODULE_ACTIVATIONS:
        if isinstance(module, kind):
            why = unsupported(module)
            label = type(module).__name__
            return FoundActivation(None if why else name, label, why=why and f"{label} with {why}")
    if isinstance(module, _OTHER_ACTIVATION_MODULES):
        label = type(module).__name__
        return FoundActivation(None, label, why=f"normlab has no activation step for {label}")
    return None


def _function_activation(node: fx.Node) -> FoundActivation | None:
    if node.target in _OTHER_FUNCTIONS:
        label = _OTHER_FUNCTIONS[node.target]
        return FoundActivation(None, label, why=f"normlab has no activation step for {label}")
    if node.target not in _FUNCTIONS:
        return None
    label, name, params = _FUNCTIONS[node.target]
    given = dict(zip((p for p, _ in params), node.args[1:], strict=False))
    if len(node.args) - 1 > len(params):
        return FoundActivation(None, label, why=f"{label} called with unexpected arguments")
    given.update(node.kwargs)
    required = dict(params)
    for key, value in given.items():
        if key not in required or isinstance(value, fx.Node):
            return FoundActivation(None, label, why=f"{label} called with {key}={value}")
        if required[key] is not None and value != required[key]:
            return FoundActivation(None, label, why=f"{label} with {key}={value!r}")
    return FoundActivation(name, label)


def node_activation(node: fx.Node, modules: dict[str, nn.Module]) -> FoundActivation | None:
    """The activation a graph node applies to its first argument, or None."""
    if node.op == "call_module":
        return module_activation(modules[node.target])
    if node.op == "call_function":
        return _function_activation(node)
    if node.op == "call_method" and node.target in _METHODS:
        label = f".{node.target}()"
        if len(node.args) > 1 or node.kwargs:
            return FoundActivation(None, label, why=f"{label} called with arguments")
        return FoundActivation(_METHODS[node.target], label)
    return None


__all__ = ["FoundActivation", "module_activation", "node_activation"]
