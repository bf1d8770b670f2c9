r"""The papers' training claims at CPU scale: one grid and one analysis per reproduction.

Each :class:`Reproduction` is a sweep (:mod:`~normlab.experiments.grid`) over the settings a
claim compares, and an analysis that reads the finished runs and judges every claim from the
numbers (:mod:`~normlab.experiments.claims`). ``normlab reproduce NAME --data SPEC`` runs one
(:mod:`~normlab.experiments.reproduce`); the committed results are in ``docs/results/``.

* ``pn-table2``        PN paper Table 2's pattern: ResNet-20 v2 under bn, ln, ln+pn, gn8, gn8+pn,
                       gn8+ws, gn8+ws+pn, without / with extra regularization (X / Y);
* ``small-norm-batch`` BatchNorm at normalization batches 128, 16, 4, 2 vs gn8+pn and ln+pn, all
                       at optimization batch 128;
* ``beyond-bn-fig5``   Beyond BatchNorm's Fig. 5: mean training accuracy against the cosine
                       similarity of the penultimate features at initialisation, for cnn10 and
                       resnet56_post under ten normalizers (Spearman's ρ);
* ``pn-fig2-training`` PN paper Fig. 2's bottom row: the power decomposition through training;
* ``nf-resnet``        NF-ResNet-20 with and without AGC against BN ResNet-20 v2.

Sizes (``Scale``): the training subset, test subset, epochs and seeds of the CPU runs, and a
``smoke`` scale (a few batches of generated data) that tests run end to end.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import claims as c
from .table import build_table, plot_table

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class Scale:
    """How much of the data and how long: the knobs that make a reproduction fit a CPU."""

    limit: int | None
    test_limit: int | None
    epochs: int
    seeds: int

    def base(self) -> dict[str, Any]:
        return {"limit": self.limit, "test_limit": self.test_limit, "epochs": self.epochs}


SMOKE = Scale(limit=256, test_limit=128, epochs=1, seeds=2)


@dataclass
class Findings:
    """What an analysis found: its claims with verdicts, markdown tables, figure files."""

    claims: list[c.Claim]
    body: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Reproduction:
    """One reproduction: which claims, the grid that tests them and how to judge them."""

    name: str
    title: str
    source: str
    statement: str
    settings: str  # what the CPU scale shrinks, for the document
    scale: Scale
    base: dict[str, Any]
    grid: Callable[[int], dict[str, Any]]  # seeds -> {"grid": ..., "cases": ...}
    analyse: Callable[[Rows, Path], Findings]  # finished runs, figure folder

    def spec(self, data: str, scale: Scale | None = None) -> dict[str, Any]:
        """The sweep's grid mapping on the data spec ``data``."""
        scale = scale or self.scale
        return {"base": {**self.base, **scale.base(), "data": data}, **self.grid(scale.seeds)}


# -- helpers for the analyses --------------------------------------------------------------------


def groups(rows: Rows, keys: Sequence[str], metric: str) -> dict[tuple, c.Group]:
    """The runs grouped by the values of ``keys`` (seeds pooled), one Group per setting."""
    values: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(metric) is not None:
            values[tuple(row.get(k) for k in keys)].append(float(row[metric]))
    return {k: c.Group(" ".join(map(str, k)), tuple(v)) for k, v in values.items()}


def _need(table: dict[tuple, c.Group], *keys: tuple) -> list[c.Group]:
    missing = [k for k in keys if k not in table]
    if missing:
        raise ValueError(f"the sweep has no finished run for {missing}: run it to the end first")
    return [table[k] for k in keys]


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _paper_table(rows: Rows, figures: Path, name: str, cols: str = "model") -> tuple[str, str]:
    """The X / Y table of final test accuracy and of mean training accuracy, and its figure,
    rows in the paper's order."""
    rows = sorted(rows, key=lambda row: TABLE2_SCHEMES.index(row["norm"]))
    table = build_table(rows, "norm", cols, "final_test_accuracy")
    train = build_table(rows, "norm", cols, "mean_train_accuracy")
    plot_table(table, figures / name)
    return table.markdown(), train.markdown()


# -- a. PN paper Table 2 ---------------------------------------------------------------------------

TABLE2_SCHEMES = ["bn", "ln", "ln+pn", "gn8", "gn8+pn", "gn8+ws", "gn8+ws+pn"]


