"""The PN benchmark script runs end to end on tiny shapes (it is not a timed test)."""

from __future__ import annotations

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def pn_speed():
    return load_benchmark("pn_speed")


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_layer_table(pn_speed, act):
    times = pn_speed.measure((4, 64, 3, 3), act, torch.device("cpu"), rounds=1, warmup=0)
    label = "ReLU" if act == "relu" else "GELU"
    assert list(times) == [f"BN+{label}", f"GN+{label}", "GN+Act", "GN+PN", "naive PN"]
    assert all(t > 0 for t in times.values())
    lines = []
    pn_speed.report([((4, 64, 3, 3), times)], markdown=True, say=lines.append)
    assert lines[0].startswith("| shape (N, C, H, W) |")
    assert "geometric mean" in lines[-1]


def test_model_table(pn_speed):
    times = pn_speed.measure_model(
        "resnet20", (2, 3, 32, 32), 8, torch.device("cpu"), rounds=1, warmup=0
    )
    assert list(times) == ["bn", "gn8", "gn8+pn"]
    lines = []
    pn_speed.report_models([("resnet20", (2, 3, 32, 32), times)], markdown=True, say=lines.append)
    assert lines[-1].startswith("| resnet20 |")


def test_naive_pn_is_eq7_with_the_reference_moments(pn_speed):
    """The naive baseline computes the same function as normlab's PN with the K=200 estimator."""
    torch.manual_seed(0)
    naive = pn_speed.NaivePN(8, 2, "gelu")
    layer = pn_speed.normlab.scheme("gn2+pn", act="gelu").norm_act(8)
    layer.act.method = "reference"
    x = torch.randn(3, 8, 4, 4)
    torch.testing.assert_close(naive(x), layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_train_speed_table(clock):
    train_speed = load_benchmark("train_speed")
    results = train_speed.measure("resnet20", 8, 4, 2, "cpu", rounds=2, clock=clock)
    assert list(results) == train_speed.SCHEMES
    for harness, bare, overhead in results.values():
        assert harness > 0
        assert bare > 0
        assert overhead > -1
    lines = []
    train_speed.report("resnet20", 8, 4, results, markdown=True, say=lines.append)
    assert lines[1].startswith("| scheme | harness img/s |")
    assert lines[-1].startswith("| ln+pn |")
    harness, bare = train_speed.harness_cost(8, 4, 2, "cpu", rounds=2, clock=clock)
    assert harness > 0
    assert bare > 0
    lines = []
    train_speed.report_cost((harness, bare), 4, results, say=lines.append)
    assert lines[0].startswith("harness's own work: ")
    assert len(lines) == 1 + len(results)


def test_diagnostics_speed_table():
    diagnostics_speed = load_benchmark("diagnostics_speed")
    model = diagnostics_speed.models.create("resnet20", norm="gn8+pn").eval()
    times = diagnostics_speed.measure(model, torch.randn(2, 3, 16, 16), rounds=2)
    assert list(times) == ["forward", "power", "variance", "spp"]
    assert times["forward"][1] == 1.0
    assert all(seconds > 0 and ratio > 0 for seconds, ratio in times.values())
    lines = []
    diagnostics_speed.report([("gn8+pn", times)], say=lines.append)
    assert lines[0].startswith("| norm | forward ms (×) | power ms (×)")
    assert lines[-1].startswith("| gn8+pn | ")


def test_model_step_table():
    model_step_speed = load_benchmark("model_step_speed")
    schemes = ["bn", "gn8", "gn8+pn"]
    results = model_step_speed.measure("resnet20", schemes, 2, 16, torch.device("cpu"), 2)
    assert list(results) == schemes
    assert results["gn8"][1]["gn8"] == 1.0
    assert results["bn"][1]["bn"] == 1.0
    assert all(seconds > 0 for seconds, _ in results.values())
    lines = []
    model_step_speed.report("resnet20", results, markdown=True, say=lines.append)
    assert lines[1] == "| scheme | step ms | / gn8 | / bn |"
    assert lines[-1].startswith("| gn8+pn | ")
