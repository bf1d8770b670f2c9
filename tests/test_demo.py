"""The main job ``normlab demo --quick``: its files, its metrics schema, and every check passing."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from normlab import demo
from normlab.cli import main
from normlab.demo.config import _model
from normlab.demo.signal import _sign_agreement
from normlab.demo.variance import _resnet56
from normlab.diagnostics import SignalPropagation, signal_propagation
from normlab.report import Check, Section

CHECK_KEYS = {"claim", "measured", "expected", "passed"}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("demo")
    return main(["demo", "--quick", "--out", str(out)]), out


def test_quick_demo_writes_the_report_and_every_check_passes(quick_report):
    code, out = quick_report
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    checks = metrics["checks"]
    assert len(checks) >= 10
    for check in checks:
        assert set(check) == CHECK_KEYS
        assert check["passed"] is True, check
    claims = " ".join(c["claim"] for c in checks)
    for claim in (
        "Theorem 1",
        "Theorem 2",
        "BN's collapsed fraction",
        "LN+PN",
        "Stable rank",
        "IN ≥ BN ≥ GN ≥ LN",
        "NF-ResNet",
        "Hoedt et al. Fig. 4",
        "Hoedt et al. Fig. 5",
        "Beyond BatchNorm Claim 1",
        "Beyond BatchNorm Claim 2",
        "with SkipInit",
        "Beyond BatchNorm Fig. 5",
        "Theorem 3",
    ):
        assert claim in claims
    for key in (
        "power_decomposition",
        "signal_propagation",
        "variance_growth",
        "stable_rank",
        "gradients",
        "feature_similarity",
        "pn_guarantee",
        "config",
    ):
        assert key in metrics
    assert metrics["config"]["depth"] == 20


def test_quick_demo_figures_are_png_and_svg_files_the_html_shows(quick_report):
    _, out = quick_report
    html = (out / "report.html").read_text(encoding="utf-8")
    figures = sorted((out / "figures").iterdir())
    pngs = [f for f in figures if f.suffix == ".png"]
    # Fig. 2, SPP, Hoedt's SPPs, Claims 1-2, Fig. 6a, Fig. 8, cosine similarity, Fig. 5
    assert len(pngs) == 8
    assert {f.with_suffix(".svg") for f in pngs} <= set(figures)
    for png in pngs:
        assert png.stat().st_size > 10_000
        assert f"figures/{png.name}" in html
    assert "Theorem 1" in html
    assert "pass" in html


def test_the_power_analysis_reproduces_figure_2(quick_report):
    _, out = quick_report
    fractions = json.loads((out / "metrics.json").read_text())["power_decomposition"]["fractions"]
    last = {spec: layers[-1]["p1"] for spec, layers in fractions.items()}
    assert last["ln"] > 0.5  # LN collapses
    assert last["ln+pn"] < 0.05
    assert last["gn8+pn"] < 0.05
    assert last["bn"] < 0.01
    assert max(layer["p2"] + layer["p4"] for layer in fractions["in"]) < 1e-6


def test_a_failed_check_is_reported_not_hidden(tmp_path, monkeypatch, capsys):
    def failing(config):
        section = Section("A failing analysis")
        return demo.Analysis("failing", section, [Check.at_most("a false claim", 2.0, 1.0)])

    analyses = (("failing", failing),)
    monkeypatch.setattr("normlab.demo.run.ANALYSES", analyses)  # what run_demo runs and counts
    code = main(["demo", "--quick", "--out", str(tmp_path)])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out
    checks = json.loads((tmp_path / "metrics.json").read_text())["checks"]
    assert checks == [
        {"claim": "a false claim", "measured": 2.0, "expected": "≤ 1", "passed": False}
    ]
    assert "FAIL" in (tmp_path / "report.html").read_text()


def test_sign_agreement():
    assert _sign_agreement([1, 2, 3, 1], [0, 1, 5, 2]) == 1.0
    assert _sign_agreement([1, 2, 3, 1], [3, 2, 5, 9]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="equal length"):
        _sign_agreement([1, 2], [1, 2, 3])


# -- Growth through depth: the fits shared by the SPP and the ResNet-56 checks ----------------

STAGES = [None] + ["layer1"] * 9 + ["layer2"] * 9 + ["layer3"] * 9


def profile(block: Callable[[int, int], float]) -> list[float]:
    """A stem value of 1, then 3 stages of 9 blocks: ``block(stage, index within the stage)``."""
    return [1.0] + [block(stage, i) for stage in range(3) for i in range(9)]


LINEAR = profile(lambda stage, i: 1.0 + 0.4 * (i + 1))  # reset at every stage, as with BN
EXPONENTIAL = profile(lambda stage, i: 2.0 ** (9 * stage + i + 1))  # never reset
FLAT = profile(lambda stage, i: 3.0**stage)  # SkipInit: changes at the transitions only


def test_depth_growth_fits_each_stage():
    growth = demo.depth_growth(LINEAR, STAGES)
    assert [s.stage for s in growth.stages] == ["layer1", "layer2", "layer3"]
    assert [s.blocks for s in growth.stages] == [9, 9, 9]
    assert growth.deepest.linear_r2 == pytest.approx(1.0)
    assert growth.deepest.slope == pytest.approx(0.4)
    assert growth.deepest.ratio == pytest.approx(4.6 / 1.4)
    assert growth.ratio == pytest.approx(4.6)
    exponential = demo.depth_growth(EXPONENTIAL, STAGES).deepest
    assert exponential.log_r2 == pytest.approx(1.0)
    assert exponential.factor == pytest.approx(2.0)
    assert exponential.linear_r2 < 0.8
    flat = demo.depth_growth(FLAT, STAGES)
    assert flat.largest_stage_ratio == 1.0
    assert math.isnan(flat.deepest.linear_r2)
    assert demo.stage_labels(["stem", "layer1.0", "layer2.3"]) == [None, "layer1", "layer2"]
    with pytest.raises(ValueError, match="positive"):
        demo.depth_growth([1.0, 2.0, 0.0], [None, "a", "a"])
    with pytest.raises(ValueError, match="one stage label per value"):
        demo.depth_growth([1.0, 2.0], [None])


# -- Beyond BatchNorm Claims 1-2 ----------------------------------------------------------


def test_variance_growth_checks_accept_the_claimed_patterns():
    linear = demo.linear_growth_checks({"bn": demo.depth_growth(LINEAR, STAGES)})
    exponential = demo.exponential_growth_checks({"wn": demo.depth_growth(EXPONENTIAL, STAGES)})
    bounded = demo.bounded_growth_checks({"wn + SkipInit": demo.depth_growth(FLAT, STAGES)})
    assert all(c.passed for c in linear + exponential + bounded)


@pytest.mark.parametrize("pattern", ["exponential", "flat"])
def test_the_linear_growth_check_fails_on_other_patterns(pattern):
    values = {"exponential": EXPONENTIAL, "flat": FLAT}[pattern]
    checks = demo.linear_growth_checks({"bn": demo.depth_growth(LINEAR, STAGES),
                                        "x": demo.depth_growth(values, STAGES)})  # fmt: skip
    assert not all(c.passed for c in checks)


def test_the_exponential_and_bounded_checks_fail_on_linear_growth():
    slow = profile(lambda stage, i: 1.0 + 0.4 * (9 * stage + i + 1))  # linear, never reset
    for values in (LINEAR, slow):
        growth = {"wn": demo.depth_growth(values, STAGES)}
        assert not all(c.passed for c in demo.exponential_growth_checks(growth))
    growth = {"wn + SkipInit": demo.depth_growth(EXPONENTIAL, STAGES)}
    assert not any(c.passed for c in demo.bounded_growth_checks(growth))


def _resnet56_growth(spec: str, **kwargs) -> demo.DepthGrowth:
    config = demo.DemoConfig.quick(Path("unused"))
    x = demo.white_noise(8, 16, seed=0)
    names, variance = demo.residual_stream_variance(_resnet56(config, spec, **kwargs), x)
    assert names == ["stem"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(9)]
    return demo.depth_growth(variance, demo.stage_labels(names))


def test_the_variance_checks_fail_on_real_resnets_that_violate_them():
    """Scaled WS without SkipInit violates Claim 1's linear, moderate growth and the bound
    SkipInit gives; BN violates Claim 2's exponential growth."""
    sws, bn = _resnet56_growth("none+sws"), _resnet56_growth("bn")
    assert not any(c.passed for c in demo.linear_growth_checks({"none+sws": sws}))
    assert not any(c.passed for c in demo.bounded_growth_checks({"none+sws": sws}))
    # a log-line fits BN's linear stage well too (R² ≈ 0.98): the other two checks tell them apart
    passed = [c.passed for c in demo.exponential_growth_checks({"bn": bn})]
    assert passed == [True, False, False]
    assert all(c.passed for c in demo.linear_growth_checks({"bn": bn}))
    skipinit = _resnet56_growth("none+sws", skipinit=True)
    assert all(c.passed for c in demo.bounded_growth_checks({"none+sws + SkipInit": skipinit}))


