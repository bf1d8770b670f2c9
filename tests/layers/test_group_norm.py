"""GroupNorm, LayerNorm and InstanceNorm, and the axes every normalizer standardizes over.

For a set S of values (a sample's group of channels and positions for GN, all of (C, *spatial)
for LN, one (sample, channel) for IN, one channel over (N, *spatial) for BN), the output is
ỹ = (x - mean_S x) / sqrt(var_S x + ε): mean 0 and variance v/(v + ε) over S, v = var_S x.
References are torch.nn.GroupNorm / InstanceNorm{1,2,3}d and formulas written out here.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from normlab.diagnostics import power_decomposition
from normlab.layers import (
    BatchNorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    VarianceNorm,
)

from .reference import assert_same_forward_backward


def random_input(shape, dtype=torch.float32, seed=0):
    """Gaussian values with a random mean and scale for every (sample, channel)."""
    g = torch.Generator().manual_seed(seed)
    N, C = shape[:2]
    extra = [1] * (len(shape) - 2)
    scale = torch.rand(N, C, *extra, generator=g, dtype=dtype) * 3 + 0.3
    shift = torch.randn(N, C, *extra, generator=g, dtype=dtype) * 2
    return torch.randn(shape, generator=g, dtype=dtype) * scale + shift


def randomize_affine(*layers):
    """Give every layer the same random per-channel weight and bias."""
    C = layers[0].weight.shape[0]
    weight, bias = torch.rand(C) + 0.5, torch.randn(C)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)


# ---------------------------------------------------------------- equality with torch

SPATIAL = st.lists(st.integers(1, 4), min_size=0, max_size=3)


@settings(max_examples=20, deadline=None)
@given(
    N=st.integers(1, 3),
    groups=st.integers(1, 4),
    group_size=st.integers(1, 3),
    spatial=SPATIAL,
    by_size=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]),
    seed=st.integers(0, 2**16),
)
def test_group_norm_matches_torch(N, groups, group_size, spatial, by_size, eps, seed):
    C = groups * group_size
    shape = (N, C, *spatial)
    assume(group_size * torch.Size(spatial).numel() > 1)
    kwargs = {"group_size": group_size} if by_size else {"num_groups": groups}
    ours, ref = GroupNorm(C, eps=eps, **kwargs), nn.GroupNorm(groups, C, eps=eps)
    assert ours.num_groups == groups
    randomize_affine(ours, ref)
    assert_same_forward_backward(ours, ref, random_input(shape, seed=seed))


@pytest.mark.parametrize(
    ("ref_cls", "shape"),
    [
        (nn.InstanceNorm1d, (3, 4, 7)),
        (nn.InstanceNorm2d, (2, 5, 3, 4)),
        (nn.InstanceNorm3d, (2, 3, 2, 3, 2)),
    ],
)
def test_instance_norm_matches_torch(ref_cls, shape):
    C = shape[1]
    ours, ref = InstanceNorm(C), ref_cls(C, affine=True)
    randomize_affine(ours, ref)
    assert_same_forward_backward(ours, ref, random_input(shape, seed=1))


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 7), (2, 4, 3, 3), (2, 3, 2, 2, 3)])
def test_layer_norm_statistics_over_channels_and_positions(shape):
    """LN (PN paper convention): per sample over (C, *spatial), per-channel affine."""
    x = random_input(shape, dtype=torch.float64, seed=2)
    ln = LayerNorm(shape[1]).double()
    assert ln.weight.shape == (shape[1],)
    assert ln.bias.shape == (shape[1],)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(shape[1]) + 0.5)
        ln.bias.copy_(torch.randn(shape[1]))
    dims = list(range(1, x.dim()))
    mean = x.mean(dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)
    view = (1, -1, *([1] * (x.dim() - 2)))
    expected = (x - mean) / torch.sqrt(var + ln.eps) * ln.weight.view(view) + ln.bias.view(view)
    torch.testing.assert_close(ln(x), expected)

    y = LayerNorm(shape[1], affine=False).double()(x)
    torch.testing.assert_close(y.mean(dims), torch.zeros(shape[0], dtype=x.dtype))
    torch.testing.assert_close(y.var(dims, correction=0), (var / (var + ln.eps)).flatten())
    # ... but not per channel: the channels of one sample keep their relative offsets
    per_channel = y.reshape(shape[0], shape[1], -1).mean(-1)
    assert per_channel.abs().max() > 0.1


# ---------------------------------------------------------------- standardization axes


def sets_of(y: torch.Tensor, kind: str, groups: int) -> torch.Tensor:
    """The normalizer's sets S as rows: 'batch' (one channel over N, *spatial), 'group'
    (a sample's group over channels and positions) or 'instance' (one sample and channel)."""
    N, C = y.shape[:2]
    if kind == "batch":
        return y.transpose(0, 1).reshape(C, -1)
    if kind == "group":
        return y.reshape(N * groups, -1)
    return y.reshape(N * C, -1)


# name -> (factory(C, G), kind of set, statistic: "centered", "variance" or "power")
NORMALIZERS = {
    "BatchNorm": (lambda C, G: BatchNorm(C, affine=False), "batch", "centered"),
    "GhostBatchNorm": (
        lambda C, G: BatchNorm(C, affine=False, norm_batch_size=1000),
        "batch",
        "centered",
    ),
    "GroupNorm": (lambda C, G: GroupNorm(C, num_groups=G, affine=False), "group", "centered"),
    "LayerNorm": (lambda C, G: LayerNorm(C, affine=False), "layer", "centered"),
    "InstanceNorm": (lambda C, G: InstanceNorm(C, affine=False), "instance", "centered"),
    "VarianceNorm": (lambda C, G: VarianceNorm(C, affine=False), "batch", "variance"),
    "EvoNormB0-linear": (
        lambda C, G: EvoNormB0(C, affine=False, nonlinear=False),
        "batch",
        "variance",
    ),
    "EvoNormS0-linear": (
        lambda C, G: EvoNormS0(C, num_groups=G, affine=False, nonlinear=False),
        "group",
        "variance",
    ),
    "FilterResponseNorm": (lambda C, G: FilterResponseNorm(C, affine=False), "instance", "power"),
}


@pytest.mark.parametrize("name", list(NORMALIZERS))
@settings(max_examples=8, deadline=None)
@given(
    N=st.integers(1, 4),
    groups=st.integers(1, 3),
    group_size=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 4), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_output_is_standardized_over_exactly_its_axes(name, N, groups, group_size, spatial, seed):
    factory, kind, statistic = NORMALIZERS[name]
    C = groups * group_size
    if kind == "layer":
        kind, groups = "group", 1
    x = random_input((N, C, *spatial), dtype=torch.float64, seed=seed)
    xs = sets_of(x, kind, groups)
    assume(xs.shape[1] > 1)
    layer = factory(C, groups).double()
    ys = sets_of(layer(x), kind, groups)

    mean_x, mean_y = xs.mean(1), ys.mean(1)
    var_x = ((xs - mean_x[:, None]) ** 2).mean(1)
    var_y = ((ys - mean_y[:, None]) ** 2).mean(1)
    eps = layer.eps
    if statistic == "centered":  # mean 0, variance v/(v+ε)
        torch.testing.assert_close(mean_y, torch.zeros_like(mean_y), atol=1e-10, rtol=0)
        torch.testing.assert_close(var_y, var_x / (var_x + eps))
    elif statistic == "variance":  # not centered: mean μ/sqrt(v+ε), variance v/(v+ε)
        torch.testing.assert_close(mean_y, mean_x / torch.sqrt(var_x + eps))
        torch.testing.assert_close(var_y, var_x / (var_x + eps))
    else:  # FRN: mean square ν²/(ν²+ε)
        power_x = (xs**2).mean(1)
        torch.testing.assert_close((ys**2).mean(1), power_x / (power_x + eps))

    # exactly these axes: a finer split into single (sample, channel) rows is not standardized
    rows = sets_of(x, "instance", groups).shape[1] < xs.shape[1]
    if statistic == "centered" and rows:
        finer = sets_of(ys.reshape(x.shape), "instance", groups).mean(1)
        assert finer.abs().max() > 1e-3


# ---------------------------------------------------------------- Theorem 2 (PN paper)


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 1e-2])  # ε > 0: normlab refuses ε = 0
def test_instance_norm_power_decomposition_theorem2(eps):
    """IN's output has P1 = P2 = 0, P3 = 1, P4 = 0 (Theorem 2), up to the ε effect: the output's
    instance std is s_x = sqrt(v_x/(v_x+ε)), so P3 = E_x[s_x]² and P4 = Var_x[s_x]."""
    x = random_input((64, 5, 6, 6), dtype=torch.float64, seed=3)
    y = InstanceNorm(5, eps=eps, affine=False).double()(x)
    power = power_decomposition(y)
    zero = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(power.p1, zero, atol=1e-8, rtol=0)
    torch.testing.assert_close(power.p2, zero, atol=1e-8, rtol=0)
    var = x.reshape(64, 5, -1).var(-1, correction=0)
    std = torch.sqrt(var / (var + eps))
    torch.testing.assert_close(power.p3, std.mean(0) ** 2, atol=1e-12, rtol=0)
    torch.testing.assert_close(power.p4, std.var(0, correction=0), atol=1e-12, rtol=0)
    if eps <= 1e-5:  # the theorem's values
        torch.testing.assert_close(power.p3, zero + 1, atol=1e-4, rtol=0)
        torch.testing.assert_close(power.p4, zero, atol=1e-8, rtol=0)
    # the input itself carries all four kinds of power
    before = power_decomposition(x)
    for term in (before.p1, before.p2, before.p4):
        assert (term > 1e-3).any()


