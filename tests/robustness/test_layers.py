"""Layers fed and built wrongly (beyond tests/layers/test_validation.py, which covers ε, momentum,
counts, a missing batch dim and dtypes): inputs on another device, not tensors, too small for a
kernel; flags that are not booleans; conv sizes that are not an int or a pair; and, driven by
hypothesis, normalized outputs that are checked, not only run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normlab
from normlab import proxy_moments, scheme
from normlab._checks import ArgumentTypeError
from normlab.layers import (
    TLU,
    Act,
    BatchNorm,
    CWNConv2d,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GainedAct,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    ProxyNormAct,
    ScaledWSConv2d,
    SyncBatchNorm,
    VarianceNorm,
    WNConv2d,
    WSConv2d,
)

from .probes import check, clear_error, ids

C = 4

LAYERS = {
    "BatchNorm": lambda: BatchNorm(C),
    "BatchNorm-ghost": lambda: BatchNorm(C, norm_batch_size=2),
    "SyncBatchNorm": lambda: SyncBatchNorm(C),
    "GroupNorm": lambda: GroupNorm(C, num_groups=2),
    "LayerNorm": lambda: LayerNorm(C),
    "InstanceNorm": lambda: InstanceNorm(C),
    "VarianceNorm": lambda: VarianceNorm(C),
    "FilterResponseNorm": lambda: FilterResponseNorm(C),
    "EvoNormB0": lambda: EvoNormB0(C),
    "EvoNormS0": lambda: EvoNormS0(C, num_groups=2),
    "Act": lambda: Act(C),
    "TLU": lambda: TLU(C),
    "ProxyNormAct": lambda: ProxyNormAct(C),
    "NormAct-bn": lambda: scheme("bn").norm_act(C),
    "NormAct-gn2+pn": lambda: scheme("gn2+pn").norm_act(C),
    "NormAct-ln+pn": lambda: scheme("ln+pn").norm_act(C),
    "NormAct-frn": lambda: scheme("frn").norm_act(C),
    "WSConv2d": lambda: WSConv2d(C, C, 3),
    "ScaledWSConv2d": lambda: ScaledWSConv2d(C, C, 3, act="relu"),
    "WNConv2d": lambda: WNConv2d(C, C, 3),
    "CWNConv2d": lambda: CWNConv2d(C, C, 3),
}


def _name(layer: torch.nn.Module) -> str:
    return type(getattr(layer, "norm", layer)).__name__


@pytest.mark.parametrize("name", list(LAYERS))
def test_an_input_on_another_device_names_both_devices(name):
    layer = LAYERS[name]()
    x = torch.randn(2, C, 5, 5, device="meta")
    check(
        lambda: layer(x),
        ValueError,
        (_name(layer), "holds its parameters on cpu but got an input on meta", "x.to('cpu')"),
    )


def test_a_layer_without_parameters_runs_on_any_device():
    out = GainedAct(C)(torch.randn(2, C, 5, 5, device="meta"))
    assert out.device.type == "meta"
    assert out.shape == (2, C, 5, 5)


NOT_TENSORS = [np.zeros((2, C, 5, 5), np.float32), None, [[1.0]], 3.0]


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("x", NOT_TENSORS, ids=lambda v: type(v).__name__)
def test_a_non_tensor_input_is_a_type_error(name, x):
    layer = LAYERS[name]()
    check(lambda: layer(x), TypeError, (_name(layer), "expects a torch.Tensor", type(x).__name__))


CONVS = ["WSConv2d", "ScaledWSConv2d", "WNConv2d", "CWNConv2d"]


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.parametrize(
    ("shape", "words"),
    [
        ((2, C, 2, 5), "too small for its 3x3 kernel: its height 2"),
        ((2, C, 5, 1), "its width 1 padded by 0 on each side is below the 3"),
        ((2, C, 0, 5), "its height 0"),
        ((2, C, 5, 5, 5), "expects an input of shape (N, C, H, W) with C = 4, got a 5-d"),
        ((2, C), "got a 2-d tensor of shape (2, 4)"),
        ((2, 3, 5, 5), "was built for 4 input channels but got an input with 3 channels"),
    ],
    ids=ids,
)
def test_conv_inputs_of_the_wrong_shape_say_what_was_expected(name, shape, words):
    conv = LAYERS[name]()
    check(lambda: conv(torch.randn(shape)), ValueError, (name, words))


@pytest.mark.parametrize("name", CONVS)
def test_conv_edges_run_and_keep_torchs_shapes(name):
    """The smallest input the kernel fits, an unbatched image and padding: torch's shapes."""
    conv = LAYERS[name]()
    assert conv(torch.randn(2, C, 3, 3)).shape == (2, C, 1, 1)
    assert conv(torch.randn(C, 3, 3)).shape == (C, 1, 1)
    padded = type(conv)(C, C, 3, padding=1) if name != "ScaledWSConv2d" else None
    if padded is not None:
        assert padded(torch.randn(2, C, 1, 1)).shape == (2, C, 1, 1)


