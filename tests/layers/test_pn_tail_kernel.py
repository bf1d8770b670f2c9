"""normlab's C++ PN tails (``csrc/pn_tail.cpp``): the whole PN step after any normalizer as one
node (:func:`~normlab.layers.tails.proxy_norm_step`) and the tail alone
(:func:`~normlab.layers.tails.scale_shift_act`), against the Python reference path (the same
layers with the kernels off), the proxy moments' definitions and float64 gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import normlab
from normlab import NonFiniteError, scheme
from normlab.layers import Act, NormAct, ProxyNormAct, compiled
from normlab.layers.activations import TORCH_ACTIVATIONS, get_activation
from normlab.layers.gaussian import SPLIT_SCALE, trapezoid_nodes
from normlab.layers.tails import KERNEL_ACTIVATIONS, kernel_activation, proxy_norm_step

DOUBLE = torch.float64
NORMS = ("bn", "bn/2", "vn", "ln", "in", "gn4")
SMOOTH = ("gelu", "silu", "tanh", "sigmoid", "softplus")

pytestmark = pytest.mark.skipif(
    compiled.kernels("normlab_tails") is None, reason="normlab's C++ tails could not be built here"
)


@pytest.fixture
def reference():
    """Run the body with the kernels off (the Python path), then turn them back on."""

    class Switch:
        def __enter__(self):
            self.previous = compiled.set_compiled_kernels(False)

        def __exit__(self, *exc):
            compiled.set_compiled_kernels(self.previous)

    return Switch()


def build(spec: str, act: str, channels: int = 8, dtype=DOUBLE, seed: int = 0, spread=0.4):
    """A norm + PN layer with PN parameters away from their initial values (|s| < 2)."""
    layer = scheme(spec, act=act).norm_act(channels).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.act.named_parameters():
            noise = torch.rand(p.shape, generator=gen, dtype=dtype) * 2 - 1
            p.copy_(1.0 + spread * noise if name == "gamma" else spread * noise)
    return layer


def forward_backward(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad)
    return out.detach(), grads


def assert_matches_reference(layer, x, grad, reference, rtol, atol):
    out, grads = forward_backward(layer, x, grad)
    with reference:
        ref_out, ref_grads = forward_backward(layer, x, grad)
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol)
    return out


def uses_the_step_node(layer: nn.Module, x: torch.Tensor) -> bool:
    out = layer(x.detach().clone().requires_grad_())
    return "ProxyNormStep" in out.grad_fn.name()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("act", KERNEL_ACTIVATIONS)
@pytest.mark.parametrize("spec", NORMS)
def test_every_normalizer_and_phi_equals_the_python_path(spec, act, channels_last, reference):
    """Values and gradients (x and every parameter) in float64, NCHW and channels-last."""
    layer = build(f"{spec}+pn", act)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, 5, 3, generator=gen, dtype=DOUBLE) * 2 + 0.5
    grad = torch.randn(x.shape, generator=gen, dtype=DOUBLE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert_matches_reference(layer, x, grad, reference, rtol=1e-7, atol=1e-9)
    one_node = act == "relu" or get_activation(act).closed_form is None
    if spec.startswith("gn") or spec in ("ln", "in"):
        # GN + relu-PN has its own node, except on channels-last input
        one_node = one_node and (act != "relu" or channels_last)
    assert uses_the_step_node(layer, x) == one_node


@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "tanh"])
@pytest.mark.parametrize("spec", ["bn", "gn4", "ln"])
def test_float32_equals_the_python_path(spec, act, reference):
    layer = build(f"{spec}+pn", act, channels=16, dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 16, 6, 6, generator=gen)
    grad = torch.randn(x.shape, generator=gen)
    assert_matches_reference(layer, x, grad, reference, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("act", ["relu", *SMOOTH])
def test_step_node_gradcheck(act):
    """The C++ node's hand-written backward against finite differences, in float64."""
    index = KERNEL_ACTIVATIONS.index(act)
    activation = get_activation(act)
    z, w = trapezoid_nodes(
        activation.quadrature_nodes, activation.quadrature_half_width, DOUBLE, torch.device("cpu")
    )
    kernels = compiled.kernels("normlab_tails")
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(3, 4, 2, 3, generator=gen, dtype=DOUBLE).requires_grad_()
    gamma = (0.5 + torch.rand(4, generator=gen, dtype=DOUBLE)).requires_grad_()
    beta, proxy_beta, proxy_gamma = (
        (0.5 * torch.randn(4, generator=gen, dtype=DOUBLE)).requires_grad_() for _ in range(3)
    )

    def step(u, gamma, beta, proxy_beta, proxy_gamma):  # z and the scale a, both outputs
        params = (gamma, beta, proxy_beta, proxy_gamma)
        return tuple(kernels.proxy_norm_step(u, *params, index, z, w, SPLIT_SCALE, 0.03, True))

    assert torch.autograd.gradcheck(step, (u, gamma, beta, proxy_beta, proxy_gamma))


