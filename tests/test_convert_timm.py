"""normlab.convert on timm's model zoo: fused norm-act modules, Identity placeholders, exact
round trips, every activation call kept (counted), finite training after conversion to PN."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import normlab
from normlab.layers import ActivationStep, NormAct, ProxyNormAct

from .timm_support import import_timm

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed")

# activations as functions and tensor methods (counted where no activation module runs them)
FUNCTIONAL = {"relu", "relu_", "relu6", "silu", "gelu", "hardswish", "hardsigmoid", "sigmoid"}
FUNCTIONAL |= {"sigmoid_", "tanh", "tanh_", "elu", "leaky_relu", "mish", "softplus", "hardtanh"}
TORCH_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid)
TORCH_ACTIVATIONS += (nn.Sigmoid, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.Mish, nn.PReLU, nn.Hardtanh)


def _activation_modules() -> tuple[type[nn.Module], ...]:
    from timm.layers import activations

    own = [v for v in vars(activations).values() if isinstance(v, type)]
    return (*TORCH_ACTIVATIONS, ActivationStep, *(v for v in own if issubclass(v, nn.Module)))


class ActivationCalls(TorchFunctionMode):
    """Counts activation calls while active: calls of activation modules (torch's, timm's,
    normlab's activation steps), and functional activations outside such a module."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.calls, self.depth, self.handles = 0, 0, []
        for module in model.modules():
            if isinstance(module, _activation_modules()):
                self.handles.append(module.register_forward_pre_hook(self._enter))
                self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, module, args) -> None:
        self.calls += self.depth == 0
        self.depth += 1

    def _leave(self, module, args, output) -> None:
        self.depth -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.depth == 0 and getattr(func, "__name__", "") in FUNCTIONAL:
            self.calls += 1
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        for handle in self.handles:
            handle.remove()


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The model's output on ``x`` and how many activation calls computed it."""
    counter = ActivationCalls(model)
    with counter:
        out = model(x)
    return out, counter.calls


def _randomize(model: nn.Module) -> nn.Module:
    """Mildly random affine and running statistics in every BatchNorm (values a deep random
    network survives), so that carrying them wrongly shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
                m.bias.copy_(0.2 * torch.rand(n, generator=generator) - 0.1)
                m.running_mean.copy_(0.2 * torch.rand(n, generator=generator) - 0.1)
                m.running_var.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
    return model


# name -> the PN scheme whose group count divides every channel count of the model
ARCHITECTURES = {
    "resnet18d": "gn8+pn",  # ResNet-D: deep stem, avg-pool downsample, drop_block Identity
    "efficientnet_b0": "gn8+pn",  # EfficientNet: BatchNormAct2d with SiLU
    "tf_efficientnet_lite0": "gn8+pn",  # BatchNormAct2d with ReLU6 (no normlab step)
    "mobilenetv3_small_100": "gn8+pn",  # MobileNetV3: Hardswish (no normlab step) and ReLU
    "regnety_002": "gn8+pn",  # RegNet-Y: group convs, SE
    "densenet121": "gn8+pn",  # DenseNet: every BatchNorm a BatchNormAct2d
    "cs3darknet_s": "gn8+pn",  # CSP-Darknet (cross-stage partial)
    "dla46_c": "gn8+pn",  # DLA: aggregation trees
    "res2net50_26w_4s": "gn2+pn",  # Res2Net: 26-channel scales
    "ghostnet_100": "gn4+pn",  # GhostNet: cheap ghost features (12-channel halves)
    "ese_vovnet19b_slim_dw": "gn8+pn",  # VoVNet: one-shot aggregation, ConvNormAct
    "dpn68": "gn2+pn",  # DPN: dual paths, BatchNormAct2d before each conv
}
SLOW_ARCHITECTURES = {
    "resnet50": "gn8+pn",
    "mobilenetv3_large_100": "gn8+pn",
    "cspresnet50": "gn8+pn",
    "dla34": "gn8+pn",
    "mixnet_s": "gn4+pn",
    "hrnet_w18_small": "gn8+pn",
    "selecsls42b": "gn8+pn",
    "rexnet_100": "gn2+pn",
    "resnext26ts": "gn8+pn",
    "regnetx_002": "gn8+pn",
}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomize(timm.create_model(name, pretrained=False, num_classes=10)).eval()


def _check_architecture(name: str, spec: str) -> None:
    """convert(m, "bn") computes the same outputs with the same activation calls; the scheme
    keeps every activation call and trains with finite values and gradients."""
    model = _model(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, calls = _run(model, x)
        back = normlab.convert(model, "bn")
        out, back_calls = _run(back, x)
    assert back.conversion_report.counts.get("norm+act", 0) > 0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 * expected.abs().max().item())
    assert back_calls == calls
    pn = normlab.convert(model, spec).train()
    out, pn_calls = _run(pn, x)
    assert pn_calls == calls
    assert any(isinstance(m, ProxyNormAct) for m in pn.modules())
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in pn.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_timm_architecture(name):
    _check_architecture(name, ARCHITECTURES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_ARCHITECTURES))
def test_timm_architecture_slow(name):
    _check_architecture(name, SLOW_ARCHITECTURES[name])


def test_batch_norm_act_keeps_its_activation():
    """The issue's reproduction: a BatchNormAct2d converted to "bn" lost its SiLU (0.57)."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        timm.layers.BatchNormAct2d(16, act_layer=nn.SiLU),
        nn.Conv2d(16, 16, 3, padding=1),
    )
    model = _randomize(model).eval()
    x = torch.randn(2, 3, 8, 8)
    back = normlab.convert(model, "bn")
    entry = back.conversion_report.entries[0]
    assert (entry.action, entry.path, entry.found) == (
        "norm+act",
        "1",
        "BatchNormAct2d(16, act=SiLU)",
    )
    assert isinstance(back.get_submodule("1"), NormAct)
    assert back.get_submodule("1").act.activation.name == "silu"
    assert torch.equal(back(x), model(x))
    pn = normlab.convert(model, "gn8+pn")
    pair = pn.get_submodule("1")
    assert isinstance(pair.act, ProxyNormAct)
    assert pair.act.activation.name == "silu"
    torch.testing.assert_close(pair.act.gamma, model[1].weight)


