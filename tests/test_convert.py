"""normlab.convert: BatchNorm (+ the activation right after it) to a scheme, in any nn.Module."""

from __future__ import annotations

import copy
import itertools
import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import fx, nn

import normlab
from normlab.convert import ConversionReport
from normlab.layers import (
    Act,
    BatchNorm,
    GroupNorm,
    LayerNorm,
    NormAct,
    ProxyNormAct,
    WSConv2d,
)

from .activation_calls import run_counting
from .models.helpers import pn_input_report

# -- a torchvision-style ResNet, written here ------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: one ReLU module called twice, after bn1 and after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.head = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU())
        self.bn_f = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        x = F.relu(self.bn_f(self.head(x)))  # a functional relu
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial affine values and running statistics in every BatchNorm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | BatchNorm):
                continue
            n = m.num_features if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) else m.num_channels
            if m.weight is not None:
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)
            if m.running_mean is not None:
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
    return model


def _entries(report: ConversionReport) -> list[tuple[str, str]]:
    return [(e.action, e.path) for e in report.entries]


EXPECTED_TINY_RESNET = [
    ("norm+act", "bn1 + relu"),
    ("norm+act", "layer1.0.bn1 + layer1.0.relu"),
    ("norm", "layer1.0.bn2"),
    ("left alone", "layer1.0.relu"),
    ("norm+act", "layer1.1.bn1 + layer1.1.relu"),
    ("norm", "layer1.1.bn2"),
    ("left alone", "layer1.1.relu"),
    ("norm+act", "layer2.0.bn1 + layer2.0.relu"),
    ("norm", "layer2.0.bn2"),
    ("norm", "layer2.0.downsample.1"),
    ("left alone", "layer2.0.relu"),
    ("norm+act", "head.0 + head.1"),
    ("norm+act", "bn_f + F.relu"),
]


def test_torchvision_style_resnet_report():
    model = _randomize(TinyResNet())
    converted = normlab.convert(model, "gn8+pn")
    report = converted.conversion_report
    assert report.method == "torch.fx"
    assert report.spec == "gn8+pn"
    assert _entries(report) == EXPECTED_TINY_RESNET
    by_path = {e.path: e for e in report.entries}
    assert "addition" in by_path["layer1.0.bn2"].detail  # why: the output goes to the sum
    assert "addition" in by_path["layer1.0.relu"].detail
    assert "running statistics" in by_path["bn1 + relu"].detail  # dropped: GN keeps none
    assert report.counts == {"norm+act": 6, "norm": 4, "left alone": 3}
    assert "gn8+pn" in str(report)


def test_torchvision_style_resnet_modules_and_values():
    model = _randomize(TinyResNet())
    converted = normlab.convert(model, "gn8+pn")
    pair = converted.get_submodule("layer1.0.bn1")
    assert isinstance(pair, NormAct)
    assert isinstance(pair.norm, GroupNorm)
    assert pair.norm.num_groups == 8
    assert isinstance(pair.act, ProxyNormAct)
    torch.testing.assert_close(pair.act.gamma, model.layer1[0].bn1.weight)
    torch.testing.assert_close(pair.act.beta, model.layer1[0].bn1.bias)
    alone = converted.get_submodule("layer2.0.downsample.1")
    assert isinstance(alone, GroupNorm)
    assert alone.affine
    torch.testing.assert_close(alone.weight, model.layer2[0].downsample[1].weight)
    # the ReLU module of each block stays, for its call after the sum
    assert isinstance(converted.get_submodule("layer1.0.relu"), nn.ReLU)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    x = torch.randn(4, 3, 16, 16)
    out = converted(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    calls, bad = pn_input_report(converted, x)
    assert calls == 6
    assert bad == []


def test_the_input_model_is_not_modified():
    model = _randomize(TinyResNet())
    before = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    out = model(x)
    converted = normlab.convert(model, "ln+pn")
    assert converted is not model
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(model(x), out)
    assert not hasattr(model, "conversion_report")


@pytest.mark.parametrize("training", [True, False])
def test_bn_to_bn_leaves_outputs_unchanged(training):
    model = _randomize(TinyResNet()).train(training)
    converted = normlab.convert(model, "bn")
    assert converted.training == training
    assert isinstance(converted.get_submodule("layer1.0.bn1").norm, BatchNorm)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    expected, out = model(x), converted(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    if training:  # the running statistics move the same way
        source = model.layer1[0].bn1
        target = converted.get_submodule("layer1.0.bn1").norm
        torch.testing.assert_close(target.running_mean, source.running_mean)
        torch.testing.assert_close(target.running_var, source.running_var)
        assert int(target.num_batches_tracked) == int(source.num_batches_tracked)


def test_bn_eps_and_momentum_are_carried():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=1e-3, momentum=0.3), nn.ReLU())
    converted = normlab.convert(_randomize(model).eval(), "bn")
    norm = converted.get_submodule("1").norm
    assert (norm.eps, norm.momentum) == (1e-3, 0.3)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(converted(x), model(x))


