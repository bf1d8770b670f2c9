"""The training loop end to end: run folder, summary, divergence, resume to the same bits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normlab.training import METRIC_KEYS, TrainConfig, train
from normlab.training.checkpoint import TEMP_PREFIX, load_checkpoint
from normlab.training.loop import TIMING_KEYS

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
TINY = {
    "model": "resnet20",
    "width": 0.5,
    "data": "gaussian:3x8x8",
    "limit": 64,
    "test_limit": 32,
    "batch_size": 16,
    "epochs": 2,
    "progress": False,
}


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**(TINY | {"out": str(tmp_path / "run")} | overrides))


def test_a_tiny_run_writes_the_whole_run_folder(tmp_path):
    summary = train(tiny(tmp_path, norm="gn8+pn", regularization="extra", ema=0.9))
    out = tmp_path / "run"
    assert summary["status"] == "finished"
    assert summary["epochs"] == 2
    for key in ("final_test_accuracy", "best_test_accuracy", "mean_train_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["wall_seconds"] > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert set(rows[0]) == set(METRIC_KEYS)
    assert (out / "metrics.csv").read_text().splitlines()[0].split(",") == list(METRIC_KEYS)
    assert 0 <= rows[0]["data_fraction"] < 1
    assert rows[0]["cpu_seconds"] > 0
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1
    assert {"model", "optimizer", "scheduler", "ema", "rng", "history"} <= set(state)
    assert (out / "best.pt").exists()
    saved = (out / "config.yaml").read_text()
    assert "lr: 0.00625" in saved  # 0.1·16/256, resolved
    assert "label_smoothing: 0.1" in saved
    assert not list(out.glob(TEMP_PREFIX + "*"))


def test_a_nan_loss_stops_the_run_as_diverged(tmp_path):
    summary = train(tiny(tmp_path, lr=1e30, epochs=3))
    assert summary["status"] == "diverged"
    assert summary["diverged_epoch"] is not None
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "diverged"


def test_resume_after_the_end_changes_nothing(tmp_path):
    train(tiny(tmp_path))
    before = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    summary = train(tiny(tmp_path, resume=True))
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert summary["epochs"] == 2
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_refuses_another_configuration(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError, match=r"differing keys: norm: 'bn' -> 'gn8\+pn'"):
        train(tiny(tmp_path, epochs=1, norm="gn8+pn", resume=True))


def test_out_holding_a_run_is_refused_without_resume(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny(tmp_path, epochs=1))


# -- kill at any point, resume, same bits -----------------------------------------------------


def _command(out: Path, *extra: str) -> list[str]:
    flags = [
        "--model", "resnet20", "--width", "0.5", "--norm", "bn", "--data", "gaussian:3x8x8",
        "--limit", "96", "--test-limit", "32", "--batch-size", "16", "--epochs", "3",
        "--regularization", "extra", "--ema", "0.9", "--seed", "7", "--out", str(out),
        "--no-progress",
    ]  # fmt: skip
    return [sys.executable, "-m", "normlab", "train", *flags, *extra]


def _env() -> dict[str, str]:
    return os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
    }


def _final(out: Path) -> tuple[dict, list[dict]]:
    state = load_checkpoint(out / "last.pt")
    rows = [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]
    return state["model"], rows


def _kill_when(process: subprocess.Popen, ready, delay: float) -> None:
    deadline = time.monotonic() + 120
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_command(out), check=True, env=_env(), capture_output=True, timeout=300)
    return _final(out)


@pytest.mark.parametrize(
    ("point", "delay"),
    [
        ("start", 0.0),
        pytest.param("after-epoch-1", 0.0, marks=pytest.mark.slow),
        ("mid-epoch-2", 0.15),
        ("after-epoch-2", 0.02),
    ],
)
def test_killed_and_resumed_run_ends_in_the_same_bits(tmp_path, uninterrupted, point, delay):
    out = tmp_path / "run"
    ready = {
        "start": lambda: (out / "config.yaml").exists(),
        "after-epoch-1": lambda: (out / "last.pt").exists(),
        "mid-epoch-2": lambda: (out / "last.pt").exists(),
        "after-epoch-2": lambda: (
            (out / "metrics.jsonl").exists()
            and len((out / "metrics.jsonl").read_text().splitlines()) >= 2
        ),
    }[point]
    process = subprocess.Popen(_command(out), env=_env(), stderr=subprocess.PIPE)
    _kill_when(process, ready, delay)
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    assert not (out / "summary.json").exists()
    result = subprocess.run(
        _command(out, "--resume"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    weights, rows = _final(out)
    expected_weights, expected_rows = uninterrupted
    assert rows == expected_rows
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)
    assert not list(out.glob(TEMP_PREFIX + "*"))


# -- real data ------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (SHARED_DATA / "fashion-mnist").exists(), reason="no ../shared/data/fashion-mnist"
)
def test_a_tiny_run_on_real_fashion_mnist_learns(tmp_path):
    config = tiny(
        tmp_path,
        data=f"fashion-mnist:{SHARED_DATA / 'fashion-mnist'}",
        norm="gn8+pn",
        limit=2048,
        test_limit=512,
        batch_size=64,
        epochs=3,
        lr=0.1,
        schedule="constant",
        width=0.5,
    )
    summary = train(config)
    assert summary["status"] == "finished"
    assert summary["final_test_accuracy"] > 0.4  # chance is 0.1; about 0.6 after these 96 steps


def test_a_timm_model_trains_converted_to_the_scheme(tmp_path):
    from tests.timm_support import import_timm

    if import_timm() is None:
        pytest.skip("timm is not installed")
    summary = train(tiny(tmp_path, model="timm:resnet10t", norm="gn8+pn", epochs=1))
    assert summary["status"] == "finished"
    state = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    assert any(key.endswith("proxy_beta") for key in state)  # the BatchNorms became GN+PN


def test_unknown_timm_model_suggests_the_closest(tmp_path):
    from tests.timm_support import import_timm

    if import_timm() is None:
        pytest.skip("timm is not installed")
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        train(tiny(tmp_path, model="timm:resnet19"))
