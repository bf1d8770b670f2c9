"""normlab's fused autograd nodes (the C++ and Python GN+PN nodes, ThresholdFold, the tails
_ChannelMax and _ScaleShiftAct) and the standard-op formulation that tracers see in their place:
equal values and gradients, gradcheck, torch.compile against the eager node, data-reading checks
skipped while tracing, no traced tensor left in a cache, and empty batches."""

from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch
from torch import nn

import normlab
from normlab import _checks, scheme
from normlab.layers import TLU, ProxyNormAct, compiled, gaussian
from normlab.layers.tails import channel_max, scale_shift_act

DOUBLE = torch.float64
PN_SPECS = ["gn2+pn", "ln+pn", "in+pn", "bn+pn"]


def pretend_tracing(patch: pytest.MonkeyPatch) -> None:
    """Run normlab's layers as a tracer would see them, on real tensors (so that autograd,
    gradcheck and the eager nodes can be compared): every module's ``tracing()`` returns True."""
    original = _checks.tracing
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("normlab") and (
            getattr(module, "tracing", None) is original
        ):
            patch.setattr(module, "tracing", lambda: True)


@pytest.fixture
def traced(monkeypatch):
    pretend_tracing(monkeypatch)


@pytest.fixture(params=["python", "c++"])
def eager_node(request):
    """The eager fused GN+PN node: Python, or C++ (skipped where it cannot be built)."""
    use_cpp = request.param == "c++"
    if use_cpp and compiled.kernels() is None:
        pytest.skip("normlab's C++ kernels could not be built here")
    previous = compiled.set_compiled_kernels(use_cpp)
    yield request.param
    compiled.set_compiled_kernels(previous)


def build(spec: str, channels: int = 4, act: str = "relu", dtype=DOUBLE, **kwargs) -> nn.Module:
    layer = scheme(spec, act=act).norm_act(channels).to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=dtype)
            p.copy_(1.0 + 0.4 * noise if name.endswith("gamma") else 0.3 * noise)
    for key, value in kwargs.items():
        setattr(layer.act, key, value)
    return layer


