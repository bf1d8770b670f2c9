"""Proxy Normalization through torch.compile (Inductor): the compiled step equals the eager one,
and Inductor fuses PN's tail into the normalizer's epilogue.

Equality: values and the gradients of x and of every PN parameter (γ, β, β̃, γ̃), for GN, LN and
BN followed by PN with relu, silu, gelu and tanh, on a channels-last input and with some
channels in the split regime |γ(1 + γ̃)| > 2 of the proxy moments (others in the trapezoid's),
so that both branches of the traced moments run. Structure: the number of passes over the
N·C·H·W tensor in Inductor's generated code (``benchmarks/pn_compile_speed.py`` reads it) is
that of GN+φ. The default run compiles a few cases (about a minute on a slow CPU, less once
Inductor's cache is warm); ``pytest -m slow`` runs the whole matrix.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from normlab import scheme
from tests.benchmark_scripts import load_benchmark

SPECS = ("gn8+pn", "ln+pn", "bn+pn")
ACTS = ("relu", "silu", "gelu", "tanh")
DEFAULT = {("gn8+pn", "silu"), ("ln+pn", "tanh"), ("bn+pn", "relu")}
SHAPE = (4, 16, 6, 6)


@functools.cache
def _inductor_compiler() -> str | None:
    """Why Inductor cannot compile C++ for the CPU here, or None when it can."""
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except Exception as error:  # no compiler found, or a broken toolchain
        return f"Inductor finds no C++ compiler: {error}"
    return None


pytestmark = pytest.mark.skipif(_inductor_compiler() is not None, reason=_inductor_compiler() or "")


@pytest.fixture(scope="module")
def pn_compile_speed():
    return load_benchmark("pn_compile_speed")


def pn_module(spec: str, act: str, channels: int = SHAPE[1]) -> nn.Module:
    """spec's NormAct with PN parameters away from their initial values: channels alternate
    between |s| = |γ(1 + γ̃)| about 1 (the trapezoid) and about 3 (the split)."""
    module = scheme(spec, act=act).norm_act(channels)
    pn = module.act
    generator = torch.Generator().manual_seed(1)

    def noise() -> torch.Tensor:
        return 0.2 * torch.randn(channels, generator=generator)

    far = torch.arange(channels) % 2 == 1
    with torch.no_grad():
        pn.gamma.copy_(torch.where(far, 2.5, 1.0) + noise())
        pn.gamma[3] = -2.7  # a negative γ in the split regime
        pn.beta.copy_(noise())
        pn.proxy_beta.copy_(noise())
        pn.proxy_gamma.copy_(torch.where(far, 0.2, 0.0) + noise() / 2)
    scale = (pn.gamma * (1 + pn.proxy_gamma)).abs()
    assert bool((scale[far] > 2.0).all())
    assert bool((scale[~far] < 2.0).all())
    return module


def forward_backward(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, run=None):
    """module's output and the gradients of x and its parameters; ``run`` (module compiled)
    computes them."""
    x = x.detach().clone().requires_grad_()
    out = (module if run is None else run)(x)
    out.backward(grad)
    grads = {"x": x.grad}
    grads |= {name: p.grad for name, p in module.named_parameters()}
    return out.detach(), grads


def check_compiled_equals_eager(spec: str, act: str, channels_last: bool) -> None:
    torch._dynamo.reset()
    eager = pn_module(spec, act)
    compiled = copy.deepcopy(eager)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=generator)
    grad = torch.randn(SHAPE, generator=generator)
    if channels_last:
        x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad))
    want, want_grads = forward_backward(eager, x, grad)
    got, got_grads = forward_backward(compiled, x, grad, torch.compile(compiled, fullgraph=True))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert set(got_grads) == {"x", "act.gamma", "act.beta", "act.proxy_beta", "act.proxy_gamma"}
    for name, value in want_grads.items():
        # parameter gradients are sums over N·H·W terms, in another order: atol to their scale
        atol = 1e-5 * max(1.0, float(value.abs().max()))
        torch.testing.assert_close(got_grads[name], value, rtol=1e-4, atol=atol, msg=name)
    for got_buffer, want_buffer in zip(compiled.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(got_buffer, want_buffer, rtol=1e-4, atol=1e-6)


CASES = [
    pytest.param(spec, act, marks=() if (spec, act) in DEFAULT else pytest.mark.slow)
    for spec in SPECS
    for act in ACTS
]


@pytest.mark.parametrize(("spec", "act"), CASES)
def test_compiled_equals_eager_channels_last(spec, act):
    check_compiled_equals_eager(spec, act, channels_last=True)


@pytest.mark.slow
@pytest.mark.parametrize(("spec", "act"), [(s, a) for s in SPECS for a in ACTS])
def test_compiled_equals_eager_contiguous(spec, act):
    check_compiled_equals_eager(spec, act, channels_last=False)


# -- the fused structure ----------------------------------------------------------------------


@functools.cache
def structures(bench, act: str) -> dict[str, dict[str, int]]:
    """Inductor's structure (kernels, functions and passes over N·C·H·W, forward and backward)
    of GN+φ ("plain"), GN+PN(φ) ("pn") and torch's GN, φ, ·a_c + c_c ("torch") on the
    benchmark's probe shape."""
    found = bench.modules(bench.PROBE[1], 8, act)
    found["torch"] = bench.TorchAffineAfterAct(bench.PROBE[1], 8, act)
    cpu = torch.device("cpu")
    return {name: bench.structure(module, bench.PROBE, cpu) for name, module in found.items()}