def _table2_grid(seeds: int) -> dict[str, Any]:
    grid = {"norm": TABLE2_SCHEMES, "regularization": ["none", "extra"]}
    return {"grid": grid | {"seed": list(range(seeds))}}


def _analyse_table2(rows: Rows, figures: Path) -> Findings:
    test = groups(rows, ("norm", "regularization"), "final_test_accuracy")
    found = []
    for reg, column in (("none", "X"), ("extra", "Y")):
        ln, ln_pn, gn, gn_pn, bn = _need(
            test, *((s, reg) for s in ("ln", "ln+pn", "gn8", "gn8+pn", "bn"))
        )
        found += [
            c.greater(f"LN+PN > LN ({column})", ln_pn, ln),
            c.at_least(f"GN+PN ≥ GN ({column})", gn_pn, gn),
            c.close(f"GN+PN ≈ BN ({column}, within 1 point)", gn_pn, bn, tolerance=0.01),
        ]
    table, train = _paper_table(rows, figures, "pn_table2")
    body = [
        "Final test accuracy (%), X / Y = without / with extra regularization, mean ± std over "
        "seeds (n):",
        table,
        "Mean training accuracy over epochs (%):",
        train,
    ]
    return Findings(found, body, [figures / "pn_table2.png"])


# -- b. small normalization batch ------------------------------------------------------------------

NORM_BATCHES = [128, 16, 4, 2]
BATCH_FREE = ["gn8+pn", "ln+pn"]


def _small_batch_grid(seeds: int) -> dict[str, Any]:
    cases = [{"norm": "bn", "norm_batch_size": k} for k in NORM_BATCHES]
    cases += [{"norm": s} for s in BATCH_FREE]
    return {"grid": {"seed": list(range(seeds))}, "cases": cases}


def _setting(row: dict[str, Any]) -> str:
    size = row.get("norm_batch_size")
    return f"bn/{size}" if row["norm"] == "bn" and size else row["norm"]


def _analyse_small_batch(rows: Rows, figures: Path) -> Findings:
    for row in rows:
        row["setting"] = _setting(row)
    test = groups(rows, ("setting",), "final_test_accuracy")
    bns = _need(test, *((f"bn/{k}",) for k in NORM_BATCHES))
    free = _need(test, *((s,) for s in BATCH_FREE))
    found = [
        c.greater(f"BN at normalization batch {NORM_BATCHES[0]} > BN at {k}", bns[0], g)
        for k, g in zip(NORM_BATCHES[2:], bns[2:], strict=True)
    ]
    found += [c.greater(f"{g.label} > BN at normalization batch 2", g, bns[-1]) for g in free]
    found += [
        c.at_least(f"{g.label} ≥ BN at normalization batch {NORM_BATCHES[1]}", g, bns[1])
        for g in free
    ]
    settings = [f"bn/{k}" for k in NORM_BATCHES] + BATCH_FREE
    table = _markdown_table(
        ["setting", "final test accuracy (%)", "mean train accuracy (%)"],
        [
            [s, _cell(test[(s,)]), _cell(groups(rows, ("setting",), "mean_train_accuracy")[(s,)])]
            for s in settings
        ],
    )
    figure = _plot_settings(settings, test, figures / "small_norm_batch")
    return Findings(found, ["Optimization batch 128 in every run:", table], [figure])


def _cell(group: c.Group) -> str:
    return f"{100 * group.mean:.2f} ± {100 * group.std:.2f} (n={len(group.values)})"


def _plot_settings(settings: Sequence[str], test: dict[tuple, c.Group], path: Path) -> Path:
    from ..report.plots import new_figure, save_figure, style

    with style():
        fig, (ax,) = new_figure(1, width=4.8, height=3.0)
        means = [100 * test[(s,)].mean for s in settings]
        stds = [100 * test[(s,)].std for s in settings]
        ax.errorbar(range(len(settings)), means, yerr=stds, fmt="o", capsize=3)
        ax.set_xticks(range(len(settings)), settings, rotation=30)
        ax.set(ylabel="final test accuracy (%)", title="normalization batch (optimization 128)")
        save_figure(fig, path)
    return path.with_suffix(".png")


# -- c. Beyond BatchNorm Fig. 5 --------------------------------------------------------------------

FIG5_NORMALIZERS = ["bn", "ln", "in", "gn8", "vn", "frn", "evo-b0", "evo-s0", "gn8+ws", "none+wn"]
FIG5_MODELS = ["cnn10", "resnet56_post"]


