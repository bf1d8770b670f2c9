"""Every analysis of the demo, in report order, and :func:`run_demo`, which writes the
report."""

from __future__ import annotations

from collections.abc import Callable

from ..report import ReportFiles, check_report_folder, write_report
from .config import Analysis, DemoConfig
from .gradients import analyze_gradients
from .guarantee import analyze_pn_guarantee
from .power import analyze_power
from .rank import analyze_stable_rank
from .signal import analyze_signal_propagation
from .similarity import analyze_feature_similarity
from .variance import analyze_variance_growth

DESCRIPTION = (
    "The central measurements of Proxy Normalization (Labatie et al. 2021), Beyond BatchNorm "
    "(Lubana et al. 2021) and normalizer-free ResNets (Brock et al. 2021; Hoedt et al. 2022), "
    "taken at initialisation on white-noise inputs, each claim checked against its measurement."
)


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
    before each analysis (of ``len(ANALYSES)``). A report folder that cannot be written is
    refused before any analysis runs."""
    check_report_folder(config.out)
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
