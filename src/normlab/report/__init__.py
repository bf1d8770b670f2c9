"""Reports of normlab's analyses: the papers' figures, checks of their claims, an HTML page and
a metrics.json::

    from normlab.report import Check, Section, write_report, plot_power_decomposition
    fig = plot_power_decomposition({"bn": bn_profile, "ln": ln_profile}, bounds={"ln": bound})
    write_report("out", "Channel collapse", [Section("Power decomposition", figures=[fig])],
                 checks=[Check.at_most("BN's P1/P is ~0", p1_fraction, 0.01)],
                 metrics={"power": {"bn": fractions}})
"""

from .checks import Check, summarize
from .html import ReportFiles, Section, Table, check_report_folder, render_html, write_report
from .plots import (
    plot_cosine_similarity,
    plot_feature_similarity,
    plot_gradient_norms,
    plot_power_decomposition,
    plot_signal_propagation,
    plot_signal_propagation_rows,
    plot_stable_rank,
    plot_variance_growth,
    power_fractions,
    save_figure,
)
from .serialize import to_jsonable

__all__ = [
    "Check",
    "ReportFiles",
    "Section",
    "Table",
    "check_report_folder",
    "plot_cosine_similarity",
    "plot_feature_similarity",
    "plot_gradient_norms",
    "plot_power_decomposition",
    "plot_signal_propagation",
    "plot_signal_propagation_rows",
    "plot_stable_rank",
    "plot_variance_growth",
    "power_fractions",
    "render_html",
    "save_figure",
    "summarize",
    "to_jsonable",
    "write_report",
]
