r"""Streaming per-channel statistics of a layer's activations, in float64 with memory O(C).

* :class:`ChannelMoments`: the mean and variance of each channel over the batch and spatial
  positions (the SPPs' "average squared channel mean" and "average channel variance", Brock et
  al. 2021; Beyond BatchNorm's activation variance), merged across batches with Chan et al.'s
  parallel update.
* :class:`CrossMoments`: per-channel sums of ỹ, z, ỹ², z² and ỹz over all positions and inputs,
  enough for the least-squares affine fit of z on ỹ (channel-wise linearity of φ).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_values


def channel_values(t: Tensor) -> Tensor:
    """The activations of (N, C, *spatial) as (C, N·positions) in float64."""
    check_values("per-channel statistics", t, 0)
    if t.dim() < 2:
        raise ValueError(
            f"per-channel statistics need activations of shape (N, C, *spatial), got shape "
            f"{tuple(t.shape)}"
        )
    return t.detach().double().transpose(0, 1).reshape(t.shape[1], -1)


class ChannelMoments:
    """Streams the per-channel mean and (population) variance over batches and positions."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None

    def update(self, t: Tensor) -> ChannelMoments:
        values = channel_values(t)
        n = values.shape[1]
        mean = values.mean(1)
        m2 = (values - mean[:, None]).square().sum(1)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2, self.count = mean, m2, n
            return self
        if mean.shape != self._mean.shape:
            raise ValueError(
                f"ChannelMoments got {mean.shape[0]} channels after {self._mean.shape[0]}: "
                f"the moments follow one layer"
            )
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total
        return self

    def _checked(self) -> tuple[Tensor, Tensor]:
        if self._mean is None or self._m2 is None:
            raise ValueError("ChannelMoments read before any update()")
        return self._mean, self._m2

    @property
    def mean(self) -> Tensor:
        """Per-channel mean over all inputs and positions, shape (C,)."""
        return self._checked()[0]

    @property
    def var(self) -> Tensor:
        """Per-channel population variance over all inputs and positions, shape (C,)."""
        m2 = self._checked()[1]
        if self.count < 2:
            raise ValueError(
                f"a channel variance needs at least 2 values per channel, got {self.count}: "
                f"probe with more inputs or positions"
            )
        return m2 / self.count

    @property
    def average_squared_mean(self) -> float:
        """mean_c (E[x_c])²: the SPP's average squared channel mean."""
        return float(self.mean.square().mean())

    @property
    def average_variance(self) -> float:
        """mean_c Var[x_c]: the SPP's average channel variance (Beyond BN's activation
        variance)."""
        return float(self.var.mean())


class CrossMoments:
    """Per-channel sums of y, z, y², z², y·z (float64) over the positions and inputs seen."""

    FIELDS = ("y", "z", "yy", "zz", "yz")

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, Tensor] | None = None

    def update(self, y: Tensor, z: Tensor) -> CrossMoments:
        if y.shape != z.shape:
            raise ValueError(
                f"CrossMoments needs y and z of the same shape, got {tuple(y.shape)} and "
                f"{tuple(z.shape)}"
            )
        a, b = channel_values(y), channel_values(z)
        batch = {"y": a.sum(1), "z": b.sum(1), "yy": (a * a).sum(1), "zz": (b * b).sum(1)}
        batch["yz"] = (a * b).sum(1)
        if self.sums is None:
            self.sums = batch
        else:
            if batch["y"].shape != self.sums["y"].shape:
                raise ValueError(
                    f"CrossMoments got {batch['y'].shape[0]} channels after "
                    f"{self.sums['y'].shape[0]}: the sums follow one layer"
                )
            self.sums = {key: self.sums[key] + batch[key] for key in self.FIELDS}
        self.count += a.shape[1]
        return self

    def affine_fit(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per channel: slope a and intercept b of the least-squares fit z ≈ a·y + b, the
        residual power E[(z − a·y − b)²] and the power E[z²]."""
        if self.sums is None:
            raise ValueError("CrossMoments read before any update()")
        n, s = self.count, self.sums
        mean_y, mean_z = s["y"] / n, s["z"] / n
        var_y = (s["yy"] / n - mean_y.square()).clamp_min(0.0)
        var_z = (s["zz"] / n - mean_z.square()).clamp_min(0.0)
        cov = s["yz"] / n - mean_y * mean_z
        flat = var_y <= 1e-12 * (s["yy"] / n).clamp_min(1e-300)
        slope = torch.where(flat, torch.zeros_like(cov), cov / var_y.where(~flat, 1.0))
        residual = torch.where(flat, var_z, (var_z - slope * cov).clamp_min(0.0))
        intercept = mean_z - slope * mean_y
        return slope, intercept, residual, s["zz"] / n
