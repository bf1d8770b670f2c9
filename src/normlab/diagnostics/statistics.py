r"""Streaming per-channel statistics of a layer's activations, in float64 with memory O(C).

One reduction per hooked tensor feeds every streaming diagnostic:

* :func:`plane_moments`: the mean and M2 = Σ(x − mean)² of every (input, channel) plane;
* :func:`channel_summary`: per channel, over the inputs, the mean and centred sum of squares of
  the planes' means μ and stds σ, and Σ M2 — what :class:`ChannelMoments` and the power
  decomposition's :class:`~normlab.diagnostics.PowerAccumulator` merge across batches (Chan et
  al.'s parallel update, :func:`merge_summaries`).

On CPU both are one pass of a C++ kernel (``layers/csrc/plane_moments.cpp``) that accumulates in
double without copying the tensor, NCHW or channels-last; elsewhere (or without the kernel) the
same numbers come from torch's ``var_mean`` on a float64 copy. Non-finite activations make the
results non-finite, so the finite check reads the (5, C) summary, not the data:
:class:`NonFiniteStatisticsError`.

* :class:`ChannelMoments`: the mean and variance of each channel over the batch and spatial
  positions (the SPPs' "average squared channel mean" and "average channel variance", Brock et
  al. 2021; Beyond BatchNorm's activation variance).
* :class:`CrossMoments`: per-channel sums of ỹ, z, ỹ², z² and ỹz over all positions and inputs,
  enough for the least-squares affine fit of z on ỹ (channel-wise linearity of φ).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import Tensor

from .._checks import NonFiniteError, check_values, non_finite_values
from ..layers import compiled

# rows of a channel summary
MU, MU_M2, SIGMA, SIGMA_M2, PLANE_M2 = range(5)


STATISTICS = "per-channel statistics"


class NonFiniteStatisticsError(NonFiniteError):
    """Statistics of activations that hold NaN or inf (or overflow float64)."""


def channel_values(t: Tensor) -> Tensor:
    """The activations of (N, C, *spatial) as (C, N·positions) in float64."""
    check_values(STATISTICS, t, 0)
    _check_rank(t, 2)
    return t.detach().double().transpose(0, 1).reshape(t.shape[1], -1)


def plane_moments(t: Tensor, what: str = STATISTICS) -> tuple[Tensor, Tensor, int]:
    """Per (n, c) plane of ``t`` (N, C, *positions): mean and M2 = Σ(x − mean)², each (N, C)
    float64, and the number L of positions per plane. ``what`` names the statistic in errors."""
    t, size = _prepared(t, what)
    kernel = _kernel(t)
    if kernel is not None:
        mean, m2 = kernel.plane_moments(t)
    else:
        var, mean = torch.var_mean(t.reshape(*t.shape[:2], -1).double(), dim=-1, correction=0)
        m2 = var * size
    _check_finite(what, t, m2, mean)
    return mean, m2, size


def channel_summary(t: Tensor, what: str = STATISTICS) -> tuple[Tensor, int, int]:
    """The (5, C) float64 summary of ``t`` (N, C, *positions) over its N inputs — rows
    mean_n μ, Σ_n (μ − mean μ)², mean_n σ, Σ_n (σ − mean σ)², Σ_n M2, with μ, σ, M2 the planes'
    mean, population std and centred sum of squares — and N and L."""
    t, size = _prepared(t, what)
    kernel = _kernel(t)
    if kernel is not None:
        summary, finite = kernel.channel_summary(t)
        if not finite:
            _check_finite(what, t, summary)
        return summary, t.shape[0], size
    mean, m2, size = plane_moments(t, what)
    sigma = (m2 / size).sqrt()
    rows = [mean.mean(0), _centred_squares(mean), sigma.mean(0), _centred_squares(sigma)]
    return torch.stack([*rows, m2.sum(0)]), mean.shape[0], size


def merge_summaries(a: Tensor, count_a: int, b: Tensor, count_b: int) -> Tensor:
    """The summary of two batches of count_a and count_b inputs: Chan et al.'s update of the
    means and centred sums of squares of μ and σ, and the sum of the planes' M2."""
    total = count_a + count_b
    means, squares = [MU, SIGMA], [MU_M2, SIGMA_M2]
    delta = b[means] - a[means]
    merged = torch.empty_like(a)
    merged[means] = a[means] + delta * (count_b / total)
    merged[squares] = a[squares] + b[squares] + delta.square() * (count_a * count_b / total)
    merged[PLANE_M2] = a[PLANE_M2] + b[PLANE_M2]
    return merged


def _prepared(t: Tensor, what: str) -> tuple[Tensor, int]:
    """``t`` checked (real, non-empty; finiteness is checked on the results), detached, and
    its number of positions per plane."""
    check_values(what, t, 0, finite=False)
    _check_rank(t, 2)
    return t.detach(), t.shape[2:].numel()


def _check_rank(t: Tensor, rank: int) -> None:
    if t.dim() < rank:
        raise ValueError(
            f"per-channel statistics need activations of shape (N, C, *spatial), got shape "
            f"{tuple(t.shape)}"
        )


def _kernel(t: Tensor) -> ModuleType | None:
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    return compiled.kernels("normlab_statistics")


def _check_finite(what: str, t: Tensor, *results: Tensor) -> None:
    if all(bool(torch.isfinite(r).all()) for r in results):
        return
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NonFiniteStatisticsError(str(non_finite_values(what, t)))
    raise NonFiniteStatisticsError(
        f"{what}: values up to {float(t.abs().max()):.3g} overflow the float64 statistics"
    )


def _centred_squares(t: Tensor) -> Tensor:
    return (t - t.mean(0)).square().sum(0)


class ChannelMoments:
    """Streams the per-channel mean and (population) variance over batches and positions: from
    a channel summary, the channel mean is mean_n μ and its M2 is Σ_n M2 + L·Σ_n (μ − mean μ)²."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: Tensor | None = None
        self._m2: Tensor | None = None

    def update(self, t: Tensor) -> ChannelMoments:
        summary, inputs, size = channel_summary(t)
        n = inputs * size
        mean, m2 = summary[MU], summary[PLANE_M2] + size * summary[MU_M2]
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
