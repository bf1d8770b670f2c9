"""normlab reproduce: each reproduction's grid, each analysis judged on runs the tests fabricate
(where the claim holds and where it must fail), and one reproduction end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from normlab.cli import main
from normlab.experiments import claims as c
from normlab.experiments import expand
from normlab.experiments import reproductions as r
from normlab.experiments.reproduce import reproduce

RUN_COUNTS = {
    "pn-table2": 7 * 2 * 3,
    "small-norm-batch": 6 * 3,
    "beyond-bn-fig5": 2 * 10,
    "pn-fig2-training": 6 * 2,
    "nf-resnet": 3 * 3,
}


@pytest.mark.parametrize("name", list(r.REPRODUCTIONS))
def test_each_grid_expands_to_valid_runs(name, tmp_path):
    reproduction = r.REPRODUCTIONS[name]
    _, runs = expand(reproduction.spec("gaussian:1x28x28"), tmp_path)
    assert len(runs) == RUN_COUNTS[name]
    for run in runs:
        assert run.config.data == "gaussian:1x28x28"
        assert run.config.limit == reproduction.scale.limit
        assert run.config.epochs == reproduction.scale.epochs


def row(folder: Path, name: str, accuracy: float, seed: int = 0, **config) -> dict:
    return {
        "run": name,
        "folder": str(folder / name),
        "seed": seed,
        "model": "resnet20",
        "regularization": "none",
        "final_test_accuracy": accuracy,
        "mean_train_accuracy": accuracy - 0.05,
        **config,
    }


def seeds(folder: Path, accuracy: float, spread: float = 0.002, **config) -> list[dict]:
    label = "_".join(f"{k}-{v}" for k, v in config.items())
    return [
        row(folder, f"{label}_{s}", accuracy + spread * (s - 1), seed=s, **config) for s in range(3)
    ]


TABLE2_HOLDS = {"bn": 0.90, "ln": 0.84, "ln+pn": 0.89, "gn8": 0.88, "gn8+pn": 0.897,
                "gn8+ws": 0.89, "gn8+ws+pn": 0.90}  # fmt: skip


def table2_rows(folder: Path, accuracies: dict[str, float]) -> list[dict]:
    rows = []
    for norm, accuracy in accuracies.items():
        for reg, offset in (("none", 0.0), ("extra", 0.01)):
            rows += seeds(folder, accuracy + offset, norm=norm, regularization=reg)
    return rows


def test_table2_pattern_reproduced(tmp_path):
    findings = r._analyse_table2(table2_rows(tmp_path, TABLE2_HOLDS), tmp_path)
    assert [claim.verdict for claim in findings.claims] == [c.HOLDS] * 6
    assert c.overall(findings.claims) == c.REPRODUCED
    assert (tmp_path / "pn_table2.png").exists()
    assert any("| ln+pn |" in block for block in findings.body)


def test_table2_pattern_fails_where_the_numbers_say_so(tmp_path):
    broken = TABLE2_HOLDS | {"ln+pn": 0.80, "gn8+pn": 0.85}  # PN hurts: LN+PN < LN, GN+PN < GN
    findings = r._analyse_table2(table2_rows(tmp_path, broken), tmp_path)
    verdicts = {claim.text: claim.verdict for claim in findings.claims}
    assert verdicts["LN+PN > LN (X)"] == c.FAILS
    assert verdicts["GN+PN ≥ GN (X)"] == c.FAILS
    assert verdicts["GN+PN ≈ BN (X, within 1 point)"] == c.FAILS
    assert c.overall(findings.claims) == c.NOT_REPRODUCED


def small_batch_rows(folder: Path, bn: dict[int, float], free: float) -> list[dict]:
    rows = []
    for size, accuracy in bn.items():
        rows += seeds(folder, accuracy, norm="bn", norm_batch_size=size)
    for norm in r.BATCH_FREE:
        rows += seeds(folder, free, norm=norm)
    return rows


def test_small_normalization_batch(tmp_path):
    degrading = {128: 0.90, 16: 0.89, 4: 0.85, 2: 0.70}
    findings = r._analyse_small_batch(small_batch_rows(tmp_path, degrading, 0.895), tmp_path)
    assert c.overall(findings.claims) == c.REPRODUCED
    flat = {128: 0.90, 16: 0.90, 4: 0.90, 2: 0.90}
    findings = r._analyse_small_batch(small_batch_rows(tmp_path, flat, 0.80), tmp_path)
    assert all(claim.verdict == c.FAILS for claim in findings.claims)
    assert (tmp_path / "small_norm_batch.png").exists()


def write_diagnostics(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diagnostics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))


def fig5_rows(folder: Path, sign: float) -> list[dict]:
    rows = []
    for model in r.FIG5_MODELS:
        for index, norm in enumerate(r.FIG5_NORMALIZERS):
            similarity = 0.1 + 0.08 * index
            accuracy = 0.5 + sign * 0.4 * (0.9 - similarity)
            run = row(folder, f"{model}_{norm}", accuracy, model=model, norm=norm)
            write_diagnostics(
                Path(run["folder"]),
                [{"epochs_done": 0, "features": {
                    "cosine_similarity": 0.99, "feature_map_cosine_similarity": similarity,
                    "stable_rank": 2.0}}],
            )  # fmt: skip
            rows.append(run)
    return rows


def test_fig5_correlation(tmp_path):
    findings = r._analyse_fig5(fig5_rows(tmp_path / "a", sign=1.0), tmp_path)
    assert [claim.verdict for claim in findings.claims] == [c.HOLDS, c.HOLDS]
    assert "ρ = -1.000" in findings.claims[0].measured
    findings = r._analyse_fig5(fig5_rows(tmp_path / "b", sign=-1.0), tmp_path)
    assert [claim.verdict for claim in findings.claims] == [c.FAILS, c.FAILS]
    assert (tmp_path / "beyond_bn_fig5.png").exists()


def fig2_rows(folder: Path, collapse: dict[str, tuple[float, float]]) -> list[dict]:
    rows = []
    for norm, (start, end) in collapse.items():
        for seed in range(2):
            run = row(folder, f"{norm}_{seed}", 0.9, seed=seed, norm=norm)
            records = []
            for epoch, p1 in enumerate((start, (start + end) / 2, end + 0.001 * seed)):
                rest = (1 - p1) / 3
                fractions = {"p1": [p1] * 4, "p2": [rest] * 4, "p3": [rest] * 4, "p4": [rest] * 4}
                records.append({"epochs_done": epoch, "power": {"fractions": fractions}})
            write_diagnostics(Path(run["folder"]), records)
            (Path(run["folder"]) / "metrics.jsonl").write_text("")
            rows.append(run)
    return rows


def test_fig2_through_training(tmp_path, monkeypatch):
    paper = {"bn": (0.0, 0.0), "ln": (0.4, 0.6), "gn8": (0.1, 0.2), "ln+pn": (0.02, 0.02),
             "gn8+pn": (0.01, 0.01), "ln+ws": (0.05, 0.3)}  # fmt: skip
    findings = r._analyse_fig2(fig2_rows(tmp_path / "a", paper), tmp_path)
    assert c.overall(findings.claims) == c.REPRODUCED
    assert (tmp_path / "pn_fig2_training.png").exists()
    assert (tmp_path / "pn_fig2_by_depth.png").exists()
    # The verdicts where the claims fail: the two figures are built again but not rendered
    # (rendering them, about 10 s of CPU, is what the call above checks)
    saved: list[Path] = []
    monkeypatch.setattr(
        "normlab.report.training.save_figure",
        lambda fig, path, *args, **kwargs: saved.append(Path(path)) or [Path(path)],
    )
    uncollapsed = dict.fromkeys(paper, (0.01, 0.01)) | {"ln+pn": (0.3, 0.3), "ln+ws": (0.05, 0.01)}
    findings = r._analyse_fig2(fig2_rows(tmp_path / "b", uncollapsed), tmp_path)
    assert [path.name for path in saved] == ["pn_fig2_training", "pn_fig2_by_depth"]
    verdicts = [claim.verdict for claim in findings.claims]
    assert verdicts[:2] == [c.FAILS, c.FAILS]  # LN does not collapse, LN+WS does not drift
    assert verdicts[2:4] == [c.FAILS, c.FAILS]  # LN+PN more collapsed than LN, far from BN


def test_an_analysis_refuses_a_sweep_with_missing_settings(tmp_path):
    rows = [x for x in table2_rows(tmp_path, TABLE2_HOLDS) if x["norm"] != "ln+pn"]
    with pytest.raises(ValueError, match=r"no finished run for \[\('ln\+pn', 'none'\)"):
        r._analyse_table2(rows, tmp_path)


@pytest.fixture
def tiny_nf(monkeypatch):
    """nf-resnet at a size that runs in seconds."""
    original = r.REPRODUCTIONS["nf-resnet"]
    tiny = dataclasses.replace(
        original,
        scale=r.Scale(limit=32, test_limit=16, epochs=1, seeds=1),
        base=original.base | {"batch_size": 16, "width": 0.25},
    )
    monkeypatch.setitem(r.REPRODUCTIONS, "nf-resnet", tiny)
    return tiny


def test_a_reproduction_end_to_end_and_rerun_reuses_its_runs(
    tiny_nf, tmp_path, capsys, monkeypatch
):
    args = ["reproduce", "nf-resnet", "--data", "gaussian:1x8x8", "--runs", str(tmp_path / "runs"),
            "--out", str(tmp_path / "docs"), "--max-parallel", "2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed
    document = (tmp_path / "docs" / "nf-resnet.md").read_text()
    assert document.startswith("# NF-ResNet-20 with and without AGC against BN ResNet-20")
    assert "**Verdict: " in document
    assert "normlab reproduce nf-resnet --data gaussian:1x8x8 --max-parallel 2" in document
    assert "![nf_resnet_curves](nf-resnet/nf_resnet_curves.png)" in document
    assert (tmp_path / "docs" / "nf-resnet" / "nf_resnet_curves.png").exists()
    assert "3 finished runs" in document
    # the rerun's figure is built but not rendered again (the first run rendered it, above)
    saved: list[Path] = []
    monkeypatch.setattr(
        "normlab.report.training.save_figure",
        lambda fig, path, *args, **kwargs: saved.append(Path(path)) or [Path(path)],
    )
    outcome = reproduce(
        "nf-resnet", "gaussian:1x8x8", tmp_path / "runs", tmp_path / "docs", on_event=print
    )
    assert capsys.readouterr().out.count("skip") == 3  # every run reused, only the analysis
    assert [path.name for path in saved] == ["nf_resnet_curves"]
    table = [line for line in document.splitlines() if line.startswith("| ")]
    again = outcome.document.read_text().splitlines()
    assert [line for line in again if line.startswith("| ")] == table


def test_cli_errors(capsys):
    assert main(["reproduce", "--list"]) == 0
    assert "pn-table2" in capsys.readouterr().out
    assert main(["reproduce", "pn-table2"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["reproduce", "pn-table3", "--data", "gaussian"]) == 2
    assert "unknown reproduction 'pn-table3'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse's own exit, one line on stderr
        main(["reproduce", "pn-table2", "--data", "gaussian", "--max-parallel", "0"])
    assert exit_.value.code == 2
    assert "--max-parallel: must be a positive integer" in capsys.readouterr().err