def test_act_overrides_the_matched_activation():
    converted = normlab.convert(TinyResNet(), "gn8+pn", act="silu")
    names = {m.activation.name for m in converted.modules() if isinstance(m, ProxyNormAct)}
    assert names == {"silu"}
    kept = normlab.convert(TinyResNet(), "gn8+pn")
    assert {m.activation.name for m in kept.modules() if isinstance(m, ProxyNormAct)} == {"relu"}


class Functional(nn.Module):
    """Activations as functions and methods, with and without a usable BatchNorm before."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.bn4, self.bn5 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.act = nn.GELU()

    def forward(self, x):
        a = torch.relu(self.bn1(x))
        b = self.bn2(a).sigmoid()
        c = F.leaky_relu(self.bn3(b), 0.2)  # normlab's leaky_relu has slope 0.01
        d = self.bn4(c)
        e = self.act(d) + d  # bn4's output has two users
        f = F.relu6(self.bn5(e))  # no normlab activation step for relu6
        return F.silu(f)  # its input is not a normalization output


def test_functional_activations_and_what_cannot_be_fused():
    converted = normlab.convert(Functional(), "gn4+pn")
    entries = converted.conversion_report.entries
    assert [(e.action, e.path) for e in entries] == [
        ("norm+act", "bn1 + torch.relu"),
        ("norm+act", "bn2 + .sigmoid()"),
        ("norm", "bn3"),
        ("left alone", "F.leaky_relu"),
        ("norm", "bn4"),
        ("left alone", "act"),
        ("norm", "bn5"),
        ("left alone", "F.relu6"),
        ("left alone", "F.silu"),
    ]
    details = {e.path: e.detail for e in entries}
    assert "negative_slope=0.2" in details["bn3"]
    assert "2 users" in details["bn4"]
    assert "converted alone" in details["act"]
    assert "no activation step for F.relu6" in details["bn5"]
    assert "not a normalization output" in details["F.silu"]
    assert converted.get_submodule("bn2").act.activation.name == "sigmoid"
    converted(torch.randn(2, 8, 4, 4)).sum().backward()


def test_shared_batchnorm_is_converted_once_without_its_activation():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            return F.relu(self.bn(x)) + self.bn(x * 2)

    converted = normlab.convert(Shared(), "gn8")
    report = converted.conversion_report
    assert [(e.action, e.path) for e in report.entries][:1] == [("norm", "bn")]
    assert "called at 2 places" in report.entries[0].detail
    assert report.by_action("left alone")[0].path == "F.relu"
    assert isinstance(converted.bn, GroupNorm)


def test_reverse_conversion_of_a_normlab_model():
    model = normlab.models.create("resnet20", norm="gn8+pn", width=0.5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ProxyNormAct):
                m.gamma.uniform_(0.5, 1.5)
                m.proxy_beta.uniform_(-0.2, 0.2)
    back = normlab.convert(model, "bn")
    report = back.conversion_report
    assert report.counts == {"norm+act": 19}
    assert "dropped proxy_beta, proxy_gamma" in report.entries[0].detail
    pair = back.get_submodule("layer1.0.norm_act1")
    assert isinstance(pair.norm, BatchNorm)
    assert type(pair.act) is Act
    torch.testing.assert_close(pair.act.gamma, model.layer1[0].norm_act1.act.gamma)
    # back again to PN: γ, β survive the round trip
    again = normlab.convert(back, "gn8+pn")
    torch.testing.assert_close(
        again.get_submodule("layer1.0.norm_act1").act.gamma, model.layer1[0].norm_act1.act.gamma
    )


def test_normlab_bn_model_to_bn_is_unchanged():
    model = _randomize(normlab.models.create("resnet20", width=0.5)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Act):
                m.gamma.uniform_(0.5, 1.5)
    converted = normlab.convert(model, "bn")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(converted(x), model(x))


@pytest.mark.parametrize("training", [True, False])
def test_sync_batchnorm(training):
    model = _randomize(TinyResNet()).train(training)
    converted = normlab.convert(model, "bn", sync_batchnorm=True)
    syncs = [m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm)]
    assert len(syncs) == 10
    assert sum(isinstance(m, nn.ReLU) for m in converted.modules()) == 5  # activations kept
    assert converted.conversion_report.counts == {"norm": 10, "left alone": 9}
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


def test_sync_batchnorm_from_a_normlab_model():
    model = _randomize(normlab.models.create("resnet20", width=0.5)).eval()
    converted = normlab.convert(model, "bn", sync_batchnorm=True)
    pair = converted.get_submodule("layer1.0.norm_act1")
    assert isinstance(pair.norm, nn.SyncBatchNorm)
    assert isinstance(pair.act, nn.ReLU)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["gn8", "bn+pn", "bn/4"])
def test_sync_batchnorm_needs_plain_bn(spec):
    with pytest.raises(ValueError, match="sync_batchnorm=True"):
        normlab.convert(TinyResNet(), spec, sync_batchnorm=True)


# -- models torch.fx cannot trace -----------------------------------------------------------------


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.BatchNorm2d(8)
        )
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.Tanh()
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.features(x)
        if x.mean() > 100:  # data-dependent control flow: torch.fx cannot trace this
            x = x * 0
        return self.fc(self.act(self.bn(x)).mean((2, 3)))


def test_untraceable_model_pairs_only_inside_sequentials(caplog):
    model = _randomize(DataDependent()).eval()
    with caplog.at_level(logging.INFO, logger="normlab.convert"):
        converted = normlab.convert(model, "bn")
    report = converted.conversion_report
    assert report.method == "without torch.fx"
    assert _entries(report) == [
        ("fallback", "(model)"),
        ("norm+act", "features.1 + features.2"),
        ("norm", "features.3"),
        ("norm", "bn"),
        ("left alone", "act"),
    ]
    details = {e.path: e.detail for e in report.entries}
    assert "TraceError" in details["(model)"]
    assert "2 normalization(s) converted alone" in details["(model)"]
    assert "pass example_inputs=(x,)" in details["(model)"]
    assert "not an nn.Sequential" in details["bn"]
    assert "pass example_inputs" in details["bn"]
    assert "last module of features" in details["features.3"]
    assert "no normalization is proven" in details["act"]
    assert type(converted) is DataDependent  # the model's own class is kept
    assert isinstance(converted.features[2], nn.Identity)
    assert isinstance(converted.act, nn.Tanh)  # not proven to follow bn: kept
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)
    assert any(r.levelno == logging.WARNING and "fallback" in r.message for r in caplog.records)


def test_untraceable_model_with_example_inputs_pairs_what_runs_next():
    model = _randomize(DataDependent()).eval()
    x = torch.randn(2, 3, 8, 8)
    converted = normlab.convert(model, "gn4+pn", example_inputs=(x,))
    report = converted.conversion_report
    assert report.method == "without torch.fx (a run recorded on example_inputs)"
    assert _entries(report)[1:] == [
        ("norm+act", "features.1 + features.2"),
        ("norm", "features.3"),
        ("norm+act", "bn + act"),
    ]
    assert "in the run on example_inputs" in report.entries[2].detail
    assert isinstance(converted.act, nn.Identity)
    assert converted.bn.act.activation.name == "tanh"
    back = normlab.convert(model, "bn", example_inputs=x)  # a tensor alone is accepted
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=1e-6)
    assert not model.training  # the input model is not modified
    assert isinstance(model.act, nn.Tanh)


class CrossedOrder(nn.Module):
    """Registered bn1, act1, bn2, act2, but bn1 runs into act2 and bn2 into act1: registration
    order is not call order."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(4), nn.Tanh()
        self.bn2, self.act2 = nn.BatchNorm2d(4), nn.SiLU()

    def forward(self, x):
        if x.sum() > 1e9:
            return x
        return self.act1(self.bn2(self.act2(self.bn1(x))))


