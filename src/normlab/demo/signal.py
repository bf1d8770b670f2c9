"""Signal propagation plots of ResNet-50 v2s and NF-ResNet-50s (Brock et al. 2021), and
Hoedt et al. 2022's Figures 4 and 5 (left)."""

from __future__ import annotations

import math

from ..diagnostics import SignalPropagation, signal_propagation
from ..report import (
    Check,
    Section,
    plot_signal_propagation,
    plot_signal_propagation_rows,
)
from .config import (
    Analysis,
    DemoConfig,
    _all_at_least,
    _model,
    _ratio,
    _rounded,
    _smallest,
    white_noise,
)
from .fits import depth_growth, stage_fit, stage_labels

SPP_MODELS = {
    "BN-ResNet-50 v2": ("resnet50", "bn"),
    "ResNet-50 v2, no normalization": ("resnet50", "none"),
    "NF-ResNet-50": ("nf_resnet50", "nf"),
    "NF-ResNet-50, plain convs": ("nf_resnet50", "none"),
}
SPP_TRACKING = 0.9  # fraction of per-block variance changes of BN-ResNet's sign
SPP_EXPONENTIAL_R2 = 0.95  # log-variance fit of the ResNet-50 v2 without normalization
SPP_GROWTH_PER_BLOCK = 1.3
SPP_EXPLOSION_OVER_BN = 100.0  # its last/first variance ratio over BN-ResNet's
SPP_LINEAR_R2 = 0.95  # BN-ResNet's per-stage line fits
SPP_MEAN_OVER_BN = 3.0  # plain-conv NF-ResNet's squared mean over BN-ResNet's
SPP_MEAN_OVER_NF = 30.0  # ... over the scaled-WS NF-ResNet's
SPP_UNSTEADY_OVER_NF = 2.0  # plain-conv branch variance's block-to-block change over scaled WS's
SPP_STEADY = 0.05  # scaled WS's block-to-block change of the branch variance


def analyze_signal_propagation(config: DemoConfig) -> Analysis:
    """SPPs at initialisation, in training mode, of a ResNet-50 v2 with BN and without
    normalization, and of an NF-ResNet-50 with scaled WS ("nf") and with plain He-initialised
    convs ("none": only the α, β scaling of the residual branches)."""
    x = white_noise(config.spp_samples, config.spp_size, seed=1, device=config.device)
    spp = {
        label: signal_propagation(_model(config, name, init_seed=0, norm=spec), x, mode="train")
        for label, (name, spec) in SPP_MODELS.items()
    }
    bn, unnormalized, nf, plain = (spp[label] for label in SPP_MODELS)
    agreement = _sign_agreement(bn.variance, nf.variance)
    checks = [
        Check.at_least(
            "NF-ResNet's average channel variance tracks BN-ResNet's per block: it grows and "
            "resets at the same blocks (fraction of per-block changes of the same sign)",
            agreement,
            SPP_TRACKING,
        ),
        *unnormalized_resnet_checks(unnormalized, bn),
        *plain_nf_resnet_checks(plain, nf, bn),
    ]
    rows = {
        "Fig. 4": {"no normalization": unnormalized, "BN": bn},
        "Fig. 5": {"NF, plain convs": plain, "BN": bn, "NF, scaled WS": nf},
    }
    section = Section(
        "Signal propagation plots (Brock et al. 2021; Hoedt et al. 2022)",
        f"Average squared channel mean and average channel variance after the stem and each "
        f"residual block, with the residual branches' variance before their scaling, on "
        f"{config.spp_samples} white-noise images of {config.spp_size}×{config.spp_size}. The "
        "NF-ResNet's scaled residuals x + α·f(x/β) (α = 0.2) reproduce the BN-ResNet's pattern "
        "— variance growing through each stage and reset at each transition — without "
        "normalizing activations.\n\n"
        "The second figure, top row, is Hoedt et al.'s Figure 4: without normalization the "
        "same ResNet-50 v2's variance compounds from block to block and explodes "
        "exponentially, while BN's grows linearly within each stage. Its bottom row is their "
        "Figure 5 (left): an NF-ResNet-50 with plain He-initialised convs and no normalization, "
        "only the α, β scaling of its residual branches, tracks BN-ResNet's variance but not "
        "its squared mean, which the uncentred weights let grow large, and its residual "
        "branches' variance jumps from block to block; scaled weight standardization removes "
        "the mean and keeps the branches steady. Steadiness is the mean |Δ log Var| "
        "between consecutive blocks of a stage, without each stage's first block, whose 3×3 "
        "conv sees the previous stage's resolution: at these small inputs the zero padding "
        "shrinks every conv's output variance by a factor that depends on the resolution.",
        figures=[
            plot_signal_propagation({"BN-ResNet-50 v2": bn, "NF-ResNet-50": nf}),
            plot_signal_propagation_rows(rows),
        ],
    )
    metrics = {
        label: {
            "names": s.names,
            "squared_mean": s.squared_mean,
            "variance": s.variance,
            "branch_variance": s.branch_variance,
        }
        for label, s in spp.items()
    }
    summary = {
        "variance_ratio": {label: s.variance[-1] / s.variance[0] for label, s in spp.items()},
        "block_squared_mean": {label: block_squared_mean(s) for label, s in spp.items()},
        "branch_variation": {label: branch_variation(s) for label, s in spp.items()},
    }
    return Analysis(
        "signal_propagation",
        section,
        checks,
        {"models": metrics, "sign_agreement": agreement, **summary},
    )


