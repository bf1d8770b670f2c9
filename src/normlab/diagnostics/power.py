r"""Power decomposition of a layer's activations (PN paper, Eq. 5).

For channel c, with μ_{x,c} and σ_{x,c} the mean and (population) standard deviation of one input
x's activations over the spatial positions, the power P_c = E_{x,α}[y²] splits as

    P_c = P1 + P2 + P3 + P4,   P1 = E_x[μ_{x,c}]²,  P2 = Var_x[μ_{x,c}],
                               P3 = E_x[σ_{x,c}]²,  P4 = Var_x[σ_{x,c}]

(dataset-level mean, instance-mean variability, instance std, instance-std variability).
:class:`PowerAccumulator` streams it over batches with memory O(C): per channel, the mean and
centred sum of squares of μ and σ, merged with Chan et al.'s parallel update in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_values


@dataclass(frozen=True)
class PowerDecomposition:
    """Per-channel terms of Eq. 5 (float64 tensors of shape (C,)) and their layer averages."""

    p1: Tensor
    p2: Tensor
    p3: Tensor
    p4: Tensor
    count: int

    @property
    def p(self) -> Tensor:
        """Total power P_c = E[y²] per channel."""
        return self.p1 + self.p2 + self.p3 + self.p4

    def layer_average(self) -> dict[str, float]:
        """Channel-averaged P, P1..P4."""
        return {name: float(getattr(self, name).mean()) for name in ("p", "p1", "p2", "p3", "p4")}

    def fractions(self) -> dict[str, float]:
        """Layer-level fractions P_i / P of the channel-averaged terms (they sum to 1)."""
        avg = self.layer_average()
        total = avg["p"] if avg["p"] > 0 else float("nan")
        return {name: avg[name] / total for name in ("p1", "p2", "p3", "p4")}


def instance_statistics(y: Tensor) -> tuple[Tensor, Tensor]:
    """μ_{x,c} and σ_{x,c}: mean and population std over spatial positions, shape (N, C)."""
    check_values("the power decomposition", y, 0)
    if y.dim() < 3:
        raise ValueError(
            f"the power decomposition needs activations of shape (N, C, *spatial) with at least "
            f"one spatial dim, got shape {tuple(y.shape)}"
        )
    flat = y.detach().reshape(y.shape[0], y.shape[1], -1).double()
    var, mean = torch.var_mean(flat, dim=-1, correction=0)
    return mean, var.sqrt()


class PowerAccumulator:
    """Streams the power decomposition over batches: ``update(y)`` then ``result()``."""

    def __init__(self) -> None:
        self.count = 0
        self._moments: list[Tensor] | None = None  # mean μ, M2 μ, mean σ, M2 σ

    def update(self, y: Tensor) -> PowerAccumulator:
        mu, sigma = instance_statistics(y)
        batch = [mu.mean(0), _centred_squares(mu), sigma.mean(0), _centred_squares(sigma)]
        n = mu.shape[0]
        if self._moments is None:
            self._moments, self.count = batch, n
            return self
        if batch[0].shape != self._moments[0].shape:
            raise ValueError(
                f"PowerAccumulator got {batch[0].shape[0]} channels after "
                f"{self._moments[0].shape[0]}: a decomposition follows one layer"
            )
        total = self.count + n
        merged = []
        for (mean_a, m2_a), (mean_b, m2_b) in zip(
            _pairs(self._moments), _pairs(batch), strict=True
        ):
            delta = mean_b - mean_a
            merged += [
                mean_a + delta * n / total,
                m2_a + m2_b + delta.square() * self.count * n / total,
            ]
        self._moments, self.count = merged, total
        return self

    def result(self) -> PowerDecomposition:
        if self._moments is None:
            raise ValueError("PowerAccumulator.result() called before any update()")
        mean_mu, m2_mu, mean_sigma, m2_sigma = self._moments
        return PowerDecomposition(
            p1=mean_mu.square(),
            p2=m2_mu / self.count,
            p3=mean_sigma.square(),
            p4=m2_sigma / self.count,
            count=self.count,
        )


def power_decomposition(y: Tensor) -> PowerDecomposition:
    """Eq. 5 of the PN paper for activations ``y`` of shape (N, C, *spatial), N inputs."""
    return PowerAccumulator().update(y).result()


def _centred_squares(t: Tensor) -> Tensor:
    return (t - t.mean(0)).square().sum(0)


def _pairs(moments: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    return [(moments[0], moments[1]), (moments[2], moments[3])]
