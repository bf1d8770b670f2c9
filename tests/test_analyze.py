"""``normlab analyze``: the analyses on one model and a data set, with checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from normlab.analyze import AnalyzeConfig, build_model, run_analyze
from normlab.cli import main

SHARED = Path(os.environ.get("NORMLAB_DATA", Path(__file__).parents[2] / "shared" / "data"))


def metrics_of(files) -> dict:
    return json.loads(files.metrics.read_text(encoding="utf-8"))


def test_resnet_on_white_noise_reports_every_analysis(tmp_path):
    config = AnalyzeConfig("resnet20", "gn8+pn", tmp_path, samples=16, batch_size=8, width=0.5)
    metrics = metrics_of(run_analyze(config))
    for key in (
        "power",
        "collapse",
        "activation_variance",
        "cosine_similarity",
        "stable_rank",
        "gradients",
        "signal_propagation",
        "config",
    ):
        assert key in metrics
    assert metrics["config"]["run_mode"] == "train"
    assert len(metrics["signal_propagation"]["variance"]) == 1 + 9  # stem + 9 blocks
    # every PN layer keeps its channels uncollapsed
    assert max(f["p1"] for f in metrics["power"].values()) < 0.5
    html = (tmp_path / "report.html").read_text()
    assert "Signal propagation" in html
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4


def test_instance_norm_satisfies_theorem2_and_ln_theorem1(tmp_path):
    for spec, claim in (("in", "Theorem 2"), ("ln", "Theorem 1")):
        config = AnalyzeConfig("random_net", spec, tmp_path / spec, samples=16, batch_size=8)
        checks = metrics_of(run_analyze(config))["checks"]
        assert [c["claim"].split(":")[0].split(" (")[0] for c in checks] == [claim]
        assert all(c["passed"] for c in checks), checks


def test_a_checkpoint_is_loaded_and_analyzed_with_running_statistics(tmp_path):
    config = AnalyzeConfig("resnet20", "bn", tmp_path / "out", samples=8, batch_size=8, width=0.25)
    model = build_model(config, in_channels=3, num_classes=10)
    with torch.no_grad():
        model.head.fc.bias.fill_(0.125)
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pt")
    loaded = AnalyzeConfig(**{**vars(config), "checkpoint": tmp_path / "ckpt.pt"})
    assert torch.equal(build_model(loaded, 3, 10).head.fc.bias, torch.full((10,), 0.125))
    assert metrics_of(run_analyze(loaded))["config"]["run_mode"] == "eval"


def test_bad_checkpoints_and_data_get_clear_errors(tmp_path, capsys):
    config = AnalyzeConfig("resnet20", "bn", tmp_path, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing\.pt' does not exist"):
        build_model(config, 3, 10)
    torch.save([1, 2], tmp_path / "list.pt")
    config = AnalyzeConfig("resnet20", "bn", tmp_path, checkpoint=tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        build_model(config, 3, 10)
    code = main(["analyze", "--model", "resnet20", "--data", f"mnist:{tmp_path / 'nope'}"])
    assert code == 2
    assert "does not exist; expected train-images-idx3-ubyte" in capsys.readouterr().err
    assert main(["analyze", "--model", "resnt20"]) == 2
    assert "Did you mean 'resnet20'" in capsys.readouterr().err


def test_checkpoints_of_another_width_or_truncated_are_clear_errors(tmp_path):
    config = AnalyzeConfig("resnet20", "bn", tmp_path / "out", samples=8, batch_size=8, width=0.25)
    torch.save({"model": build_model(config, 3, 10).state_dict()}, tmp_path / "ckpt.pt")
    wider = AnalyzeConfig(**{**vars(config), "width": 0.5, "checkpoint": tmp_path / "ckpt.pt"})
    with pytest.raises(ValueError, match=r"does not fit resnet20 .*--width 0\.5.*another shape"):
        build_model(wider, 3, 10)
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    cut = AnalyzeConfig(**{**vars(config), "checkpoint": tmp_path / "cut.pt"})
    with pytest.raises(ValueError, match=r"cut\.pt' is not a readable torch\.save file"):
        build_model(cut, 3, 10)
    with pytest.raises(ValueError, match=r"cut\.pt' is not a readable"):
        run_analyze(cut)
    assert not (tmp_path / "out").exists()  # no report folder made


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason="no MNIST in the shared data dir")
def test_cli_on_real_mnist(tmp_path, capsys):
    code = main(
        [
            "analyze",
            "--model",
            "resnet20",
            "--norm",
            "ln+pn",
            "--width",
            "0.5",
            "--data",
            f"mnist:{SHARED / 'mnist'}",
            "--samples",
            "16",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "report:" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["data"].startswith("mnist:")
    assert metrics["gradients"]["norms"]