def _sign_agreement(a: list[float], b: list[float]) -> float:
    """Fraction of consecutive changes with the same sign in two equal-length sequences."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two profiles of equal length >= 2, got {len(a)} and {len(b)}")
    same = [(a[i + 1] > a[i]) == (b[i + 1] > b[i]) for i in range(len(a) - 1)]
    return sum(same) / len(same)


def block_squared_mean(spp: SignalPropagation) -> float:
    """The average squared channel mean over the residual blocks of an SPP (stem excluded)."""
    values = [m for m, s in zip(spp.squared_mean, stage_labels(spp.names), strict=True) if s]
    if not values:
        raise ValueError(f"the SPP has no residual block: {spp.names}")
    return sum(values) / len(values)


def branch_variation(spp: SignalPropagation) -> float:
    """How unsteady an SPP's residual-branch variance is: the mean |log(v_{l+1} / v_l)| over
    consecutive blocks l, l + 1 of a stage, leaving out each stage's first block (a transition
    block, whose strided conv sees the previous stage's resolution)."""
    labels = stage_labels(spp.names)
    steps = []
    for i in range(1, len(labels) - 1):
        if labels[i] is None or labels[i - 1] != labels[i] or labels[i + 1] != labels[i]:
            continue
        a, b = spp.branch_variance[i], spp.branch_variance[i + 1]
        if a is None or b is None or not (a > 0 and b > 0):
            raise ValueError(
                f"blocks {spp.names[i]!r}, {spp.names[i + 1]!r} lack a positive branch variance"
            )
        steps.append(abs(math.log(b / a)))
    if not steps:
        raise ValueError(f"branch_variation needs a stage of 3 or more blocks: {spp.names}")
    return sum(steps) / len(steps)


def unnormalized_resnet_checks(
    unnormalized: SignalPropagation, bn: SignalPropagation
) -> list[Check]:
    """Hoedt et al. 2022, Figure 4, on the SPPs of a ResNet without normalization and with BN:
    the former's variance explodes exponentially (a line fits log Var over the stem and every
    block; it grows by at least SPP_GROWTH_PER_BLOCK per block) and grows far more than BN's,
    whose variance grows linearly within each stage."""
    whole = stage_fit("network", unnormalized.variance)
    growth = _ratio(
        unnormalized.variance[-1] / unnormalized.variance[0], bn.variance[-1] / bn.variance[0]
    )
    bn_r2 = _smallest(s.linear_r2 for s in depth_growth(bn.variance, stage_labels(bn.names)).stages)
    exponential = _all_at_least([whole.log_r2], SPP_EXPONENTIAL_R2) and _all_at_least(
        [whole.factor], SPP_GROWTH_PER_BLOCK
    )
    return [
        Check(
            "Hoedt et al. Fig. 4: without normalization, the ResNet-50 v2's average channel "
            "variance explodes exponentially with depth (R² of a line fit of log Var over the "
            "stem and every block, and its growth per block)",
            _rounded({"R²": whole.log_r2, "per block": whole.factor}),
            f"R² ≥ {SPP_EXPONENTIAL_R2:g}, ≥ ×{SPP_GROWTH_PER_BLOCK:g} per block",
            exponential,
        ),
        Check.at_least(
            "Hoedt et al. Fig. 4: it grows far more than with BN (last ÷ first variance without "
            "normalization, over the same ratio with BN)",
            growth,
            SPP_EXPLOSION_OVER_BN,
        ),
        Check.at_least(
            "Hoedt et al. Fig. 4: with BN the variance grows linearly within each stage "
            "(smallest R² of the per-stage line fits)",
            bn_r2,
            SPP_LINEAR_R2,
        ),
    ]


def plain_nf_resnet_checks(
    plain: SignalPropagation, nf: SignalPropagation, bn: SignalPropagation
) -> list[Check]:
    """Hoedt et al. 2022, Figure 5 (left), on the SPPs of an NF-ResNet with plain convs, one
    with scaled WS, and a BN-ResNet: the plain one tracks BN's variance but far exceeds its
    squared mean, which scaled WS keeps small; its residual-branch variance is unsteady, the
    scaled-WS one's steady."""
    plain_mean = block_squared_mean(plain)
    unsteady, steady = branch_variation(plain), branch_variation(nf)
    return [
        Check.at_least(
            "Hoedt et al. Fig. 5: the NF-ResNet-50 with plain He-initialised convs tracks "
            "BN-ResNet's variance per block (fraction of per-block changes of the same sign)",
            _sign_agreement(bn.variance, plain.variance),
            SPP_TRACKING,
        ),
        Check.at_least(
            "Hoedt et al. Fig. 5: ... but not BN-ResNet's squared mean, which it far exceeds "
            "(average squared channel mean over the blocks, plain-conv NF ÷ BN)",
            _ratio(plain_mean, block_squared_mean(bn)),
            SPP_MEAN_OVER_BN,
        ),
        Check.at_least(
            "Hoedt et al. Fig. 5: scaled WS keeps the NF-ResNet's squared mean small (average "
            "squared channel mean over the blocks, plain convs ÷ scaled WS)",
            _ratio(plain_mean, block_squared_mean(nf)),
            SPP_MEAN_OVER_NF,
        ),
        Check.at_least(
            "Hoedt et al. Fig. 5: with plain convs the residual-branch variance is unsteady, "
            "with scaled WS steady (mean |Δ log Var| from block to block within a stage, "
            "plain convs ÷ scaled WS)",
            _ratio(unsteady, steady),
            SPP_UNSTEADY_OVER_NF,
        ),
        Check.at_most(
            "Hoedt et al. Fig. 5: with scaled WS the residual-branch variance is steady (mean "
            "|Δ log Var| from block to block within a stage)",
            steady,
            SPP_STEADY,
        ),
    ]
