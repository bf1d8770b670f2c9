"""normlab.convert on timm's model zoo: fused norm-act modules, Identity placeholders, exact
round trips, every activation call kept (counted), finite training after conversion to PN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normlab
from normlab.layers import NormAct, ProxyNormAct

from .activation_calls import run_counting
from .timm_support import import_timm

timm = import_timm()
pytestmark = pytest.mark.skipif(timm is None, reason="timm is not installed")


def _timm_activations() -> tuple[type[nn.Module], ...]:
    from timm.layers import activations

    own = [v for v in vars(activations).values() if isinstance(v, type)]
    return tuple(v for v in own if issubclass(v, nn.Module))


def _run(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The model's output on ``x`` and how many activation calls computed it."""
    return run_counting(model, x, _timm_activations())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these small inputs gain nothing from more, and on a loaded machine
    more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    "resnet50": "gn8+pn",  # ResNet: 33 BN → ReLU pairs, drop_block Identity in each block
    "efficientnet_b0": "gn8+pn",  # EfficientNet: BatchNormAct2d with SiLU
    "tf_efficientnet_lite0": "gn8+pn",  # BatchNormAct2d with ReLU6 (no normlab step)
    "mobilenetv3_small_100": "gn8+pn",  # MobileNetV3: Hardswish (no normlab step) and ReLU
    "mobilenetv3_large_100": "gn8+pn",
    "regnety_002": "gn8+pn",  # RegNet-Y: group convs, SE
    "densenet121": "gn8+pn",  # DenseNet: every BatchNorm a BatchNormAct2d
    "cs3darknet_s": "gn8+pn",  # CSP-Darknet (cross-stage partial)
    "dla46_c": "gn8+pn",  # DLA: aggregation trees
    "res2net50_26w_4s": "gn2+pn",  # Res2Net: 26-channel scales
    "ghostnet_100": "gn4+pn",  # GhostNet: cheap ghost features (12-channel halves)
    "ese_vovnet19b_slim_dw": "gn8+pn",  # VoVNet: one-shot aggregation, ConvNormAct
    "dpn68": "gn2+pn",  # DPN: dual paths, BatchNormAct2d before each conv
    "hrnet_w18_small": "gn8+pn",  # HRNet: parallel resolutions, fuse layers
    "mixnet_s": "gn4+pn",  # MixNet: mixed kernel sizes, ReLU and SiLU
}
SLOW_ARCHITECTURES = {
    "cspresnet50": "gn8+pn",
    "dla34": "gn8+pn",
    "selecsls42b": "gn8+pn",
    "rexnet_100": "ln+pn",  # 27-channel stages: no group count but 1 (and 3, 9, 27) fits all
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
        out = back(x)  # without hooks: NormAct runs its fused path
        _, back_calls = _run(back, x)
    report = back.conversion_report
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert len(report.by_action("norm+act")) + len(report.by_action("norm")) == norms
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6 * expected.abs().max().item())
    assert back_calls == calls
    pn = normlab.convert(model, spec).train()
    out, pn_calls = _run(pn, x)
    assert pn_calls == calls
    pairs = sum(isinstance(m, ProxyNormAct) for m in pn.modules())
    assert pairs == len(report.by_action("norm+act"))
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

    # a real drop-block in between (in layers 3 and 4): not a pair, and it still drops in training
    enabled = timm.create_model("resnet18d", pretrained=False, drop_block_rate=0.2).eval()
    converted = normlab.convert(enabled, "gn8+pn")
    blocked = {e.path: e.detail for e in converted.conversion_report.by_action("norm")}
    assert "layer4.0.drop_block (DropBlock2d)" in blocked["layer4.0.bn1"]
    assert len(converted.conversion_report.by_action("norm+act")) == 3 + 4
    called = {n.target for n in converted.graph.nodes if n.op == "call_module"}
    assert "layer4.0.drop_block" in called  # a module call: it drops in training mode
    assert type(converted.get_submodule("layer4.0.drop_block")).__name__ == "DropBlock2d"
