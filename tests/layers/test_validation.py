"""Every mistake in building or feeding a layer is a clear error: a table of probes.

Arguments (ε, momentum, channel and group counts) are checked at construction by the shared
validators of :mod:`normlab._checks`; inputs (rank, channels, a missing batch dim, dtype) at the
forward. Each probe asserts the error type and that the message names the argument (or the layer)
and the valid range or choices; the edge values just inside the ranges still build and run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normlab import scheme
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

C = 4

# every layer that takes ε, built with ``eps`` (channels C, 3×3 convs C -> C)
EPS_LAYERS = {
    "BatchNorm": lambda eps: BatchNorm(C, eps=eps),
    "BatchNorm-ghost": lambda eps: BatchNorm(C, eps=eps, norm_batch_size=2),
    "SyncBatchNorm": lambda eps: SyncBatchNorm(C, eps=eps),
    "GroupNorm": lambda eps: GroupNorm(C, num_groups=2, eps=eps),
    "LayerNorm": lambda eps: LayerNorm(C, eps=eps),
    "InstanceNorm": lambda eps: InstanceNorm(C, eps=eps),
    "VarianceNorm": lambda eps: VarianceNorm(C, eps=eps),
    "FilterResponseNorm": lambda eps: FilterResponseNorm(C, eps=eps),
    "FilterResponseNorm-learned": lambda eps: FilterResponseNorm(C, eps=eps, learnable_eps=True),
    "EvoNormB0": lambda eps: EvoNormB0(C, eps=eps),
    "EvoNormS0": lambda eps: EvoNormS0(C, num_groups=2, eps=eps),
    "ProxyNormAct": lambda eps: ProxyNormAct(C, eps=eps),
    "WSConv2d": lambda eps: WSConv2d(C, C, 3, padding=1, eps=eps),
    "ScaledWSConv2d": lambda eps: ScaledWSConv2d(C, C, 3, padding=1, act="relu", eps=eps),
    "WNConv2d": lambda eps: WNConv2d(C, C, 3, padding=1, eps=eps),
    "CWNConv2d": lambda eps: CWNConv2d(C, C, 3, padding=1, eps=eps),
}

# (value, error type): out of (0, 1], not finite, or not a number at all
BAD_EPS = [
    (math.inf, ValueError),
    (1e30, ValueError),
    (-1, ValueError),
    (math.nan, ValueError),
    (0.0, ValueError),
    (1.5, ValueError),
    (-math.inf, ValueError),
    ("1e-5", TypeError),
    (True, TypeError),
    (None, TypeError),
    (torch.tensor(1e-5), TypeError),
    ([1e-5], TypeError),
]
GOOD_EPS = [1e-12, 1e-5, 1.0, 1, np.float32(1e-3)]


def _run(layer: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(4, C, 5, 5, generator=torch.Generator().manual_seed(0))
    return layer(x)


@pytest.mark.parametrize("name", list(EPS_LAYERS))
@pytest.mark.parametrize(("eps", "error"), BAD_EPS, ids=lambda v: repr(v)[:12])
def test_bad_eps_names_the_value_and_the_range(name, eps, error):
    with pytest.raises(error) as info:
        EPS_LAYERS[name](eps)
    message = str(info.value)
    assert message.startswith("eps must be a finite number in (0, 1], got ")
    assert repr(eps) in message


@pytest.mark.parametrize("name", list(EPS_LAYERS))
@pytest.mark.parametrize("eps", GOOD_EPS, ids=repr)
def test_eps_edges_build_and_run(name, eps):
    layer = EPS_LAYERS[name](eps)
    assert layer.eps == float(eps)
    assert isinstance(layer.eps, float)
    assert bool(torch.isfinite(_run(layer)).all())


def test_type_errors_are_also_value_errors():
    """Callers written against the ValueError of an out-of-range value catch a wrong type too
    (the model builders, which name the failing layer, catch ValueError)."""
    with pytest.raises(ValueError, match="a str"):
        BatchNorm(C, eps="1e-5")
    assert issubclass(ArgumentTypeError, TypeError)
    assert issubclass(ArgumentTypeError, ValueError)


MOMENTUM_LAYERS = {
    "BatchNorm": lambda m: BatchNorm(C, momentum=m),
    "VarianceNorm": lambda m: VarianceNorm(C, momentum=m),
    "EvoNormB0": lambda m: EvoNormB0(C, momentum=m),
    "SyncBatchNorm": lambda m: SyncBatchNorm(C, momentum=m),
}


@pytest.mark.parametrize("name", list(MOMENTUM_LAYERS))
@pytest.mark.parametrize(
    ("momentum", "error"),
    [
        (-0.1, ValueError),
        (1.5, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.1", TypeError),
        (True, TypeError),
        (torch.tensor(0.1), TypeError),
    ],
    ids=lambda v: repr(v)[:12],
)
def test_bad_momentum_names_the_value_and_the_range(name, momentum, error):
    with pytest.raises(error) as info:
        MOMENTUM_LAYERS[name](momentum)
    message = str(info.value)
    assert "momentum must be None or a finite number in [0, 1]" in message
    assert repr(momentum) in message


@pytest.mark.parametrize("name", list(MOMENTUM_LAYERS))
@pytest.mark.parametrize("momentum", [0, 0.0, 1, 1.0, 0.5, None])
def test_momentum_edges_build_and_run(name, momentum):
    layer = MOMENTUM_LAYERS[name](momentum)
    assert layer.momentum == (None if momentum is None else float(momentum))
    _run(layer)
    assert bool(torch.isfinite(layer.running_var).all())


# -- counts: channels, groups, ghost-batch size, PN's points ---------------------------------

# name -> (build from the value, the argument named, what None does: False an error naming the
# argument, True the default, or the words of another error)
COUNT_PROBES = {
    "BatchNorm": (lambda v: BatchNorm(v), "num_channels", False),
    "GroupNorm": (lambda v: GroupNorm(v, num_groups=1), "num_channels", False),
    "LayerNorm": (lambda v: LayerNorm(v), "num_channels", False),
    "InstanceNorm": (lambda v: InstanceNorm(v), "num_channels", False),
    "VarianceNorm": (lambda v: VarianceNorm(v), "num_channels", False),
    "FilterResponseNorm": (lambda v: FilterResponseNorm(v), "num_channels", False),
    "EvoNormB0": (lambda v: EvoNormB0(v), "num_channels", False),
    "EvoNormS0": (lambda v: EvoNormS0(v, num_groups=1), "num_channels", False),
    "SyncBatchNorm": (lambda v: SyncBatchNorm(v), "num_channels", False),
    "Act": (lambda v: Act(v), "num_channels", False),
    "TLU": (lambda v: TLU(v), "num_channels", False),
    "GainedAct": (lambda v: GainedAct(v), "num_channels", False),
    "ProxyNormAct": (lambda v: ProxyNormAct(v), "num_channels", False),
    "GroupNorm-groups": (lambda v: GroupNorm(8, num_groups=v), "num_groups", "exactly one of"),
    "GroupNorm-size": (lambda v: GroupNorm(8, group_size=v), "group_size", "exactly one of"),
    "EvoNormS0-groups": (lambda v: EvoNormS0(8, num_groups=v), "num_groups", True),
    "BatchNorm-ghost": (lambda v: BatchNorm(8, norm_batch_size=v), "norm_batch_size", True),
    "ProxyNormAct-points": (
        lambda v: ProxyNormAct(8, method="reference", points=v),
        "points",
        False,
    ),
}
BAD_COUNTS = [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)]
BAD_COUNTS += [("4", TypeError), (None, TypeError)]


@pytest.mark.parametrize("name", list(COUNT_PROBES))
@pytest.mark.parametrize(("value", "error"), BAD_COUNTS, ids=repr)
def test_bad_counts_name_the_argument(name, value, error):
    build, argument, optional = COUNT_PROBES[name]
    if value is None and optional is True:
        build(None)  # None means "not given" (the default)
        return
    if value is None and optional:
        with pytest.raises(ValueError, match=optional):
            build(None)
        return
    with pytest.raises(error) as info:
        build(value)
    message = str(info.value)
    assert f"{argument} must be a positive integer, got {value!r}" in message


# the smallest valid count where it is not 1: the reference estimator needs two quantiles (one
# gives a zero variance), which proxy_moments checks when the layer runs
COUNT_EDGES = {"ProxyNormAct-points": 2}


@pytest.mark.parametrize("name", list(COUNT_PROBES))
def test_count_edges_build_and_run(name):
    build, _, _ = COUNT_PROBES[name]
    layer = build(COUNT_EDGES.get(name, 1))
    channels = getattr(layer, "num_channels", 1)
    out = layer(torch.randn(4, channels, 3, 3))
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: GroupNorm(8, num_groups=3), ["3 groups do not divide 8 channels"]),
        (lambda: GroupNorm(8, group_size=3), ["group size of 3", "divide 8 channels"]),
        (lambda: EvoNormS0(6, num_groups=4), ["4 groups do not divide 6 channels"]),
        (lambda: GroupNorm(8, num_groups=2, group_size=4), ["exactly one of num_groups"]),
        (lambda: ProxyNormAct(8, method="grid"), ["valid choices: exact, reference"]),
    ],
)
def test_groups_and_choices(build, words):
    with pytest.raises(ValueError) as info:  # noqa: PT011 (the words are checked below)
        build()
    for word in words:
        assert word in str(info.value)


def test_numpy_integers_are_integers():
    layer = GroupNorm(np.int64(8), num_groups=np.int32(2))
    assert (layer.num_channels, layer.num_groups) == (8, 2)
    assert type(layer.num_channels) is int


# -- inputs: a missing batch dim, dtypes ------------------------------------------------------

INPUT_LAYERS = {
    "BatchNorm": lambda: BatchNorm(C),
    "BatchNorm-eval": lambda: BatchNorm(C).eval(),
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
    "GainedAct": lambda: GainedAct(C),
    "ProxyNormAct": lambda: ProxyNormAct(C),
    "NormAct-bn": lambda: scheme("bn").norm_act(C),
    "NormAct-gn+pn": lambda: scheme("gn2+pn").norm_act(C),
    "NormAct-ln+pn": lambda: scheme("ln+pn").norm_act(C),
    "NormAct-vn+pn": lambda: scheme("vn+pn").norm_act(C),
    "NormAct-frn": lambda: scheme("frn").norm_act(C),
}
CONVS = {
    "WSConv2d": lambda: WSConv2d(C, C, 3),
    "ScaledWSConv2d": lambda: ScaledWSConv2d(C, C, 3, act="relu"),
    "WNConv2d": lambda: WNConv2d(C, C, 3),
    "CWNConv2d": lambda: CWNConv2d(C, C, 3),
}


def _layer_class(layer: torch.nn.Module) -> str:
    return type(getattr(layer, "norm", layer)).__name__


@pytest.mark.parametrize("name", list(INPUT_LAYERS))
@pytest.mark.parametrize("shape", [(C, 32, 32), (C, 7)])
def test_unbatched_input_says_so(name, shape):
    layer = INPUT_LAYERS[name]()
    with pytest.raises(ValueError, match="looks unbatched") as info:
        layer(torch.randn(shape))
    message = str(info.value)
    assert _layer_class(layer) in message
    assert str(shape) in message
    assert "x.unsqueeze(0)" in message
    assert f"C = {C}" in message
    assert bool(torch.isfinite(layer(torch.randn(shape).unsqueeze(0).expand(2, *shape))).all())


@pytest.mark.parametrize("name", list(INPUT_LAYERS))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_inputs_are_type_errors(name, dtype):
    layer = INPUT_LAYERS[name]()
    x = torch.ones(2, C, 5, 5, dtype=dtype)
    with pytest.raises(TypeError, match="supports floating-point inputs") as info:
        layer(x)
    message = str(info.value)
    assert _layer_class(layer) in message
    assert f"dtype {str(dtype).removeprefix('torch.')}" in message
    assert "float16, bfloat16, float32, float64" in message


@pytest.mark.parametrize("name", [*INPUT_LAYERS, *CONVS])
def test_complex_inputs_are_type_errors(name):
    layer = {**INPUT_LAYERS, **CONVS}[name]()
    x = torch.randn(2, C, 5, 5, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"supports floating-point inputs.*dtype complex64"):
        layer(x)


@pytest.mark.parametrize("name", [*INPUT_LAYERS, *CONVS])
def test_wider_input_than_the_parameters_is_a_type_error(name):
    layer = {**INPUT_LAYERS, **CONVS}[name]()
    if name == "GainedAct":  # no parameters: any floating dtype is its own
        assert layer(torch.randn(2, C, 5, 5, dtype=torch.float64)).dtype == torch.float64
        return
    with pytest.raises(TypeError, match="holds float32 parameters but got a float64 input"):
        layer(torch.randn(2, C, 5, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="holds float64 parameters but got a float32 input"):
        layer.double()(torch.randn(2, C, 5, 5))


@pytest.mark.parametrize("name", list(INPUT_LAYERS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_to_float32_layers_run(name, dtype):
    """float16 and bfloat16 activations into float32 normalizers, as torch's kernels take them
    (mixed-precision training)."""
    layer = INPUT_LAYERS[name]()
    out = layer(torch.randn(4, C, 5, 5).to(dtype))
    assert out.dtype in (dtype, torch.float32)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_inputs_match_the_weight_dtype_outside_autocast(name):
    conv = CONVS[name]()
    with pytest.raises(TypeError, match=f"{name} holds float32 parameters but got a bfloat16"):
        conv(torch.randn(2, C, 5, 5, dtype=torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(torch.randn(2, C, 5, 5)).dtype == torch.bfloat16
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        conv([[1.0]])


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": -3}, "in_channels"),
        ({"in_channels": 2.5}, "in_channels"),
        ({"out_channels": 0}, "out_channels"),
        ({"out_channels": True}, "out_channels"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": (3, 0)}, "kernel_size"),
        ({"kernel_size": "3"}, "kernel_size"),
        ({"stride": 0}, "stride"),
        ({"dilation": 0}, "dilation"),
        ({"padding": -1}, "padding"),
        ({"padding": "full"}, "padding"),
        ({"groups": 0}, "groups"),
        ({"groups": 3}, "groups=3 does not divide in_channels=4"),
    ],
)
@pytest.mark.parametrize("cls", [WSConv2d, ScaledWSConv2d, WNConv2d, CWNConv2d])
def test_weight_space_conv_arguments(cls, kwargs, argument):
    arguments = {"in_channels": 4, "out_channels": 6, "kernel_size": 3} | kwargs
    with pytest.raises(ValueError) as info:  # noqa: PT011 (the message is checked below)
        cls(**arguments)
    message = str(info.value)
    assert argument in message
    assert (
        "positive integer" in message
        or "integer >= 0" in message
        or "divide" in message
        or ("valid choices: same, valid" in message)
    )


@pytest.mark.parametrize("cls", [WSConv2d, ScaledWSConv2d, WNConv2d, CWNConv2d])
def test_weight_space_conv_edges_build_and_run(cls):
    for args, kwargs in [
        ((1, 1, 1), {}),
        ((4, 6, (1, 3)), {"padding": (0, 1), "stride": (1, 2)}),
        ((4, 4, 3), {"padding": "same", "groups": 4}),
        ((4, 2, 3), {"padding": 0, "dilation": 2, "bias": False}),
    ]:
        conv = cls(*args, **kwargs)
        x = torch.randn(2, args[0], 7, 7)
        assert bool(torch.isfinite(conv(x)).all())
    assert cls(4, 4, 3, 1, 1, 1, 1, False).bias is None  # Conv2d's positional bias
