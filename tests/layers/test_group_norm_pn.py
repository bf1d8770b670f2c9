"""GN (LN, IN) + relu-PN as one autograd node (Python, and C++ on CPU), against the same step run
as separate nodes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import normlab
from normlab import scheme
from normlab.layers import NormAct, compiled

DOUBLE = torch.float64
FUSED_NODE = "GroupNormThresholdPN"


@pytest.fixture(params=["python", "c++"], autouse=True)
def backend(request):
    """Every test runs on the Python node and on the C++ one (skipped if it cannot be built)."""
    use_cpp = request.param == "c++"
    if use_cpp and compiled.kernels() is None:
        pytest.skip("normlab's C++ kernels could not be built here")
    previous = compiled.set_compiled_kernels(use_cpp)
    yield request.param
    compiled.set_compiled_kernels(previous)


def build(spec: str, channels: int = 8, act: str = "relu", dtype=DOUBLE) -> NormAct:
    layer = scheme(spec, act=act).norm_act(channels).to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in layer.act.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=dtype)
            p.copy_(1.0 + 0.4 * noise if name == "gamma" else 0.3 * noise)
    return layer


def node_name(out: torch.Tensor) -> str:
    return out.grad_fn.name()


def is_fused(out: torch.Tensor) -> bool:
    return FUSED_NODE in node_name(out)


def gradients(layer: NormAct, x: torch.Tensor, grad_out: torch.Tensor, unfused: bool = False):
    """Output and gradients w.r.t. x (when it requires them) and every parameter."""
    out = layer.act(layer.norm(x)) if unfused else layer(x)
    inputs = ([x] if x.requires_grad else []) + list(layer.parameters())
    return out, torch.autograd.grad((out * grad_out).sum(), inputs)


@pytest.mark.parametrize("spec", ["gn4+pn", "gn/2+pn", "ln+pn", "in+pn"])
def test_training_runs_one_node_equal_to_the_separate_steps(spec):
    layer = build(spec)
    x = (3.0 * torch.randn(4, 8, 5, 5, dtype=DOUBLE) + 1.0).requires_grad_()
    grad_out = torch.randn(x.shape, dtype=DOUBLE)
    out, grads = gradients(layer, x, grad_out)
    assert is_fused(out)
    expected, expected_grads = gradients(layer, x, grad_out, unfused=True)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_input_without_gradient_still_trains_the_parameters():
    layer = build("gn4+pn")
    x = torch.randn(2, 8, 4, 4, dtype=DOUBLE)
    grad_out = torch.randn(x.shape, dtype=DOUBLE)
    _, grads = gradients(layer, x, grad_out)
    _, expected = gradients(layer, x, grad_out, unfused=True)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    layer = build("gn2+pn", channels=4)
    x = torch.randn(2, 4, 3, 3, dtype=DOUBLE, requires_grad=True)
    params = list(layer.act.parameters())
    assert is_fused(layer(x))
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params))


def test_channels_last_input_matches_contiguous():
    layer = build("gn4+pn")
    x = torch.randn(2, 8, 5, 5, dtype=DOUBLE)
    grad_out = torch.randn(x.shape, dtype=DOUBLE)
    last = x.to(memory_format=torch.channels_last).requires_grad_()
    out, grads = gradients(layer, last, grad_out)
    expected, expected_grads = gradients(layer, x.clone().requires_grad_(), grad_out)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("spec", "act", "why"),
    [
        ("gn4+pn", "gelu", "φ has no threshold form"),
        ("bn+pn", "relu", "not a group normalizer"),
    ],
)
def test_other_steps_are_not_fused_into_one_node(spec, act, why):
    layer = build(spec, act=act)
    out = layer(torch.randn(4, 8, 3, 3, dtype=DOUBLE, requires_grad=True))
    assert not is_fused(out), why


def test_reference_moments_and_no_grad_use_the_plan():
    layer = build("gn4+pn")
    reference = copy.deepcopy(layer)
    reference.act.method = "reference"
    x = torch.randn(2, 8, 3, 3, dtype=DOUBLE, requires_grad=True)
    assert not is_fused(reference(x))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.act(layer.norm(x)))


def test_autocast_falls_back_to_the_separate_steps():
    layer = build("gn4+pn", dtype=torch.float32)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        expected = layer.act(layer.norm(x))
    assert not is_fused(out)
    torch.testing.assert_close(out, expected)


def test_float32_matches_the_double_computation():
    """The C++ node folds in double; both nodes agree with a float64 run to float32 accuracy."""
    layer = build("gn4+pn", dtype=torch.float32)
    x = (2.0 * torch.randn(4, 8, 6, 6) + 0.5).requires_grad_()
    grad_out = torch.randn(x.shape)
    out, grads = gradients(layer, x, grad_out)
    wide = copy.deepcopy(layer).double()
    x64 = x.detach().double().requires_grad_()
    expected, expected_grads = gradients(wide, x64, grad_out.double())
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_double_backward_is_refused():
    layer = build("gn4+pn")
    x = torch.randn(2, 8, 3, 3, dtype=DOUBLE, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)


@pytest.mark.parametrize("name", ["gamma", "proxy_gamma"])
def test_non_finite_parameters_raise_and_name_the_parameter(name):
    layer = build("gn4+pn")
    with torch.no_grad():
        getattr(layer.act, name)[1] = float("nan")
    x = torch.randn(2, 8, 3, 3, dtype=DOUBLE, requires_grad=True)
    with pytest.raises(ValueError, match=rf"non-finite parameters: {name} \(1 of 8 entries\)"):
        layer(x)
    previous = normlab.set_finite_checks(False)
    try:
        assert not bool(torch.isfinite(layer(x)).all())
    finally:
        normlab.set_finite_checks(previous)


def test_nan_inputs_propagate_like_torch():
    """A NaN in x gives NaN outputs (GN spreads it over its group) and NaN gradients, as
    torch's GroupNorm + ReLU do: nothing is silently clamped away."""
    layer = build("gn4+pn")
    x = torch.randn(2, 8, 3, 3, dtype=DOUBLE)
    x[0, 0, 1, 1] = float("nan")
    x.requires_grad_()
    out = layer(x)
    assert bool(out[0, :2].isnan().all())
    assert bool(torch.isfinite(out[1]).all())
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert bool(grad[0, :2].isnan().any())


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 4]),
    per_group=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_any_shape_matches_the_python_node(backend, batch, groups, per_group, spatial, seed):
    """Ranks 2 to 5, any group layout: the C++ node equals the Python node (float64)."""
    if backend == "python":
        pytest.skip("compares the C++ node with the Python one")
    channels = groups * per_group
    assume(per_group * math.prod(spatial) >= 2)  # GroupNorm needs several values per group
    torch.manual_seed(seed)
    layer = build(f"gn{groups}+pn", channels=channels)
    x = torch.randn(batch, channels, *spatial, dtype=DOUBLE, requires_grad=True)
    grad_out = torch.randn(x.shape, dtype=DOUBLE)
    out, grads = gradients(layer, x, grad_out)
    previous = compiled.set_compiled_kernels(False)
    try:
        expected, expected_grads = gradients(layer, x, grad_out)
    finally:
        compiled.set_compiled_kernels(previous)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
