"""normlab.fold: the folded model computes the evaluation model's function with standard layers.

Every check starts from non-trivial parameters (γ, β, β̃, γ̃, running statistics, WS gains,
SkipInit gains drawn at random), so that a wrong fold cannot pass by matching an identity.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import normlab
from normlab import layers
from normlab.fold import ChannelAffine, ChannelMax, FoldReport, Gain, Phi
from normlab.models._common import ChannelScale
from tests.models.helpers import small

UNFOLDED = (
    layers.NormAct,
    layers.ActivationStep,
    layers.BatchNorm,
    layers.VarianceNorm,
    layers.GroupNorm,
    layers.WeightSpaceConv2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    ChannelScale,  # EfficientNet's projection scale under +pn, folded into its normalizer
)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as the model tests: small convs on a shared machine run faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every per-channel parameter and running statistic of ``model`` at random, inside the
    range where PN's proxy moments are validated (|γ|, |β| <= 3, |β̃| <= 1, |γ̃| <= 0.5)."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) * (high - low) + low)

    for name, p in model.named_parameters():
        leaf = name.rpartition(".")[2]
        if leaf in ("gamma", "weight") and p.dim() == 1:
            sign = torch.randint(0, 2, p.shape, generator=gen) * 2 - 1
            uniform(p, 0.5, 1.5)
            p.mul_(sign.to(p.dtype))
        elif leaf in ("beta", "proxy_beta", "tau") or (leaf == "bias" and p.dim() == 1):
            uniform(p, -0.5, 0.5)
        elif leaf == "proxy_gamma":
            uniform(p, -0.3, 0.3)
        elif leaf in ("gain", "v"):
            uniform(p, 0.5, 1.5)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            uniform(b, -0.5, 0.5)
        elif name.endswith("running_var"):
            uniform(b, 0.5, 2.0)
    return model


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def check_fold(model: nn.Module, x: torch.Tensor, tolerance: float) -> nn.Module:
    """fold(model) equals model.eval() on x, model untouched; return the folded model."""
    training = model.training
    state = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    folded = normlab.fold(model)
    assert model.training == training
    assert [type(m) for m in model.modules()] == types
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"fold modified {key}"
    assert not folded.training
    model.eval()
    with torch.no_grad():
        expected, got = model(x), folded(x)
    model.train(training)
    assert got.shape == expected.shape
    assert relative_error(got, expected) <= tolerance
    return folded


def left_unfolded(folded: nn.Module) -> list[str]:
    return [
        f"{n}: {type(m).__name__}" for n, m in folded.named_modules() if isinstance(m, UNFOLDED)
    ]


def model_input(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    size = 64 if name.startswith("efficientnet") else 32
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, size, size, generator=generator, dtype=dtype)


def build(name: str, spec: str, act: str | None = None) -> nn.Module:
    kwargs = {} if act is None else {"act": act}
    if name.startswith("efficientnet"):
        kwargs["drop_path_rate"] = 0.0
    if name == "resnet56_post":
        kwargs["skipinit"] = True
    torch.manual_seed(0)
    return randomize(small(name, norm=spec, **kwargs))


MODEL_CASES = [
    ("resnet20", "bn", None),
    ("resnet20", "bn/4", None),
    ("resnet20", "gn8", None),
    ("resnet20", "gn8+pn", None),
    ("resnet20", "gn8+pn", "silu"),
    ("resnet20", "gn8+pn", "gelu"),
    ("resnet20", "gn8+pn", "tanh"),
    ("resnet20", "ln+pn", None),
    ("resnet20", "in+pn", None),
    ("resnet20", "bn+pn", None),
    ("resnet20", "bn+pn", "gelu"),
    ("resnet20", "vn+pn", None),
    ("resnet20", "gn8+ws+pn", None),
    ("resnet20", "bn+sws", None),
    ("resnet20", "ln+cwn+pn", "silu"),
    ("resnet20", "none", None),
    ("resnet20", "frn", None),
    ("resnet50", "bn", None),
    ("resnet50", "gn8+pn", None),
    ("resnext50_32x4d", "bn+pn", None),
    ("resnext50_32x4d", "gn8+pn", "gelu"),
    ("efficientnet_b0", "bn", None),
    ("efficientnet_b0", "gn8+pn", None),
    ("efficientnet_b0", "bn+pn", None),
    ("efficientnet_g16_b0", "ln+pn", None),
    ("cnn10", "bn", None),
    ("cnn10", "bn+pn", "tanh"),
    ("cnn10", "gn8+wn+pn", None),
    ("resnet56_post", "bn", None),
    ("resnet56_post", "gn8", "elu"),
    ("nf_resnet20", "nf", None),
]


@pytest.mark.parametrize(("name", "spec", "act"), MODEL_CASES)
def test_folded_zoo_models_equal_the_eval_model(name, spec, act):
    model = build(name, spec, act)
    folded = check_fold(model.double(), model_input(name, torch.float64), tolerance=1e-10)
    assert not left_unfolded(folded), left_unfolded(folded)
    assert not folded.fold_report.kept, str(folded.fold_report)
    check_float32(model.float(), model_input(name))


def check_float32(model: nn.Module, x: torch.Tensor) -> None:
    """In float32 the folded model is as accurate as the eval model: its error against the
    float64 eval model is within 1e-5, or within three times the float32 eval model's own error
    where that is larger (deep nets with random parameters amplify rounding: ~2e-5 for
    ResNet-50, up to 1e-2 for EfficientNet-B0 with BN + PN, whose random running statistics
    blow activations up to 1e4), and within 1e-5 of the eval model for the shallow nets."""
    folded = check_fold(model, x, tolerance=1e-4)
    exact = copy.deepcopy(model).double().eval()
    model.eval()
    with torch.no_grad():
        ours, theirs, truth = folded(x), model(x), exact(x.double())
    assert relative_error(ours, truth) <= max(1e-5, 3 * relative_error(theirs, truth))
    if sum(isinstance(m, nn.Conv2d) for m in model.modules()) <= 25:
        assert relative_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("name", ["cnn10", "resnet56_post"])
def test_batch_norm_after_every_conv_leaves_no_affine(name):
    """Where every BN follows its conv, BN disappears into the convs: no affine is left, and
    the convs are as many as before."""
    model = build(name, "bn")
    folded = check_fold(model, model_input(name), tolerance=1e-5)
    assert not any(isinstance(m, ChannelAffine) for m in folded.modules())
    count = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in folded.modules()) == count


def test_relu_pn_is_group_norm_then_a_threshold_max():
    model = build("resnet20", "gn8+pn")
    folded = check_fold(model, model_input("resnet20"), tolerance=1e-5)
    pn_steps = sum(isinstance(m, layers.ProxyNormAct) for m in model.modules())
    steps = [m for m in folded.modules() if isinstance(m, nn.Sequential) and len(m) == 2]
    assert len(steps) == pn_steps
    for step in steps:
        assert type(step[0]) is nn.GroupNorm
        assert type(step[1]) is ChannelMax


def test_batch_norm_relu_pn_is_a_conv_then_a_threshold_max():
    block = nn.Sequential(nn.Conv2d(3, 8, 3), normlab.scheme("bn+pn").norm_act(8))
    folded = check_fold(randomize(block), torch.randn(4, 3, 6, 6), tolerance=1e-5)
    assert [type(m) for m in folded.children()] == [nn.Conv2d, ChannelMax]


def test_non_relu_pn_keeps_phi_then_its_affine():
    block = nn.Sequential(nn.Conv2d(3, 8, 3), normlab.scheme("gn2+pn", act="gelu").norm_act(8))
    folded = check_fold(randomize(block), torch.randn(4, 3, 6, 6), tolerance=1e-5)
    _, step = folded.children()
    assert [type(m) for m in step] == [nn.GroupNorm, nn.GELU, ChannelAffine]


@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("bias", [False, True])
def test_torch_batch_norm_folds_into_its_conv(groups, bias):
    """torch's own Conv2d → BatchNorm2d → ReLU, grouped and depthwise, with and without bias."""
    net = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=bias), nn.BatchNorm2d(8), nn.ReLU()
    )
    folded = check_fold(randomize(net).double(), torch.randn(3, 8, 5, 5).double(), 1e-12)
    assert [type(m) for m in folded.children()] == [nn.Conv2d, nn.ReLU]
    assert folded.get_submodule("0").groups == groups


