"""Proxy Normalization of the activation step (PN paper Eq. 7) and its guarantee (Theorem 3)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import normlab
from normlab.diagnostics import check_theorem3, theorem3_expected_variance
from normlab.layers import (
    Act,
    GroupNorm,
    NormAct,
    ProxyNormAct,
    activation_names,
    get_activation,
)

from .test_proxy_moments import scipy_moments

ACTS = activation_names()


def randomize(pn: ProxyNormAct, seed: int = 0) -> ProxyNormAct:
    gen = torch.Generator().manual_seed(seed)
    c = pn.num_channels
    with torch.no_grad():
        pn.gamma.copy_(torch.rand(c, generator=gen) * 2 + 0.3)
        pn.beta.copy_(torch.rand(c, generator=gen) * 2 - 1)
        pn.proxy_beta.copy_(torch.rand(c, generator=gen) - 0.5)
        pn.proxy_gamma.copy_(torch.rand(c, generator=gen) * 0.6 - 0.3)
    return pn


def eq7(pn: ProxyNormAct, y: torch.Tensor) -> torch.Tensor:
    """Eq. 7 evaluated directly, with proxy moments from an independent scipy integration."""
    moments = [
        scipy_moments(
            pn.activation.name,
            float(g * bt + b),
            float(g * (1 + gt)),
        )
        for g, b, bt, gt in zip(pn.gamma, pn.beta, pn.proxy_beta, pn.proxy_gamma, strict=True)
    ]
    mean = torch.tensor([m for m, _ in moments], dtype=y.dtype).view(1, -1, 1, 1)
    var = torch.tensor([v for _, v in moments], dtype=y.dtype).view(1, -1, 1, 1)
    u = pn.gamma.view(1, -1, 1, 1) * y + pn.beta.view(1, -1, 1, 1)
    return (pn.activation.fn(u) - mean) / torch.sqrt(var + pn.eps)


def test_initialisation_follows_the_paper():
    pn = ProxyNormAct(7)
    assert pn.eps == 0.03
    assert torch.equal(pn.gamma, torch.ones(7))
    assert torch.equal(pn.beta, torch.zeros(7))
    assert torch.equal(pn.proxy_beta, torch.zeros(7))
    assert torch.equal(pn.proxy_gamma, torch.zeros(7))


@pytest.mark.parametrize("act", ACTS)
def test_output_is_eq7(act):
    pn = randomize(ProxyNormAct(4, act).double())
    y = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pn(y), eq7(pn, y), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("act", ACTS)
def test_fused_with_groupnorm_is_eq7_on_the_normalized_input(act):
    pn = randomize(ProxyNormAct(8, act).double())
    norm_act = NormAct(GroupNorm(8, num_groups=2, affine=False), pn).double()
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64) * 3 + 1
    with torch.no_grad():
        y = F.group_norm(x, 2)
        torch.testing.assert_close(norm_act(x), eq7(pn, y), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck_alone_and_fused(act):
    """Gradients reach ỹ (or x), γ, β, β̃ and γ̃, through the proxy moments."""
    torch.manual_seed(1)
    pn = randomize(ProxyNormAct(3, act).double(), seed=2)
    params = [pn.gamma, pn.beta, pn.proxy_beta, pn.proxy_gamma]
    y = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, *p: pn(y), (y, *params))
    norm_act = NormAct(GroupNorm(3, num_groups=1, affine=False), pn).double()
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: norm_act(x), (x, *params))


def test_reference_method_uses_the_reference_moments():
    pn = randomize(ProxyNormAct(4, "gelu", method="reference").double())
    y = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mean, var = normlab.proxy_moments(
        "gelu", pn.gamma, pn.beta, pn.proxy_beta, 1 + pn.proxy_gamma, method="reference"
    )
    u = pn.gamma.view(1, -1, 1, 1) * y + pn.beta.view(1, -1, 1, 1)
    expected = (F.gelu(u) - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 0.03)
    with torch.no_grad():
        torch.testing.assert_close(pn(y), expected)


@pytest.mark.parametrize("act", ACTS)
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_theorem3_channels_stay_normalized(act, seed):
    """ỹ_c ~ N(0,1), β̃ = γ̃ = 0: z_c has mean 0 and variance Var_c/(Var_c + ε)."""
    result = check_theorem3(act, channels=8, samples=100_000, seed=seed)
    # every channel's mean and variance within 5 of their own sampling standard errors
    assert result.max_z_score < 5.0
    assert result.max_abs_mean < 0.05
    assert bool((result.expected_var < 1).all())
    assert bool((result.expected_var > 0).all())


def test_theorem3_check_detects_a_wrong_proxy():
    """The check can fail: a proxy whose mean is off (β̃ = 0.5 while ỹ ~ N(0, 1)) is caught."""
    torch.manual_seed(0)
    pn = ProxyNormAct(4).double()
    with torch.no_grad():
        pn.proxy_beta.fill_(0.5)
    with torch.no_grad():
        z = pn(torch.randn(100_000, 4, dtype=torch.float64))
    var, mean = torch.var_mean(z, dim=0, correction=0)
    assert float((mean.abs() / (var / z.shape[0]).sqrt()).min()) > 5.0


def test_theorem3_expected_variance_is_var_over_var_plus_eps():
    gamma, beta = torch.tensor([1.0, 2.0]), torch.tensor([0.0, -1.0])
    _, var = normlab.proxy_moments("relu", gamma, beta)
    torch.testing.assert_close(
        theorem3_expected_variance("relu", gamma, beta, 0.03), var / (var + 0.03)
    )


def test_non_finite_parameters_raise_and_name_the_parameter():
    pn = ProxyNormAct(6)
    with torch.no_grad():
        pn.gamma[2] = float("nan")
    with pytest.raises(ValueError, match=r"gamma \(1 of 6 entries\)"):
        pn(torch.randn(2, 6, 3, 3))
    pn = ProxyNormAct(6)
    with torch.no_grad():
        pn.proxy_gamma[0] = float("inf")
    with pytest.raises(ValueError, match="proxy_gamma"):
        NormAct(GroupNorm(6, 3, affine=False), pn)(torch.randn(2, 6, 3, 3))


def test_finite_checks_can_be_turned_off():
    pn = ProxyNormAct(2)
    with torch.no_grad():
        pn.beta[0] = float("inf")
    previous = normlab.set_finite_checks(False)
    try:
        out = pn(torch.randn(2, 2, 3, 3))
    finally:
        normlab.set_finite_checks(previous)
    assert not bool(torch.isfinite(out).all())


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="valid choices: exact, reference"):
        ProxyNormAct(4, method="grid")
    with pytest.raises(ValueError, match=r"eps must be a finite number in \(0, 1\], got 0\.0"):
        ProxyNormAct(4, eps=0.0)
    with pytest.raises(ValueError, match="Did you mean 'gelu'"):
        ProxyNormAct(4, act="gleu")
    with pytest.raises(ValueError, match="built for 4 channels but got an input with 5"):
        ProxyNormAct(4)(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="1-d tensor"):
        ProxyNormAct(4)(torch.randn(4))


def _saved_activation_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct activation-sized tensors autograd keeps alive for backward.

    The layer's output is excluded: the next layer (a conv) keeps it alive in any network.
    """
    storages = {}

    def pack(t):
        if t.numel() >= x.numel():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(x)
    storages.pop(out.untyped_storage().data_ptr(), None)
    return sum(storages.values())


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fuse", [True, False])
def test_pn_keeps_no_more_tensors_alive_than_act(act, fuse):
    """Issue bar: PN keeps no more tensors alive for backward than the plain activation step."""
    x = torch.randn(4, 16, 8, 8, requires_grad=True)

    def build(step):
        return NormAct(GroupNorm(16, 4, affine=False), step(16, get_activation(act)), fuse=fuse)

    pn_bytes = _saved_activation_bytes(build(ProxyNormAct), x)
    act_bytes = _saved_activation_bytes(build(Act), x)
    assert pn_bytes <= act_bytes


def test_pn_module_is_deepcopyable_and_trains():
    norm_act = normlab.scheme("gn4+pn").norm_act(8)
    clone = copy.deepcopy(norm_act)
    opt = torch.optim.SGD(clone.parameters(), lr=0.1)
    x = torch.randn(4, 8, 5, 5)
    for _ in range(3):
        opt.zero_grad()
        loss = clone(x).square().mean()
        loss.backward()
        opt.step()
    assert all(
        p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in clone.parameters()
    )
    assert not torch.equal(clone.act.proxy_beta, norm_act.act.proxy_beta)


def test_double_backward_is_refused_loudly():
    """PN's hand-written backward is first order: create_graph=True raises instead of silently
    differentiating its saved partials as constants."""
    norm_act = normlab.scheme("gn4+pn").norm_act(8)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(norm_act(x).square().sum(), x, create_graph=True)
