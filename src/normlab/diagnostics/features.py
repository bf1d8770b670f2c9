r"""Beyond BatchNorm's probes of a layer's features (Lubana, Dick & Tanaka, NeurIPS 2021).

For the per-sample activations F ∈ R^{N×D} of a probe batch (one row per input, flattened):

* **activation variance**: the mean over channels of each channel's variance over the batch and
  positions (Section 3: it grows with depth without normalization);
* **cosine similarity**: the mean off-diagonal entry of the normalized Gram matrix
  F̂F̂ᵀ, F̂ the rows of F divided by their norms (Section 4: it rises toward 1 when the features
  of different inputs align, i.e. rank collapse);
* **stable rank** of the Gram matrix M = FFᵀ: trace(M) / ‖M‖₂ = ‖F‖_F² / ‖F‖₂² (Section 5,
  Fig. 6a: it grows with sqrt(width / group size) for GroupNorm).

The profiles stream over batches: the variance with O(C) memory per layer, the Gram statistics
per batch (O(N²) memory, no features kept), averaged over batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_values
from .probes import Data, Mode, Selector, Where, check_where, observed_tensor, resolve, stream
from .statistics import ChannelMoments


def _features(features: Tensor, statistic: str) -> Tensor:
    if isinstance(features, Tensor) and features.dim() >= 2:
        check_values(statistic, features, 2, "of shape (N, D)")
    if not isinstance(features, Tensor) or features.dim() < 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{statistic} needs features of shape (N, D), got {shape}")
    if features.shape[0] < 2:
        raise ValueError(
            f"{statistic} compares the features of different inputs: it needs a probe batch of "
            f"at least 2 inputs, got {features.shape[0]}"
        )
    return features.detach().reshape(features.shape[0], -1).double()


def gram_matrix(features: Tensor) -> Tensor:
    """M = FFᵀ (N×N, float64) of features (N, D) (or (N, ...), flattened per input)."""
    f = _features(features, "a Gram matrix")
    return f @ f.T


def stable_rank(features: Tensor) -> float:
    """trace(M) / ‖M‖₂ of the Gram matrix M = FFᵀ of features (N, D): between 1 and N."""
    return _stable_rank(gram_matrix(features))


def cosine_similarity(features: Tensor) -> float:
    """Mean pairwise cosine similarity of the rows of features (N, D): the off-diagonal mean of
    the normalized Gram matrix. An input with all-zero features has similarity 0 to the rest."""
    return _cosine_similarity(_features(features, "the cosine similarity"))


def _stable_rank(gram: Tensor) -> float:
    top = float(torch.linalg.eigvalsh(gram)[-1])
    if not top > 0:
        raise ValueError("the stable rank is undefined for all-zero features (‖M‖₂ = 0)")
    return float(gram.diagonal().sum()) / top


def _cosine_similarity(f: Tensor) -> float:
    unit = f / f.norm(dim=1, keepdim=True).clamp_min(torch.finfo(f.dtype).tiny)
    cos = unit @ unit.T
    n = cos.shape[0]
    return float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1)))


@dataclass(frozen=True)
class FeatureGeometry:
    """Cosine similarity and stable rank of one layer's features, averaged over ``batches``."""

    name: str
    cosine_similarity: float
    stable_rank: float
    batches: int


def similarity_profile(
    model: nn.Module,
    data: Data,
    where: Where = "post",
    select: Selector | None = None,
    mode: Mode = None,
) -> list[FeatureGeometry]:
    """Cosine similarity and stable rank of every probed layer's features, in execution order.

    Each batch gives one Gram matrix per layer (its inputs' flattened activations); the two
    statistics are averaged over batches, each of which needs at least 2 inputs. ``where``
    (default ``"post"``: activation-step outputs), ``select`` and ``mode`` as for
    :func:`~normlab.diagnostics.power_profile`.
    """
    check_where(where)
    per_batch: dict[str, list[tuple[float, float]]] = {}

    def observe(name: str, x: Tensor | None, output: Tensor) -> None:
        f = _features(observed_tensor(where, x, output, name), f"layer {name!r}'s similarity")
        per_batch.setdefault(name, []).append((_cosine_similarity(f), _stable_rank(f @ f.T)))

    order, _ = stream(model, data, resolve(model, where, select), observe, mode, where == "pre")
    return [_geometry(name, per_batch[name]) for name in order]


def _geometry(name: str, values: list[tuple[float, float]]) -> FeatureGeometry:
    count = len(values)
    cos = sum(v[0] for v in values) / count
    return FeatureGeometry(name, cos, sum(v[1] for v in values) / count, count)


def moments_profile(
    model: nn.Module,
    data: Data,
    where: Where = "post",
    select: Selector | None = None,
    mode: Mode = None,
) -> list[tuple[str, ChannelMoments]]:
    """Per-channel mean and variance (over batch and positions) of every probed layer."""
    check_where(where)
    moments: dict[str, ChannelMoments] = {}

    def observe(name: str, x: Tensor | None, output: Tensor) -> None:
        moments.setdefault(name, ChannelMoments()).update(observed_tensor(where, x, output, name))

    modules = resolve(model, where, select)
    order, _ = stream(model, data, modules, observe, mode, where == "pre", "statistics")
    return [(name, moments[name]) for name in order]


def activation_variance(
    model: nn.Module,
    data: Data,
    where: Where = "post",
    select: Selector | None = None,
    mode: Mode = None,
) -> list[tuple[str, float]]:
    """(layer name, mean over channels of the variance over batch and positions), in execution
    order (Beyond BatchNorm, Section 3). Arguments as for :func:`similarity_profile`."""
    profile = []
    for name, moments in moments_profile(model, data, where, select, mode):
        try:
            profile.append((name, moments.average_variance))
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
    return profile
