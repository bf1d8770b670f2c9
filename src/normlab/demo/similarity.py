"""Cosine similarity of CNN-10's and ResNet-56's penultimate features per normalizer (the
input of Beyond BatchNorm, Figure 5)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import Tensor

from ..diagnostics import similarity_profile
from ..report import Check, Section, Table, plot_feature_similarity
from .config import Analysis, DemoConfig, _all_at_least, _model, _rounded, _smallest, white_noise
from .variance import RESNET56

SIMILARITY_MODELS = {"CNN-10": "cnn10", "ResNet-56": RESNET56}
SIMILARITY_SCHEMES = ("bn", "in", "gn/4", "gn8", "ln", "ln+pn", "gn8+pn", "none+wn", "none+sws")
GROUP_ORDER = ("in", "gn/4", "ln")  # group sizes 1 < 4 < every channel
GROUP_NORMALIZERS = ("gn/4", "gn8", "ln")
PN_PAIRS = (("ln", "ln+pn"), ("gn8", "gn8+pn"))
GROUP_GAP = 0.02
BN_GAP = 0.05
PN_GAP = 0.3


def penultimate_similarity(net: torch.nn.Module, x: Tensor) -> tuple[float, float]:
    """The mean pairwise cosine similarity, in training mode, of the input of the classifier
    head (the last layer's feature map) and of the input of its linear layer (the features
    after global average pooling) of a model with a :class:`ClassifierHead` named ``head``."""
    geometry = similarity_profile(net, x, where="pre", select=["head", "head.fc"], mode="train")
    cos = {g.name: g.cosine_similarity for g in geometry}
    return cos["head"], cos["head.fc"]


def similarity_gaps(cos: Mapping[str, float]) -> dict[str, float]:
    """The margins by which one model's similarities (scheme -> cosine similarity) satisfy
    Figure 5's relations, each positive when its relation holds: ``"group size"``, the smallest
    step up along IN < GN/4 < LN; ``"bn"``, the smallest excess of GN/4's, GN8's and LN's over
    BN's; ``"pn"``, the smallest drop from LN to LN+PN and from GN8 to GN8+PN."""
    missing = sorted(set(GROUP_ORDER + GROUP_NORMALIZERS + ("bn",)).union(*PN_PAIRS) - set(cos))
    if missing:
        raise ValueError(f"similarity_gaps needs the schemes {missing}, got {sorted(cos)}")
    return {
        "group size": _smallest(cos[b] - cos[a] for a, b in itertools.pairwise(GROUP_ORDER)),
        "bn": _smallest(cos[g] - cos["bn"] for g in GROUP_NORMALIZERS),
        "pn": _smallest(cos[plain] - cos[pn] for plain, pn in PN_PAIRS),
    }


def similarity_checks(similarity: Mapping[str, Mapping[str, float]]) -> list[Check]:
    """Figure 5's relations on the penultimate similarities of each model (model -> scheme ->
    cosine similarity), each with its margin: GROUP_GAP, BN_GAP, PN_GAP."""
    gaps = {model: similarity_gaps(cos) for model, cos in similarity.items()}

    def check(claim: str, key: str, bound: float) -> Check:
        margins = {model: g[key] for model, g in gaps.items()}
        ok = _all_at_least(margins.values(), bound)
        return Check(claim, _rounded(margins), f"≥ {bound:g} for each model", ok)

    return [
        check(
            "Beyond BatchNorm Fig. 5: the penultimate features of different inputs grow more "
            "similar with the normalizer's group size, IN < GN/4 < LN (smallest step, per model)",
            "group size",
            GROUP_GAP,
        ),
        check(
            "Beyond BatchNorm Fig. 5: BN's penultimate features are less similar than those of "
            "every group normalizer, GN/4, GN8 and LN (smallest excess over BN's, per model)",
            "bn",
            BN_GAP,
        ),
        check(
            "PN paper: Proxy Normalization makes LN's and GN8's penultimate features far less "
            "similar (smallest drop to LN+PN and GN8+PN, per model)",
            "pn",
            PN_GAP,
        ),
    ]


def analyze_feature_similarity(config: DemoConfig) -> Analysis:
    """Cosine similarity of CNN-10's and ResNet-56's penultimate features per normalizer at
    initialisation (what Beyond BatchNorm's Figure 5 relates to training speed).

    The features are the last layer's feature map, the classifier head's input, as Beyond
    BatchNorm's probes take it: uncentred and before the global pooling. The similarity after
    the pooling (the linear classifier's input) is reported beside it but not checked: ReLU's
    positive mean dominates it, and after IN each channel's spatial mean is nearly fixed, so
    IN's pooled features are nearly the same for every input and the ordering disappears.
    ResNet-56 has the activation on the residual branch, which ``+pn`` needs.
    """
    x = white_noise(config.cifar_samples, config.cifar_size, seed=5, device=config.device)
    maps: dict[str, dict[str, float]] = {}
    pooled: dict[str, dict[str, float]] = {}
    for label, name in SIMILARITY_MODELS.items():
        kwargs = {"act_on_residual": True} if name == RESNET56 else {}
        maps[label], pooled[label] = {}, {}
        for spec in SIMILARITY_SCHEMES:
            net = _model(config, name, init_seed=0, norm=spec, **kwargs)
            maps[label][spec], pooled[label][spec] = penultimate_similarity(net, x)
    columns = ["scheme"] + [
        f"{model}, {what}" for model in SIMILARITY_MODELS for what in ("feature map", "pooled")
    ]
    rows = [
        [spec]
        + [v for model in SIMILARITY_MODELS for v in (maps[model][spec], pooled[model][spec])]
        for spec in SIMILARITY_SCHEMES
    ]
    section = Section(
        "Similarity of the penultimate features (the input of Beyond BatchNorm, Figure 5)",
        f"The mean pairwise cosine similarity of the penultimate features of CNN-10 and "
        f"ResNet-56 (activation on the residual branch, as +pn needs) at initialisation, in "
        f"training mode, on {config.cifar_samples} white-noise images of "
        f"{config.cifar_size}×{config.cifar_size}, per normalizer. The features are the last "
        "layer's feature map, uncentred and before the global pooling, as Beyond BatchNorm's "
        "probes take them. Normalizing over larger groups makes the features of different "
        "inputs more alike (IN < GN/4 < LN), batch statistics keep BN's less alike than those "
        "of any group normalizer, and Proxy Normalization removes most of LN's and GN's "
        "similarity. The markers give the similarity after the global pooling, the linear "
        "classifier's input, which is not checked: ReLU's positive mean dominates it, and "
        "after IN each channel's spatial mean is nearly fixed, so IN's pooled features are "
        "nearly the same for every input.",
        figures=[plot_feature_similarity(maps, pooled)],
        tables=[Table(columns, rows, caption="Mean pairwise cosine similarity.")],
    )
    metrics = {
        "schemes": list(SIMILARITY_SCHEMES),
        "models": dict(SIMILARITY_MODELS),
        "feature_map": maps,
        "pooled": pooled,
        "gaps": {model: similarity_gaps(cos) for model, cos in maps.items()},
    }
    return Analysis("feature_similarity", section, similarity_checks(maps), metrics)
