"""Activation steps (Act, GainedAct, TLU), the activation registry and the fused tails."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from torch.func import functional_call

from normlab.layers import (
    TLU,
    Act,
    Activation,
    GainedAct,
    ProxyNormAct,
    activation_names,
    get_activation,
    register_activation,
)
from normlab.layers import activations as registry
from normlab.layers.tails import channel_max, scale_shift_act

DOUBLE = torch.float64

# Independent formulas for every registered φ (elementary functions, not normlab's).
REFERENCE = {
    "relu": lambda u: torch.where(u > 0, u, torch.zeros_like(u)),
    "leaky_relu": lambda u: torch.where(u > 0, u, 0.01 * u),
    "gelu": lambda u: 0.5 * u * (1.0 + torch.erf(u / math.sqrt(2.0))),
    "silu": lambda u: u / (1.0 + torch.exp(-u)),
    "tanh": lambda u: (1.0 - torch.exp(-2.0 * u)) / (1.0 + torch.exp(-2.0 * u)),
    "sigmoid": lambda u: 1.0 / (1.0 + torch.exp(-u)),
    "elu": lambda u: torch.where(u > 0, u, torch.expm1(u)),
    "softplus": lambda u: torch.log1p(torch.exp(u)),
    "identity": lambda u: u,
}
KINKED = {"relu", "leaky_relu"}  # φ' jumps at 0
ACTS = activation_names()


def view(t, ndim):
    """(C,) -> (1, C, 1, ..., 1)."""
    return t.view(1, -1, *([1] * (ndim - 2)))


def randomize(module, scale=0.5, generator=None):
    """Random γ around 1 (either sign), β, τ: away from the initial values that hide bugs."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.copy_(1.0 + noise if name == "gamma" else scale * noise)
    return module


def test_every_registered_activation_has_a_reference():
    assert set(ACTS) <= set(REFERENCE)


@pytest.mark.parametrize("name", ACTS)
def test_fn_matches_the_reference_formula(name):
    u = torch.linspace(-9, 9, 1001, dtype=DOUBLE)
    torch.testing.assert_close(
        get_activation(name).fn(u), REFERENCE[name](u), rtol=1e-12, atol=1e-14
    )


# -- Act, GainedAct, TLU ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7, 3), (4, 3, 5), (2, 3, 4, 5)])
@pytest.mark.parametrize("name", ACTS)
def test_act_is_phi_of_affine(name, shape):
    # Act: z = φ(γ·y + β), γ and β per channel (PN paper Eq. 4).
    step = randomize(Act(3, name).double())
    y = torch.randn(shape, dtype=DOUBLE)
    u = y * view(step.gamma, y.dim()) + view(step.beta, y.dim())
    torch.testing.assert_close(step(y), REFERENCE[name](u), rtol=1e-12, atol=1e-14)


def test_act_starts_as_plain_phi():
    y = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(Act(3, "gelu")(y), REFERENCE["gelu"](y))


@pytest.mark.parametrize("name", ACTS)
def test_gained_act_keeps_unit_variance(name):
    # GainedAct: z = γ_φ·φ(y) with Var[z] = 1 for y ~ N(0, 1) (Brock et al. 2021).
    generator = torch.Generator().manual_seed(1234)
    y = torch.randn(250_000, 4, generator=generator, dtype=DOUBLE)  # 10^6 samples
    z = GainedAct(4, name)(y)
    assert float(z.var()) == pytest.approx(1.0, abs=1e-2)
    # and it is φ times a constant
    ratio = z / REFERENCE[name](y)
    finite = REFERENCE[name](y).abs() > 1e-3
    assert torch.allclose(ratio[finite], ratio[finite][0].expand(int(finite.sum())))


def test_gained_act_has_no_parameters():
    assert not list(GainedAct(3, "relu").parameters())


@pytest.mark.parametrize("name", ACTS)
def test_tlu_thresholds(name):
    # TLU: z = max(γ·y + β, τ) in place of relu, else z = max(φ(γ·y + β), τ) (Singh & Krishnan).
    step = randomize(TLU(3, name).double())
    y = torch.randn(2, 3, 4, 4, dtype=DOUBLE)
    u = y * view(step.gamma, 4) + view(step.beta, 4)
    inner = u if name == "relu" else REFERENCE[name](u)
    torch.testing.assert_close(step(y), torch.maximum(inner, view(step.tau, 4)), rtol=1e-12, atol=0)


def _gradcheck_step(step, y):
    params = dict(step.named_parameters())
    names = list(params)

    def fn(y, *values):
        return functional_call(step, dict(zip(names, values, strict=True)), (y,))

    values = [p.detach().clone().requires_grad_() for p in params.values()]
    assert torch.autograd.gradcheck(fn, (y.requires_grad_(), *values))


