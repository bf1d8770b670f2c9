r"""The main job, ``normlab demo``: the papers' central measurements on white noise, checked.

On no data at all (white-noise inputs, the convention of Beyond BatchNorm and of signal
propagation plots) it reproduces, at initialisation:

1. the PN paper's Figure 2 (top row): the power decomposition P = P1 + P2 + P3 + P4 of the
   normalized pre-activations through the random net of Definition 1, for bn, ln, in, gn8,
   ln+pn, gn8+pn and ln+ws, with Theorem 1's bound on the LN panel;
2. signal propagation plots (Brock et al. 2021; Hoedt et al. 2022) of a BN ResNet-50 v2 and of
   an NF-ResNet-50, and Hoedt et al.'s Figures 4 and 5 (left): a ResNet-50 v2 without
   normalization (its variance explodes exponentially) against BN's, and an NF-ResNet-50 with
   plain He-initialised convs (large squared mean, unsteady residual branches) against scaled WS;
3. Beyond BatchNorm's Claims 1-2: the variance of a ResNet-56's residual stream grows linearly
   with depth under bn, ln, in, gn8, exponentially under weight normalization and scaled WS,
   and not at all under those with SkipInit;
4. Beyond BatchNorm's Figure 6a: stable rank of a 30-layer, width-64 CNN's features against
   sqrt(width / group size);
5. Beyond BatchNorm's Figure 8: gradient norm through depth for IN, BN, GN, LN (and the cosine
   similarity of the features through depth);
6. the input of Beyond BatchNorm's Figure 5: the cosine similarity of CNN-10's and ResNet-56's
   penultimate features per normalizer (LN's above GN's above IN's, BN's below every group
   normalizer's, PN's far below LN's and GN's);
7. PN's guarantee, Theorem 3, for every registered φ;

and writes ``report.html`` (figures and a table of checks: claim, measured value, expectation,
pass/fail), the figures, and ``metrics.json`` (top-level ``"checks"`` beside each analysis' data).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .diagnostics import (
    SignalPropagation,
    activation_variance,
    collapse_measures,
    gradient_profile,
    linear_fit,
    power_profile,
    signal_propagation,
    similarity_profile,
    stable_rank,
)
from .diagnostics.theory import (
    check_theorem1,
    check_theorem2,
    check_theorem3,
    theorem1_bound,
    theorem1_rho,
)
from .layers import activation_names
from .models import create
from .models.resnet_post import PostActBasicBlock
from .report import (
    Check,
    ReportFiles,
    Section,
    Table,
    plot_cosine_similarity,
    plot_feature_similarity,
    plot_gradient_norms,
    plot_power_decomposition,
    plot_signal_propagation,
    plot_signal_propagation_rows,
    plot_stable_rank,
    plot_variance_growth,
    write_report,
)

FIG2_SCHEMES = ("bn", "ln", "in", "gn8", "ln+pn", "gn8+pn", "ln+ws")
GRADIENT_SCHEMES = ("in", "bn", "gn8", "ln")
GROUP_SIZES = (1, 2, 4, 8, 16, 32, 64)
THEOREM1_TOLERANCE = 0.02
THEOREM2_TOLERANCE = 1e-6
THEOREM3_Z = 5.0
DESCRIPTION = (
    "The central measurements of Proxy Normalization (Labatie et al. 2021), Beyond BatchNorm "
    "(Lubana et al. 2021) and normalizer-free ResNets (Brock et al. 2021; Hoedt et al. 2022), "
    "taken at initialisation on white-noise inputs, each claim checked against its measurement."
)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo's experiments.

    Attributes:
        out: the report directory.
        width, depth: the random net of Figure 2 (the paper used width 1024).
        samples, size: white-noise inputs (N, 3, size, size) of the random nets.
        cnn_width, cnn_depth: the plain CNN of Beyond BatchNorm's Figures 6a and 8.
        spp_samples, spp_size: inputs of the ResNet-50s of the signal propagation plots.
        cifar_samples, cifar_size: inputs of the CIFAR models (ResNet-56, CNN-10) of Beyond
            BatchNorm's Claims 1-2 and Figure 5.
        seeds: seeds of the gradient-growth fits, averaged.
        pn_samples: samples per channel of the Theorem 3 check.
        device: where the models run ("cpu", "cuda", ...).
    """

    out: Path
    width: int = 256
    depth: int = 50
    samples: int = 64
    size: int = 16
    cnn_width: int = 64
    cnn_depth: int = 30
    spp_samples: int = 8
    spp_size: int = 128
    cifar_samples: int = 32
    cifar_size: int = 32
    seeds: int = 3
    pn_samples: int = 200_000
    device: str = "cpu"

    @classmethod
    def quick(cls, out: Path) -> DemoConfig:
        """The CI-sized run (well under a minute on 2 cores)."""
        return cls(
            out,
            width=64,
            depth=20,
            samples=32,
            size=8,
            spp_samples=4,
            spp_size=64,
            cifar_samples=16,
            pn_samples=20_000,
        )


