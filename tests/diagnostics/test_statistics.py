"""The diagnostics' one-pass reduction: plane moments and channel summaries, kernel and fallback."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab.diagnostics import ChannelMoments, PowerAccumulator, power_profile
from normlab.diagnostics.statistics import (
    NonFiniteStatisticsError,
    channel_summary,
    merge_summaries,
    plane_moments,
)
from normlab.layers import compiled

KERNEL = [True, False]


@contextlib.contextmanager
def kernels(enabled: bool):
    if enabled and compiled.kernels("normlab_statistics") is None:
        pytest.skip("normlab's C++ kernels could not be built here")
    previous = compiled.set_compiled_kernels(enabled)
    try:
        yield
    finally:
        compiled.set_compiled_kernels(previous)


def reference(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plane mean and M2 from a float64 copy, two passes."""
    flat = t.double().reshape(*t.shape[:2], -1)
    mean = flat.mean(-1)
    return mean, (flat - mean[..., None]).square().sum(-1)


def layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    found = {"contiguous": t, "strided": t.transpose(2, -1)}
    if t.dim() == 4:
        found["channels_last"] = t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        found["channels_last_3d"] = t.contiguous(memory_format=torch.channels_last_3d)
    return found


@pytest.mark.parametrize("use_kernel", KERNEL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 70, 3, 3), (4, 3, 2, 3, 5), (5, 4, 17)])
def test_plane_moments_match_the_two_pass_reference(use_kernel, dtype, shape):
    t = (torch.randn(shape, dtype=torch.float64) * 2 + 3).to(dtype)
    for name, view in layouts(t).items():
        with kernels(use_kernel):
            mean, m2, size = plane_moments(view)
        expected_mean, expected_m2 = reference(view)
        assert size == view[0, 0].numel(), name
        torch.testing.assert_close(mean, expected_mean, rtol=1e-12, atol=1e-12, msg=name)
        torch.testing.assert_close(m2, expected_m2, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("use_kernel", KERNEL)
def test_a_large_mean_does_not_cancel_the_spread(use_kernel):
    # float32 values 1e4 + N(0, 1e-2): a Σx² − (Σx)²/n in float32 would lose the spread
    t = (1e4 + 1e-2 * torch.randn(2, 3, 32, 32, dtype=torch.float64)).float()
    with kernels(use_kernel):
        _, m2, size = plane_moments(t)
    torch.testing.assert_close(m2 / size, reference(t)[1] / size, rtol=1e-9, atol=0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(1, 40),
    st.lists(st.integers(1, 9), min_size=0, max_size=3),
    st.booleans(),
)
def test_channel_summary_matches_its_definition(inputs, channels, spatial, last):
    t = torch.randn(inputs, channels, *spatial, dtype=torch.float64) * 3 - 1
    if last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    summary, n, size = channel_summary(t)
    mean, m2 = reference(t)
    sigma = (m2 / size).sqrt()
    expected = torch.stack(
        [
            mean.mean(0),
            (mean - mean.mean(0)).square().sum(0),
            sigma.mean(0),
            (sigma - sigma.mean(0)).square().sum(0),
            m2.sum(0),
        ]
    )
    assert (n, size) == (inputs, t[0, 0].numel())
    torch.testing.assert_close(summary, expected, rtol=1e-10, atol=1e-12)


def test_merged_summaries_equal_the_summary_of_the_concatenation():
    a, b = torch.randn(3, 6, 4, 4) * 2 + 1, torch.randn(5, 6, 4, 4) - 2
    merged = merge_summaries(channel_summary(a)[0], 3, channel_summary(b)[0], 5)
    whole = channel_summary(torch.cat([a, b]))[0]
    torch.testing.assert_close(merged, whole, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use_kernel", KERNEL)
def test_kernel_and_fallback_agree_on_the_power_decomposition(use_kernel):
    torch.manual_seed(0)
    y = torch.randn(6, 8, 5, 5) * torch.rand(6, 8, 1, 1) + torch.randn(6, 8, 1, 1)
    with kernels(use_kernel):
        d = PowerAccumulator().update(y[:2]).update(y[2:]).result()
    mean, m2 = reference(y)
    sigma = (m2 / 25).sqrt()
    torch.testing.assert_close(d.p1, mean.mean(0).square(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.p2, mean.var(0, correction=0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.p3, sigma.mean(0).square(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.p4, sigma.var(0, correction=0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use_kernel", KERNEL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_counted_not_summarised(use_kernel, bad):
    t = torch.randn(2, 3, 4, 4)
    t[1, 2, 0, 1] = bad
    with kernels(use_kernel):
        with pytest.raises(NonFiniteStatisticsError, match="1 of 96 values are NaN or inf"):
            channel_summary(t)
        with pytest.raises(NonFiniteStatisticsError, match="1 of 96 values"):
            plane_moments(t.to(memory_format=torch.channels_last))


def test_finite_values_that_overflow_float64_say_so():
    t = torch.full((2, 1, 2), 1e300, dtype=torch.float64)
    t[0, 0, 0] = -1e300
    with pytest.raises(NonFiniteStatisticsError, match="overflow the float64 statistics"):
        channel_summary(t)


def test_a_probed_layer_with_nan_is_named_with_its_batch():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    good, bad = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"non-finite activations in the output of layer '1' in "
        r"batch 1: 3 of 108 values",  # the 1x1 conv spreads one NaN to 3 channels
    ):
        power_profile(model.eval(), [good, bad])


def test_empty_and_positionless_tensors_are_refused():
    for update in (ChannelMoments().update, PowerAccumulator().update, plane_moments):
        with pytest.raises(ValueError, match=r"needs values, got an empty tensor"):
            update(torch.randn(4, 3, 2, 2)[:0])
    with pytest.raises(ValueError, match=r"shape \(N, C, \*spatial\), got shape \(5,\)"):
        plane_moments(torch.randn(5))
    with pytest.raises(ValueError, match=r"empty tensor of shape \(2, 3, 0\)"):
        channel_summary(torch.randn(2, 3, 0))


def test_integer_and_half_tensors_use_the_fallback_exactly():
    t = torch.randint(-3, 4, (2, 3, 5))
    mean, m2, _ = plane_moments(t)
    torch.testing.assert_close((mean, m2), reference(t))
    half = torch.randn(2, 3, 5).half()
    torch.testing.assert_close(plane_moments(half)[:2], reference(half))
