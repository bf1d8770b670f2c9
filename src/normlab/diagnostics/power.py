r"""Power decomposition of a layer's activations (PN paper, Eq. 5).

For channel c, with μ_{x,c} and σ_{x,c} the mean and (population) standard deviation of one input
x's activations over the spatial positions, the power P_c = E_{x,α}[y²] splits as

    P_c = P1 + P2 + P3 + P4,   P1 = E_x[μ_{x,c}]²,  P2 = Var_x[μ_{x,c}],
                               P3 = E_x[σ_{x,c}]²,  P4 = Var_x[σ_{x,c}]

(dataset-level mean, instance-mean variability, instance std, instance-std variability).
:class:`PowerAccumulator` streams it over batches with memory O(C): per channel, the mean and
centred sum of squares of μ and σ (one :func:`~normlab.diagnostics.statistics.channel_summary`
per batch), merged with Chan et al.'s parallel update in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .._checks import check_values
from .statistics import MU, MU_M2, SIGMA, SIGMA_M2, channel_summary, merge_summaries, plane_moments

POWER = "the power decomposition"


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
    _check_spatial(y)
    mean, m2, size = plane_moments(y, POWER)
    return mean, (m2 / size).sqrt()


class PowerAccumulator:
    """Streams the power decomposition over batches: ``update(y)`` then ``result()``. Each
    update is one :func:`~normlab.diagnostics.statistics.channel_summary` of ``y`` merged into
    the running one."""

    def __init__(self) -> None:
        self.count = 0
        self._summary: Tensor | None = None

    def update(self, y: Tensor) -> PowerAccumulator:
        _check_spatial(y)
        summary, n, _ = channel_summary(y, POWER)
        if self._summary is None:
            self._summary, self.count = summary, n
            return self
        if summary.shape != self._summary.shape:
            raise ValueError(
                f"PowerAccumulator got {summary.shape[1]} channels after "
                f"{self._summary.shape[1]}: a decomposition follows one layer"
            )
        self._summary = merge_summaries(self._summary, self.count, summary, n)
        self.count += n
        return self

    def result(self) -> PowerDecomposition:
        if self._summary is None:
            raise ValueError("PowerAccumulator.result() called before any update()")
        s = self._summary
        return PowerDecomposition(
            p1=s[MU].square(),
            p2=s[MU_M2] / self.count,
            p3=s[SIGMA].square(),
            p4=s[SIGMA_M2] / self.count,
            count=self.count,
        )


def power_decomposition(y: Tensor) -> PowerDecomposition:
    """Eq. 5 of the PN paper for activations ``y`` of shape (N, C, *spatial), N inputs."""
    return PowerAccumulator().update(y).result()


def _check_spatial(y: Tensor) -> None:
    check_values(POWER, y, 0, finite=False)
    if y.dim() < 3:
        raise ValueError(
            f"the power decomposition needs activations of shape (N, C, *spatial) with at least "
            f"one spatial dim, got shape {tuple(y.shape)}"
        )