class SharedRelu(nn.Module):
    """torchvision's BasicBlock with a data-dependent branch: one ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if out.mean() > 1e9:
            out = -out
        return self.relu(out + x)


class FunctionalAndReused(nn.Module):
    """A functional activation, a BatchNorm output used twice, an Identity placeholder, a
    ReLU registered twice in one Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.drop, self.act = nn.Identity(), nn.GELU()
        self.gelu = nn.GELU()
        relu = nn.ReLU()
        self.seq = nn.Sequential(nn.BatchNorm2d(4), relu, nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.seq.add_module("again", relu)

    def forward(self, x):
        if x.isnan().any():
            return x
        a = F.relu(self.bn1(x))  # functional: cannot be removed from an untraced forward
        b = self.bn2(a)
        c = self.gelu(b) + b  # bn2's output has two uses
        d = self.act(self.drop(self.bn3(c)))  # an Identity in between does not count
        return self.seq(d)


UNTRACEABLE = {"crossed": CrossedOrder, "shared": SharedRelu, "mixed": FunctionalAndReused}


def _activation_calls(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return run_counting(model, x)[1]


@pytest.mark.parametrize("recorded", [False, True])
@pytest.mark.parametrize("name", sorted(UNTRACEABLE))
def test_untraceable_round_trip_is_exact(name, recorded):
    """convert(m, "bn") of an untraceable block computes what it did, and keeps every
    activation call, with or without a recorded run."""
    model = _randomize(UNTRACEABLE[name]()).eval()
    x = torch.randn(2, 4, 5, 5)
    converted = normlab.convert(model, "bn", example_inputs=(x,) if recorded else None)
    assert converted.conversion_report.by_action("fallback")
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)
    assert _activation_calls(converted, x) == _activation_calls(model, x)


def test_untraceable_pairs_follow_calls_not_registration():
    model = _randomize(CrossedOrder()).eval()
    x = torch.randn(2, 4, 3, 3)
    alone = normlab.convert(model, "gn2+pn").conversion_report
    actions = [e.action for e in alone.entries]
    assert actions == ["fallback", "norm", "left alone", "norm", "left alone"]
    paired = normlab.convert(model, "gn2+pn", example_inputs=(x,))
    assert _entries(paired.conversion_report)[1:] == [
        ("norm+act", "bn1 + act2"),
        ("norm+act", "bn2 + act1"),
    ]
    assert paired.bn1.act.activation.name == "silu"
    assert paired.bn2.act.activation.name == "tanh"


def test_untraceable_reasons_in_the_report():
    model = _randomize(FunctionalAndReused()).eval()
    x = torch.randn(2, 4, 3, 3)
    report = normlab.convert(model, "bn", example_inputs=(x,)).conversion_report
    assert _entries(report)[1:] == [
        ("norm", "bn1"),
        ("norm", "bn2"),
        ("norm+act", "bn3 + act"),
        ("left alone", "gelu"),
        ("norm", "seq.0"),
        ("left alone", "seq.1"),
        ("norm", "seq.3"),
    ]
    details = {e.path: e.detail for e in report.entries}
    assert "goes to relu, not to an activation module" in details["bn1"]
    assert "2 uses in the run" in details["bn2"]
    assert "called 2 times" in details["seq.0"]
    unrecorded = normlab.convert(model, "bn").conversion_report
    details = {e.path: e.detail for e in unrecorded.entries}
    assert "registered at several places" in details["seq.0"]


class Branches(nn.Module):
    """Untraceable, calling Sequentials: BN, Identity, ReLU (that ReLU also registered in
    ``shared``); BN, Dropout, ReLU."""

    def __init__(self, share: bool = True) -> None:
        super().__init__()
        relu = nn.ReLU()
        self.a = nn.Sequential(nn.BatchNorm2d(4), nn.Identity(), relu)
        self.b = nn.Sequential(nn.BatchNorm2d(4), nn.Dropout(0.1), nn.ReLU())
        self.shared = nn.Sequential(nn.BatchNorm2d(4), relu if share else nn.ReLU())

    def forward(self, x):
        x = self.a(x) if x.sum() > 0 else -x
        return self.shared(self.b(x))


def test_untraceable_sequential_with_identity_and_shared_module():
    model = _randomize(Branches()).eval()
    converted = normlab.convert(model, "bn")
    assert converted.conversion_report.method == "without torch.fx"
    entries = converted.conversion_report.entries
    assert [(e.action, e.path) for e in entries][1:] == [
        ("norm", "a.0"),
        ("left alone", "a.2"),
        ("norm", "b.0"),
        ("left alone", "b.2"),
        ("norm", "shared.0"),
    ]
    details = {e.path: e.detail for e in entries}
    assert "registered at several places" in details["a.0"]
    assert "is 1 (Dropout)" in details["b.0"]
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)
    unshared = normlab.convert(_randomize(Branches(share=False)).eval(), "bn")
    assert [(e.action, e.path) for e in unshared.conversion_report.entries][1:] == [
        ("norm+act", "a.0 + a.2"),
        ("norm", "b.0"),
        ("left alone", "b.2"),
        ("norm+act", "shared.0 + shared.1"),
    ]
    assert isinstance(unshared.a[2], nn.Identity)


