r"""The papers' figures, drawn with matplotlib's Agg backend from plain data.

Every function takes the diagnostics' results (or the same data as plain lists and dicts, e.g.
read back from ``metrics.json``), returns the :class:`~matplotlib.figure.Figure`, and with
``path`` writes it as ``path.png`` and ``path.svg`` (:func:`save_figure`). Figures are built with
``matplotlib.figure.Figure`` directly, not pyplot: nothing global is touched and no GUI backend is
needed.

* :func:`plot_power_decomposition`: stacked P1..P4 fractions vs depth, one panel per scheme
  (PN paper, Fig. 2), with Theorem 1's bound on the panels given one;
* :func:`plot_signal_propagation`: SPPs (Brock et al. 2021, Fig. 1; Hoedt et al. 2022);
* :func:`plot_signal_propagation_rows`: rows of SPPs on log scales, e.g. a ResNet without
  normalization vs with BN and an NF-ResNet with plain vs scaled-WS convs (Hoedt et al. 2022,
  Figs. 4 and 5);
* :func:`plot_stable_rank`: stable rank vs sqrt(width / group size) with its line fit
  (Beyond BatchNorm, Fig. 6a);
* :func:`plot_gradient_norms`: gradient norm vs depth, log scale (Beyond BatchNorm, Fig. 8);
* :func:`plot_cosine_similarity`: mean pairwise cosine similarity vs depth (Beyond BatchNorm,
  Section 4);
* :func:`plot_variance_growth`: activation variance vs block through a ResNet, per group of
  normalizers (Beyond BatchNorm, Claims 1-2);
* :func:`plot_feature_similarity`: bars of the penultimate features' cosine similarity per
  normalizer and model (Beyond BatchNorm, Fig. 5).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

from .._files import FileGroup, write_atomic
from ..diagnostics.fit import linear_fit
from ..diagnostics.power import PowerDecomposition

FORMATS = ("png", "svg")
TERMS = ("p1", "p2", "p3", "p4")
TERM_LABELS = {
    "p1": r"$P_1$: $E_x[\mu_{x,c}]^2$",
    "p2": r"$P_2$: $Var_x[\mu_{x,c}]$",
    "p3": r"$P_3$: $E_x[\sigma_{x,c}]^2$",
    "p4": r"$P_4$: $Var_x[\sigma_{x,c}]$",
}
TERM_COLORS = {"p1": "#c0392b", "p2": "#e67e22", "p3": "#2980b9", "p4": "#8e44ad"}
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",
    "axes.prop_cycle": mpl.cycler(
        color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
    ),
}


@contextmanager
def style() -> Iterator[None]:
    """normlab's figure style (used while figures are built and saved)."""
    with mpl.rc_context(STYLE):
        yield