@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "tanh", "elu"])
@pytest.mark.parametrize("spec", ["bn", "gn4", "ln"])
def test_forward_with_scale_is_the_output_and_the_scale_of_eq7(spec, act, reference):
    """NormAct.forward_with_scale: (z, a) equal to (layer(x), a = (Var + ε)^(-1/2)) of the Python
    path, with the gradients of a loss reading both (a's own gradient reaches γ, β, β̃, γ̃
    through the node's Jacobian), in float64; a from the step node itself where it runs."""
    layer = build(f"{spec}+pn", act)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 8, 5, 3, generator=gen, dtype=DOUBLE) * 2 + 0.5
    weights = torch.randn(x.shape, generator=gen, dtype=DOUBLE), torch.randn(8, dtype=DOUBLE)

    def run():
        leaf = x.clone().requires_grad_()
        z, a = layer.forward_with_scale(leaf)
        loss = (z * weights[0]).sum() + (a * weights[1]).sum()
        return z.detach(), a.detach(), torch.autograd.grad(loss, [leaf, *layer.parameters()])

    z, a, grads = run()
    with reference:
        ref_z, ref_a, ref_grads = run()
    torch.testing.assert_close(z, layer(x).detach(), rtol=0, atol=0)
    torch.testing.assert_close(z, ref_z, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(a, layer.act.scale_shift()[0].detach(), rtol=1e-9, atol=0)
    torch.testing.assert_close(a, ref_a, rtol=1e-9, atol=0)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9)
    one_node = act != "elu" and not (act == "relu" and spec != "bn")
    leaf = x.clone().requires_grad_()
    assert ("ProxyNormStep" in layer.forward_with_scale(leaf)[1].grad_fn.name()) == one_node


def test_forward_with_scale_needs_proxy_normalization():
    with pytest.raises(TypeError, match=r"ProxyNormAct.*got Act"):
        scheme("gn4", act="silu").norm_act(8).forward_with_scale(torch.randn(2, 8, 3, 3))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("act", KERNEL_ACTIVATIONS)
def test_scale_shift_act_gradcheck_and_formula(act, channels_last):
    index = KERNEL_ACTIVATIONS.index(act)
    kernels = compiled.kernels("normlab_tails")
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(2, 5, 3, 3, generator=gen, dtype=DOUBLE)
    if channels_last:
        u = u.to(memory_format=torch.channels_last)
    u.requires_grad_()
    scale = (0.5 + torch.rand(5, generator=gen, dtype=DOUBLE)).requires_grad_()
    shift = torch.randn(5, generator=gen, dtype=DOUBLE).requires_grad_()
    out = kernels.scale_shift_act(u, scale, shift, index)
    expected = get_activation(act).fn(u) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    fn = lambda u, a, c: kernels.scale_shift_act(u, a, c, index)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (u, scale, shift))


def torch_phi(act: str):
    return TORCH_ACTIVATIONS[act]()


