r"""Batch-independent normalizers over groups of channels: GroupNorm, LayerNorm, InstanceNorm.

For a sample n and a group g of channels, ỹ_{n,c} = (x_{n,c} - μ_{n,g}) / sqrt(σ²_{n,g} + ε) with
μ_{n,g}, σ²_{n,g} the mean and (biased) variance over the group's channels and all spatial
positions. LayerNorm is one group (the papers' convention: statistics over (C, *spatial) with a
per-channel affine), InstanceNorm one channel per group. All run torch's native group_norm kernel.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from .._checks import check_positive_int, check_several_values
from .base import Normalization


def resolve_groups(num_channels: int, num_groups: int | None, group_size: int | None) -> int:
    """The number of groups from exactly one of ``num_groups`` and ``group_size``."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"give exactly one of num_groups and group_size, got num_groups={num_groups!r}, "
            f"group_size={group_size!r}"
        )
    if num_groups is not None:
        check_positive_int("num_groups", num_groups)
        if num_channels % num_groups:
            raise ValueError(
                f"{num_groups} groups do not divide {num_channels} channels; choose a number "
                f"of groups that divides {num_channels}"
            )
        return num_groups
    check_positive_int("group_size", group_size)
    if num_channels % group_size:
        raise ValueError(
            f"a group size of {group_size} channels does not divide {num_channels} channels; "
            f"choose a group size that divides {num_channels}"
        )
    return num_channels // group_size


class GroupNorm(Normalization):
    r"""GroupNorm (Wu & He 2018) given ``num_groups`` or ``group_size`` (channels per group).

    ỹ_{n,c} = (x_{n,c} - μ_{n,g(c)}) / sqrt(σ²_{n,g(c)} + ε) over the group's (C/G, *spatial).
    """

    def __init__(
        self,
        num_channels: int,
        num_groups: int | None = None,
        group_size: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.num_groups = resolve_groups(self.num_channels, num_groups, group_size)

    def check_input(self, x: Tensor, weight: Tensor | None = None) -> None:
        super().check_input(x, weight)
        values = self.num_channels // self.num_groups * math.prod(x.shape[2:])
        check_several_values(type(self).__name__, x, values)

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, weight)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_groups={self.num_groups}"


class LayerNorm(GroupNorm):
    r"""LayerNorm (Ba et al. 2016) as in the PN and Beyond BatchNorm papers: statistics over
    (C, *spatial) of each sample, per-channel affine; GroupNorm with one group."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, num_groups=1, eps=eps, affine=affine)

    def extra_repr(self) -> str:
        return Normalization.extra_repr(self)


class InstanceNorm(GroupNorm):
    r"""InstanceNorm (Ulyanov et al. 2016): statistics over the spatial positions of each
    (sample, channel); GroupNorm with one channel per group. Needs spatial dims."""

    min_dim = 3

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_channels, group_size=1, eps=eps, affine=affine)

    def extra_repr(self) -> str:
        return Normalization.extra_repr(self)