def new_figure(
    panels: int = 1, width: float = 4.2, height: float = 3.2, columns: int | None = None
) -> tuple[Figure, list]:
    """A figure of ``panels`` axes (each width × height inches), ``columns`` per row (default:
    one row); axes beyond ``panels`` in the last row are hidden."""
    columns = min(columns or panels, panels)
    rows = -(-panels // columns)
    fig = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def save_figure(
    fig: Figure,
    path: str | Path,
    formats: Sequence[str] = FORMATS,
    files: FileGroup | None = None,
) -> list[Path]:
    """Write ``fig`` as ``path.<format>`` for each format (a suffix of ``path`` is replaced);
    return the written paths. Each file is written to a temporary name beside it and renamed,
    so that an interrupted save leaves no truncated figure; with ``files`` (a
    :func:`~normlab._files.file_group`) they are staged in it, renamed with the group's other
    files."""
    base = Path(path)
    if base.suffix.lstrip(".") in FORMATS:
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for fmt in formats:
            if fmt not in FORMATS:
                raise ValueError(f"unknown figure format {fmt!r}; valid formats: {FORMATS}")
            target = base.with_name(f"{base.name}.{fmt}")
            save = write_atomic if files is None else files.write
            save(target, lambda stream, fmt=fmt: fig.savefig(stream, format=fmt))
            written.append(target)
    return written


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def _field(item: object, key: str) -> object:
    """``item.key`` for a dataclass, ``item[key]`` for a mapping."""
    if isinstance(item, Mapping):
        if key not in item:
            raise ValueError(f"plot data lacks the field {key!r}; it has {sorted(item)}")
        return item[key]
    if not hasattr(item, key):
        raise ValueError(f"plot data of type {type(item).__name__} has no field {key!r}")
    return getattr(item, key)


def _check_panels(panels: Mapping, what: str) -> None:
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError(f"{what} needs a non-empty mapping label -> data, got {panels!r}")


# -- PN paper, Fig. 2 ------------------------------------------------------------------------


def power_fractions(data: object) -> dict[str, list[float]]:
    """{"p1": [...], ..., "p4": [...]}: the layer-level fractions P_i/P of a power profile
    (list of (name, PowerDecomposition)), a list of decompositions, or such a dict already."""
    if isinstance(data, Mapping):
        fractions = {term: [float(v) for v in _field(data, term)] for term in TERMS}
    else:
        items = [d[1] if isinstance(d, tuple) else d for d in data]
        for item in items:
            if not isinstance(item, PowerDecomposition):
                raise ValueError(
                    f"power fractions need PowerDecompositions or (name, PowerDecomposition) "
                    f"pairs, got a {type(item).__name__}"
                )
        per_layer = [item.fractions() for item in items]
        fractions = {term: [f[term] for f in per_layer] for term in TERMS}
    if len({len(v) for v in fractions.values()}) != 1 or not fractions["p1"]:
        raise ValueError("power fractions need the same, non-zero number of layers for P1..P4")
    return fractions


def draw_power_stack(ax, fractions: Mapping[str, Sequence[float]]) -> list[int]:
    """Stacked areas of P1/P .. P4/P (bottom to top) against layer l = 1..L on ``ax``, with the
    axes' depth and [0, 1] limits; returns the depths."""
    depth = list(range(1, len(fractions["p1"]) + 1))
    ax.stackplot(
        depth,
        *(fractions[t] for t in TERMS),
        labels=[TERM_LABELS[t] for t in TERMS],
        colors=[TERM_COLORS[t] for t in TERMS],
        alpha=0.85,
    )
    ax.set(xlabel="layer l", ylim=(0, 1), xlim=(1, max(depth[-1], 2)))
    return depth


def plot_power_decomposition(
    panels: Mapping[str, object],
    bounds: Mapping[str, Sequence[float]] | None = None,
    path: str | Path | None = None,
    title: str = "Power decomposition of the normalized pre-activations (PN paper, Fig. 2)",
) -> Figure:
    """Stacked areas of P1/P, P2/P, P3/P, P4/P (bottom to top) vs layer l = 1..L, one panel per
    scheme (``panels``: label -> power profile or fractions).

    ``bounds`` maps a panel label to Theorem 1's ρ^(l−1) per layer
    (:func:`~normlab.diagnostics.theorem1_bound`): on that panel the line 1 − ρ^(l−1) is drawn,
    which the P1 band must reach or exceed.
    """
    _check_panels(panels, "plot_power_decomposition")
    bounds = dict(bounds or {})
    unknown_panels = set(bounds) - set(panels)
    if unknown_panels:
        raise ValueError(
            f"bounds given for {sorted(unknown_panels)}, which are not panels: {list(panels)}"
        )
    with style():
        fig, axes = new_figure(len(panels), width=3.2, height=2.8, columns=4)
        for ax, (label, data) in zip(axes, panels.items(), strict=True):
            fractions = power_fractions(data)
            depth = draw_power_stack(ax, fractions)
            if label in bounds:
                floor = [1.0 - b for b in bounds[label]][: len(depth)]
                ax.plot(
                    depth[: len(floor)],
                    floor,
                    "k--",
                    lw=1.2,
                    label=r"Thm 1: $P_1/P \geq 1-\rho^{l-1}$",
                )
            ax.set(title=label)
        for ax in axes[:: min(4, len(axes))]:
            ax.set_ylabel("fraction of the power P")
        handles, labels = _legend_entries(axes)
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5))
        fig.suptitle(title)
    return _finish(fig, path)


