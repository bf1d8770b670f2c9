r"""Batch-dependent normalizers: BatchNorm (with ghost batches) and Variance Normalization.

Both normalize each channel with statistics over the batch and spatial positions (N, *spatial)
in training and keep running estimates for evaluation, with torch's conventions: the running
variance tracks the unbiased batch variance, ``momentum=None`` gives a cumulative average, and the
buffers are named as in :class:`torch.nn.BatchNorm2d` so that its state dicts load.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import (
    channel_view,
    check_momentum,
    check_positive_int,
    finite_checks_enabled,
    finite_statistics,
    layer_name,
    non_finite_input,
)
from .base import Normalization, apply_affine, empty_batch, is_empty

_SMALL_BATCH_HINT = (
    "use a larger batch (or normalization batch), or a batch-independent scheme such as "
    "'gn8+pn' or 'ln+pn'"
)


class BatchDependentNorm(Normalization):
    """Running statistics and momentum shared by BatchNorm, VarianceNorm and EvoNorm-B0."""

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, affine)
        self.momentum = check_momentum(momentum)
        self.track_running_stats = bool(track_running_stats)
        if self.track_running_stats:
            self.register_buffer("running_var", torch.ones(num_channels))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_var.fill_(1.0)
            self.num_batches_tracked.zero_()

    @property
    def uses_batch_statistics(self) -> bool:
        return self.training or not self.track_running_stats

    def is_empty_batch(self, x: Tensor) -> bool:
        """An input without values (a batch of N = 0) in a forward that would use batch
        statistics: it gets an empty output and leaves the running statistics, including
        ``num_batches_tracked``, unchanged (torch's BatchNorm2d counts such a batch, which would
        skew the cumulative average of ``momentum=None``)."""
        return is_empty(x) and self.uses_batch_statistics

    def check_statistics(self, x: Tensor, *stats: Tensor) -> None:
        """Raise a ValueError naming the layer and counting the non-finite values of its input
        ``x`` when the batch statistics ``stats`` of ``x`` are not finite (while finite checks
        are on: :func:`~normlab._checks.finite_statistics`), before they reach the running
        statistics. Only forwards that use batch statistics check: in evaluation with running
        statistics a NaN stays in its own sample, as in any layer."""
        if not finite_statistics(*stats):
            raise non_finite_input(layer_name(self), x)

    @property
    def updates_running_stats(self) -> bool:
        return self.training and self.track_running_stats

    def momentum_factor(self) -> float:
        """Count this batch and return the weight of its statistics in the running average."""
        if not self.updates_running_stats:
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def check_values_per_channel(self, x: Tensor, batch: int) -> None:
        """Batch statistics need more than one value per channel."""
        values = batch * math.prod(x.shape[2:])
        if values <= 1:
            raise ValueError(
                f"{type(self).__name__} in training needs more than one value per channel, but "
                f"a normalization batch of {batch} sample(s) of shape {tuple(x.shape[1:])} gives "
                f"{values}; {_SMALL_BATCH_HINT}"
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, momentum={self.momentum}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm(BatchDependentNorm):
    r"""BatchNorm (Ioffe & Szegedy 2015), optionally over ghost batches.

    ỹ_{n,c} = (x_{n,c} - μ_c) / sqrt(σ²_c + ε), then ỹ·weight + bias, with μ_c, σ²_c the mean
    and (biased) variance over the normalization batch and spatial positions. With
    ``norm_batch_size=B`` the batch is split into consecutive sub-batches of B samples ("ghost
    batches", Hoffer et al. 2017), each normalized with its own statistics, the last, smaller one
    taking the remainder; the running statistics average the sub-batches' statistics weighted by
    their size. Parameters and buffers carry torch's names, so BatchNorm2d state dicts load.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        norm_batch_size: int | None = None,
    ) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats)
        if norm_batch_size is not None:
            check_positive_int("norm_batch_size", norm_batch_size)
        self.norm_batch_size = norm_batch_size
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_channels))
        else:
            self.register_buffer("running_mean", None)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if self.track_running_stats:
            self.running_mean.zero_()

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, weight)
        if self.is_empty_batch(x):
            return empty_batch(x, weight, bias)
        if not self.uses_batch_statistics:
            return F.batch_norm(
                x, self.running_mean, self.running_var, weight, bias, False, 0.0, self.eps
            )
        size = self.norm_batch_size
        if size is None or size >= x.shape[0]:
            self.check_values_per_channel(x, x.shape[0])
            return self._batch_norm(x, weight, bias)
        return apply_affine(self._normalize_ghost_batches(x, size), weight, bias)

    def _batch_norm(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """F.batch_norm with the batch's statistics, which it writes into the running ones.

        While finite checks are on, those statistics are read back (C-sized): the running
        statistics are saved first and, when they come out non-finite, restored before the
        layer raises (without running statistics, F.batch_norm writes the batch's into scratch
        buffers). A NaN or inf input, or running statistics already non-finite, raise."""
        check = finite_checks_enabled()
        track = self.updates_running_stats
        factor = self.momentum_factor()
        mean = self.running_mean if track else None
        var = self.running_var if track else None
        if check and track:
            saved = (mean.clone(), var.clone(), self.num_batches_tracked - 1)
        elif check:  # scratch buffers receive the batch's mean and unbiased variance
            dtype = torch.promote_types(x.dtype, torch.float32)
            mean = torch.zeros(self.num_channels, dtype=dtype, device=x.device)
            var = torch.ones(self.num_channels, dtype=dtype, device=x.device)
            factor = 1.0
        y = F.batch_norm(x, mean, var, weight, bias, True, factor, self.eps)
        if check and not finite_statistics(mean, var):
            stale = False
            if track:
                stale = not finite_statistics(saved[0], saved[1])
                with torch.no_grad():
                    for buffer, value in zip(
                        (self.running_mean, self.running_var, self.num_batches_tracked),
                        saved,
                        strict=True,
                    ):
                        buffer.copy_(value)
            raise non_finite_input(layer_name(self), x, stale=stale)
        return y

    def _normalize_ghost_batches(self, x: Tensor, size: int) -> Tensor:
        full = x.shape[0] - x.shape[0] % size
        parts = [(x[:full], size)] if full else []
        if full < x.shape[0]:
            parts.append((x[full:], x.shape[0] - full))
        for part, batch in parts:
            self.check_values_per_channel(part, batch)
        results = [_normalize_in_groups_of(part, batch, self.eps) for part, batch in parts]
        self.check_statistics(x, *(t for _, mean, var in results for t in (mean, var)))
        if self.updates_running_stats:
            self._update_from_ghost_batches(x, results)
        return torch.cat([y for y, _, _ in results]) if len(results) > 1 else results[0][0]

    @torch.no_grad()
    def _update_from_ghost_batches(self, x: Tensor, results: list) -> None:
        factor = self.momentum_factor()
        spatial = math.prod(x.shape[2:])
        # average in float32 at least, and in float64 for float64 inputs or buffers
        dtype = torch.promote_types(
            torch.promote_types(x.dtype, torch.float32), self.running_mean.dtype
        )
        means, variances, weights = [], [], []
        for y, mean, var in results:
            count = (y.shape[0] // mean.shape[0]) * spatial
            means.append(mean)
            variances.append(var * count / max(count - 1, 1))
            weights.append(
                torch.full((mean.shape[0], 1), float(count), dtype=dtype, device=x.device)
            )
        w = torch.cat(weights)
        w = w / w.sum()
        for buffer, values in ((self.running_mean, means), (self.running_var, variances)):
            buffer.lerp_((torch.cat(values).to(dtype) * w).sum(0).to(buffer.dtype), factor)


def _normalize_in_groups_of(x: Tensor, size: int, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize consecutive groups of ``size`` samples; return ỹ and (G, C) means, variances."""
    groups = x.shape[0] // size
    xg = x.reshape(groups, size, *x.shape[1:])
    dims = [1, *range(3, xg.dim())]
    var, mean = torch.var_mean(xg, dim=dims, correction=0, keepdim=True)
    y = ((xg - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    return y, mean.reshape(groups, -1), var.reshape(groups, -1)


class VarianceNorm(BatchDependentNorm):
    r"""Variance Normalization (Daneshmand et al. 2020; Lubana et al. 2021): BatchNorm without
    centering.

    ỹ_{n,c} = x_{n,c} / sqrt(σ²_c + ε), σ²_c the (biased) variance over (N, *spatial) about the
    batch mean, which is not subtracted; the running variance is used in evaluation.
    """

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        self.check_input(x, weight)
        if self.is_empty_batch(x):
            return empty_batch(x, weight, bias)
        if self.uses_batch_statistics:
            self.check_values_per_channel(x, x.shape[0])
            var = batch_variance(self, x)
        else:
            var = self.running_var
        return apply_affine(x * channel_view(torch.rsqrt(var + self.eps), x.dim()), weight, bias)


def batch_variance(layer: BatchDependentNorm, x: Tensor) -> Tensor:
    """Per-channel biased variance over (N, *spatial); updates ``layer``'s running variance."""
    dims = [0, *range(2, x.dim())]
    var = torch.var(x, dim=dims, correction=0)
    layer.check_statistics(x, var)
    if layer.updates_running_stats:
        factor = layer.momentum_factor()
        count = x.numel() // x.shape[1]
        with torch.no_grad():
            unbiased = var.detach() * count / max(count - 1, 1)
            layer.running_var.lerp_(unbiased.to(layer.running_var.dtype), factor)
    return var