def autograd_nodes(out: torch.Tensor) -> set[str]:
    """Names of every node of ``out``'s backward graph."""
    seen, stack, names = set(), [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(fn.name())
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return names


def is_custom(name: str) -> bool:
    """A hand-written node: a Python autograd.Function or normlab's C++ one."""
    custom = ("GroupNormThresholdPN", "ThresholdFold", "_ChannelMax", "_ScaleShiftAct")
    return "CppNode" in name or any(part in name for part in (*custom, "_ClosedFormMoments"))


def gradients(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    out = layer(x)
    inputs = [x, *layer.parameters()]
    return out, torch.autograd.grad((out * grad_out).sum(), inputs)


def traced_gradients(layer, x, grad_out, monkeypatch):
    with monkeypatch.context() as patch:
        pretend_tracing(patch)
        return gradients(layer, x, grad_out)


# -- the traced formulation ------------------------------------------------------------------


CASES = [
    *[(spec, "relu", {}) for spec in PN_SPECS],
    ("gn2+pn", "relu", {"method": "reference"}),  # relu without the fold: the shifted max
    ("gn2+pn", "gelu", {}),  # quadrature moments, the scale-shift tail
    ("bn+pn", "leaky_relu", {}),  # closed-form moments through _ClosedFormMoments
    ("frn", "relu", {}),  # TLU: the channel max with true partials
]


@pytest.mark.parametrize(("spec", "act", "options"), CASES)
def test_traced_step_equals_the_eager_nodes(spec, act, options, eager_node, monkeypatch):
    """Standard ops only (no hand-written node), same values and gradients as the eager path."""
    layer = build(spec, act=act, **options)
    x = (2.0 * torch.randn(3, 4, 5, 5, dtype=DOUBLE) + 0.5).requires_grad_()
    grad_out = torch.randn(x.shape, dtype=DOUBLE)
    out, grads = gradients(layer, x, grad_out)
    traced_out, traced_grads = traced_gradients(layer, x, grad_out, monkeypatch)
    assert any(is_custom(name) for name in autograd_nodes(out))
    assert not any(is_custom(name) for name in autograd_nodes(traced_out))
    torch.testing.assert_close(traced_out, out, rtol=1e-10, atol=1e-12)
    for got, want in zip(traced_grads, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("spec", "act", "options"), CASES)
def test_traced_step_gradcheck(spec, act, options, traced):
    layer = build(spec, act=act, **options)
    x = torch.randn(2, 4, 3, 3, dtype=DOUBLE, requires_grad=True)
    params = list(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *params), fast_mode=True)


@pytest.mark.parametrize("shift", [False, True])
def test_traced_channel_max_has_the_eager_partials(shift, traced):
    """max(u, c) away from ties: ∂/∂c = 1[u < c], or Σ grad with shift=True (c + relu(u - c̄))."""
    u = torch.randn(3, 4, 5, dtype=DOUBLE, requires_grad=True)
    c = torch.randn(4, dtype=DOUBLE, requires_grad=True)
    grad = torch.randn(u.shape, dtype=DOUBLE)
    out = channel_max(u, c, shift=shift)
    torch.testing.assert_close(out, torch.maximum(u, c.view(1, -1, 1)))
    grad_u, grad_c = torch.autograd.grad((out * grad).sum(), (u, c))
    above = u > c.view(1, -1, 1)
    torch.testing.assert_close(grad_u, grad * above)
    expected_c = grad.sum((0, 2)) if shift else (grad * ~above).sum((0, 2))
    torch.testing.assert_close(grad_c, expected_c)


def test_traced_scale_shift_act_is_the_formula(traced):
    act = normlab.layers.get_activation("silu")
    u = torch.randn(2, 3, 4, dtype=DOUBLE)
    scale, shift = torch.rand(3, dtype=DOUBLE) + 0.5, torch.randn(3, dtype=DOUBLE)
    expected = torch.nn.functional.silu(u) * scale.view(1, -1, 1) + shift.view(1, -1, 1)
    torch.testing.assert_close(scale_shift_act(u, scale, shift, act), expected)


def test_nan_inputs_propagate_when_traced(traced):
    layer = build("gn2+pn")
    x = torch.randn(2, 4, 3, 3, dtype=DOUBLE)
    x[0, 0, 1, 1] = float("nan")
    out = layer(x.requires_grad_())
    assert bool(out[0, :2].isnan().all())
    assert bool(torch.isfinite(out[1]).all())


# -- under the real tracers ------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["gn2+pn", "ln+pn", "in+pn"])
def test_compiled_step_equals_the_eager_cpp_node(spec):
    """torch.compile (AOTAutograd, fullgraph) of GN+PN gives the eager node's values and
    gradients; eager keeps running the fused node."""
    layer = build(spec, channels=8, dtype=torch.float32)
    x = (2.0 * torch.randn(4, 8, 6, 6) + 0.5).requires_grad_()
    grad_out = torch.randn(x.shape)
    out, grads = gradients(layer, x, grad_out)
    expected_node = "CppNode" if compiled.kernels() is not None else "GroupNormThresholdPN"
    assert expected_node in out.grad_fn.name()
    torch._dynamo.reset()
    compiled_layer = torch.compile(copy.deepcopy(layer), backend="aot_eager", fullgraph=True)
    out_c = compiled_layer(x)
    grads_c = torch.autograd.grad((out_c * grad_out).sum(), [x, *compiled_layer.parameters()])
    torch.testing.assert_close(out_c, out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_non_finite_parameters_raise_in_eager_only():
    """Eager checks read c back and name the parameter; tracers (whose tensors may be fake)
    skip the read-back: export succeeds, and the exported model computes NaN like the layer with
    checks off. jit.trace's own sanity check reruns the layer eagerly, which names gamma."""
    layer = build("gn2+pn", dtype=torch.float32).eval()
    with torch.no_grad():
        layer.act.gamma[1] = float("nan")
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"non-finite parameters: gamma \(1 of 4 entries\)"):
        layer(x)
    program = torch.export.export(layer, (x,))
    assert bool(program.module()(x).isnan().any())
    with torch.no_grad():
        traced = torch.jit.trace(layer, x, check_trace=False)
        assert bool(traced(x).isnan().any())
        with pytest.raises(Exception, match=r"non-finite parameters: gamma \(1 of 4"):
            torch.jit.trace(layer, x)


def test_no_traced_tensor_is_left_in_a_cache():
    """Export runs on fake tensors: afterwards the plan cache and the constant, quadrature-node
    and quantile caches hold real tensors only, and eager inference works."""
    fake = torch._subclasses.fake_tensor.FakeTensor
    layers = [build("gn2+pn", act=act, dtype=torch.float32).eval() for act in ("relu", "gelu")]
    reference = build("gn2+pn", dtype=torch.float32, method="reference").eval()
    x = torch.randn(2, 4, 3, 3)
    for layer in [*layers, reference]:
        with torch.no_grad():
            expected = layer(x)
        torch.export.export(layer, (x,))
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected)
    quantiles = importlib.import_module("normlab.layers.proxy_moments")._quantile_cache
    caches = [gaussian._constants, gaussian._nodes_cache, quantiles]
    values = [v for cache in caches for v in cache.values()]
    values += [layer.act._plan_cache[1].weight for layer in layers]
    tensors = [t for v in values for t in (v if isinstance(v, tuple) else (v,))]
    assert tensors
    assert not any(isinstance(t, fake) for t in tensors)