def _legend_entries(axes: list) -> tuple[list, list]:
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    return handles, labels


# -- Signal propagation plots ----------------------------------------------------------------


def plot_signal_propagation(
    models: Mapping[str, object],
    path: str | Path | None = None,
    title: str = "Signal propagation (Brock et al. 2021, Fig. 1; Hoedt et al. 2022)",
    log_variance: bool = False,
) -> Figure:
    """SPP panels vs block index (0 = stem): average squared channel mean, and average channel
    variance with the residual-branch variance (dashed), one line per model (``models``: label
    -> :class:`~normlab.diagnostics.SignalPropagation` or a dict with its fields)."""
    _check_panels(models, "plot_signal_propagation")
    with style():
        fig, (ax_mean, ax_var) = new_figure(2)
        draw_signal_propagation(ax_mean, ax_var, models, log_variance=log_variance)
        fig.suptitle(title)
    return _finish(fig, path)


def plot_signal_propagation_rows(
    rows: Mapping[str, Mapping[str, object]],
    path: str | Path | None = None,
    title: str = "Signal propagation without normalization (Hoedt et al. 2022, Figs. 4 and 5)",
    log: bool = True,
) -> Figure:
    """One row of SPP panels per comparison (``rows``: row title -> the ``models`` of
    :func:`plot_signal_propagation`), both panels of every row on a log scale by default, since
    an unnormalized network's statistics span orders of magnitude."""
    _check_panels(rows, "plot_signal_propagation_rows")
    with style():
        fig, axes = new_figure(2 * len(rows), columns=2)
        for index, (row, models) in enumerate(rows.items()):
            _check_panels(models, f"row {row!r} of plot_signal_propagation_rows")
            ax_mean, ax_var = axes[2 * index : 2 * index + 2]
            draw_signal_propagation(ax_mean, ax_var, models, log_variance=log, log_mean=log)
            for ax in (ax_mean, ax_var):
                ax.set_title(f"{row}: {ax.get_title()}")
                ax.legend(fontsize=7)
        fig.suptitle(title)
    return _finish(fig, path)


def draw_signal_propagation(
    ax_mean,
    ax_var,
    models: Mapping[str, object],
    log_variance: bool = False,
    log_mean: bool = False,
) -> None:
    """The two SPP panels on ``ax_mean`` (average squared channel mean) and ``ax_var`` (average
    channel variance, the residual-branch variance dashed), one colour per model."""
    for index, (label, spp) in enumerate(models.items()):
        color = f"C{index % 7}"
        depth = _depth(spp)
        ax_mean.plot(
            depth, _floats(_field(spp, "squared_mean")), "o-", ms=3, color=color, label=label
        )
        ax_var.plot(depth, _floats(_field(spp, "variance")), "o-", ms=3, color=color, label=label)
        branch = [
            (d, v)
            for d, v in zip(depth, _field(spp, "branch_variance"), strict=True)
            if v is not None
        ]
        if branch:
            ax_var.plot(
                *zip(*branch, strict=True),
                "--",
                color=color,
                lw=1,
                label=f"{label}: residual branch",
            )
    ax_mean.set(
        title="average squared channel mean",
        xlabel="block (0 = stem)",
        ylabel=r"mean$_c$ $E[x_c]^2$",
    )
    ax_var.set(
        title="average channel variance",
        xlabel="block (0 = stem)",
        ylabel=r"mean$_c$ $Var[x_c]$",
    )
    if log_mean:
        ax_mean.set_yscale("log")
    if log_variance:
        ax_var.set_yscale("log")
    ax_mean.legend()
    ax_var.legend()


def _depth(spp: object) -> list[int]:
    if isinstance(spp, Mapping):
        if "depth" in spp:
            return [int(d) for d in spp["depth"]]
        start = 0 if spp.get("has_stem", True) else 1
        return list(range(start, start + len(spp["variance"])))
    return list(spp.depth)


