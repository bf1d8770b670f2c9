"""The papers' figures: each function returns a Figure with labelled axes and a title citing
the figure, and writes PNG and SVG."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure

from normlab.diagnostics import (
    GradientProfile,
    SignalPropagation,
    fit_growth,
    power_decomposition,
    theorem1_bound,
)
from normlab.report import (
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

PNG_MAGIC = b"\x89PNG"


def written(base) -> None:
    png, svg = base.with_suffix(".png"), base.with_suffix(".svg")
    assert png.read_bytes()[:4] == PNG_MAGIC
    assert b"<svg" in svg.read_bytes()[:2000]


def labelled(fig: Figure, cite: str) -> None:
    titles = [ax.get_title() for ax in fig.axes] + [
        fig._suptitle.get_text() if fig._suptitle else ""
    ]
    assert any(cite in t for t in titles), titles
    for ax in fig.axes:
        assert ax.get_xlabel()


def profile(shift: float, layers: int = 5):
    generator = torch.Generator().manual_seed(0)
    return [
        (f"{i}.norm", power_decomposition(torch.randn(8, 4, 3, 3, generator=generator) + shift * i))
        for i in range(layers)
    ]


def test_power_decomposition_figure(tmp_path):
    panels = {"bn": profile(0.0), "ln": profile(0.5), "ln+pn": power_fractions(profile(0.1))}
    fig = plot_power_decomposition(panels, bounds={"ln": theorem1_bound(0.9, 5)},
                                   path=tmp_path / "power")  # fmt: skip
    labelled(fig, "Fig. 2")
    assert len(fig.axes) == 3
    assert fig.axes[0].get_ylabel()
    assert any("Thm 1" in line.get_label() for line in fig.axes[1].get_lines())
    written(tmp_path / "power")
    with pytest.raises(ValueError, match="not panels"):
        plot_power_decomposition({"bn": profile(0.0)}, bounds={"ln": [1.0]})


def test_power_fractions_of_plain_data():
    fractions = power_fractions(profile(0.3))
    assert set(fractions) == {"p1", "p2", "p3", "p4"}
    assert all(abs(sum(f[i] for f in fractions.values()) - 1) < 1e-9 for i in range(5))
    with pytest.raises(ValueError, match="PowerDecomposition"):
        power_fractions([1.0, 2.0])


def test_signal_propagation_figure(tmp_path):
    spp = SignalPropagation(["stem", "b1", "b2"], [0.1, 0.2, 0.1], [1.0, 1.04, 1.08],
                            [None, 1.0, 0.9], has_stem=True)  # fmt: skip
    plain = {"squared_mean": [0.0, 0.1], "variance": [1.0, 2.0], "branch_variance": [None, None]}
    fig = plot_signal_propagation({"nf": spp, "bn": plain}, path=tmp_path / "spp")
    labelled(fig, "Brock et al. 2021")
    assert len(fig.axes) == 2
    assert any("residual branch" in line.get_label() for line in fig.axes[1].get_lines())
    written(tmp_path / "spp")


def test_stable_rank_figure_shows_the_fit(tmp_path):
    fig = plot_stable_rank([32, 8, 4, 1], [1.1, 1.4, 1.8, 2.9], width=32, path=tmp_path / "sr")
    labelled(fig, "Fig. 6a")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("R^2" in t for t in legend)
    written(tmp_path / "sr")
    with pytest.raises(ValueError, match="one group size and width per rank"):
        plot_stable_rank([1, 2], [1.0], width=8)


def test_gradient_and_cosine_figures(tmp_path):
    norms = [2.0**-i for i in range(6)]
    profiles = {"bn": GradientProfile([str(i) for i in range(6)], norms, fit_growth(norms)),
                "ln": [1.0] * 6}  # fmt: skip
    fig = plot_gradient_norms(profiles, path=tmp_path / "grad")
    labelled(fig, "Fig. 8")
    assert fig.axes[0].get_yscale() == "log"
    written(tmp_path / "grad")
    fig = plot_cosine_similarity({"bn": [0.1, 0.2], "ln": [0.5, 0.9]})
    labelled(fig, "Beyond BatchNorm")
    assert save_figure(fig, tmp_path / "cos.png") == [tmp_path / "cos.png", tmp_path / "cos.svg"]
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_cosine_similarity({})


def test_signal_propagation_rows_figure(tmp_path):
    spp = SignalPropagation(["stem", "b1", "b2"], [0.1, 0.2, 0.1], [1.0, 10.0, 100.0],
                            [None, 5.0, 50.0], has_stem=True)  # fmt: skip
    plain = {"squared_mean": [1.0, 2.0], "variance": [1.0, 2.0], "branch_variance": [None, 1.0]}
    rows = {"Fig. 4": {"none": spp, "bn": plain}, "Fig. 5": {"nf": plain}}
    fig = plot_signal_propagation_rows(rows, path=tmp_path / "rows")
    labelled(fig, "Hoedt et al. 2022")
    assert len(fig.axes) == 4
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert fig.axes[2].get_title().startswith("Fig. 5")
    written(tmp_path / "rows")
    assert plot_signal_propagation_rows(rows, log=False).axes[0].get_yscale() == "linear"
    with pytest.raises(ValueError, match="row 'Fig\\. 5'"):
        plot_signal_propagation_rows({"Fig. 5": {}})


def test_variance_growth_figure(tmp_path):
    panels = {"activation": {"bn": [0.3, 0.7, 1.1, 0.6]},
              "parametric": {"wn": [1.0, 4.0, 16.0, 64.0], "wn + SkipInit": [1.0] * 4}}  # fmt: skip
    fig = plot_variance_growth(panels, boundaries=[2.5], log_panels=["parametric"],
                               dashed=["wn + SkipInit"], path=tmp_path / "var")  # fmt: skip
    labelled(fig, "Claims 1-2")
    assert [ax.get_yscale() for ax in fig.axes] == ["linear", "log"]
    lines = {line.get_label(): line for line in fig.axes[1].get_lines()}
    assert lines["wn + SkipInit"].get_linestyle() == "--"
    assert lines["wn + SkipInit"].get_color() == lines["wn"].get_color()
    written(tmp_path / "var")
    with pytest.raises(ValueError, match="not panels"):
        plot_variance_growth(panels, log_panels=["other"])


def test_feature_similarity_figure(tmp_path):
    maps = {"CNN-10": {"bn": 0.45, "ln": 0.89, "ln+pn": 0.03}, "ResNet-56": {"bn": 0.8}}
    fig = plot_feature_similarity(maps, pooled={"CNN-10": {"bn": 0.7, "ln": 0.95}},
                                  path=tmp_path / "sim")  # fmt: skip
    labelled(fig, "Fig. 5")
    assert len(fig.axes) == 2
    assert len(fig.axes[0].patches) == 3
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["bn", "ln", "ln+pn"]
    assert any("pooling" in line.get_label() for line in fig.axes[0].get_lines())
    assert not fig.axes[1].get_lines()
    written(tmp_path / "sim")
    with pytest.raises(ValueError, match="not panels"):
        plot_feature_similarity(maps, pooled={"VGG": {"bn": 0.1}})
