r"""EvoNorm-B0 and EvoNorm-S0 (Liu et al. 2020): normalization and nonlinearity in one layer.

    B0:  ỹ = x / max( sqrt(σ²_batch + ε),  v·x + sqrt(σ²_instance + ε) )
    S0:  ỹ = x·sigmoid(v·x) / sqrt(σ²_group + ε)

followed by the per-channel affine γ·ỹ + β; v is per channel (init 1), σ²_batch is over
(N, *spatial) (running estimate in evaluation), σ²_instance over the spatial positions of one
sample and channel, σ²_group over one sample's group of channels and positions, all biased. With
``nonlinear=False`` they reduce to their normalization alone (B0: x / sqrt(σ²_batch + ε), which is
Variance Normalization; S0: x / sqrt(σ²_group + ε)), for places with no activation after them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import channel_view, check_several_values
from .base import Normalization, apply_affine, empty_batch, is_empty
from .batch_norm import BatchDependentNorm, batch_variance
from .group_norm import resolve_groups

DEFAULT_GROUPS = 32


def _empty_evonorm(
    layer: EvoNormB0 | EvoNormS0, x: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """The empty output of an input without values, through v too (for its zero gradient)."""
    y = x * channel_view(layer.v, x.dim()) if layer.nonlinear else x
    return empty_batch(y, weight, bias)


class EvoNormB0(BatchDependentNorm):
    r"""EvoNorm-B0: x / max(sqrt(σ²_batch + ε), v·x + sqrt(σ²_instance + ε)), then γ·ỹ + β."""

    min_dim = 3

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        nonlinear: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats)
        self.nonlinear = bool(nonlinear)
        self.v = nn.Parameter(torch.ones(num_channels)) if self.nonlinear else None

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, weight)
        if is_empty(x):
            return _empty_evonorm(self, x, weight, bias)
        if self.uses_batch_statistics:
            self.check_values_per_channel(x, x.shape[0])
            var = batch_variance(self, x)
        else:
            var = self.running_var
        denominator = channel_view(torch.sqrt(var + self.eps), x.dim())
        if self.nonlinear:
            spatial = list(range(2, x.dim()))
            instance_var = torch.var(x, dim=spatial, correction=0, keepdim=True)
            instance = torch.addcmul(
                torch.sqrt(instance_var + self.eps), x, channel_view(self.v, x.dim())
            )
            denominator = torch.maximum(denominator, instance)
        return apply_affine(x / denominator, weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinear={self.nonlinear}"


class EvoNormS0(Normalization):
    r"""EvoNorm-S0: x·sigmoid(v·x) / sqrt(σ²_group + ε), then γ·ỹ + β.

    Groups are given by ``num_groups`` or ``group_size``; by default min(32, C) groups, the
    paper's 32 capped at the channel count.
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int | None = None,
        group_size: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        nonlinear: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        if num_groups is None and group_size is None:
            num_groups = min(DEFAULT_GROUPS, self.num_channels)
        self.num_groups = resolve_groups(self.num_channels, num_groups, group_size)
        self.nonlinear = bool(nonlinear)
        self.v = nn.Parameter(torch.ones(num_channels)) if self.nonlinear else None

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, weight)
        if is_empty(x):
            return _empty_evonorm(self, x, weight, bias)
        # the group's size spelt out: -1 cannot be inferred for an empty batch
        per_group = x.shape[1:].numel() // self.num_groups
        grouped = x.reshape(x.shape[0], self.num_groups, per_group)
        check_several_values(type(self).__name__, x, grouped.shape[-1])
        var = torch.var(grouped, dim=-1, correction=0, keepdim=True)
        numerator = x * torch.sigmoid(x * channel_view(self.v, x.dim())) if self.nonlinear else x
        y = numerator.reshape(grouped.shape) * torch.rsqrt(var + self.eps)
        return apply_affine(y.reshape(x.shape), weight, bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_groups={self.num_groups}, nonlinear={self.nonlinear}"
