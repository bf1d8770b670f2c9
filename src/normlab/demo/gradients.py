"""Gradient norm through a plain CNN's depth and the features' cosine similarity (Beyond
BatchNorm, Figure 8)."""

from __future__ import annotations

import itertools

from ..diagnostics import gradient_profile, similarity_profile
from ..report import Check, Section, plot_cosine_similarity, plot_gradient_norms
from .config import Analysis, DemoConfig, _plain_cnn, white_noise

GRADIENT_SCHEMES = ("in", "bn", "gn8", "ln")


def analyze_gradients(config: DemoConfig) -> Analysis:
    """Gradient norm through depth and its growth rate towards the input, per scheme."""
    profiles, growth, similarity = {}, {}, {}
    for spec in GRADIENT_SCHEMES:
        rates = []
        for seed in range(config.seeds):
            net = _plain_cnn(config, spec, seed).train()
            x = white_noise(config.samples, config.size, seed=10 + seed, device=config.device)
            profile = gradient_profile(net, x, seed=seed)
            rates.append(-profile.fit.rate)  # growth per layer towards the input
            if seed == 0:
                profiles[spec] = profile
                similarity[spec] = similarity_profile(net, x, mode="train")
        growth[spec] = sum(rates) / len(rates)
    order = [growth[s] for s in GRADIENT_SCHEMES]
    ordered = all(a >= b for a, b in itertools.pairwise(order))
    checks = [
        Check(
            "Gradient explosion orders IN ≥ BN ≥ GN ≥ LN (growth rate of log ‖∂L/∂z^l‖ per "
            f"layer towards the input, mean of {config.seeds} seeds)",
            {s: round(growth[s], 4) for s in GRADIENT_SCHEMES},
            "non-increasing from IN to LN",
            ordered,
        )
    ]
    section = Section(
        "Gradient explosion (Beyond BatchNorm, Figure 8) and feature similarity",
        f"The same {config.cnn_depth}-layer CNN at initialisation, loss a fixed random linear "
        "readout of the last layer: ‖∂L/∂z^l‖ through depth (log scale) and the mean pairwise "
        "cosine similarity of the features. Normalizing over fewer values (IN, BN) makes "
        "gradients explode faster towards the input than GN, and GN than LN.",
        figures=[plot_gradient_norms(profiles), plot_cosine_similarity(similarity)],
    )
    metrics = {
        "growth_rate": growth,
        "norms": {s: p.norms for s, p in profiles.items()},
        "cosine_similarity": {s: [g.cosine_similarity for g in v] for s, v in similarity.items()},
    }
    return Analysis("gradients", section, checks, metrics)
