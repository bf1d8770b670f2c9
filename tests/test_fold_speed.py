"""The fold benchmark script runs end to end on tiny models (it is not a timed test)."""

from __future__ import annotations

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def fold_speed():
    return load_benchmark("fold_speed")


def test_the_candidates_compute_what_they_are_named(fold_speed):
    """Folded and unfolded candidates of one spec are the same function."""
    built = fold_speed.candidates("resnet20", width=0.5)
    assert list(built) == list(fold_speed.CANDIDATES)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for spec in ("gn8+pn", "bn"):
            folded, unfolded = built[f"{spec} folded"](x), built[spec](x)
            torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("markdown", [True, False])
def test_table(fold_speed, markdown):
    times = fold_speed.measure(
        "efficientnet_b0", 1, 32, torch.device("cpu"), rounds=1, warmup=0, width=0.25
    )
    assert list(times) == list(fold_speed.CANDIDATES)
    assert all(t > 0 for t in times.values())
    lines = []
    fold_speed.report([("efficientnet_b0", (1, 3, 32, 32), times)], markdown, lines.append)
    text = "\n".join(lines)
    assert "efficientnet_b0" in text
    assert "gn8+pn folded / gn8" in text
    if markdown:
        assert lines[0].startswith("| model | input |")