@pytest.mark.parametrize("cls", [Act, GainedAct, TLU])
@pytest.mark.parametrize("name", ACTS)
def test_step_gradcheck(cls, name):
    torch.manual_seed(3)
    step = randomize(cls(3, name).double())
    _gradcheck_step(step, torch.randn(2, 3, 3, 3, dtype=DOUBLE))


@pytest.mark.parametrize("cls", [Act, GainedAct, TLU])
def test_step_checks_its_input(cls):
    step = cls(3)
    with pytest.raises(ValueError, match="3 channels"):
        step(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="shape"):
        step(torch.randn(3))
    with pytest.raises(ValueError, match="num_channels"):
        cls(0)


# -- derivatives --------------------------------------------------------------------------------

INPUTS = st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=16)


@pytest.mark.parametrize("name", ACTS)
@settings(max_examples=25, deadline=None)
@given(values=INPUTS)
def test_derivative_matches_autograd(name, values):
    if name in KINKED:
        values = [v for v in values if abs(v) > 1e-9] or [1.0]
    act = get_activation(name)
    u = torch.tensor(values, dtype=DOUBLE, requires_grad=True)
    (expected,) = torch.autograd.grad(REFERENCE[name](u).sum(), u)
    u = u.detach()
    torch.testing.assert_close(act.derivative(u), expected, rtol=1e-10, atol=1e-12)
    # the backward kernel on what the activation saves (φ(u) or u), scaling the gradient
    grad = torch.randn(u.shape, dtype=DOUBLE)
    saved = act.fn(u) if act.saves_output else u
    torch.testing.assert_close(act.backward(grad.clone(), saved), grad * expected)


# -- tails --------------------------------------------------------------------------------------

SHAPES = [(6, 3), (2, 3, 5), (2, 3, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_max_has_the_true_partials(shape):
    # max(u, c) with ∂/∂u = 1[u > c], ∂/∂c = 1[u < c] (no ties: continuous random inputs).
    torch.manual_seed(0)
    u = torch.randn(shape, dtype=DOUBLE, requires_grad=True)
    c = torch.randn(3, dtype=DOUBLE, requires_grad=True)
    g = torch.randn(shape, dtype=DOUBLE)
    out = channel_max(u, c, shift=False)
    expected = torch.maximum(u, view(c, len(shape)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grads = torch.autograd.grad((out * g).sum(), (u, c))
    expected_grads = torch.autograd.grad((expected * g).sum(), (u, c))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda u, c: channel_max(u, c), (u, c))


@pytest.mark.parametrize("shape", SHAPES)
def test_channel_max_shift_is_c_plus_relu(shape):
    # For w = v + c̄ (c̄ = c detached): channel_max(w, c, shift=True) = c + relu(v), and its
    # gradients are those of c + relu(v): c gets Σ grad (PN with relu folds its shift this way).
    torch.manual_seed(1)
    v = torch.randn(shape, dtype=DOUBLE, requires_grad=True)
    c = torch.randn(3, dtype=DOUBLE, requires_grad=True)
    g = torch.randn(shape, dtype=DOUBLE)

    def composite(v, c):
        return channel_max(v + view(c.detach(), v.dim()), c, shift=True)

    def expected(v, c):
        return view(c, v.dim()) + torch.relu(v)

    torch.testing.assert_close(composite(v, c), expected(v, c), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((composite(v, c) * g).sum(), (v, c))
    expected_grads = torch.autograd.grad((expected(v, c) * g).sum(), (v, c))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], g.sum(dim=[d for d in range(len(shape)) if d != 1]))
    assert torch.autograd.gradcheck(composite, (v, c))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ACTS)
def test_scale_shift_act(name, shape):
    # φ(u)·a + c with per-channel a, c; a as in PN (positive) and negative.
    torch.manual_seed(2)
    act = get_activation(name)
    u = (2 * torch.randn(shape, dtype=DOUBLE)).requires_grad_()
    a = torch.tensor([0.5, 1.7, -0.8], dtype=DOUBLE, requires_grad=True)
    c = torch.randn(3, dtype=DOUBLE, requires_grad=True)
    g = torch.randn(shape, dtype=DOUBLE)
    out = scale_shift_act(u, a, c, act)
    expected = REFERENCE[name](u) * view(a, u.dim()) + view(c, u.dim())
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((out * g).sum(), (u, a, c))
    expected_grads = torch.autograd.grad((expected * g).sum(), (u, a, c))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(lambda u, a, c: scale_shift_act(u, a, c, act), (u, a, c))


def test_tails_without_parameter_gradients():
    # Only u requires grad: the per-channel inputs get None, u still gets its gradient.
    u = torch.randn(2, 3, 4, dtype=DOUBLE, requires_grad=True)
    c, a = torch.randn(3, dtype=DOUBLE), torch.rand(3, dtype=DOUBLE) + 0.5
    (grad,) = torch.autograd.grad(channel_max(u, c).sum(), u)
    torch.testing.assert_close(grad, (u > view(c, 3)).to(DOUBLE))
    act = get_activation("tanh")
    (grad,) = torch.autograd.grad(scale_shift_act(u, a, c, act).sum(), u)
    torch.testing.assert_close(grad, (1 - torch.tanh(u) ** 2) * view(a, 3))


# -- registry -----------------------------------------------------------------------------------


def test_unknown_activation_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'relu'") as info:
        get_activation("rleu")
    for name in ACTS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("alias", "name"), [("swish", "silu"), ("linear", "identity"), ("none", "identity")]
)
def test_aliases(alias, name):
    assert get_activation(alias) is get_activation(name)
    assert alias in activation_names(aliases=True)
    assert alias not in activation_names()


