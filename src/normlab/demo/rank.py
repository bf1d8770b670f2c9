"""Stable rank of a plain CNN's features against sqrt(width / group size) (Beyond
BatchNorm, Figure 6a)."""

from __future__ import annotations

import itertools
import math

import torch

from ..diagnostics import linear_fit, stable_rank
from ..report import Check, Section, plot_stable_rank
from .config import Analysis, DemoConfig, _plain_cnn, white_noise

GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64)


def analyze_stable_rank(config: DemoConfig) -> Analysis:
    """Stable rank of the last layer's features against sqrt(width / group size)."""
    x = white_noise(config.samples, config.size, seed=2, device=config.device)
    ranks = []
    for group_size in GROUP_SIZES:
        net = _plain_cnn(config, f"gn/{group_size}").train()
        with torch.no_grad():
            ranks.append(stable_rank(net(x).flatten(1)))
    fit = linear_fit([math.sqrt(config.cnn_width / g) for g in GROUP_SIZES], ranks)
    ordered = all(a >= b for a, b in itertools.pairwise(ranks))
    checks = [
        Check.at_least(
            "Stable rank is linear in sqrt(width / group size) (R² of the fit)", fit.r2, 0.9
        ),
        Check.at_least(
            "Stable rank grows with sqrt(width / group size) (slope of the fit)", fit.slope, 0.0
        ),
        Check(
            "Stable rank grows as the group size shrinks (IN ≥ ... ≥ LN)",
            [round(r, 4) for r in ranks],
            "non-increasing in group size",
            ordered,
        ),
    ]
    section = Section(
        "Rank of the representations (Beyond BatchNorm, Figure 6a)",
        f"A {config.cnn_depth}-layer, width-{config.cnn_width} CNN with GroupNorm of group "
        f"sizes {', '.join(map(str, GROUP_SIZES))} (1 is InstanceNorm, {config.cnn_width} "
        f"LayerNorm) at initialisation, on {config.samples} white-noise inputs: the stable "
        "rank of the last layer's features grows linearly with sqrt(width / group size).",
        figures=[plot_stable_rank(GROUP_SIZES, ranks, config.cnn_width)],
    )
    metrics = {
        "group_sizes": list(GROUP_SIZES),
        "stable_rank": ranks,
        "fit": {"slope": fit.slope, "intercept": fit.intercept, "r2": fit.r2},
    }
    return Analysis("stable_rank", section, checks, metrics)