def _floats(values: object) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


# -- Beyond BatchNorm ------------------------------------------------------------------------


def plot_stable_rank(
    group_sizes: Sequence[int],
    ranks: Sequence[float],
    width: int | Sequence[int],
    path: str | Path | None = None,
    title: str = "Stable rank vs group size (Beyond BatchNorm, Fig. 6a)",
) -> Figure:
    """Stable rank of the last layer's features vs sqrt(width / group size) for GroupNorm, with
    the least-squares line and its R² in the legend. ``width`` is one int or one per point."""
    widths = [width] * len(ranks) if isinstance(width, int) else list(width)
    if not len(group_sizes) == len(ranks) == len(widths):
        raise ValueError(
            f"plot_stable_rank needs one group size and width per rank, got "
            f"{len(group_sizes)} group sizes, {len(widths)} widths and {len(ranks)} ranks"
        )
    x = [math.sqrt(w / g) for w, g in zip(widths, group_sizes, strict=True)]
    fit = linear_fit(x, ranks)
    with style():
        fig, (ax,) = new_figure()
        ax.plot(x, ranks, "o", color="C0", label="GroupNorm")
        for xi, yi, g in zip(x, ranks, group_sizes, strict=True):
            ax.annotate(f"gn/{g}", (xi, yi), textcoords="offset points", xytext=(4, -9), fontsize=7)
        line_x = [min(x), max(x)]
        ax.plot(
            line_x,
            [fit(v) for v in line_x],
            "--",
            color="C1",
            label=f"fit: {fit.slope:.3g}·x + {fit.intercept:.3g}, $R^2$ = {fit.r2:.3f}",
        )
        ax.set(
            title=title,
            xlabel=r"$\sqrt{\mathrm{width}\,/\,\mathrm{group\ size}}$",
            ylabel="stable rank of the Gram matrix",
        )
        ax.legend()
    return _finish(fig, path)


def plot_gradient_norms(
    profiles: Mapping[str, object],
    path: str | Path | None = None,
    title: str = "Gradient norm through depth (Beyond BatchNorm, Fig. 8)",
) -> Figure:
    """‖∂L/∂(output_l)‖ vs layer l (log scale), one line per scheme (``profiles``: label ->
    :class:`~normlab.diagnostics.GradientProfile`, a dict with ``norms``, or a list of norms).
    A profile's growth fit, when present, is given in the legend."""
    _check_panels(profiles, "plot_gradient_norms")
    with style():
        fig, (ax,) = new_figure(width=5.0)
        for label, profile in profiles.items():
            norms = _floats(profile if isinstance(profile, Sequence) else _field(profile, "norms"))
            fit = None if isinstance(profile, Sequence) else _get(profile, "fit")
            rate = _get(fit, "rate") if fit is not None else None
            text = label if rate is None else f"{label} (×{math.exp(-rate):.3g}/layer to input)"
            ax.plot(range(1, len(norms) + 1), norms, "o-", ms=3, label=text)
        ax.set_yscale("log")
        ax.set(title=title, xlabel="layer l", ylabel=r"$\|\partial L / \partial z_l\|$")
        ax.legend()
    return _finish(fig, path)


def plot_cosine_similarity(
    profiles: Mapping[str, object],
    path: str | Path | None = None,
    title: str = "Mean pairwise cosine similarity through depth (Beyond BatchNorm, Sec. 4)",
) -> Figure:
    """Mean pairwise cosine similarity of the features vs layer, one line per scheme
    (``profiles``: label -> list of :class:`~normlab.diagnostics.FeatureGeometry` or floats)."""
    _check_panels(profiles, "plot_cosine_similarity")
    with style():
        fig, (ax,) = new_figure(width=5.0)
        for label, profile in profiles.items():
            values = [
                v if isinstance(v, (int, float)) or v is None else _field(v, "cosine_similarity")
                for v in profile
            ]
            ax.plot(range(1, len(values) + 1), _floats(values), "o-", ms=3, label=label)
        ax.set(title=title, xlabel="layer l", ylabel="cosine similarity", ylim=(-0.05, 1.05))
        ax.legend()
    return _finish(fig, path)