AFFINE_LAYERS = {
    "BatchNorm": lambda a: BatchNorm(C, affine=a),
    "GroupNorm": lambda a: GroupNorm(C, num_groups=2, affine=a),
    "LayerNorm": lambda a: LayerNorm(C, affine=a),
    "InstanceNorm": lambda a: InstanceNorm(C, affine=a),
    "VarianceNorm": lambda a: VarianceNorm(C, affine=a),
    "FilterResponseNorm": lambda a: FilterResponseNorm(C, affine=a),
    "EvoNormB0": lambda a: EvoNormB0(C, affine=a),
    "scheme.norm": lambda a: scheme("gn2").norm(C, affine=a),
}


@pytest.mark.parametrize("name", list(AFFINE_LAYERS))
@pytest.mark.parametrize("value", ["no", 0, None], ids=ids)
def test_affine_must_be_a_bool(name, value):
    """ "no" would be truthy: an affine the caller turned off would be there."""
    check(
        lambda: AFFINE_LAYERS[name](value),
        ArgumentTypeError,
        ("affine must be True or False", repr(value)),
    )


@pytest.mark.parametrize("name", list(AFFINE_LAYERS))
def test_affine_flags_build_what_they_say(name):
    assert AFFINE_LAYERS[name](False).weight is None
    assert AFFINE_LAYERS[name](True).weight is not None


@pytest.mark.parametrize("argument", ["kernel_size", "stride", "padding", "dilation"])
@pytest.mark.parametrize("value", [(3,), (1, 1, 1), []], ids=ids)
def test_a_conv_size_is_an_int_or_a_pair(argument, value):
    """(3,) used to build a Conv2d with a 1-d kernel that fails only in its forward."""
    arguments = {"kernel_size": 3} | {argument: value}
    check(
        lambda: WSConv2d(C, C, **arguments),
        ValueError,
        (argument, "or a pair of them (height, width)", repr(value)),
    )


@pytest.mark.parametrize("value", ["yes", 1, 0.0], ids=ids)
def test_scheme_conv_bias_must_be_a_bool_or_none(value):
    check(lambda: scheme("bn").conv(C, C, 3, bias=value), ArgumentTypeError, "bias must be")


@pytest.mark.parametrize("value", ["no", 0, None], ids=ids)
def test_set_finite_checks_takes_a_bool(value):
    before = normlab.set_finite_checks(True)
    try:
        check(lambda: normlab.set_finite_checks(value), ArgumentTypeError, "enabled must be")
        assert normlab.set_finite_checks(True) is True  # unchanged by the refused call
    finally:
        normlab.set_finite_checks(before)


@pytest.mark.parametrize("value", ["no", None], ids=ids)
def test_set_compiled_kernels_takes_a_bool(value):
    before = normlab.set_compiled_kernels(True)
    try:
        with clear_error(TypeError, "enabled"):
            normlab.set_compiled_kernels(value)
    finally:
        normlab.set_compiled_kernels(before)


@pytest.mark.parametrize(
    "gamma",
    ["1", None, torch.ones(2, dtype=torch.cfloat), torch.ones(2, dtype=torch.bool)],
    ids=ids,
)
def test_proxy_moments_gamma_is_checked(gamma):
    with clear_error((TypeError, ValueError), "gamma"):
        proxy_moments("relu", gamma, 0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=ids)
