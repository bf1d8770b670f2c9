"""Every scheme through PyTorch's toolchain: torch.compile (train, forward and backward, with no
graph break), torch.export, ONNX export (run by onnxruntime) and torch.jit.trace, each against
the eager model with the same parameters.

The default run covers every scheme through every tool on a small net built from its layers,
and the CIFAR-size models of the zoo (export, trace; one compiled training step, one ONNX
export, one Inductor step); ``pytest -m slow`` runs each family through every tool, the full
matrix (every family x every scheme x every tool) and Inductor on whole models.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings

import pytest
import torch
from torch import Tensor, nn

from normlab import scheme
from normlab.layers import BatchDependentNorm
from tests.models.helpers import CIFAR, small

SCHEMES = ["bn", "gn8+pn", "ln+pn", "bn+pn", "in+pn", "gn8+ws", "frn", "evo-b0", "evo-s0", "nf"]
FAMILIES = {  # one model of each family of the zoo
    "resnet_v2 (CIFAR)": "resnet20",
    "resnet_v2 (ImageNet)": "resnet18",
    "resnext": "resnext50_32x4d",
    "efficientnet": "efficientnet_b0",
    "cnn": "cnn10",
    "resnet_post": "resnet56_post",
    "nf_resnet": "nf_resnet20",
    "random_net": "random_net",
}
RTOL = 1e-4
# whole models: 4 samples (EvoNorm-B0 training at 2 samples of 1x1 maps gives NaN gradients in
# eager PyTorch already, which no comparison can check)
BATCH = 4


class SmallNet(nn.Module):
    """conv → norm+act → conv → norm+act (φ = ``act``) → conv → norm, from one scheme: every
    layer kind a scheme builds, at a size that compiles in seconds."""

    def __init__(self, spec: str, act: str | None = None, channels: int = 8) -> None:
        super().__init__()
        s = scheme(spec, act=act)
        self.body = nn.Sequential(
            s.conv(3, channels, 3),
            s.norm_act(channels),
            s.conv(channels, channels, 3),
            s.norm_act(channels),
            s.conv(channels, channels, 1),
            s.norm(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Parameters away from their initial values (γ ≠ 1, β ≠ 0 ...), so that every term of
    every layer is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def build(name: str, spec: str) -> nn.Module:
    # no dropout: compiled and eager training draw different masks
    extra = {"dropout": 0.0} if name.startswith("efficientnet") else {}
    try:
        model = small(name, norm=spec, **extra)
        return calibrated(seeded(model), model_input(name, seed=7))
    except ValueError as error:  # the model refuses the scheme (e.g. PN in a post-act ResNet),
        # or the scheme refuses the input
        pytest.skip(f"{name} does not take {spec}: {error}")


def model_input(name: str, seed: int = 0) -> Tensor:
    """BATCH samples, 32x32 for the CIFAR models, 96x96 for the ImageNet ones (whose last stage
    then has 3x3 maps, which InstanceNorm normalizes well enough for float32 comparisons)."""
    size = 32 if name in CIFAR else 96
    return torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(seed))


def calibrated(model: nn.Module, x: Tensor) -> nn.Module:
    """Running statistics of the data, as a trained model has (one cumulative-average pass).
    Initial ones (mean 0, variance 1) let a deep evaluation network's activations grow without
    bound (EvoNorm-B0's eval denominator is max(1, ...)): 1e15 outputs that no float32
    comparison can hold to 1e-4."""
    norms = [m for m in model.modules() if isinstance(m, BatchDependentNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        model.train()(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model


def small_net(spec: str, act: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    return seeded(SmallNet(spec, act))


def net_input(batch: int = 3) -> Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def assert_close(got: Tensor, want: Tensor, rtol: float = RTOL) -> None:
    """|got - want| <= rtol·max|want| elementwise: relative to the tensor's scale."""
    scale = want.detach().abs().max().clamp_min(1e-12)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(scale))


def relative_error(got: Tensor, want: Tensor) -> float:
    """|got - want| / |want| in the Frobenius norm, in want's dtype."""
    return float((got.to(want.dtype) - want).norm() / want.norm().clamp_min(1e-12))


def forward_backward(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out * weights).sum(), list(model.parameters()))
    return out.detach(), list(grads)


