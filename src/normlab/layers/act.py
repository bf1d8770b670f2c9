r"""The activation step z = φ(γ·ỹ + β) (PN paper Eq. 4) and its variants.

An :class:`ActivationStep` describes itself as a :class:`Plan`: a per-channel affine (weight, bias)
followed by a tail. Run alone (``forward``) the affine is a multiply-add; inside a
:class:`~normlab.layers.NormAct` it is folded into the preceding normalizer's kernel, so that
BN + Act costs what torch's BatchNorm2d + ReLU cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_input, check_positive_int, reference_tensor
from .activations import Activation, get_activation
from .base import Normalization, apply_affine
from .proxy_moments import activation_gain


@dataclass(frozen=True)
class Plan:
    """An activation step as tail(ỹ·weight + bias), with per-channel weight and bias (or None).

    When the plan has an affine, ``tail`` receives a fresh tensor (the normalizer's or the
    affine's output, which no backward needs) and may overwrite it.
    """

    weight: Tensor | None
    bias: Tensor | None
    tail: Callable[[Tensor], Tensor]


class ActivationStep(nn.Module):
    """Base class of activation steps acting on a normalized (N, C, *spatial) input."""

    def __init__(self, num_channels: int, act: str | Activation = "relu") -> None:
        super().__init__()
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.activation = get_activation(act)

    def plan(self) -> Plan:
        raise NotImplementedError

    def forward(self, y: Tensor) -> Tensor:
        check_input(type(self).__name__, y, self.num_channels, reference=reference_tensor(self))
        plan = self.plan()
        return plan.tail(apply_affine(y, plan.weight, plan.bias))

    def after(self, norm: Normalization, x: Tensor) -> Tensor:
        """This step applied to norm(x), with the plan's affine run inside the normalizer's
        kernel (``norm`` has no affine of its own). Subclasses may fuse further."""
        plan = self.plan()
        return plan.tail(norm.normalize(x, plan.weight, plan.bias))

    def extra_repr(self) -> str:
        return f"{self.num_channels}, act={self.activation.name}"


class Act(ActivationStep):
    r"""z = φ(γ·ỹ + β) with per-channel γ (init 1) and β (init 0): PN paper Eq. 4."""

    def __init__(self, num_channels: int, act: str | Activation = "relu") -> None:
        super().__init__(num_channels, act)
        self.gamma = nn.Parameter(torch.ones(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))

    def plan(self) -> Plan:
        return Plan(self.gamma, self.beta, self.activation.fn)


class GainedAct(ActivationStep):
    r"""z = γ_φ·φ(x) with γ_φ = 1/sqrt(Var[φ(N(0, 1))]): the activation of normalizer-free
    networks (Brock et al. 2021), which keeps unit variance for unit Gaussian inputs. No
    per-channel parameters."""

    def __init__(self, num_channels: int, act: str | Activation = "relu") -> None:
        super().__init__(num_channels, act)
        self.gain = activation_gain(self.activation)

    def _tail(self, u: Tensor) -> Tensor:
        return self.activation.fn(u) * self.gain

    def plan(self) -> Plan:
        return Plan(None, None, self._tail)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gain={self.gain:.6f}"