def _fig5_grid(seeds: int) -> dict[str, Any]:
    return {"grid": {"model": FIG5_MODELS, "norm": FIG5_NORMALIZERS, "seed": list(range(seeds))}}


def init_similarity(folder: str | Path) -> dict[str, float] | None:
    """Cosine similarities of the penultimate features at initialisation (diagnostics.jsonl):
    ``feature_map`` (the last feature map before pooling, Beyond BatchNorm's measure) and
    ``pooled`` (the classifier's input)."""
    path = Path(folder) / "diagnostics.jsonl"
    if not path.exists():
        return None
    first = json.loads(path.read_text().splitlines()[0])
    features = first.get("features") if first.get("epochs_done") == 0 else None
    if not features or "feature_map_cosine_similarity" not in features:
        return None
    return {
        "feature_map": features["feature_map_cosine_similarity"],
        "pooled": features["cosine_similarity"],
    }


def _analyse_fig5(rows: Rows, figures: Path) -> Findings:
    for row in rows:
        measured = init_similarity(row["folder"]) or {}
        row["init_similarity"] = measured.get("feature_map")
        row["init_similarity_pooled"] = measured.get("pooled")
    found, tables, points = [], [], {}
    for model in FIG5_MODELS:
        chosen = [r for r in rows if r["model"] == model and r["init_similarity"] is not None]
        similarity = groups(chosen, ("norm",), "init_similarity")
        pooled = groups(chosen, ("norm",), "init_similarity_pooled")
        speed = groups(chosen, ("norm",), "mean_train_accuracy")
        norms = [n for n in FIG5_NORMALIZERS if (n,) in similarity and (n,) in speed]
        if len(norms) < 3:
            raise ValueError(f"{model}: fewer than 3 normalizers with finished runs ({norms})")
        xs = [similarity[(n,)].mean for n in norms]
        ys = [speed[(n,)].mean for n in norms]
        rho = c.spearman(xs, ys)
        verdict = (
            c.HOLDS if rho.rho < 0 and rho.p_value < 0.05 else c.PARTLY if rho.rho < 0 else c.FAILS
        )
        found.append(
            c.Claim(
                f"{model}: the more similar the features at init, the slower training "
                "(Spearman ρ of cosine similarity and mean training accuracy < 0, p < 0.05)",
                f"ρ = {rho.rho:+.3f}, permutation p = {rho.p_value:.4f}, n = {rho.n} normalizers",
                verdict,
            )
        )
        final = groups(chosen, ("norm",), "final_test_accuracy")
        header = ["norm", "cosine similarity at init: feature map", "pooled",
                  "mean train accuracy (%)", "final test (%)"]  # fmt: skip
        cells = [
            [n, f"{similarity[(n,)].mean:.4f}", f"{pooled[(n,)].mean:.4f}", _cell(speed[(n,)]),
             _cell(final[(n,)])]
            for n in norms
        ]  # fmt: skip
        tables += [f"{model}:", _markdown_table(header, cells)]
        points[model] = (norms, xs, ys, rho)
    note = (
        "Similarity: the mean pairwise cosine similarity of the last feature map (uncentred, "
        "before the global pooling, where Beyond BatchNorm's probes sit) on the first 64 test "
        "images at initialisation, the normalizers using the batch's statistics; the pooled "
        "features' similarity (the classifier's input) is shown beside it."
    )
    return Findings(found, [note, *tables], [_plot_fig5(points, figures / "beyond_bn_fig5")])