def test_example_inputs_errors():
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple"):
        normlab.convert(DataDependent(), "bn", example_inputs={"x": 1})
    with pytest.raises(ValueError, match="could not run the model on example_inputs"):
        normlab.convert(DataDependent(), "bn", example_inputs=(torch.randn(2, 5, 8, 8),))


def test_script_module_is_refused_with_the_fix():
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU()))
    with pytest.raises(TypeError, match=r"convert on the eager model, then torch\.jit\.script"):
        normlab.convert(scripted, "gn2")


def test_scripted_submodule_is_left_alone_and_reported():
    model = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), torch.jit.script(nn.BatchNorm2d(4)))
    report = normlab.convert(_randomize(model).eval(), "bn").conversion_report
    assert ("left alone", "2") in _entries(report)
    assert "convert the eager module, then script it" in report.entries[-1].detail


def test_untraceable_submodule_without_norm_is_traced_as_a_leaf():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), Gate())
    converted = normlab.convert(model, "ln+pn")
    report = converted.conversion_report
    assert report.method.startswith("torch.fx")
    assert "leaves" in report.method
    assert _entries(report) == [("norm+act", "1 + 2")]
    converted(torch.randn(2, 3, 4, 4))


def test_report_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="normlab.convert"):
        normlab.convert(TinyResNet(), "gn8")
    assert any("conversion to 'gn8'" in r.message for r in caplog.records)