@dataclass
class Analysis:
    """One analysis' part of the report: its section, its checks and its data for metrics."""

    key: str
    section: Section
    checks: list[Check]
    metrics: dict = field(default_factory=dict)


def white_noise(samples: int, size: int, seed: int, device: str = "cpu") -> Tensor:
    """N(0, 1) images of shape (samples, 3, size, size), drawn on the CPU (the same on every
    device) and moved to ``device``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, 3, size, size, generator=generator).to(device)


def _model(
    config: DemoConfig, name: str, init_seed: int | None = None, **kwargs
) -> torch.nn.Module:
    """``create(name, **kwargs)`` on the config's device; with ``init_seed``, its parameters
    drawn from that seed (whatever ran before) without touching the global random state."""
    if init_seed is None:
        return create(name, **kwargs).to(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return create(name, **kwargs).to(config.device)


# -- 1. PN paper Figure 2 ------------------------------------------------------------------


def analyze_power(config: DemoConfig) -> Analysis:
    """Power decomposition of ỹ^l through the random net of Definition 1, per scheme."""
    x = white_noise(config.samples, config.size, seed=0, device=config.device)
    profiles, rho = {}, {}
    for spec in FIG2_SCHEMES:
        net = _model(config, "random_net", depth=config.depth, width=config.width, norm=spec)
        profiles[spec] = power_profile(net, x, where="norm", mode="train")
        rho[spec] = theorem1_rho(net)
    fractions = {s: [d.fractions() for _, d in p] for s, p in profiles.items()}
    last = {s: f[-1]["p1"] for s, f in fractions.items()}
    theorem1 = check_theorem1(profiles["ln"], rho["ln"], tolerance=THEOREM1_TOLERANCE)
    theorem2 = [check_theorem2(d, THEOREM2_TOLERANCE, name) for name, d in profiles["in"]]
    in_error = max(max(c.errors["p2"], c.errors["p4"]) for c in theorem2)
    checks = [
        Check(
            f"Theorem 1: LN's non-collapsed power (P − P1)/P ≤ ρ^(l−1) at every depth "
            f"(ρ = {rho['ln']:.4f})",
            max(theorem1.excess),
            f"≤ {THEOREM1_TOLERANCE} above the bound at every layer",
            theorem1.passed,
        ),
        Check.at_most(
            "Theorem 2: IN's P2 = P4 = 0 at every depth (max P2, P4)", in_error, THEOREM2_TOLERANCE
        ),
        Check.at_most(
            "BN's collapsed fraction P1/P ≈ 0 at every depth (max over layers)",
            max(f["p1"] for f in fractions["bn"]),
            0.01,
        ),
        Check.at_most(
            "LN+PN's collapsed fraction at the last layer is far below LN's (ratio LN+PN / LN)",
            last["ln+pn"] / last["ln"],
            0.1,
        ),
        Check.close(
            "LN+PN's collapsed fraction at the last layer is close to BN's",
            last["ln+pn"],
            last["bn"],
            0.05,
        ),
    ]
    figure = plot_power_decomposition(
        profiles, bounds={"ln": theorem1_bound(rho["ln"], len(profiles["ln"]))}
    )
    measures = {s: collapse_measures(p[-1][1]) for s, p in profiles.items()}
    table = Table(
        ["scheme", "P1/P last layer", "channel imbalance", "effective width", "ρ"],
        [
            [s, last[s], measures[s].channel_imbalance, measures[s].effective_width, rho[s]]
            for s in FIG2_SCHEMES
        ],
        caption=f"Last layer (l = {config.depth}) of each random net.",
    )
    section = Section(
        "Channel collapse: the power decomposition (PN paper, Figure 2)",
        f"Random nets of Definition 1 (depth {config.depth}, width {config.width}, 3×3 "
        f"circular convs, γ ~ N(1, 0.2²), β ~ N(0, 0.2²)) on {config.samples} white-noise "
        f"inputs of {config.size}×{config.size}. Each panel stacks the fractions P1/P "
        "(dataset-level channel mean: collapse), P2/P, P3/P, P4/P of the normalized "
        "pre-activations ỹ^l through depth. LN collapses towards P1 as Theorem 1 bounds; IN "
        "keeps P1 = P2 = P4 = 0 (Theorem 2); LN+PN and GN+PN stay as uncollapsed as BN.",
        figures=[figure],
        tables=[table],
    )
    metrics = {
        "schemes": list(FIG2_SCHEMES),
        "depth": config.depth,
        "width": config.width,
        "fractions": fractions,
        "rho": rho,
        "theorem1": {"measured": theorem1.measured, "bound": theorem1.bound},
    }
    return Analysis("power_decomposition", section, checks, metrics)


# -- Growth of a profile through depth (the SPPs of 2 and the ResNet-56 of 3) ---------------


@dataclass(frozen=True)
class StageFit:
    """Fits of one stretch (a stage of blocks) of a positive profile through depth.

    Attributes:
        stage: the stage's name ("layer2").
        blocks: its number of points.
        slope, linear_r2: the slope and R² of the line fit value ≈ slope·l + b, l the block index.
        log_r2, factor: the R² of the line fit log(value) ≈ a·l + b, and e^a: the growth per
            block of an exponential fit.
        ratio: the stage's last value over its first.
    """

    stage: str
    blocks: int
    slope: float
    linear_r2: float
    log_r2: float
    factor: float
    ratio: float


def stage_fit(stage: str, values: Sequence[float], start: int = 0) -> StageFit:
    """The :class:`StageFit` of ``values`` (2 or more, all positive) at block indices
    ``start``, ``start + 1``, ... A constant stretch has slope 0 and R² NaN."""
    values = [float(v) for v in values]
    if len(values) < 2 or not all(v > 0 for v in values):
        raise ValueError(
            f"stage {stage!r}: a growth fit needs 2 or more positive values, got {values}"
        )
    depth = range(start, start + len(values))
    line = linear_fit(depth, values)
    log = linear_fit(depth, [math.log(v) for v in values])
    ratio = values[-1] / values[0]
    return StageFit(stage, len(values), line.slope, line.r2, log.r2, math.exp(log.slope), ratio)


@dataclass(frozen=True)
class DepthGrowth:
    """How a positive profile through depth grows: a :class:`StageFit` per stage, in depth
    order, and ``ratio``, the profile's last value over its first (the stem's)."""

    stages: list[StageFit]
    ratio: float

    @property
    def deepest(self) -> StageFit:
        """The fit of the last stage, the one furthest from the input."""
        return self.stages[-1]

    @property
    def largest_stage_ratio(self) -> float:
        """The largest last-over-first ratio within a stage."""
        return max(s.ratio for s in self.stages)


def stage_labels(names: Sequence[str]) -> list[str | None]:
    """The stage of each point of a depth profile, read off its module name: "layer2" for the
    block "layer2.3", None for a top-level module such as "stem"."""
    return [name.rsplit(".", 1)[0] if "." in name else None for name in names]


def depth_growth(values: Sequence[float], stages: Sequence[str | None]) -> DepthGrowth:
    """Fits of every stage of ``values``: a stage is a run of equal labels in ``stages``
    (:func:`stage_labels`); None marks a point of no stage, such as the stem."""
    values = [float(v) for v in values]
    if len(values) != len(stages) or len(values) < 2:
        raise ValueError(
            f"depth_growth needs one stage label per value and 2 or more values, got "
            f"{len(values)} values and {len(stages)} labels"
        )
    runs: list[tuple[str, int, int]] = []  # (stage, first index, end index)
    for index, label in enumerate(stages):
        if label is None:
            continue
        if runs and runs[-1][0] == label and runs[-1][2] == index:
            runs[-1] = (label, runs[-1][1], index + 1)
        else:
            runs.append((label, index, index + 1))
    if not runs:
        raise ValueError("depth_growth found no stage: every label is None")
    if not values[0] > 0:
        raise ValueError(f"depth_growth needs a positive first value, got {values[0]}")
    fits = [stage_fit(label, values[first:end], first) for label, first, end in runs]
    return DepthGrowth(fits, values[-1] / values[0])


def _smallest(values: Iterable[float]) -> float:
    """The minimum, NaN if any value is NaN."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def _all_at_least(values: Iterable[float], bound: float) -> bool:
    return all(math.isfinite(v) and v >= bound for v in values)