def test_the_variance_analysis_at_quick_size(quick_report):
    _, out = quick_report
    metrics = json.loads((out / "metrics.json").read_text())
    growth = metrics["variance_growth"]["growth"]
    assert set(growth) == {"bn", "ln", "in", "gn8", "none+wn", "none+sws",
                           "none+wn + SkipInit", "none+sws + SkipInit"}  # fmt: skip
    assert len(growth["bn"]["stages"]) == 3
    assert growth["none+sws"]["ratio"] > 1e6 > 30 > growth["bn"]["ratio"]
    claims = [c for c in metrics["checks"] if "Beyond BatchNorm Claim" in c["claim"]]
    assert len(claims) == 7
    assert all(c["passed"] for c in claims)


# -- Hoedt et al. 2022, Figs. 4 and 5 -----------------------------------------------------

SPP_NAMES = ["stem"] + [f"layer{s}.{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)]


def spp(variance, squared_mean=None, branch=None) -> SignalPropagation:
    n = len(SPP_NAMES)
    squared_mean = [0.01] * n if squared_mean is None else squared_mean
    branch = [None] + ([1.0] * (n - 1) if branch is None else branch)
    return SignalPropagation(SPP_NAMES, squared_mean, variance, branch, has_stem=True)


def _bn_like() -> list[float]:
    labels = demo.stage_labels(SPP_NAMES)
    variance, index = [0.7], 0
    for i in range(1, len(labels)):
        index = 0 if labels[i] != labels[i - 1] else index + 1
        variance.append(1.4 + 0.7 * index)
    return variance


def test_the_unnormalized_resnet_checks():
    bn = spp(_bn_like())
    exploding = spp([0.7 * 1.9**i for i in range(len(SPP_NAMES))])
    assert all(c.passed for c in demo.unnormalized_resnet_checks(exploding, bn))
    failed = demo.unnormalized_resnet_checks(bn, bn)  # BN in place of no normalization
    assert [c.passed for c in failed] == [False, False, True]


def test_the_nf_resnet_checks():
    n = len(SPP_NAMES)
    bn = spp(_bn_like(), squared_mean=[1.0] * n)
    jumpy = [1.5 if i % 2 else 2.0 for i in range(n - 1)]
    plain = spp(_bn_like(), squared_mean=[8.0] * n, branch=jumpy)
    nf = spp(_bn_like(), squared_mean=[0.01] * n, branch=[0.9] * (n - 1))
    assert demo.branch_variation(nf) == 0.0
    assert demo.branch_variation(plain) == pytest.approx(math.log(2.0 / 1.5))
    nf = spp(_bn_like(), squared_mean=[0.01] * n, branch=[0.9 + 0.001 * i for i in range(n - 1)])
    assert all(c.passed for c in demo.plain_nf_resnet_checks(plain, nf, bn))
    failed = demo.plain_nf_resnet_checks(nf, nf, bn)  # scaled WS in place of plain convs
    assert [c.passed for c in failed] == [True, False, False, False, True]


def test_the_spp_checks_fail_on_real_resnets_that_violate_them():
    """A BN-ResNet's variance does not explode, and an NF-ResNet with scaled WS has neither
    the large squared mean nor the unsteady branches of plain convs."""
    config = demo.DemoConfig.quick(Path("unused"))
    x = demo.white_noise(2, 32, seed=0)

    def measure(name, spec):
        return signal_propagation(_model(config, name, 0, norm=spec), x, mode="train")

    bn, nf = measure("resnet50", "bn"), measure("nf_resnet50", "nf")
    assert not demo.unnormalized_resnet_checks(bn, bn)[0].passed
    passed = [c.passed for c in demo.plain_nf_resnet_checks(nf, nf, bn)]
    assert passed[1:4] == [False, False, False]  # squared mean vs BN's, vs its own; steadiness


# -- The input of Beyond BatchNorm Fig. 5 -------------------------------------------------

SIMILARITY = {"bn": 0.45, "in": 0.57, "gn/4": 0.74, "gn8": 0.87, "ln": 0.89, "ln+pn": 0.03,
              "gn8+pn": 0.03, "none+wn": 0.9, "none+sws": 0.55}  # fmt: skip


def test_the_similarity_checks():
    gaps = demo.similarity_gaps(SIMILARITY)
    assert gaps == pytest.approx({"group size": 0.15, "bn": 0.29, "pn": 0.84})
    assert all(c.passed for c in demo.similarity_checks({"CNN-10": SIMILARITY}))
    swapped = SIMILARITY | {"in": 0.9, "ln": 0.57}  # IN's features more similar than LN's
    passed = [c.passed for c in demo.similarity_checks({"CNN-10": SIMILARITY, "x": swapped})]
    assert passed == [False, True, True]
    with pytest.raises(ValueError, match="needs the schemes"):
        demo.similarity_gaps({"bn": 0.1})


def test_the_similarity_check_fails_on_pooled_features():
    """After global pooling (the linear classifier's input) IN's features are nearly the same
    for every input, and the group-size ordering the check asserts fails."""
    config = demo.DemoConfig.quick(Path("unused"))
    x = demo.white_noise(8, 32, seed=0)
    pooled, maps = {}, {}
    for spec in ("bn", "in", "gn/4", "gn8", "ln", "ln+pn", "gn8+pn"):
        net = _model(config, "cnn10", 0, norm=spec)
        maps[spec], pooled[spec] = demo.penultimate_similarity(net, x)
    assert pooled["in"] > pooled["ln"]
    checks = demo.similarity_checks({"CNN-10 pooled": pooled})
    assert not checks[0].passed
    assert all(c.passed for c in demo.similarity_checks({"CNN-10": maps}))


def test_the_similarity_analysis_at_quick_size(quick_report):
    _, out = quick_report
    metrics = json.loads((out / "metrics.json").read_text())["feature_similarity"]
    assert set(metrics["feature_map"]) == {"CNN-10", "ResNet-56"}
    for model, values in metrics["feature_map"].items():
        assert set(values) == set(demo.SIMILARITY_SCHEMES)
        assert min(metrics["gaps"][model].values()) > 0
        assert metrics["pooled"][model]["in"] > values["in"]