# -- convolutions, errors, odd inputs ------------------------------------------------------------


def test_weight_modifiers_convert_convs_and_back():
    model = _randomize(TinyResNet()).eval()
    ws = normlab.convert(model, "gn8+ws").eval()
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8
    assert all(isinstance(c, WSConv2d) for c in convs)
    assert len(ws.conversion_report.by_action("conv")) == 8
    torch.testing.assert_close(ws.conv1.weight, model.conv1.weight)  # raw weights carried
    plain = normlab.convert(ws, "gn8").eval()
    assert all(type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(plain(x), ws(x), rtol=1e-4, atol=1e-5)  # effective weights


def test_convert_to_nf_drops_what_has_no_place():
    converted = normlab.convert(TinyResNet(), "nf")
    entry = converted.conversion_report.entries[0]
    assert "dropped γ, β" in entry.detail
    assert isinstance(converted.get_submodule("layer2.0.bn2"), nn.Identity)
    converted(torch.randn(2, 3, 8, 8))


def test_group_count_that_cannot_divide_names_the_module():
    model = nn.Sequential(nn.Conv2d(3, 12, 1), nn.Sequential(nn.BatchNorm2d(12), nn.ReLU()))
    with pytest.raises(ValueError, match=r"cannot convert 1\.0: 8 groups do not divide 12"):
        normlab.convert(model, "gn8+pn")


def test_a_batchnorm_alone_and_a_model_without_one():
    bn = _randomize(nn.Sequential(nn.BatchNorm2d(8)))[0]
    converted = normlab.convert(bn, "ln")
    assert isinstance(converted, LayerNorm)
    torch.testing.assert_close(converted.weight, bn.weight)
    nothing = normlab.convert(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU()), "gn2")
    assert nothing.conversion_report.counts == {"left alone": 1}
    with pytest.raises(TypeError, match=r"nn\.Module"):
        normlab.convert("resnet50")