def test_batch_norm_act_without_a_normlab_step_keeps_its_own():
    model = nn.Sequential(
        timm.layers.BatchNormAct2d(8, act_layer=nn.Hardswish),
        timm.layers.BatchNormAct2d(8, act_layer=nn.ReLU6),
        timm.layers.BatchNormAct2d(8, apply_act=False),  # a plain BatchNorm, followed by a ReLU
        nn.ReLU(),
    )
    model = _randomize(model).eval()
    converted = normlab.convert(model, "gn4+pn")
    report = converted.conversion_report
    assert [(e.action, e.path) for e in report.entries] == [
        ("norm", "0"),
        ("norm", "1"),
        ("norm+act", "2 + 3"),
    ]
    assert "normlab has no activation step for Hardswish" in report.entries[0].detail
    assert "its own Hardswish kept after it" in report.entries[0].detail
    kept = converted.get_submodule("0")
    assert isinstance(kept, nn.Sequential)
    assert isinstance(kept.act, nn.Hardswish)
    assert isinstance(converted.get_submodule("1").act, nn.ReLU6)
    x = torch.randn(2, 8, 4, 4)
    back = normlab.convert(model, "bn")
    assert torch.equal(back(x), model(x))


def test_batch_norm_act_with_a_drop_layer_keeps_drop_then_act():
    norm = timm.layers.BatchNormAct2d(8, act_layer=nn.SiLU, drop_layer=lambda: nn.Dropout(0.5))
    model = _randomize(nn.Sequential(nn.Conv2d(3, 8, 1), norm)).eval()
    converted = normlab.convert(model, "gn4+pn")
    entry = converted.conversion_report.entries[0]
    assert entry.action == "norm"
    assert "Dropout runs between the BatchNorm and SiLU" in entry.detail
    kept = converted.get_submodule("1")
    assert [type(m) for m in kept] == [normlab.layers.GroupNorm, nn.Dropout, nn.SiLU]
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(normlab.convert(model, "bn")(x), model(x), rtol=0, atol=1e-6)


def test_sync_batchnorm_of_batch_norm_act_keeps_the_activation():
    model = _randomize(nn.Sequential(timm.layers.BatchNormAct2d(8, act_layer=nn.GELU))).eval()
    converted = normlab.convert(model, "bn", sync_batchnorm=True)
    kept = converted.get_submodule("0")
    assert isinstance(kept.norm, nn.SyncBatchNorm)
    assert isinstance(kept.act, nn.GELU)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-6)


def test_drop_block_identity_does_not_block_pairing():
    """timm's ResNet puts a drop_block (nn.Identity when disabled) between bn and act: 3 stem
    pairs and every block's bn1 → drop_block → act1 pair; bn2 goes to the sum."""
    model = _model("resnet18d")
    report = normlab.convert(model, "gn8+pn").conversion_report
    pairs = [e.path for e in report.by_action("norm+act")]
    assert len(pairs) == 3 + 8
    assert "layer1.0.bn1 + layer1.0.act1" in pairs
    enabled = timm.create_model("resnet18d", pretrained=False, drop_block_rate=0.1).eval()
    report = normlab.convert(enabled, "gn8+pn").conversion_report
    blocked = {e.path: e.detail for e in report.by_action("norm")}
    assert "DropBlock2d" in blocked["layer4.0.bn1"]  # a real drop-block in between: not a pair
