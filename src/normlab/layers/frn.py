r"""Filter Response Normalization and the Thresholded Linear Unit (Singh & Krishnan 2020).

    FRN:  ỹ_{n,c} = x_{n,c} / sqrt(ν²_{n,c} + ε),   ν²_{n,c} = mean over spatial positions of x²
    TLU:  z = max(γ·ỹ + β, τ)  with per-channel τ (init 0), in place of relu.

FRN neither centers nor uses the batch. ε can be learned (``learnable_eps``): ε + |ε_l| with ε_l
initialised at 1e-4, as the paper advises for small spatial extents.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .act import ActivationStep, Plan
from .activations import Activation
from .base import Normalization, apply_affine
from .tails import channel_max

LEARNED_EPS_INIT = 1e-4


class FilterResponseNorm(Normalization):
    r"""FRN: ỹ = x / sqrt(mean_{spatial}(x²) + ε), per sample and channel."""

    min_dim = 3

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        affine: bool = True,
        learnable_eps: bool = False,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.learnable_eps = bool(learnable_eps)
        if self.learnable_eps:
            self.eps_offset = nn.Parameter(torch.tensor(LEARNED_EPS_INIT))
        else:
            self.register_parameter("eps_offset", None)

    def effective_eps(self) -> Tensor | float:
        return self.eps + self.eps_offset.abs() if self.learnable_eps else self.eps

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, weight)
        nu2 = x.square().mean(dim=list(range(2, x.dim())), keepdim=True)
        return apply_affine(x * torch.rsqrt(nu2 + self.effective_eps()), weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learnable_eps={self.learnable_eps}"


class TLU(ActivationStep):
    r"""Thresholded linear unit as an activation step: z = max(γ·ỹ + β, τ).

    TLU takes the place of relu. With another φ it thresholds φ's output, z = max(φ(γỹ + β), τ).
    """

    def __init__(self, num_channels: int, act: str | Activation = "relu") -> None:
        super().__init__(num_channels, act)
        self.gamma = nn.Parameter(torch.ones(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.tau = nn.Parameter(torch.zeros(num_channels))

    def _tail(self, u: Tensor) -> Tensor:
        if self.activation.threshold_form:  # u is the affine's fresh output
            return channel_max(u, self.tau, inplace=True)
        return channel_max(self.activation.fn(u), self.tau)

    def plan(self) -> Plan:
        return Plan(self.gamma, self.beta, self._tail)