@pytest.mark.parametrize("act", KERNEL_ACTIVATIONS)
def test_phi_is_torchs_in_float32(act):
    """The kernel's φ and φ' are torch's (softplus with its threshold, gelu's erf form), also at
    the extremes of the range."""
    index = KERNEL_ACTIVATIONS.index(act)
    kernels = compiled.kernels("normlab_tails")
    values = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([-1e4, -88.0, 0.0, 88.0, 1e4])])
    u = values.view(1, -1, 1, 1).repeat(3, 1, 1, 2).requires_grad_()
    ones, zeros = torch.ones(u.shape[1]), torch.zeros(u.shape[1])
    out = kernels.scale_shift_act(u, ones, zeros, index)
    (grad,) = torch.autograd.grad(out.sum(), u)
    ref_u = u.detach().clone().requires_grad_()
    ref = torch_phi(act)(ref_u)
    (ref_grad,) = torch.autograd.grad(ref.sum(), ref_u)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=2e-5, atol=2e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    act=st.sampled_from(("relu", *SMOOTH)),
    gamma=st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=20),
    seed=st.integers(0, 2**16),
)
def test_channel_moments_are_the_exact_ones(act, gamma, seed):
    """a, c, E and the Jacobian ∂(E, Var)/∂(μ, s) of every channel, against the Python exact
    moments (checked against mpmath in test_proxy_moments_range) and their autograd, for any
    |γ(1 + γ̃)| <= 2, on the coarser grids of the smaller scales too."""
    activation = get_activation(act)
    channels = len(gamma)
    gen = torch.Generator().manual_seed(seed)
    g = torch.tensor(gamma, dtype=DOUBLE)
    b = torch.randn(channels, generator=gen, dtype=DOUBLE) * 2
    pb = torch.randn(channels, generator=gen, dtype=DOUBLE) * 0.5
    pg = torch.zeros(channels, dtype=DOUBLE)
    z, w = trapezoid_nodes(
        activation.quadrature_nodes, activation.quadrature_half_width, DOUBLE, torch.device("cpu")
    )
    index = KERNEL_ACTIVATIONS.index(act)
    table = compiled.kernels("normlab_tails").channel_step_table(
        g, b, pb, pg, index, z, w, SPLIT_SCALE, 0.03
    )
    mu = (b + g * pb).requires_grad_()
    s = (g * (1 + pg)).requires_grad_()
    mean, var = activation.moments(mu, s)
    scale = (var + 0.03).rsqrt()
    torch.testing.assert_close(table[:, 0], scale.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(table[:, 1], (-mean * scale).detach(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(table[:, 2], mean.detach(), rtol=1e-9, atol=1e-10)
    for column, (out, wrt) in enumerate(((mean, mu), (mean, s), (var, mu), (var, s)), start=3):
        (expected,) = torch.autograd.grad(out.sum(), wrt, retain_graph=True)
        torch.testing.assert_close(table[:, column], expected, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("act", ["silu", "tanh", "relu"])
def test_far_channels_fall_back_to_the_split(act, reference):
    """A channel with |γ(1 + γ̃)| > 2 (where the trapezoid would be inexact): the layer computes
    the moments in Python (the split) and runs the C++ tail alone, equal to the reference."""
    layer = build("bn+pn", act)
    with torch.no_grad():
        layer.act.gamma[3] = 7.5
    x = torch.randn(4, 8, 3, 3, dtype=DOUBLE)
    params = tuple(layer.act.parameters())
    kernels_none = proxy_norm_step(x, params, layer.act.activation, 0.03, True) is None
    assert kernels_none == (act != "relu")  # relu's closed form serves every scale
    assert_matches_reference(layer, x, torch.randn_like(x), reference, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "tanh"])
@pytest.mark.parametrize("spec", ["bn", "vn", "ln", "gn4"])
def test_pn_keeps_no_more_tensors_alive_than_the_plain_step(spec, act):
    """Issue bar: with the C++ node after any normalizer, PN keeps no more activation-sized
    tensors for backward than the same normalizer + φ."""
    from tests.layers.test_proxy_norm import _saved_activation_bytes

    x = torch.randn(4, 16, 8, 8, requires_grad=True)
    pn = scheme(f"{spec}+pn", act=act).norm_act(16)
    plain = scheme(spec, act=act).norm_act(16)
    assert _saved_activation_bytes(pn, x) <= _saved_activation_bytes(plain, x)


@pytest.mark.parametrize("act", ["silu", "relu"])
def test_nan_entries_propagate_and_parameters_are_named(act):
    layer = build("bn+pn", act, dtype=torch.float32)
    layer.eval()  # running statistics: a NaN stays in its own sample
    x = torch.randn(2, 8, 3, 3)
    x[1, 2, 0, 0] = float("nan")
    out = layer(x.requires_grad_())
    assert out[1, 2, 0, 0].isnan()
    assert out.isnan().sum() == 1
    layer.train()
    with torch.no_grad():
        layer.act.proxy_gamma[5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"proxy_gamma \(1 of 8 entries\)"):
        layer(torch.randn(2, 8, 3, 3))
    previous = normlab.set_finite_checks(False)
    try:
        out = layer(torch.randn(2, 8, 3, 3))
    finally:
        normlab.set_finite_checks(previous)
    assert out[:, 5].isnan().all()
    assert not out[:, :5].isnan().any()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_empty_batch(channels_last):
    """An empty batch: an empty output and gradients that are exactly zero."""
    kernels = compiled.kernels("normlab_tails")
    layer = build("gn4+pn", "silu", dtype=torch.float32)
    params = tuple(layer.act.parameters())
    u = torch.randn(0, 8, 4, 4)
    if channels_last:
        u = u.to(memory_format=torch.channels_last)
    u.requires_grad_()
    z, w = trapezoid_nodes(48, 7.5, DOUBLE, torch.device("cpu"))
    index = KERNEL_ACTIVATIONS.index("silu")
    out, _ = kernels.proxy_norm_step(u, *params, index, z, w, SPLIT_SCALE, 0.03, True)
    assert out.shape == u.shape
    grads = torch.autograd.grad(out.sum(), [u, *params])
    assert grads[0].shape == u.shape
    assert all(bool((g == 0).all()) for g in grads[1:])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    act=st.sampled_from(("relu", "silu", "gelu", "tanh", "elu")),
    batch=st.integers(1, 4),
    group_size=st.integers(1, 4),
    groups=st.integers(1, 3),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_shapes_and_group_layouts(act, batch, group_size, groups, spatial, channels_last, seed):
    """Hypothesis over batch, group layout, rank (N, C), (N, C, L), (N, C, H, W) and memory
    format: the C++ path equals the Python one."""
    channels = groups * group_size
    layer = build(f"gn{groups}+pn", act, channels=channels, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *spatial)
    if group_size * math.prod(spatial) < 2:  # GN needs two values per group and sample
        shape = (*shape, 2)
    x = torch.randn(shape, generator=gen, dtype=DOUBLE)
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=gen, dtype=DOUBLE)
    previous = compiled.set_compiled_kernels(False)
    try:
        ref_out, ref_grads = forward_backward(layer, x, grad)
    finally:
        compiled.set_compiled_kernels(previous)
    out, grads = forward_backward(layer, x, grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-7, atol=1e-9)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9)


def test_the_node_is_first_order_only():
    layer = build("bn+pn", "silu")
    x = torch.randn(4, 8, 3, 3, dtype=DOUBLE, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(layer(x).sum(), x, create_graph=True)


def test_where_the_kernels_do_not_apply_the_python_path_runs():
    """A registered φ, autocast and a device-less mismatch take the Python nodes."""
    custom = get_activation("silu")
    assert kernel_activation(custom) == KERNEL_ACTIVATIONS.index("silu")
    from dataclasses import replace

    assert kernel_activation(replace(custom)) is None  # a modified copy is not the built-in
    layer = NormAct(normlab.layers.BatchNorm(8, affine=False), ProxyNormAct(8, act="silu"))
    x = torch.randn(4, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.to(torch.bfloat16).requires_grad_())
    assert "ProxyNormStep" not in out.grad_fn.name()
    assert isinstance(Act(8, "silu"), Act)


@pytest.mark.parametrize("act", ["relu", "tanh", "silu"])
def test_in_place_where_backward_keeps_the_output(act):
    """With inplace, z overwrites u exactly where the node keeps z (φ' a function of φ), and
    the gradients are those of the out-of-place node."""
    activation = get_activation(act)
    index = KERNEL_ACTIVATIONS.index(act)
    z, w = trapezoid_nodes(
        activation.quadrature_nodes, activation.quadrature_half_width, DOUBLE, torch.device("cpu")
    )
    kernels = compiled.kernels("normlab_tails")
    layer = build("bn+pn", act)
    params = tuple(layer.act.parameters())
    x = torch.randn(3, 8, 4, 4, dtype=DOUBLE, requires_grad=True)
    results = []
    for inplace in (False, True):
        u = x * 1.5  # a fresh intermediate, as a normalizer's output
        out, _ = kernels.proxy_norm_step(u, *params, index, z, w, SPLIT_SCALE, 0.03, True, inplace)
        assert (out.data_ptr() == u.data_ptr()) == (inplace and act != "silu")
        grads = torch.autograd.grad(out.sum(), [x, *params])
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
