r"""The papers' diagnostics through training, on a fixed probe batch.

At initialisation and every ``diagnostics_every`` epochs the loop records, on the same probe
batch (the first test images, without augmentation), with the normalizers using the probe's own
batch statistics as in training (at initialisation BatchNorm's running statistics are still
(0, 1), so evaluation mode would not normalize at all) but without dropout or stochastic depth,
on a copy of the model (no side effect on its running statistics):

* the power decomposition P1..P4 of every normalization step's output ỹ (PN paper Eq. 5) and its
  collapse measures (``None`` for a model without normalization steps) — Fig. 2's bottom row
  is these fractions against depth, epoch by epoch;
* the signal propagation (squared mean, variance, residual-branch variance per block) where the
  model has residual blocks (Brock et al. 2021a);
* the cosine similarity and stable rank of the penultimate features, the classifier's input
  (Lubana et al. 2021), and the cosine similarity of the last feature map before the pooling
  (the classifier head's input, where Beyond BatchNorm measures it), for models with a head.

Each record is one line of the run folder's ``diagnostics.jsonl``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..diagnostics import (
    collapse_measures,
    cosine_similarity,
    power_profile,
    signal_layout,
    signal_propagation,
    stable_rank,
)
from ..diagnostics.probes import resolve
from ..layers.base import Normalization

PROBE_SIZE = 64


def _classifier(model: nn.Module) -> nn.Linear | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def penultimate_features(model: nn.Module, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """For the batch ``x``: the input of the model's last linear layer (the pooled features)
    and the input of its classifier head ``model.head`` (the last feature map, before the
    pooling, where Beyond BatchNorm's probes sit), each flattened per sample; None where the
    model has no such module."""
    classifier = _classifier(model)
    head = getattr(model, "head", None)
    captured: dict[str, Tensor] = {}
    handles = [
        module.register_forward_pre_hook(
            lambda _m, args, key=key: captured.setdefault(key, args[0].detach())
        )
        for key, module in (("pooled", classifier), ("map", head))
        if isinstance(module, nn.Module)
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    pooled, feature_map = (captured.get(k) for k in ("pooled", "map"))
    return tuple(t.flatten(1).double() if t is not None else None for t in (pooled, feature_map))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _power(model: nn.Module, x: Tensor) -> dict[str, Any] | None:
    try:
        resolve(model, "norm", None)
    except ValueError:  # no normalization step (a normalizer-free or weight-normalized net)
        return None
    profile = power_profile(model, x)
    layers, fractions = [], {term: [] for term in ("p1", "p2", "p3", "p4")}
    collapse = []
    for name, decomposition in profile:
        layers.append(name)
        for term, value in decomposition.fractions().items():
            fractions[term].append(_finite_or_none(value))
        try:
            measures = collapse_measures(decomposition)
            collapse.append(
                {
                    "collapsed_fraction": measures.collapsed_fraction,
                    "channel_imbalance": _finite_or_none(measures.channel_imbalance),
                    "effective_width": measures.effective_width,
                }
            )
        except ValueError:  # a layer of zero power: nothing to measure
            collapse.append(None)
    return {"layers": layers, "fractions": fractions, "collapse": collapse}


def _signal(model: nn.Module, x: Tensor) -> dict[str, Any] | None:
    try:
        signal_layout(model)
    except ValueError:  # no residual blocks
        return None
    spp = signal_propagation(model, x)
    return {
        "names": spp.names,
        "depth": spp.depth,
        "squared_mean": spp.squared_mean,
        "variance": spp.variance,
        "branch_variance": spp.branch_variance,
    }


def _usable(features: Tensor | None) -> bool:
    return features is not None and features.shape[0] > 1 and bool(features.abs().sum() > 0)


def _features(model: nn.Module, x: Tensor) -> dict[str, float] | None:
    pooled, feature_map = penultimate_features(model, x)
    if not _usable(pooled):
        return None
    record = {"cosine_similarity": cosine_similarity(pooled), "stable_rank": stable_rank(pooled)}
    if _usable(feature_map):
        record["feature_map_cosine_similarity"] = cosine_similarity(feature_map)
    return record


NORMALIZERS = (Normalization, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def batch_statistics_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in evaluation mode except its normalizers, which use batch statistics
    (their running statistics, updated in the copy only, are never read)."""
    probe = copy.deepcopy(model).eval()
    for module in probe.modules():
        if isinstance(module, NORMALIZERS):
            module.train()
    return probe


@torch.no_grad()
def snapshot(model: nn.Module, x: Tensor, epochs_done: int) -> dict[str, Any]:
    """The diagnostics of ``model`` on the probe batch ``x`` after ``epochs_done`` epochs."""
    probe = batch_statistics_copy(model)
    record: dict[str, Any] = {"epochs_done": epochs_done}
    record["power"] = _power(probe, x)
    record["signal"] = _signal(probe, x)
    record["features"] = _features(probe, x)
    return record