@pytest.mark.parametrize("act", ["relu", "tanh", "silu", "elu"])
def test_non_finite_tensor_entries_give_nan_moments_where_they_are(value, act):
    """Documented propagation (no read-back per call): NaN at the entry, exact elsewhere."""
    gamma = torch.tensor([1.0, value], dtype=torch.float64)
    mean, var = proxy_moments(act, gamma, 0.0)
    assert math.isnan(mean[1])
    assert math.isnan(var[1])
    expected = proxy_moments(act, torch.ones(1, dtype=torch.float64), 0.0)
    torch.testing.assert_close((mean[:1], var[:1]), expected)


def test_proxy_moments_of_a_valid_gamma_are_relus():
    """E[relu(Y)] = 1/√(2π), Var = 1/2 - 1/(2π) for Y ~ N(0, 1) (the exact moments)."""
    mean, var = proxy_moments("relu", torch.ones(3, dtype=torch.float64), 0.0)
    torch.testing.assert_close(
        mean, torch.full((3,), 1 / math.sqrt(2 * math.pi), dtype=torch.float64)
    )
    torch.testing.assert_close(var, torch.full((3,), 0.5 - 1 / (2 * math.pi), dtype=torch.float64))


# -- hypothesis: outputs checked, not only run ------------------------------------------------

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.tuples(
    st.integers(2, 5), st.sampled_from([2, 4, 6]), st.integers(2, 5), st.integers(1, 5)
)
scales = st.floats(1e-2, 1e4)
shifts = st.floats(-1e3, 1e3)


def _normalized(layer, x, dims):
    """The output's mean and variance over ``dims``, and the variance expected: σ²/(σ² + ε)."""
    out = layer(x).double()
    var, mean = torch.var_mean(out, dim=dims, correction=0)
    spread = x.var(dim=dims, correction=0)
    return mean, var, spread / (spread + layer.eps)


@FAST
@given(shape=shapes, scale=scales, shift=shifts)
def test_group_norm_output_has_zero_mean_and_unit_variance_per_group(shape, scale, shift):
    n, c = shape[:2]
    x = torch.randn(shape, dtype=torch.float64) * scale + shift
    layer = GroupNorm(c, num_groups=2, affine=False, eps=1e-12).double()
    out = layer(x).reshape(n, 2, -1)
    var, mean = torch.var_mean(out, dim=2, correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
    spread = x.reshape(n, 2, -1).var(dim=2, correction=0)
    torch.testing.assert_close(var, spread / (spread + 1e-12), atol=1e-6, rtol=0)


@FAST
@given(shape=shapes, scale=scales, shift=shifts)
def test_batch_norm_output_has_zero_mean_and_unit_variance_per_channel(shape, scale, shift):
    x = torch.randn(shape, dtype=torch.float64) * scale + shift
    layer = BatchNorm(shape[1], affine=False, eps=1e-12).double()
    mean, var, expected = _normalized(layer, x, (0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(var, expected, atol=1e-6, rtol=0)


@FAST
@given(shape=shapes, scale=scales)
def test_layer_norm_output_is_normalized_per_input(shape, scale):
    x = torch.randn(shape, dtype=torch.float64) * scale
    layer = LayerNorm(shape[1], affine=False, eps=1e-12).double()
    mean, var, expected = _normalized(layer, x, (1, 2, 3))
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(var, expected, atol=1e-6, rtol=0)


@FAST
@given(eps=st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_eps_builds_a_layer_or_names_the_range(eps):
    if 0 < eps <= 1:
        assert GroupNorm(C, num_groups=2, eps=eps).eps == eps
    else:
        with clear_error(ValueError, "eps must be a finite number in (0, 1]"):
            GroupNorm(C, num_groups=2, eps=eps)


@FAST
@given(channels=st.integers(-5, 12), groups=st.integers(-3, 12))
def test_any_channel_and_group_count_builds_or_says_why(channels, groups):
    if channels < 1:
        with clear_error(ValueError, "num_channels must be a positive integer"):
            GroupNorm(channels, num_groups=max(groups, 1))
    elif groups < 1:
        with clear_error(ValueError, "num_groups must be a positive integer"):
            GroupNorm(channels, num_groups=groups)
    elif channels % groups:
        with clear_error(ValueError, f"{groups} groups do not divide {channels} channels"):
            GroupNorm(channels, num_groups=groups)
    else:
        out = GroupNorm(channels, num_groups=groups)(torch.randn(2, channels, 3, 3))
        assert out.shape == (2, channels, 3, 3)