def _plot_fig5(points: dict[str, tuple], path: Path) -> Path:
    from ..report.plots import new_figure, save_figure, style

    with style():
        fig, axes = new_figure(len(points), width=4.0, height=3.2, columns=len(points))
        for ax, (model, (norms, xs, ys, rho)) in zip(axes, points.items(), strict=True):
            ax.scatter(xs, [100 * y for y in ys])
            for norm, x, y in zip(norms, xs, ys, strict=True):
                ax.annotate(
                    norm, (x, 100 * y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
            ax.set(
                title=f"{model} (Spearman ρ = {rho.rho:+.2f})",
                xlabel="cosine similarity of the last feature map at init",
                ylabel="mean training accuracy (%)",
            )
        save_figure(fig, path)
    return path.with_suffix(".png")


# -- d. PN paper Fig. 2, bottom row ----------------------------------------------------------------

FIG2_SCHEMES = ["bn", "ln", "gn8", "ln+pn", "gn8+pn", "ln+ws"]


def _fig2_grid(seeds: int) -> dict[str, Any]:
    return {"grid": {"norm": FIG2_SCHEMES, "seed": list(range(seeds))}}


def collapse_through_training(folder: str | Path) -> list[tuple[int, float]]:
    """(epochs done, mean over normalization steps of P1/P) at every probe of a run."""
    path = Path(folder) / "diagnostics.jsonl"
    if not path.exists():
        raise ValueError(f"{folder}: no diagnostics.jsonl (train with diagnostics_every)")
    series = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        p1 = [v for v in record["power"]["fractions"]["p1"] if v is not None]
        series.append((record["epochs_done"], statistics.fmean(p1)))
    return series


def _analyse_fig2(rows: Rows, figures: Path) -> Findings:
    from ..report.training import plot_power_by_depth, plot_power_through_training, read_run

    series: dict[str, list[list[tuple[int, float]]]] = defaultdict(list)
    for row in rows:
        series[row["norm"]].append(collapse_through_training(row["folder"]))
    missing = [s for s in FIG2_SCHEMES if s not in series]
    if missing:
        raise ValueError(f"the sweep has no finished run for {missing}")

    def at(norm: str, index: int) -> c.Group:
        return c.Group(norm, tuple(s[index][1] for s in series[norm]))

    def last(norm: str) -> c.Group:
        return at(norm, -1)

    found = [
        c.greater("LN collapses: LN's P1/P at the end > BN's", last("ln"), last("bn"), 1),
        c.greater("LN+WS drifts: its P1/P grows in training", last("ln+ws"), at("ln+ws", 0), 1),
    ]
    for norm in ("ln+pn", "gn8+pn"):
        found.append(c.greater(f"LN's P1/P at the end > {norm}'s", last("ln"), last(norm), 1))
        found.append(
            c.close(f"{norm} channel-normalized like BN (P1/P within 0.05 of BN's at the end)",
                    last(norm), last("bn"), 0.05, 1)
        )  # fmt: skip
    epochs = [e for e, _ in series[FIG2_SCHEMES[0]][0]]
    table = _markdown_table(
        ["norm", *(f"epoch {e}" for e in epochs)],
        [[n, *(f"{at(n, i).mean:.4f}" for i in range(len(epochs)))] for n in FIG2_SCHEMES],
    )
    seed0 = {r["norm"]: r["folder"] for r in sorted(rows, key=lambda r: -r["seed"])}
    records = [read_run(seed0[n]) for n in FIG2_SCHEMES]
    through = figures / "pn_fig2_training"
    by_depth = figures / "pn_fig2_by_depth"
    plot_power_through_training(records, through)
    plot_power_by_depth(records, by_depth)
    body = ["Mean over normalization steps of P1/P (the collapsed power), by epochs done:", table]
    return Findings(found, body, [through.with_suffix(".png"), by_depth.with_suffix(".png")])


# -- e. NF-ResNet ------------------------------------------------------------------------------

NF_CASES = [
    {"model": "resnet20", "norm": "bn"},
    {"model": "nf_resnet20", "norm": "nf"},
    {"model": "nf_resnet20", "norm": "nf", "agc": 0.01},
]


def _nf_grid(seeds: int) -> dict[str, Any]:
    return {"grid": {"seed": list(range(seeds))}, "cases": NF_CASES}


def _nf_setting(row: dict[str, Any]) -> str:
    if row["model"].startswith("nf_"):
        return f"{row['model']} nf" + (f" + AGC {row['agc']}" if row.get("agc") else "")
    return f"{row['model']} {row['norm']}"


def _analyse_nf(rows: Rows, figures: Path) -> Findings:
    from ..report.training import plot_training_curves, read_run

    for row in rows:
        row["setting"] = _nf_setting(row)
    test = groups(rows, ("setting",), "final_test_accuracy")
    train = groups(rows, ("setting",), "mean_train_accuracy")
    bn, nf, agc = _need(test, ("resnet20 bn",), ("nf_resnet20 nf",), ("nf_resnet20 nf + AGC 0.01",))
    found = [
        c.close("NF-ResNet-20 (AGC) ≈ BN ResNet-20 (within 1 point)", agc, bn, 0.01),
        c.close("NF-ResNet-20 (no AGC) ≈ BN ResNet-20 (within 1 point)", nf, bn, 0.01),
        c.at_least("AGC does not hurt: NF with AGC ≥ NF without", agc, nf),
    ]
    settings = [g.label for g in (bn, nf, agc)]
    table = _markdown_table(
        ["setting", "final test accuracy (%)", "mean train accuracy (%)"],
        [[s, _cell(test[(s,)]), _cell(train[(s,)])] for s in settings],
    )
    seed0 = {}
    for row in sorted(rows, key=lambda r: -r["seed"]):
        seed0[row["setting"]] = row["folder"]
    curves = figures / "nf_resnet_curves"
    plot_training_curves([read_run(seed0[s]) for s in settings], curves)
    return Findings(found, [table], [curves.with_suffix(".png")])


# -- the registry ----------------------------------------------------------------------------------

# Beyond BatchNorm's lr 0.1·B/256 (the default); diagnostics at init (and at the end)
FIG5_BASE = {
    "batch_size": 128,
    "schedule": "cosine",
    "width": 0.5,
    "diagnostics_every": 1000,
}
RESNET20_BASE = {"model": "resnet20", "batch_size": 128, "schedule": "cosine", "lr": 0.1}

REPRODUCTIONS: dict[str, Reproduction] = {
    r.name: r
    for r in (
        Reproduction(
            "pn-table2",
            "PN paper Table 2 pattern: LN+PN fixes LN, GN+PN matches BN",
            "Labatie et al. 2021, Proxy Normalization, Table 2 (ResNet-50 on ImageNet)",
            "LN+PN > LN; GN+PN ≥ GN; GN+PN ≈ BN — without (X) and with (Y) extra regularization.",
            "ResNet-20 v2 instead of ResNet-50, Fashion-MNIST subsets instead of ImageNet",
            Scale(limit=6000, test_limit=2000, epochs=4, seeds=3),
            dict(RESNET20_BASE),
            _table2_grid,
            _analyse_table2,
        ),
        Reproduction(
            "small-norm-batch",
            "BatchNorm degrades at small normalization batch; GN+PN and LN+PN do not depend on it",
            "Labatie et al. 2021, Section 1 and Table 4; Wu & He 2018, Fig. 1",
            "BN at normalization batch 128 > BN at 4 and 2; GN+PN and LN+PN > BN at 2 and "
            "≥ BN at 16.",
            "ResNet-20 v2 on a Fashion-MNIST subset, optimization batch 128",
            Scale(limit=4000, test_limit=2000, epochs=3, seeds=3),
            dict(RESNET20_BASE),
            _small_batch_grid,
            _analyse_small_batch,
        ),
        Reproduction(
            "beyond-bn-fig5",
            "Beyond BatchNorm Fig. 5: dissimilar features at init train faster",
            "Lubana et al. 2021, Beyond BatchNorm, Fig. 5 (CIFAR-100)",
            "Across normalizers, the cosine similarity of the penultimate features at "
            "initialisation is negatively rank-correlated with the mean training accuracy.",
            "cnn10 and resnet56_post (width 0.5) on a Fashion-MNIST subset",
            Scale(limit=4000, test_limit=1000, epochs=3, seeds=1),
            dict(FIG5_BASE),
            _fig5_grid,
            _analyse_fig5,
        ),
        Reproduction(
            "pn-fig2-training",
            "PN paper Fig. 2 bottom row: channel collapse through training",
            "Labatie et al. 2021, Proxy Normalization, Fig. 2 (bottom row)",
            "LN collapses and LN+WS drifts during training, while LN+PN and GN+PN stay "
            "channel-normalized like BN.",
            "ResNet-20 v2 on a Fashion-MNIST subset, probed every epoch",
            Scale(limit=3000, test_limit=1000, epochs=3, seeds=2),
            dict(RESNET20_BASE) | {"diagnostics_every": 1},
            _fig2_grid,
            _analyse_fig2,
        ),
        Reproduction(
            "nf-resnet",
            "NF-ResNet-20 with and without AGC against BN ResNet-20",
            "Brock et al. 2021a/b; Hoedt et al. 2022, Section 4.3",
            "NF-ResNet-20 trains to BN ResNet-20's accuracy; adaptive gradient clipping does not "
            "hurt it.",
            "CIFAR-size models on a Fashion-MNIST subset",
            Scale(limit=3000, test_limit=1000, epochs=3, seeds=3),
            {"batch_size": 128, "schedule": "cosine", "lr": 0.1},
            _nf_grid,
            _analyse_nf,
        ),
    )
}