def test_a_shared_conv_output_keeps_the_batch_norm_as_an_affine():
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = layers.BatchNorm(8)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    folded = check_fold(randomize(Fork()), torch.randn(2, 3, 6, 6), tolerance=1e-5)
    assert isinstance(folded.get_submodule("bn"), ChannelAffine)
    assert type(folded.get_submodule("conv")) is nn.Conv2d


def test_a_module_called_twice_is_folded_once():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)
            self.norm_act = normlab.scheme("bn+pn").norm_act(8)

        def forward(self, x):
            return self.norm_act(self.conv(self.norm_act(x)))

    folded = check_fold(randomize(Twice()), torch.randn(2, 8, 5, 5), tolerance=1e-5)
    assert not left_unfolded(folded)
    assert isinstance(folded.get_submodule("norm_act"), nn.Sequential)


def test_a_model_in_training_mode_is_folded_as_its_eval_function():
    model = build("resnet20", "bn+pn").train()
    check_fold(model, model_input("resnet20"), tolerance=1e-5)
    assert model.training


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (lambda: normlab.scheme("gn2+pn").norm_act(8), [nn.GroupNorm, ChannelMax]),
        (lambda: normlab.scheme("ln").norm_act(8, "silu"), [nn.GroupNorm, nn.SiLU]),
        (
            lambda: normlab.scheme("bn+pn").norm_act(8, "tanh"),
            [ChannelAffine, nn.Tanh, ChannelAffine],
        ),
        (lambda: layers.BatchNorm(8), [ChannelAffine]),
        (lambda: layers.InstanceNorm(8), [nn.GroupNorm]),
        (lambda: layers.GroupNorm(8, 2, affine=False), [nn.GroupNorm]),
        (lambda: layers.VarianceNorm(8), [ChannelAffine]),
        (lambda: layers.EvoNormB0(8, nonlinear=False), [ChannelAffine]),
        (lambda: layers.BatchNorm(8, norm_batch_size=2, affine=False), [ChannelAffine]),
        (lambda: nn.BatchNorm2d(8), [ChannelAffine]),
        (lambda: layers.ProxyNormAct(8), [ChannelAffine, ChannelMax]),
        (lambda: layers.GainedAct(8, "relu"), [nn.ReLU, Gain]),
        (lambda: normlab.scheme("frn").norm_act(8), [layers.FilterResponseNorm, ChannelMax]),
        (lambda: layers.WSConv2d(8, 8, 3, padding=1), [nn.Conv2d]),
    ],
)
def test_a_single_module_folds_to_standard_parts(module, expected):
    folded = check_fold(randomize(module()), torch.randn(3, 8, 5, 5), tolerance=1e-5)
    parts = list(folded) if isinstance(folded, nn.Sequential) else [folded]
    assert [type(m) for m in parts] == expected