def test_batchnorm1d_on_features():
    model = _randomize(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.GELU())).eval()
    converted = normlab.convert(model, "bn")
    x = torch.randn(5, 4)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-5, atol=1e-5)


# -- a property over random stacks ---------------------------------------------------------------

LAYERS = {
    "conv": lambda: nn.Conv2d(8, 8, 3, padding=1),
    "bn": lambda: nn.BatchNorm2d(8),
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "relu6": nn.ReLU6,
}
FUSABLE = {"relu", "gelu", "tanh"}
ACTIVATIONS = FUSABLE | {"relu6"}


@settings(max_examples=25, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=8),
    training=st.booleans(),
)
def test_random_stacks(kinds, training):
    """In a Sequential, a BN is fused with the activation right after it, any other BN is
    converted alone, every other activation is left alone; BN -> bn keeps the outputs."""
    model = _randomize(nn.Sequential(*(LAYERS[k]() for k in kinds))).train(training)
    pairs = sum(a == "bn" and b in FUSABLE for a, b in itertools.pairwise(kinds))
    norms = kinds.count("bn") - pairs
    alone = sum(k in ACTIVATIONS for k in kinds) - pairs
    converted = normlab.convert(model, "bn")
    assert isinstance(converted, fx.GraphModule)
    counts = converted.conversion_report.counts
    assert counts.get("norm+act", 0) == pairs
    assert counts.get("norm", 0) == norms
    assert counts.get("left alone", 0) == alone
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-5)
    gn = normlab.convert(model, "gn4+pn")
    assert sum(isinstance(m, ProxyNormAct) for m in gn.modules()) == pairs


# -- BatchNorms carrying their own activation, placeholders, odd BatchNorms --------------------


class NormThenAct(nn.BatchNorm2d):
    """A BatchNorm subclass with its own activation, under a name convert has never seen."""

    def __init__(self, num_features: int, act: nn.Module) -> None:
        super().__init__(num_features)
        self.act = act

    def forward(self, x):
        return self.act(super().forward(x))


class Doubled(nn.BatchNorm2d):
    """A BatchNorm subclass computing something else (2·BN(x))."""

    def forward(self, x):
        return 2 * super().forward(x)


class Unused(nn.BatchNorm2d):
    """Holds an activation its forward (torch's) never runs: a plain BatchNorm."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.act = nn.ReLU()


def test_batchnorm_carrying_its_activation_is_recognised_by_behaviour():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1),
        NormThenAct(8, nn.GELU()),
        NormThenAct(8, nn.LeakyReLU(0.2)),  # normlab's leaky_relu has slope 0.01
        Doubled(8),
        Unused(8),
        nn.Identity(),
        nn.Tanh(),
    )
    model = _randomize(model).eval()
    converted = normlab.convert(model, "gn4+pn")
    assert _entries(converted.conversion_report) == [
        ("norm+act", "1"),
        ("norm", "2"),
        ("left alone", "3"),
        ("norm+act", "4 + 6"),
    ]
    details = {e.path: e.detail for e in converted.conversion_report.entries}
    assert "LeakyReLU with slope=0.2" in details["2"]
    assert "its own LeakyReLU kept after it" in details["2"]
    assert "computes neither BN(x)" in details["3"]
    assert converted.get_submodule("1").act.activation.name == "gelu"
    assert isinstance(converted.get_submodule("3"), Doubled)
    x = torch.randn(2, 3, 4, 4)
    back = normlab.convert(model, "bn")
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=1e-6)
    assert _activation_calls(back, x) == _activation_calls(model, x)


def test_identity_between_norm_and_activation_does_not_block_pairing():
    model = nn.Sequential(
        nn.BatchNorm2d(4), nn.Identity(), nn.Identity(), nn.ReLU(),
        nn.BatchNorm2d(4), nn.Dropout(0.2), nn.ReLU(),
    )  # fmt: skip
    model = _randomize(model).eval()
    converted = normlab.convert(model, "bn")
    assert _entries(converted.conversion_report) == [
        ("norm+act", "0 + 3"),
        ("norm", "4"),
        ("left alone", "6"),
    ]
    assert "its output goes to 5 (Dropout)" in converted.conversion_report.entries[1].detail
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(converted(x), model(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_without_running_statistics_round_trip(momentum):
    model = nn.Sequential(
        nn.BatchNorm2d(4, track_running_stats=False, momentum=momentum),
        nn.ReLU(),
        nn.BatchNorm2d(4, momentum=momentum),
    )
    model = _randomize(model).eval()
    converted = normlab.convert(model, "bn")
    assert "track_running_stats=False" in converted.conversion_report.entries[0].detail
    assert converted.get_submodule("0").norm.running_mean is None
    x = torch.randn(3, 4, 3, 3)
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)


ZOO = {
    "resnet20": {"width": 0.5},
    "resnet18": {"width": 0.25},
    "resnext50_32x4d": {"width": 0.25},
    "efficientnet_b0": {"width": 0.25},
    "cnn10": {},
    "resnet56_post": {"width": 0.25},
    "random_net": {},
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_normlab_zoo_round_trip(name):
    """convert(m, "bn") of a BatchNorm model of normlab's zoo computes the same outputs."""
    model = _randomize(normlab.models.create(name, norm="bn", **ZOO[name])).eval()
    x = torch.randn(2, 3, 32, 32)
    converted = normlab.convert(model, "bn")
    assert not converted.conversion_report.by_action("fallback")
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)
    assert _activation_calls(converted, x) == _activation_calls(model, x)


