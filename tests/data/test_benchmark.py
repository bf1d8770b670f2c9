"""The data-speed benchmark script runs end to end on a tiny generated CIFAR folder (it is not a
timed test)."""

from __future__ import annotations

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def data_speed():
    return load_benchmark("data_speed")


def test_data_speed_table(data_speed, tmp_path):
    spec = data_speed.write_cifar(tmp_path, samples=20)
    times = data_speed.measure(spec, 4, rounds=6, warmup=0, device=torch.device("cpu"))
    assert list(times) == ["data", "step"]
    assert all(t > 0 for t in times.values())
    lines = []
    data_speed.report([("tiny", (4, 3, 32, 32), times)], markdown=True, say=lines.append)
    assert lines[0].startswith("| data | batch | data ms | step ms | data / step |")
    assert lines[-1].startswith("| tiny | (4, 3, 32, 32) |")
    assert lines[-1].endswith("% |")
    found = data_speed.datasets(tmp_path / "more", 10, cifar=None)
    assert found[0][0] == "CIFAR-shaped (10 generated)"
