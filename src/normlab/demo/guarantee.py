"""PN keeps channels normalized: Theorem 3 of the PN paper, for every registered φ."""

from __future__ import annotations

from ..diagnostics.theory import check_theorem3
from ..layers import activation_names
from ..report import Check, Section, Table
from .config import Analysis, DemoConfig

THEOREM3_Z = 5.0


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