def test_get_activation_passes_an_activation_through():
    act = get_activation("tanh")
    assert get_activation(act) is act


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations inside the test go to copies of the registry, restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))


def softsign(u):
    return u / (1.0 + u.abs())


# A smooth test-only φ without closed-form moments: normlab falls back to its quadrature.
# (A φ with a kink in φ'', such as softsign, needs more quadrature nodes than the default.)
ARCTAN = Activation("test_arctan", torch.atan, lambda grad, u: grad / (1.0 + u * u), "atan(u)")


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize("name", ["relu", "swish", "linear"])
def test_register_an_existing_name_raises(name):
    before = activation_names(aliases=True)
    with pytest.raises(ValueError, match="already registered"):
        register_activation(Activation(name, softsign, softsign, "dup"))
    assert activation_names(aliases=True) == before
    assert get_activation(name).fn is not softsign


@pytest.mark.usefixtures("scratch_registry")
@pytest.mark.parametrize("alias", ["relu", "swish"])
def test_register_an_alias_that_shadows_a_name_raises(alias):
    # An alias must not silently redirect an existing name (or alias) to the new φ.
    with pytest.raises(ValueError, match="already registered"):
        register_activation(ARCTAN, aliases=(alias,))
    assert "test_arctan" not in activation_names()
    assert get_activation(alias).fn is not torch.atan


def gaussian_moments(fn, mean, std):
    """E[f(Y)] and Var[f(Y)], Y ~ N(mean, std²), by scipy's adaptive quadrature."""

    def expect(g):
        density = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
        return integrate.quad(lambda z: g(mean + std * z) * density(z), -math.inf, math.inf)[0]

    m1 = expect(fn)
    return m1, expect(lambda y: fn(y) ** 2) - m1 * m1


@pytest.mark.usefixtures("scratch_registry")
def test_custom_activation_without_closed_form_in_proxy_norm():
    register_activation(ARCTAN, aliases=("test_arctan_alias",))
    assert get_activation("test_arctan_alias") is ARCTAN
    assert ARCTAN.closed_form is None

    step = ProxyNormAct(3, "test_arctan").double()
    with torch.no_grad():
        step.gamma.copy_(torch.tensor([1.3, -0.7, 2.0]))
        step.beta.copy_(torch.tensor([0.2, -0.5, 1.1]))
        step.proxy_beta.copy_(torch.tensor([0.3, -0.4, 0.1]))
        step.proxy_gamma.copy_(torch.tensor([0.2, -0.3, 0.05]))
    y = torch.randn(4, 3, 5, 5, dtype=DOUBLE, requires_grad=True)
    z = step(y)

    # PN Eq. 7: z = (φ(γy + β) - E) / sqrt(Var + ε), moments of φ(γY + β), Y ~ N(β̃, (1 + γ̃)²).
    expected = torch.empty_like(z)
    names = ("gamma", "beta", "proxy_beta", "proxy_gamma")
    columns = [getattr(step, name).detach().tolist() for name in names]
    for ch, (gamma, beta, proxy_beta, proxy_gamma) in enumerate(zip(*columns, strict=True)):
        mean, var = gaussian_moments(
            lambda t, g=gamma, b=beta: math.atan(g * t + b), proxy_beta, 1.0 + proxy_gamma
        )
        u = gamma * y[:, ch].detach() + beta
        expected[:, ch] = (torch.atan(u) - mean) / math.sqrt(var + step.eps)
    torch.testing.assert_close(z, expected, rtol=1e-6, atol=1e-6)

    z.square().mean().backward()
    for name, p in step.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    _gradcheck_step(step, torch.randn(2, 3, 3, dtype=DOUBLE))