def check_compile_train(model: nn.Module, x: Tensor, backend: str = "aot_eager") -> None:
    """Training step under torch.compile(fullgraph=True) (a graph break raises) equals eager:
    outputs, every parameter's gradient, and the running statistics it updated.

    Where float32 itself cannot hold a gradient to 1e-4 (deep nets of IN on 3x3 maps: eager
    float32 is 3% off its float64 run), the compiled gradient must instead be as close to the
    float64 run as eager float32 is: within four times its distance, plus 1e-4 (two float32
    roundings of a chaotic gradient land at random distances of one size; a wrong formula is
    off by O(1))."""
    model.train()
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    reference = copy.deepcopy(model).double()
    torch._dynamo.reset()
    out, grads = forward_backward(torch.compile(compiled, backend=backend, fullgraph=True), x)
    expected, expected_grads = forward_backward(eager, x)
    assert_close(out, expected)
    wide_grads = None
    for index, (got, want) in enumerate(zip(grads, expected_grads, strict=True)):
        try:
            assert_close(got, want)
        except AssertionError:
            if wide_grads is None:
                wide_grads = forward_backward(reference, x.double())[1]
            wide = wide_grads[index]
            assert relative_error(got, wide) <= 4 * relative_error(want, wide) + RTOL
    for got, want in zip(compiled.buffers(), eager.buffers(), strict=True):
        assert_close(got.double(), want.double())


def check_compile_eval(model: nn.Module, x: Tensor, backend: str = "aot_eager") -> None:
    model.eval()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend=backend, fullgraph=True)(x)
        assert_close(out, model(x))


def check_export(model: nn.Module, x: Tensor) -> None:
    model.eval()
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert_close(program.module()(x), model(x))


def check_onnx(model: nn.Module, x: Tensor) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model.eval()
    with _quiet():
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    session = ort.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(torch.from_numpy(out), model(x))


def check_trace(model: nn.Module, x: Tensor) -> None:
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # no tensor value is read back while tracing (shape checks are, legitimately)
        warnings.filterwarnings("error", "Converting a tensor to a Python number")
        traced = torch.jit.trace(model, x)
        # another batch size: the trace holds no shape of its example
        generator = torch.Generator().manual_seed(5)
        other = torch.randn((x.shape[0] + 1, *x.shape[1:]), generator=generator)
        assert_close(traced(other), model(other))


@contextlib.contextmanager
def _quiet():
    """The ONNX exporter reports its steps on stdout and warns about torchvision."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


CHECKS = {
    "compile_train": check_compile_train,
    "compile_eval": check_compile_eval,
    "export": check_export,
    "onnx": check_onnx,
    "trace": check_trace,
}


# -- the default run ---------------------------------------------------------------------------

# compile (training), export and trace for every scheme on the small net; compile in eval and
# ONNX for the three ways PN and TLU end (fused GN+PN, the plan after BN, TLU's max)
DEFAULT_CELLS = [
    (tool, spec)
    for tool in CHECKS
    for spec in SCHEMES
    if tool in ("compile_train", "export", "trace") or spec in ("gn8+pn", "bn+pn", "frn")
]


@pytest.mark.parametrize(("tool", "spec"), DEFAULT_CELLS)
def test_scheme_through_tool(tool, spec):
    CHECKS[tool](small_net(spec), net_input())


@pytest.mark.slow
@pytest.mark.parametrize("spec", SCHEMES)
@pytest.mark.parametrize("tool", list(CHECKS))
def test_every_scheme_through_every_tool(spec, tool):
    CHECKS[tool](small_net(spec), net_input())


@pytest.mark.parametrize(
    ("spec", "act"),
    [
        ("gn8+pn", "silu"),
        pytest.param("bn+pn", "gelu", marks=pytest.mark.slow),
        pytest.param("in+pn", "tanh", marks=pytest.mark.slow),
    ],
)
def test_pn_with_other_activations_compiles_and_exports(spec, act):
    """φ without a threshold form: PN's scale-shift tail and quadrature moments."""
    check_compile_train(small_net(spec, act), net_input())
    check_onnx(small_net(spec, act), net_input())