def _all_at_most(values: Iterable[float], bound: float) -> bool:
    return all(math.isfinite(v) and v <= bound for v in values)


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    """Values to 4 significant digits, for a check's measurement."""
    return {key: float(f"{value:.4g}") for key, value in values.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


# -- 2. Signal propagation plots -----------------------------------------------------------

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


# -- 3. Beyond BatchNorm Claims 1-2 --------------------------------------------------------

RESNET56 = "resnet56_post"
ACTIVATION_NORMALIZERS = ("bn", "ln", "in", "gn8")
PARAMETRIC_NORMALIZERS = ("none+wn", "none+sws")
SKIPINIT = " + SkipInit"
LINEAR_R2 = 0.95  # Claim 1: line fit of Var over the deepest stage
EXPONENTIAL_R2 = 0.95  # Claim 2: line fit of log Var over the deepest stage
EXPONENTIAL_EDGE = 0.05  # ... by which it beats the line fit of Var
MODERATE_GROWTH = 30.0  # last / stem variance, activation-based normalizers and SkipInit
EXPLOSION = 1000.0  # last / stem variance, parametric normalizers without SkipInit
FLAT_STAGE = 1.5  # largest last / first variance within a stage with SkipInit


def _resnet56(config: DemoConfig, spec: str, **kwargs) -> torch.nn.Module:
    """Beyond BatchNorm's ResNet-56 with the activation on the residual branch, seeded."""
    return _model(config, RESNET56, init_seed=0, norm=spec, act_on_residual=True, **kwargs)


def residual_stream_variance(net: torch.nn.Module, x: Tensor) -> tuple[list[str], list[float]]:
    """(names, average channel variance) of the output of a ResNetPost's stem and of each of its
    blocks, in training mode."""

    def point(name: str, module: torch.nn.Module) -> bool:
        return name == "stem" or isinstance(module, PostActBasicBlock)

    profile = activation_variance(net, x, select=point, mode="train")
    return [name for name, _ in profile], [value for _, value in profile]


def linear_growth_checks(growth: Mapping[str, DepthGrowth]) -> list[Check]:
    """Beyond BatchNorm's Claim 1 on the variance profiles ``growth`` (scheme -> DepthGrowth):
    in the deepest stage a rising line fits the variance (R² ≥ LINEAR_R2), and from the stem
    to the last block it grows at most MODERATE_GROWTH-fold."""
    schemes = ", ".join(growth)
    r2 = {s: g.deepest.linear_r2 for s, g in growth.items()}
    ratio = {s: g.ratio for s, g in growth.items()}
    rising = all(g.deepest.slope > 0 for g in growth.values())
    return [
        Check(
            f"Beyond BatchNorm Claim 1 ({schemes}): the residual stream's variance grows "
            "linearly with depth (R² of a line fit over the deepest stage's blocks)",
            _rounded(r2),
            f"≥ {LINEAR_R2:g} for each, with a positive slope",
            _all_at_least(r2.values(), LINEAR_R2) and rising,
        ),
        Check(
            f"Beyond BatchNorm Claim 1 ({schemes}): the growth stays moderate (variance after "
            "the last block ÷ after the stem)",
            _rounded(ratio),
            f"≤ {MODERATE_GROWTH:g} for each",
            _all_at_most(ratio.values(), MODERATE_GROWTH),
        ),
    ]


def exponential_growth_checks(growth: Mapping[str, DepthGrowth]) -> list[Check]:
    """Beyond BatchNorm's Claim 2 without SkipInit on the variance profiles ``growth``: in the
    deepest stage a rising line fits log Var (R² ≥ EXPONENTIAL_R2), better by EXPONENTIAL_EDGE
    than a line fits Var, and from the stem to the last block it grows EXPLOSION-fold or more."""
    schemes = ", ".join(growth)
    r2 = {s: g.deepest.log_r2 for s, g in growth.items()}
    edge = {s: g.deepest.log_r2 - g.deepest.linear_r2 for s, g in growth.items()}
    ratio = {s: g.ratio for s, g in growth.items()}
    rising = all(g.deepest.factor > 1 for g in growth.values())
    return [
        Check(
            f"Beyond BatchNorm Claim 2 ({schemes}, no SkipInit): the residual stream's variance "
            "grows exponentially with depth (R² of a line fit of log Var over the deepest "
            "stage's blocks)",
            _rounded(r2),
            f"≥ {EXPONENTIAL_R2:g} for each, with a positive slope",
            _all_at_least(r2.values(), EXPONENTIAL_R2) and rising,
        ),
        Check(
            f"Beyond BatchNorm Claim 2 ({schemes}, no SkipInit): exponentially, not linearly "
            "(that R² minus the R² of a line fit of Var)",
            _rounded(edge),
            f"≥ {EXPONENTIAL_EDGE:g} for each",
            _all_at_least(edge.values(), EXPONENTIAL_EDGE),
        ),
        Check(
            f"Beyond BatchNorm Claim 2 ({schemes}, no SkipInit): the variance explodes "
            "(after the last block ÷ after the stem)",
            _rounded(ratio),
            f"≥ {EXPLOSION:g} for each",
            _all_at_least(ratio.values(), EXPLOSION),
        ),
    ]


def bounded_growth_checks(growth: Mapping[str, DepthGrowth]) -> list[Check]:
    """Beyond BatchNorm's Claim 2 with SkipInit on the variance profiles ``growth``: within no
    stage does the variance grow more than FLAT_STAGE-fold, and from the stem to the last block
    at most MODERATE_GROWTH-fold."""
    schemes = ", ".join(growth)
    stage = {s: g.largest_stage_ratio for s, g in growth.items()}
    ratio = {s: g.ratio for s, g in growth.items()}
    return [
        Check(
            f"Beyond BatchNorm Claim 2 ({schemes}): with SkipInit the variance no longer grows "
            "through the blocks (largest last ÷ first ratio within a stage)",
            _rounded(stage),
            f"≤ {FLAT_STAGE:g} for each",
            _all_at_most(stage.values(), FLAT_STAGE),
        ),
        Check(
            f"Beyond BatchNorm Claim 2 ({schemes}): with SkipInit it stays bounded (after the "
            "last block ÷ after the stem)",
            _rounded(ratio),
            f"≤ {MODERATE_GROWTH:g} for each",
            _all_at_most(ratio.values(), MODERATE_GROWTH),
        ),
    ]


def analyze_variance_growth(config: DemoConfig) -> Analysis:
    r"""The variance of a ResNet-56's residual stream through depth, per normalizer (Beyond
    BatchNorm, Claims 1-2).

    The model is ``resnet56_post`` with ``act_on_residual=True``: each block is
    x_{l+1} = x_l + g·σN(conv(σN(conv(x_l)))), the pure residual stream the claims are about,
    and the variant Beyond BatchNorm's code uses for its Weight Normalization experiments. The
    default post-activation block, φ(x_l + g·N(...)), passes the sum through a ReLU, so its
    output is no residual stream: the ReLU after each addition rectifies the stream, and
    measured on it the patterns blur (at init, LN's variance in the first stage is far from a
    line, R² ≈ 0.83, and weight normalization's barely grows there, ×1.5 over 9 blocks).

    The stream's variance resets at the first block of stages 2 and 3, where a 1×1 shortcut
    conv replaces the identity (and, under an activation normalizer, normalizes it), so the
    line and log-line fits are made per stage and checked on the deepest stage: its 9 blocks
    are furthest from the input, the first stage begins right at the stem.
    """
    x = white_noise(config.cifar_samples, config.cifar_size, seed=4, device=config.device)
    cases = {spec: (spec, {}) for spec in ACTIVATION_NORMALIZERS + PARAMETRIC_NORMALIZERS}
    cases |= {spec + SKIPINIT: (spec, {"skipinit": True}) for spec in PARAMETRIC_NORMALIZERS}
    variance = {}
    for label, (spec, kwargs) in cases.items():
        names, variance[label] = residual_stream_variance(_resnet56(config, spec, **kwargs), x)
    stages = stage_labels(names)
    growth = {label: depth_growth(values, stages) for label, values in variance.items()}
    skipinit = [spec + SKIPINIT for spec in PARAMETRIC_NORMALIZERS]
    checks = [
        *linear_growth_checks({s: growth[s] for s in ACTIVATION_NORMALIZERS}),
        *exponential_growth_checks({s: growth[s] for s in PARAMETRIC_NORMALIZERS}),
        *bounded_growth_checks({s: growth[s] for s in skipinit}),
    ]
    parametric = "parametric normalizers (log scale)"
    figure = plot_variance_growth(
        {
            "activation-based normalizers": {s: variance[s] for s in ACTIVATION_NORMALIZERS},
            parametric: {s: variance[s] for s in (*PARAMETRIC_NORMALIZERS, *skipinit)},
        },
        boundaries=[
            i - 0.5 for i in range(1, len(stages)) if stages[i - 1] and stages[i] != stages[i - 1]
        ],
        log_panels=[parametric],
        dashed=skipinit,
    )
    table = Table(
        [
            "scheme",
            "R² of a line (deepest stage)",
            "R² of an exponential (deepest stage)",
            "growth per block (deepest stage)",
            "largest last ÷ first in a stage",
            "last ÷ stem",
        ],
        [
            [
                label,
                g.deepest.linear_r2,
                g.deepest.log_r2,
                g.deepest.factor,
                g.largest_stage_ratio,
                g.ratio,
            ]
            for label, g in growth.items()
        ],
        caption="Fits of each variance profile; metrics.json holds every stage's.",
    )
    section = Section(
        "Activation variance through a ResNet-56 (Beyond BatchNorm, Claims 1-2)",
        f"Beyond BatchNorm's ResNet-56 (three stages of 9 basic blocks, 16, 32 and 64 "
        f"channels) with the activation on the residual branch, so that each block adds to a "
        f"pure residual stream x_(l+1) = x_l + f(x_l), at initialisation, in training mode, on "
        f"{config.cifar_samples} white-noise images of {config.cifar_size}×"
        f"{config.cifar_size}: the average channel variance of x after the stem and after "
        "each block. Under an activation-based normalizer (bn, ln, in, gn8) each branch ends "
        "in a normalized activation and adds a bounded variance: the variance grows linearly "
        "through a stage and is reset by the normalized shortcut conv that opens the next "
        "(BN's and IN's curves overlap on white noise). LN's bends and restarts lower: most "
        "of a layer-normalized output's power sits in its channel means (the PN paper's "
        "channel collapse), which the channel variance leaves out. "
        "Weight normalization and scaled WS (none+wn, none+sws) normalize only the weights: "
        "each branch adds a variance proportional to its input's, so the variance compounds "
        "exponentially, and with no normalized shortcut it never resets. With SkipInit, a "
        "zero-initialised gain on each branch, the blocks start as identities and the variance "
        "changes only at the two transition convs. The fits are per stage, checked on the "
        "deepest (its 9 blocks furthest from the input).",
        figures=[figure],
        tables=[table],
    )
    metrics = {
        "model": RESNET56,
        "act_on_residual": True,
        "names": names,
        "variance": variance,
        "growth": growth,
    }
    return Analysis("variance_growth", section, checks, metrics)


# -- 4. Beyond BatchNorm Figure 6a ---------------------------------------------------------


def _plain_cnn(config: DemoConfig, spec: str, seed: int = 0) -> torch.nn.Module:
    """A plain conv-norm-relu CNN at initialisation: the random net with γ = 1, β = 0."""
    return _model(
        config,
        "random_net",
        depth=config.cnn_depth,
        width=config.cnn_width,
        norm=spec,
        gamma_std=0.0,
        beta_std=0.0,
        seed=seed,
    )


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


# -- 5. Beyond BatchNorm Figure 8 ----------------------------------------------------------


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


# -- 6. The input of Beyond BatchNorm Figure 5 ---------------------------------------------

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


# -- 7. PN's guarantee ---------------------------------------------------------------------


def analyze_pn_guarantee(config: DemoConfig) -> Analysis:
    """Theorem 3 for every registered φ."""
    rows, checks, metrics = [], [], {}
    for act in activation_names():
        result = check_theorem3(act, samples=config.pn_samples, device=config.device)
        checks.append(
            Check.at_most(
                f"Theorem 3 ({act}): with ỹ ~ N(0,1) and β̃ = γ̃ = 0, every channel of PN's output "
                "has mean 0 and variance Var/(Var + ε) (largest deviation, in standard errors)",
                result.max_z_score,
                THEOREM3_Z,
            )
        )
        rows.append([act, result.max_abs_mean, result.max_var_error, result.max_z_score])
        metrics[act] = {
            "max_abs_mean": result.max_abs_mean,
            "max_var_error": result.max_var_error,
            "max_z": result.max_z_score,
        }
    section = Section(
        "PN keeps channels normalized (PN paper, Theorem 3)",
        f"ProxyNormAct with random γ ∈ [0.25, 2.5], β ∈ [−1.5, 1.5] on {config.pn_samples} "
        "channel-wise N(0, 1) inputs per channel.",
        tables=[Table(["φ", "max |mean|", "max |var − Var/(Var+ε)|", "max z-score"], rows)],
    )
    return Analysis("pn_guarantee", section, checks, metrics)


ANALYSES: tuple[tuple[str, Callable[[DemoConfig], Analysis]], ...] = (
    ("power decomposition of random nets (PN Fig. 2)", analyze_power),
    (
        "signal propagation of ResNet-50s and NF-ResNet-50s (Hoedt Figs. 4, 5)",
        analyze_signal_propagation,
    ),
    ("variance through a ResNet-56 (Beyond BN Claims 1-2)", analyze_variance_growth),
    ("stable rank vs group size (Beyond BN Fig. 6a)", analyze_stable_rank),
    ("gradient norms through depth (Beyond BN Fig. 8)", analyze_gradients),
    ("penultimate feature similarity (Beyond BN Fig. 5)", analyze_feature_similarity),
    ("PN's guarantee for every activation (Theorem 3)", analyze_pn_guarantee),
)


def run_demo(config: DemoConfig, on_step: Callable[[int, str], None] | None = None) -> ReportFiles:
    """Run every analysis and write the report; ``on_step(index, description)`` is called
    before each analysis (of ``len(ANALYSES)``)."""
    analyses = []
    for index, (description, analysis) in enumerate(ANALYSES):
        if on_step is not None:
            on_step(index, description)
        analyses.append(analysis(config))
    return write_report(
        config.out,
        "normlab demo: why normalizers work or fail",
        [a.section for a in analyses],
        [check for a in analyses for check in a.checks],
        {a.key: a.metrics for a in analyses} | {"config": config},
        description=DESCRIPTION,
    )
