"""An empty batch (N = 0) goes through every layer, node and model: an empty output of the right
shape, parameter gradients that exist and are exactly zero, running statistics untouched.

The specs are drawn from the grammar itself (``normlab.schemes()``), so that a new form without
an empty-batch case fails :func:`test_every_form_of_the_grammar_is_covered`. GN (LN, IN) + relu-PN
runs both the eager node and normlab's C++ node (where it is built).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import normlab
from normlab import layers
from normlab.layers import compiled
from tests.models.helpers import small

C, H, W = 8, 5, 5

# one or more concrete specs for every form of the grammar
FORM_SPECS = {
    "bn": ["bn"],
    "bn/<k>": ["bn/4", "bn/1"],
    "ln": ["ln"],
    "in": ["in"],
    "gn<G>": ["gn4"],
    "gn/<S>": ["gn/2"],
    "vn": ["vn"],
    "frn": ["frn"],
    "evo-b0": ["evo-b0"],
    "evo-s0": ["evo-s0"],
    "evo-s0/<S>": ["evo-s0/4"],
    "none": ["none"],
    "nf": ["nf"],
    "+pn": ["bn+pn", "bn/4+pn", "ln+pn", "in+pn", "gn4+pn", "gn/2+pn", "vn+pn"],
    "+ws": ["gn4+ws", "bn+ws+pn"],
    "+sws": ["bn+sws", "gn4+sws+pn"],
    "+wn": ["ln+wn"],
    "+cwn": ["in+cwn+pn"],
}
SPECS = [spec for specs in FORM_SPECS.values() for spec in specs]
GROUP_PN = {"ln+pn", "in+pn", "gn4+pn", "gn/2+pn", "gn4+sws+pn", "in+cwn+pn"}


def test_every_form_of_the_grammar_is_covered():
    assert set(FORM_SPECS) == {form.form for form in normlab.schemes()}


@contextlib.contextmanager
def kernels(enabled: bool):
    previous = compiled.set_compiled_kernels(enabled)
    try:
        yield
    finally:
        compiled.set_compiled_kernels(previous)


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in module.named_buffers()}


def check_empty(module: nn.Module, x: torch.Tensor, grad: bool, out_channels: int) -> None:
    """module(x) for an empty x: shape, zero gradients, buffers unchanged."""
    for p in module.parameters():
        p.grad = None
    before = state(module)
    x = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = module(x)
    assert out.shape == (x.shape[0], out_channels, *x.shape[2:])
    assert out.requires_grad == grad
    if grad:
        out.sum().backward()
        assert x.grad is not None
        assert x.grad.shape == x.shape
        for name, p in module.named_parameters():
            assert p.grad is not None, f"{name} received no gradient"
            assert torch.equal(p.grad, torch.zeros_like(p)), f"{name}: {p.grad}"
    after = state(module)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert torch.equal(after[name], value), f"buffer {name} changed: {value} -> {after[name]}"


def builders(spec: str, act: str) -> dict[str, nn.Module]:
    s = normlab.scheme(spec, act=act)
    return {
        "norm_act": s.norm_act(C),
        "norm": s.norm(C),
        "conv+norm_act": nn.Sequential(s.conv(3, C, 3), s.norm_act(C)),
    }


# GN (LN, IN) + relu-PN also runs normlab's C++ node, where it is built
CASES = [(spec, False) for spec in SPECS] + [(spec, True) for spec in SPECS if spec in GROUP_PN]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize(
    ("spec", "compiled_kernels"),
    CASES,
    ids=[f"{s}-{'compiled' if c else 'eager'}" for s, c in CASES],
)
def test_every_scheme_step_takes_an_empty_batch(spec, compiled_kernels, grad, training):
    torch.manual_seed(0)
    with kernels(compiled_kernels and compiled.kernels() is not None):
        for act in ("relu", "gelu"):
            for where, module in builders(spec, act).items():
                module.train(training)
                x = torch.randn(0, 3 if where.startswith("conv") else C, H, W)
                try:
                    check_empty(module, x, grad, C)
                except AssertionError as error:
                    raise AssertionError(f"{spec} {act} {where}: {error}") from error


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize(
    "layer",
    [
        lambda: layers.BatchNorm(C),
        lambda: layers.BatchNorm(C, norm_batch_size=3),
        lambda: layers.BatchNorm(C, momentum=None),
        lambda: layers.BatchNorm(C, track_running_stats=False),
        lambda: layers.VarianceNorm(C),
        lambda: layers.EvoNormB0(C),
        lambda: layers.EvoNormB0(C, nonlinear=False),
        lambda: layers.EvoNormS0(C, num_groups=2),
        lambda: layers.GroupNorm(C, 2),
        lambda: layers.LayerNorm(C),
        lambda: layers.InstanceNorm(C),
        lambda: layers.FilterResponseNorm(C, learnable_eps=True),
        lambda: layers.TLU(C),
        lambda: layers.Act(C, "silu"),
        lambda: layers.GainedAct(C, "relu"),
        lambda: layers.ProxyNormAct(C, "relu"),
        lambda: layers.ProxyNormAct(C, "tanh"),
        lambda: layers.ProxyNormAct(C, "relu", method="reference"),
        lambda: layers.WSConv2d(C, C, 3, padding=1),
        lambda: layers.ScaledWSConv2d(C, C, 3, padding=1, act="relu"),
        lambda: layers.WNConv2d(C, C, 3, padding=1, bias=True),
        lambda: layers.CWNConv2d(C, C, 3, padding=1, groups=2),
    ],
)
def test_every_layer_takes_an_empty_batch(layer, grad):
    module = layer()
    for training in (True, False):
        module.train(training)
        check_empty(module, torch.randn(0, C, H, W), grad, C)


@pytest.mark.parametrize("shape", [(0, C), (0, C, 7), (0, C, 2, 3, 4), (3, C, 0, 4)])
def test_batch_norm_empty_inputs_of_any_rank(shape):
    """Any input without values, in 2-d to 5-d, including an empty spatial extent."""
    check_empty(layers.BatchNorm(C), torch.randn(shape), True, C)
    check_empty(layers.VarianceNorm(C), torch.randn(shape), True, C)


def test_batch_norm_matches_torch_on_an_empty_batch():
    """torch's BatchNorm2d returns an empty output for N = 0 in training and leaves the running
    mean and variance alone; so does normlab's. torch still counts the batch in
    num_batches_tracked, normlab does not (a batch without values must not weigh in the
    cumulative average of momentum=None)."""
    torch.manual_seed(0)
    ours, theirs = layers.BatchNorm(C), nn.BatchNorm2d(C)
    for m in (ours, theirs):
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
        m.weight.data.uniform_(0.5, 2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(0, C, H, W, requires_grad=True)
    out_ours, out_theirs = ours(x), theirs(x)
    assert out_ours.shape == out_theirs.shape == x.shape
    (out_ours.sum() + out_theirs.sum()).backward()
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)
    assert int(ours.num_batches_tracked) == 0
    assert int(theirs.num_batches_tracked) == 1


def test_an_empty_batch_does_not_count_in_the_cumulative_average():
    torch.manual_seed(0)
    bn, reference = layers.BatchNorm(C, momentum=None), layers.BatchNorm(C, momentum=None)
    batches = [torch.randn(4, C, H, W) * (i + 1) for i in range(3)]
    for i, x in enumerate(batches):
        bn(x)
        reference(x)
        if i == 0:
            bn(x[:0])
    torch.testing.assert_close(bn.running_mean, reference.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, reference.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 3


@pytest.mark.parametrize("spec", ["bn", "bn/4", "vn", "evo-b0"])
def test_one_value_per_channel_still_raises(spec):
    """The empty batch is the only exception to "more than one value per channel"."""
    layer = normlab.scheme(spec).norm_act(C).train()
    with pytest.raises(ValueError, match="needs more than one value per channel"):
        layer(torch.randn(1, C, 1, 1))


MODEL_SPECS = ["bn", "gn8+pn", "nf"]
ALL_MODEL_SPECS = ["bn", "bn/4+pn", "gn8+pn", "ln+pn", "vn", "evo-b0", "evo-s0", "frn", "nf"]


def check_model(name: str, specs: list[str]) -> None:
    for spec in specs:
        try:
            model = small(name, norm=spec)
        except ValueError:
            continue  # a scheme this model cannot take (e.g. nf models take only "nf")
        for training, grad in ((True, True), (True, False), (False, True), (False, False)):
            model.train(training)
            for p in model.parameters():
                p.grad = None
            before = state(model)
            x = torch.randn(0, 3, 32, 32, requires_grad=grad)
            with torch.set_grad_enabled(grad):
                out = model(x)
            assert out.shape[0] == 0, f"{name} {spec}: {tuple(out.shape)}"
            if grad:
                out.sum().backward()
                for p_name, p in model.named_parameters():
                    assert p.grad is not None, f"{name} {spec}: {p_name} got no gradient"
                    assert not p.grad.any(), f"{name} {spec}: {p_name} has a non-zero gradient"
            for b_name, value in state(model).items():
                assert torch.equal(value, before[b_name]), f"{name} {spec}: {b_name} changed"


# one model of each family in the default run; every model under every normalizer in the slow one
FAMILIES = ["resnet20", "resnet50", "resnext50_32x4d", "efficientnet_b0", "efficientnet_g16_b0"]
FAMILIES += ["cnn10", "resnet56_post", "nf_resnet20", "nf_resnet26", "random_net"]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_families_are_registered_models():
    assert set(FAMILIES) <= set(normlab.models.names())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_zoo_family_takes_an_empty_batch(name, one_thread):
    """Train and eval, grad on and off, under bn, gn8+pn and nf."""
    check_model(name, MODEL_SPECS)


@pytest.mark.slow
@pytest.mark.parametrize("name", normlab.models.names())
def test_every_zoo_model_takes_an_empty_batch_under_every_normalizer(name, one_thread):
    check_model(name, ALL_MODEL_SPECS)