STRUCTURE_ACTS = [
    pytest.param(act, marks=() if act == "silu" else pytest.mark.slow) for act in ACTS
]


@pytest.mark.parametrize("act", STRUCTURE_ACTS)
def test_forward_tail_fuses_into_the_normalizer(pn_compile_speed, act):
    """GN+PN(φ)'s forward makes the passes over the activations that GN+φ's does: the tail
    φ(u)·a + c and the per-channel moments add no kernel over N·C·H·W, and the whole forward
    is one generated function, as GN+φ's."""
    found = structures(pn_compile_speed, act)
    plain, pn = found["plain"], found["pn"]
    assert plain["fwd passes"] >= 1
    assert pn["fwd passes"] <= plain["fwd passes"], (plain, pn)
    assert pn["fwd functions"] <= plain["fwd functions"], (plain, pn)


@pytest.mark.parametrize("act", STRUCTURE_ACTS)
def test_backward_tail_costs_what_a_per_channel_affine_costs(pn_compile_speed, act):
    """GN+PN(φ)'s backward makes no more passes over N·C·H·W than torch's own GN, φ and a
    learnable per-channel affine: the proxy moments and PN's formulation of its tail add no
    pass of their own to what Inductor makes of φ(u)·a_c + c_c."""
    found = structures(pn_compile_speed, act)
    assert found["pn"]["bwd passes"] <= found["torch"]["bwd passes"], found
    assert found["pn"]["fwd passes"] <= found["torch"]["fwd passes"], found


@pytest.mark.xfail(
    strict=True,
    reason="known gap (torch 2.13, Inductor's C++ backend): a per-channel affine after φ keeps "
    "GN's backward from fusing with φ's, in plain PyTorch too (GN+PN: 3 passes over N·C·H·W, "
    "4 for silu, against GN+φ's 2; docs/pn-compile.md); strict, so that this "
    "fails once it fuses and the marker must go",
)
@pytest.mark.parametrize("act", STRUCTURE_ACTS)
def test_backward_tail_fuses_into_the_normalizer(pn_compile_speed, act):
    found = structures(pn_compile_speed, act)
    plain, pn = found["plain"], found["pn"]
    assert plain["bwd passes"] >= 1
    assert pn["bwd passes"] <= plain["bwd passes"], (plain, pn)


def test_pass_counter_reads_inductor_code(pn_compile_speed):
    """The counter behind the structure tests, on hand-written code: a C++ nest of 4 × 96
    elements is one pass over 384, a nest of 4 × 48 is not; a Triton kernel counts by
    xnumel · r0_numel."""
    cpp = (
        "cpp_fused_x_0 = async_compile.cpp_pybinding(['float*'], r'''\n"
        'extern "C" void kernel(float* out_ptr0)\n{\n    {\n'
        "        for(int64_t x0=static_cast<int64_t>(0L); x0<static_cast<int64_t>(4L); "
        "x0+=static_cast<int64_t>(1L))\n        {\n"
        "            for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>(96L); "
        "x1+=static_cast<int64_t>(16L))\n            {\n            }\n"
        "            for(int64_t x1=static_cast<int64_t>(0L); x1<static_cast<int64_t>(48L); "
        "x1+=static_cast<int64_t>(16L))\n            {\n            }\n"
        "        }\n    }\n}\n''')\n"
    )
    triton = (
        "triton_red_fused_0 = async_compile.triton('triton_red_fused_0', '''\n"
        "import triton\n@triton.jit\ndef triton_red_fused_0(in_ptr0, xnumel, r0_numel):\n"
        "    xnumel = 32\n    r0_numel = 12\n''')\n"
    )
    assert pn_compile_speed.kernel_passes(cpp, 384) == (1, 1)
    assert pn_compile_speed.kernel_passes(triton, 384) == (1, 1)
    assert pn_compile_speed.kernel_passes(cpp + triton, 192) == (2, 1)