def plot_variance_growth(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    boundaries: Sequence[float] = (),
    log_panels: Sequence[str] = (),
    dashed: Sequence[str] = (),
    path: str | Path | None = None,
    title: str = "Activation variance through a ResNet (Beyond BatchNorm, Claims 1-2)",
) -> Figure:
    """Average channel variance vs block index (0 = stem), one panel per group of schemes
    (``panels``: panel title -> {label: variances}), with dotted vertical lines at the
    ``boundaries`` (e.g. between stages), a log y-scale on the panels named in ``log_panels``
    and dashed lines for the labels in ``dashed`` (e.g. the SkipInit variants), each in the
    colour of the label it extends, if any ("none+wn + SkipInit" in that of "none+wn")."""
    _check_panels(panels, "plot_variance_growth")
    unknown_panels = set(log_panels) - set(panels)
    if unknown_panels:
        raise ValueError(
            f"log_panels names {sorted(unknown_panels)}, which are not panels: {list(panels)}"
        )
    with style():
        fig, axes = new_figure(len(panels), width=4.6)
        for ax, (name, profiles) in zip(axes, panels.items(), strict=True):
            _check_panels(profiles, f"panel {name!r} of plot_variance_growth")
            colors: dict[str, str] = {}
            for label in profiles:
                parents = [p for p in colors if label in dashed and label.startswith(p)]
                fresh = f"C{len(set(colors.values())) % 7}"
                colors[label] = colors[max(parents, key=len)] if parents else fresh
            for label, values in profiles.items():
                line = "o--" if label in dashed else "o-"
                ax.plot(
                    range(len(values)),
                    _floats(values),
                    line,
                    ms=2.5,
                    color=colors[label],
                    label=label,
                )
            for boundary in boundaries:
                ax.axvline(boundary, color="0.5", lw=0.8, ls=":")
            if name in log_panels:
                ax.set_yscale("log")
            ax.set(title=name, xlabel="block (0 = stem)", ylabel=r"mean$_c$ $Var[x_c]$")
            ax.legend()
        fig.suptitle(title)
    return _finish(fig, path)


def plot_feature_similarity(
    models: Mapping[str, Mapping[str, float]],
    pooled: Mapping[str, Mapping[str, float]] | None = None,
    path: str | Path | None = None,
    title: str = "Cosine similarity of the penultimate features at init (Beyond BatchNorm, Fig. 5)",
) -> Figure:
    """Bars of the mean pairwise cosine similarity per normalizer, one panel per model
    (``models``: model -> {scheme: similarity}); ``pooled`` (same keys) adds the similarity
    after global average pooling as black markers."""
    _check_panels(models, "plot_feature_similarity")
    pooled = dict(pooled or {})
    unknown_models = set(pooled) - set(models)
    if unknown_models:
        raise ValueError(
            f"pooled values given for {sorted(unknown_models)}, which are not panels: "
            f"{list(models)}"
        )
    with style():
        fig, axes = new_figure(len(models), width=4.6)
        for ax, (model, values) in zip(axes, models.items(), strict=True):
            _check_panels(values, f"panel {model!r} of plot_feature_similarity")
            labels = list(values)
            heights = _floats(values.values())
            ax.bar(range(len(labels)), heights, color="C0", alpha=0.8, label="feature map")
            marks = [
                (i, pooled[model][s]) for i, s in enumerate(labels) if s in pooled.get(model, {})
            ]
            if marks:
                ax.plot(*zip(*marks, strict=True), "kD", ms=4, label="after global pooling")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            bottom = min(0.0, *(h for h in heights if not math.isnan(h))) - 0.05
            ax.set(title=model, xlabel="normalizer", ylabel="cosine similarity", ylim=(bottom, 1.3))
            ax.grid(False, axis="x")
            ax.legend(loc="upper left", ncol=2)
        fig.suptitle(title)
    return _finish(fig, path)


def _get(item: object, key: str) -> object:
    if item is None:
        return None
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)