def test_layer_norm_keeps_instance_mean_power():
    """Contrast with Theorem 2: LN keeps per-channel instance means, so P2 > 0."""
    x = random_input((32, 4, 5, 5), dtype=torch.float64, seed=4)
    power = power_decomposition(LayerNorm(4, affine=False).double()(x))
    assert (power.p2 > 0.05).all()


# ---------------------------------------------------------------- errors


def test_num_groups_must_divide_channels():
    with pytest.raises(ValueError, match="groups") as info:
        GroupNorm(24, num_groups=5)
    assert "5" in str(info.value)
    assert "24" in str(info.value)


def test_group_size_must_divide_channels():
    with pytest.raises(ValueError, match="group size") as info:
        GroupNorm(24, group_size=5)
    assert "5" in str(info.value)
    assert "24" in str(info.value)


@pytest.mark.parametrize("kwargs", [{}, {"num_groups": 4, "group_size": 2}])
def test_exactly_one_of_num_groups_and_group_size(kwargs):
    with pytest.raises(ValueError, match="exactly one of num_groups and group_size"):
        GroupNorm(8, **kwargs)


@pytest.mark.parametrize("kwargs", [{"num_groups": 0}, {"group_size": -1}, {"num_groups": 2.0}])
def test_groups_must_be_positive_integers(kwargs):
    with pytest.raises(ValueError, match="positive integer"):
        GroupNorm(8, **kwargs)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (GroupNorm(4, num_groups=4), (2, 4)),
        (GroupNorm(4, group_size=1), (2, 4, 1, 1)),
        (LayerNorm(1), (3, 1)),
        (InstanceNorm(3), (2, 3, 1)),
        (InstanceNorm(3), (2, 3, 1, 1)),
    ],
)
def test_one_value_per_group_raises(layer, shape):
    with pytest.raises(ValueError, match="more than one value per group") as info:
        layer(torch.randn(shape))
    assert str(tuple(shape)) in str(info.value)


def test_instance_norm_needs_spatial_dims():
    with pytest.raises(ValueError, match="spatial") as info:
        InstanceNorm(3)(torch.randn(4, 3))
    assert "(4, 3)" in str(info.value)