# -- empty batches ---------------------------------------------------------------------------


def empty_batch_layers() -> list[tuple[str, nn.Module]]:
    layers = [(spec, build(spec)) for spec in ["gn2+pn", "ln+pn", "in+pn"]]
    layers.append(("gn2+pn gelu", build("gn2+pn", act="gelu")))  # GN then the scale-shift tail
    layers.append(("gn2+pn reference", build("gn2+pn", method="reference")))  # shifted max
    layers.append(("frn", build("frn")))  # FRN then TLU's channel max
    pn = ProxyNormAct(4).to(DOUBLE)  # alone: ThresholdFold and the channel max
    layers.append(("pn alone", pn))
    layers.append(("pn alone silu", ProxyNormAct(4, act="silu").to(DOUBLE)))
    layers.append(("tlu alone", TLU(4).to(DOUBLE)))
    return layers


@pytest.mark.parametrize("index", range(len(empty_batch_layers())))
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (0, 4, 5)])
@pytest.mark.parametrize("grad", [True, False])
def test_empty_batch(index, shape, grad, eager_node):
    """N = 0 gives an empty output and zero parameter gradients, on every node (the C++ one
    used to divide by N·C)."""
    name, layer = empty_batch_layers()[index]
    x = torch.randn(shape, dtype=DOUBLE, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = layer(x)
    assert out.shape == shape, name
    if not grad:
        return
    if name in ("gn2+pn", "ln+pn", "in+pn"):  # the fused node itself, of the backend asked for
        node = "CppNode" if eager_node == "c++" else "GroupNormThresholdPNBackward"
        assert node in out.grad_fn.name()
    params = list(layer.parameters())
    grads = torch.autograd.grad(out.sum(), [x, *params])
    assert grads[0].shape == shape
    for p, g in zip(params, grads[1:], strict=True):
        assert g.shape == p.shape, name
        assert not bool(g.any()), name


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("inplace", [False, True])
def test_empty_batch_tails(shift, inplace):
    u = torch.randn(0, 4, 3, dtype=DOUBLE, requires_grad=True)
    c = torch.randn(4, dtype=DOUBLE, requires_grad=True)
    scale = torch.rand(4, dtype=DOUBLE, requires_grad=True)
    out = channel_max(u * 1.0, c, shift=shift, inplace=inplace)
    grads = torch.autograd.grad(out.sum(), (u, c))
    assert out.shape == u.shape
    assert grads[0].shape == u.shape
    assert not bool(grads[1].any())
    act = normlab.layers.get_activation("tanh")
    out = scale_shift_act(u, scale, c, act)
    grads = torch.autograd.grad(out.sum(), (u, scale, c))
    assert out.shape == u.shape
    assert not any(bool(g.any()) for g in grads[1:])