@pytest.mark.parametrize("spec", ["evo-b0", "evo-s0"])
def test_evonorm_is_kept_and_reported(spec):
    model = build("resnet20", spec)
    folded = check_fold(model, model_input("resnet20"), tolerance=1e-5)
    kept = folded.fold_report.kept
    assert kept
    assert all("nonlinearity" in why or "EvoNorm" in why for why in kept.values())
    assert any(isinstance(m, layers.EvoNormB0 | layers.EvoNormS0) for m in folded.modules())


def test_batch_norm_without_running_statistics_is_kept():
    block = nn.Sequential(nn.Conv2d(3, 8, 3), layers.BatchNorm(8, track_running_stats=False))
    folded = check_fold(block, torch.randn(4, 3, 6, 6), tolerance=1e-5)
    assert "batch statistics" in folded.fold_report.kept["1"]
    assert isinstance(folded.get_submodule("1"), layers.BatchNorm)


def test_a_custom_activation_becomes_phi():
    step = layers.Act(8, "softplus")
    step.activation = layers.Activation("my_softplus", torch.nn.functional.softplus, None, "")
    folded = check_fold(nn.Sequential(nn.Conv2d(3, 8, 1), step), torch.randn(2, 3, 4, 4), 1e-5)
    assert [type(m) for m in folded.children()] == [nn.Conv2d, Phi]


def test_the_report_is_attached_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="normlab.fold"):
        folded = normlab.fold(build("resnet20", "gn8+pn"))
    assert isinstance(folded.fold_report, FoldReport)
    assert folded.fold_report.folded
    assert "folded" in caplog.text


def test_bad_input_raises_clear_errors():
    with pytest.raises(TypeError, match=r"fold expects an nn\.Module, got str"):
        normlab.fold("resnet20")

    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm_act = normlab.scheme("bn").norm_act(3)

        def forward(self, x):
            return self.norm_act(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match=r"torch\.fx can trace"):
        normlab.fold(DataDependent())


def test_the_folded_model_takes_an_empty_batch():
    folded = normlab.fold(build("resnet20", "gn8+pn"))
    assert folded(torch.randn(0, 3, 32, 32)).shape == (0, 10)


SPECS = ["bn", "bn/2", "vn", "gn2", "gn/4", "ln", "in", "frn", "none"]
SPECS += [f"{n}+pn" for n in ("bn", "vn", "gn2", "ln", "in")] + ["gn2+ws+pn", "bn+sws+pn"]


