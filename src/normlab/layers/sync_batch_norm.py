r"""BatchNorm with statistics over the batch of every process: normlab's SyncBatchNorm.

In data-parallel training each process sees a shard of the batch. :class:`SyncBatchNorm`
normalizes with the moments of the *global* batch, the union of the shards, so that a step on P
processes computes what BatchNorm computes on the concatenated batch (Ioffe & Szegedy 2015,
Alg. 1, with the sums taken over every process). Unlike :class:`torch.nn.SyncBatchNorm` it runs on
any backend, gloo on CPU included, and inside :class:`~normlab.layers.NormAct` (it receives the
activation step's affine through :meth:`~normlab.layers.Normalization.normalize`).

Forward (training). Each process computes, per channel c, its count n_p, mean μ_p and sum of
squared deviations M2_p over its (N_p, *spatial) values, in float64 from a shifted two-pass sum.
The P triples are gathered and combined exactly (Chan, Golub & LeVeque 1979):

    n = Σ_p n_p,   μ = Σ_p n_p μ_p / n,   M2 = Σ_p [M2_p + n_p (μ_p − μ)²],   σ² = M2 / n,

and x̂ = (x − μ)/sqrt(σ² + ε), y = γ x̂ + β. The running statistics move towards μ and the
unbiased n/(n − 1)·σ², as torch's BatchNorm does on the global batch.

Backward. With g = ∂L/∂y, L the sum of every process's loss, BatchNorm's input gradient is

    ∂L/∂x = γ/sqrt(σ² + ε) · (g − (1/n) Σ g − x̂ · (1/n) Σ g x̂),

where the sums run over the global batch: each process all-reduces its per-channel (Σ g, Σ g x̂).
The parameter gradients ∂L/∂γ = Σ g x̂ and ∂L/∂β = Σ g are returned as the *local* sums, which
data parallelism then reduces (DistributedDataParallel averages them, as it does every gradient).

Counts are reduced, so processes may hold batches of different sizes, including empty ones. Ghost
batches (``norm_batch_size``) are per-process by definition and are not accepted. Evaluation uses
the running statistics and communicates nothing; without an initialised process group, or with
one process, the layer is exactly :class:`~normlab.layers.BatchNorm`. Every process of the group
must run each synchronised forward and backward, in the same order (as with torch's layer).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._checks import channel_view, finite_checks_enabled, layer_name, non_finite_input
from .batch_norm import _SMALL_BATCH_HINT, BatchNorm


def _channel_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _local_moments(x: Tensor) -> Tensor:
    """(n, μ_1..μ_C, M2_1..M2_C) of this process's values, in float64: a two-pass sum about the
    rounded mean, corrected for the rounding (Σ(x − s)² − (Σ(x − s))²/n)."""
    dims = _channel_dims(x)
    count = x.numel() // x.shape[1]
    per = max(count, 1)
    mean = x.sum(dims, dtype=torch.float64) / per
    shifted = x - channel_view(mean.to(x.dtype), x.dim())
    first = shifted.sum(dims, dtype=torch.float64)
    second = (shifted * shifted).sum(dims, dtype=torch.float64)
    m2 = second - first * first / per
    n = torch.full((1,), float(count), dtype=torch.float64, device=x.device)
    return torch.cat([n, mean + first / per, m2.clamp_min(0.0)])


def global_moments(
    x: Tensor, group=None, layer: str = "SyncBatchNorm"
) -> tuple[int, int, Tensor, Tensor]:
    """The global count n, this process's count, and the per-channel mean μ and biased variance
    σ² (float64) over the (N, *spatial) values of every process of ``group``.

    While :func:`~normlab._checks.finite_checks_enabled`, a non-finite input on any process
    raises a ValueError on every process (naming ``layer`` and the processes whose input is
    not finite), after the gather and before anything is updated: the gathered moments of such
    a process are NaN or inf, and every process sees them, so that none waits in a collective
    that another one has left."""
    local = _local_moments(x)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    table = torch.stack(gathered)
    if finite_checks_enabled() and not bool(torch.isfinite(table).all()):
        ranks = [p for p in range(table.shape[0]) if not bool(torch.isfinite(table[p]).all())]
        processes = (
            f"process(es) {ranks} of the {table.shape[0]} of its group (this one is rank "
            f"{dist.get_rank(group)})"
        )
        raise non_finite_input(layer, x, processes)
    channels = x.shape[1]
    counts, means, m2s = table[:, :1], table[:, 1 : channels + 1], table[:, channels + 1 :]
    total = counts.sum()
    mean = (counts * means).sum(0) / total.clamp_min(1.0)
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return int(total.item()), x.numel() // channels, mean, m2 / total.clamp_min(1.0)


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = γ (x − μ)/sqrt(σ² + ε) + β with the global μ, σ² given; its backward all-reduces the
    per-channel (Σ g, Σ g x̂) so that ∂L/∂x is BatchNorm's gradient on the global batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, count, group):
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.count, ctx.group = count, group
        ctx.bias_dtype = None if bias is None else bias.dtype
        ndim = x.dim()
        scale = invstd if weight is None else invstd * weight.to(torch.float64)
        # x − μ first: exact for values near μ, where x·scale + shift would cancel
        y = (x - channel_view(mean.to(x.dtype), ndim)) * channel_view(scale.to(x.dtype), ndim)
        return y if bias is None else y + channel_view(bias.to(x.dtype), ndim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        ndim, dims = x.dim(), _channel_dims(x)
        x_hat = (x - channel_view(mean.to(x.dtype), ndim)) * channel_view(invstd.to(x.dtype), ndim)
        sum_g = grad.sum(dims, dtype=torch.float64)
        sum_gx = (grad * x_hat).sum(dims, dtype=torch.float64)
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grad_weight = sum_gx.to(weight.dtype) if needs_weight else None
        grad_bias = sum_g.to(ctx.bias_dtype) if needs_bias else None
        grad_x = None
        if needs_x:
            sums = torch.cat([sum_g, sum_gx])
            dist.all_reduce(sums, group=ctx.group)
            channels = x.shape[1]
            mean_g, mean_gx = sums[:channels] / ctx.count, sums[channels:] / ctx.count
            scale = invstd if weight is None else invstd * weight.to(torch.float64)
            grad_x = (grad - channel_view(mean_g.to(x.dtype), ndim)) - x_hat * channel_view(
                mean_gx.to(x.dtype), ndim
            )
            grad_x = grad_x * channel_view(scale.to(x.dtype), ndim)
        return grad_x, grad_weight, grad_bias, None, None, None, None


class SyncBatchNorm(BatchNorm):
    r"""BatchNorm over the global batch of a process group (see the module docstring).

    Args:
        num_channels, eps, momentum, affine, track_running_stats: as in
            :class:`~normlab.layers.BatchNorm` (no ghost batches).
        process_group: the group whose processes share statistics; None for the default group.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
    ) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    @property
    def synchronizes(self) -> bool:
        """Whether the next forward shares statistics: training with batch statistics in an
        initialised group of more than one process."""
        return (
            self.training
            and self.uses_batch_statistics
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        if not self.synchronizes:
            return super().normalize(x, weight, bias)
        self.check_input(x, weight)
        count, local, mean, var = global_moments(x.detach(), self.process_group, layer_name(self))
        if count <= 1:
            raise ValueError(
                f"{type(self).__name__} in training needs more than one value per channel over "
                f"the process group, but the {dist.get_world_size(self.process_group)} "
                f"processes hold {count} in all (this one {local}, input shape "
                f"{tuple(x.shape)}); {_SMALL_BATCH_HINT}"
            )
        self._update_running_stats(mean, var, count)
        invstd = torch.rsqrt(var + self.eps)
        return _SyncBatchNormFunction.apply(
            x, weight, bias, mean, invstd, count, self.process_group
        )

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """Move the running mean and unbiased variance as BatchNorm on the global batch does."""
        if not self.updates_running_stats:
            return
        factor = self.momentum_factor()
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        unbiased = var * count / (count - 1)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

    @classmethod
    def from_batch_norm(cls, module, process_group=None) -> SyncBatchNorm:
        """A SyncBatchNorm holding ``module``'s parameters and buffers (the same tensors), for
        normlab's BatchNorm or torch's BatchNorm1d/2d/3d and SyncBatchNorm."""
        if getattr(module, "norm_batch_size", None) is not None:
            raise ValueError(
                f"cannot synchronise BatchNorm over ghost batches (norm_batch_size="
                f"{module.norm_batch_size}): ghost batches are per-process by definition; use "
                f"'bn' without '/k', or keep per-process ghost batches without sync"
            )
        layer = cls(
            module.num_features if hasattr(module, "num_features") else module.num_channels,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
        )
        if module.affine:
            layer.weight, layer.bias = module.weight, module.bias
        if module.track_running_stats:
            layer.running_mean = module.running_mean
            layer.running_var = module.running_var
            layer.num_batches_tracked = module.num_batches_tracked
        return layer.train(module.training)