class ModeDependent(nn.Module):
    """A forward that reads self.training inline: a graph traced in one mode would compute the
    other mode wrongly."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.relu = nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x):
        x = self.bn(x)
        if self.training:
            x = x * 0.5
        return self.relu(x)


@pytest.mark.parametrize("training", [True, False])
def test_forward_reading_training_mode_is_not_traced(training):
    model = _randomize(ModeDependent()).train(training)
    converted = normlab.convert(model, "bn")
    report = converted.conversion_report
    assert report.method == "without torch.fx"
    assert "different code in training and in evaluation mode" in report.entries[0].detail
    assert type(converted) is ModeDependent
    x = torch.randn(3, 4, 3, 3)
    for mode in (True, False):
        model.train(mode)
        converted.train(mode)
        torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)


class HeadDropout(nn.Module):
    """timm's classifier heads: F.dropout(x, p, training=self.training) in a traced forward."""

    def __init__(self) -> None:
        super().__init__()
        self.bn, self.relu, self.fc = nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(F.dropout(self.relu(self.bn(x)), 0.5, training=self.training))


def test_training_flag_argument_follows_the_mode():
    model = _randomize(HeadDropout()).train()
    converted = normlab.convert(model, "bn")
    assert converted.conversion_report.method == "torch.fx"
    assert _entries(converted.conversion_report) == [("norm+act", "bn + relu")]
    x = torch.randn(8, 16)
    for mode in (True, False):
        model.train(mode)
        converted.train(mode)
        torch.manual_seed(0)
        expected = model(x)
        torch.manual_seed(0)
        torch.testing.assert_close(converted(x), expected, rtol=0, atol=1e-6)
    converted.train()
    assert not torch.equal(converted(x), converted(x))  # dropout in training
    converted.eval()
    assert torch.equal(converted(x), converted(x))


class Untraceable(nn.Module):
    """Wraps a stack in a data-dependent branch torch.fx cannot trace."""

    def __init__(self, stack: nn.Sequential) -> None:
        super().__init__()
        self.stack = stack

    def forward(self, x):
        if x.sum() > 1e9:
            return x
        return self.stack(x)


@settings(max_examples=20, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(LAYERS)), min_size=1, max_size=8),
    recorded=st.booleans(),
)
def test_random_untraceable_stacks(kinds, recorded):
    """Without a graph, a stack pairs exactly what the traced stack pairs (inside a Sequential,
    or by a recorded run), and converting to bn keeps outputs and activation calls."""
    model = _randomize(Untraceable(nn.Sequential(*(LAYERS[k]() for k in kinds)))).eval()
    x = torch.randn(3, 8, 4, 4)
    pairs = sum(a == "bn" and b in FUSABLE for a, b in itertools.pairwise(kinds))
    converted = normlab.convert(model, "bn", example_inputs=(x,) if recorded else None)
    counts = converted.conversion_report.counts
    assert counts["fallback"] == 1
    assert counts.get("norm+act", 0) == pairs
    assert counts.get("norm", 0) == kinds.count("bn") - pairs
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)
    assert _activation_calls(converted, x) == _activation_calls(model, x)