@settings(max_examples=40, deadline=None)
@given(
    spec=st.sampled_from(SPECS),
    act=st.sampled_from(["relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "elu"]),
    conv_groups=st.sampled_from([1, 8]),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_a_block_folds_exactly(spec, act, conv_groups, seed):
    """conv → σN → conv → σN over random parameters, every spec and φ, float64."""
    s = normlab.scheme(spec, act=act)
    block = nn.Sequential(
        s.conv(8, 8, 3, groups=conv_groups), s.norm_act(8), s.conv(8, 8, 1), s.norm_act(8)
    )
    randomize(block, seed).double()
    x = torch.randn(3, 8, 5, 5, generator=torch.Generator().manual_seed(seed)).double()
    folded = check_fold(block, x, tolerance=1e-10)
    assert not left_unfolded(folded)


# -- ONNX ----------------------------------------------------------------------------------------


def export_and_run(folded: nn.Module, x: torch.Tensor, no_grad: bool = False):
    """Export (with gradients off and frozen parameters where ``no_grad``: the in-place path of
    the per-channel parts) and run in onnxruntime."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    if no_grad:
        folded.requires_grad_(False)
    with torch.set_grad_enabled(not no_grad):
        program = torch.onnx.export(folded, (x,), dynamo=True, verbose=False)
    proto = program.model_proto
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return proto, torch.from_numpy(out)


def standard_ops(proto) -> set[str]:
    """The graph's op types; fails on a custom domain or a local function."""
    assert not proto.functions, [f.name for f in proto.functions]
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    return {node.op_type for node in proto.graph.node}


@pytest.fixture(autouse=False)
def quiet_exporter():
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)


@pytest.mark.parametrize(
    ("name", "spec", "act", "expected", "no_grad"),
    [
        ("resnet20", "gn8+pn", None, {"Conv", "Max"}, False),
        ("cnn10", "bn+pn", "gelu", {"Conv", "Gelu", "Mul", "Add"}, True),
    ],
)
def test_the_folded_model_exports_to_standard_onnx(
    name, spec, act, expected, no_grad, quiet_exporter
):
    model = build(name, spec, act).eval()
    x = model_input(name)
    proto, out = export_and_run(normlab.fold(model), x, no_grad)
    ops = standard_ops(proto)
    assert expected <= ops, ops
    with torch.no_grad():
        assert relative_error(out, model(x)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "spec"),
    [("efficientnet_b0", "gn8+pn"), ("efficientnet_b0", "bn"), ("resnet50", "bn+pn")],
)
def test_folded_imagenet_models_export_to_standard_onnx(name, spec, quiet_exporter):
    model = build(name, spec).eval()
    x = model_input(name)
    proto, out = export_and_run(normlab.fold(model), x)
    standard_ops(proto)
    with torch.no_grad():
        assert relative_error(out, model(x)) <= 1e-4


@pytest.mark.slow
def test_the_exported_file_loads_back(tmp_path, quiet_exporter):
    """The exported model serialises to a file and loads back (what a deployment does)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    folded = normlab.fold(build("resnet20", "ln+pn"))
    path = tmp_path / "resnet20.onnx"
    torch.onnx.export(folded, (model_input("resnet20"),), path, dynamo=True, verbose=False)
    standard_ops(onnx.load(path))


@pytest.mark.parametrize("spec", ["gn8+pn", "bn+pn", "bn"])
@pytest.mark.parametrize("act", ["relu", "silu", "tanh"])
def test_gradients_through_the_folded_model_equal_the_eval_model(spec, act):
    """With gradients recorded, the in-place parts run out of place: input gradients match."""
    model = build("resnet20", spec, act).double().eval()
    folded = normlab.fold(model)
    x = model_input("resnet20", torch.float64).requires_grad_()
    (grad_eval,) = torch.autograd.grad(model(x).square().sum(), x)
    (grad_folded,) = torch.autograd.grad(folded(x).square().sum(), x)
    assert relative_error(grad_folded, grad_eval) <= 1e-10


def test_in_place_parts_never_overwrite_a_shared_input():
    """A fold at the block input (read by the shortcut too) must not overwrite it."""
    model = build("resnet20", "bn+pn").eval()
    folded = normlab.fold(model)
    x = model_input("resnet20")
    before = x.clone()
    with torch.no_grad():
        assert relative_error(folded(x), model(x)) <= 1e-5
    assert torch.equal(x, before)
    inplace = [m for m in folded.modules() if getattr(m, "inplace", False)]
    assert inplace


def test_a_timm_resnet_folds_its_batch_norms_into_the_convs():
    """A model normlab did not build: torch's Conv2d → BatchNorm2d pairs of timm's ResNet-18 fold
    into the convs; a BatchNorm2d subclass it does not know (timm's BatchNormAct2d) is kept."""
    from tests.timm_support import import_timm

    timm = import_timm()
    if timm is None:
        pytest.skip("timm is not installed")
    torch.manual_seed(0)
    model = randomize(timm.create_model("resnet18", pretrained=False, num_classes=10))
    folded = check_fold(model, torch.randn(2, 3, 64, 64), tolerance=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert len(folded.fold_report.folded) == 20

    torch.manual_seed(0)
    mobile = randomize(timm.create_model("mobilenetv3_small_100", pretrained=False))
    folded = check_fold(mobile, torch.randn(2, 3, 64, 64), tolerance=1e-5)
    assert folded.fold_report.kept
    assert all("BatchNormAct2d" in why for why in folded.fold_report.kept.values())