@pytest.mark.parametrize("spec", SCHEMES)
def test_channels_last_matches_contiguous(spec):
    """Eager training on channels-last activations (the memory format GPU convolutions prefer)
    equals the contiguous run; compiled training on channels-last equals eager."""
    model = small_net(spec).to(memory_format=torch.channels_last)
    x = net_input().to(memory_format=torch.channels_last)
    out, grads = forward_backward(copy.deepcopy(model), x)
    expected, expected_grads = forward_backward(copy.deepcopy(model), x.contiguous())
    assert_close(out, expected, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close(got, want, rtol=1e-5)
    if spec in ("gn8+pn", "bn+pn"):
        check_compile_train(model, x)


@pytest.mark.parametrize(
    ("spec", "act"),
    [(spec, None) for spec in SCHEMES] + [("gn8+pn", "leaky_relu"), ("bn+pn", "silu")],
)
def test_bfloat16_autocast(spec, act):
    """Under CPU bfloat16 autocast, training stays within bfloat16 accuracy of float32: the
    output to 5%, every gradient to 30% (normalizing layers' gradients cancel large terms, which
    bfloat16's 8 bits resolve coarsely; a wrong mask or slope gave 50-170%), eager and compiled."""
    model, x = small_net(spec, act), net_input()
    out, grads = forward_backward(copy.deepcopy(model), x)
    runs = [copy.deepcopy(model)]
    if spec in ("gn8+pn", "bn+pn"):
        torch._dynamo.reset()
        runs.append(torch.compile(copy.deepcopy(model), backend="aot_eager", fullgraph=True))
    for run in runs:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_grads = forward_backward(run, x)
        assert relative_error(low, out) < 0.05
        for got, want in zip(low_grads, grads, strict=True):
            assert relative_error(got, want) < 0.3


def test_export_with_a_dynamic_batch():
    """An exported eval model takes any batch size (as deployment needs)."""
    model = small_net("gn8+pn").eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (net_input(3),), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        for size in (1, 5):
            assert_close(program.module()(net_input(size)), model(net_input(size)))


# each family once, under the scheme that exercises most of its layers (PN where it takes it)
FAMILY_COVER = [
    ("resnet20", "gn8+pn"),
    ("resnet18", "bn+pn"),
    ("resnext50_32x4d", "ln+pn"),
    ("efficientnet_b0", "gn8+pn"),
    ("cnn10", "frn"),
    ("resnet56_post", "evo-s0"),
    ("nf_resnet20", "nf"),
    ("random_net", "in+pn"),
]


CIFAR_COVER = [cover for cover in FAMILY_COVER if cover[0] in CIFAR]


@pytest.mark.parametrize(("name", "spec"), [("random_net", "in+pn")])
def test_model_compiles_for_training(name, spec):
    check_compile_train(build(name, spec), model_input(name))


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        c if c[0] != "resnet56_post" else pytest.param(*c, marks=pytest.mark.slow)
        for c in CIFAR_COVER
    ],
)
def test_model_exports_and_traces(name, spec):
    model, x = build(name, spec), model_input(name)
    check_export(model, x)
    check_trace(model, x)


def test_model_exports_to_onnx():
    check_onnx(build("random_net", "bn+pn"), model_input("random_net"))


@pytest.mark.slow
def test_inductor_trains_gn_pn_like_eager():
    """The real compiler on the fused GN+PN step: Inductor's kernels, forward and backward."""
    check_compile_train(small_net("gn8+pn"), net_input(), backend="inductor")


@pytest.mark.slow
@pytest.mark.parametrize(("name", "spec"), FAMILY_COVER)
def test_family_cover_through_every_tool(name, spec):
    """Each family once, under the scheme that exercises most of its layers."""
    for check in CHECKS.values():
        check(build(name, spec), model_input(name))


# -- the full matrix -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("spec", SCHEMES)
@pytest.mark.parametrize("name", list(FAMILIES.values()))
@pytest.mark.parametrize("tool", list(CHECKS))
def test_full_matrix(tool, name, spec):
    CHECKS[tool](build(name, spec), model_input(name))


@pytest.mark.slow
@pytest.mark.parametrize("spec", SCHEMES)
def test_inductor_matrix(spec):
    check_compile_train(build("resnet20", spec), model_input("resnet20"), "inductor")
