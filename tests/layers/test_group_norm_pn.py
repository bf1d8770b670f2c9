"""GN (LN, IN) + relu-PN as one autograd node, against the same step run as separate nodes."""

from __future__ import annotations

import copy

import pytest
import torch

from normlab import scheme
from normlab.layers import NormAct
from normlab.layers.group_norm_pn import GroupNormThresholdPN

DOUBLE = torch.float64
FUSED_NODE = GroupNormThresholdPN.__name__ + "Backward"


def build(spec: str, channels: int = 8, act: str = "relu", dtype=DOUBLE) -> NormAct:
    layer = scheme(spec, act=act).norm_act(channels).to(dtype)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in layer.act.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=dtype)
            p.copy_(1.0 + 0.4 * noise if name == "gamma" else 0.3 * noise)
    return layer


def node_name(out: torch.Tensor) -> str:
    return type(out.grad_fn).__name__


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
    assert node_name(out) == FUSED_NODE
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
    assert node_name(layer(x)) == FUSED_NODE
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
    assert node_name(out) != FUSED_NODE, why


def test_reference_moments_and_no_grad_use_the_plan():
    layer = build("gn4+pn")
    reference = copy.deepcopy(layer)
    reference.act.method = "reference"
    x = torch.randn(2, 8, 3, 3, dtype=DOUBLE, requires_grad=True)
    assert node_name(reference(x)) != FUSED_NODE
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.act(layer.norm(x)))


def test_autocast_falls_back_to_the_separate_steps():
    layer = build("gn4+pn", dtype=torch.float32)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        expected = layer.act(layer.norm(x))
    assert node_name(out) != FUSED_NODE
    torch.testing.assert_close(out, expected)
