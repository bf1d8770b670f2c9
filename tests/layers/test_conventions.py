"""normlab's conventions against timm's and torch's layers of the same name, pinned.

Each convention is tested twice: with the one setting the README ("Coming from timm or torch.nn")
gives, normlab's layer equals the other library's in float64 (outputs and every gradient); with
the defaults, they differ as documented. timm's layers are tested where timm is installed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.layers import (
    PUBLISHED_GAINS,
    TLU,
    BatchNorm,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    LayerNorm,
    NormAct,
    ScaledWSConv2d,
    VarianceNorm,
    WSConv2d,
    activation_gain,
)
from tests.timm_support import import_timm

# Brock et al.'s gains as published (DeepMind's nfnets code, and timm's copy), all digits.
PUBLISHED = {
    "relu": 1.7139588594436646,
    "leaky_relu": 1.70590341091156,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "tanh": 1.5939117670059204,
    "sigmoid": 4.803835391998291,
    "elu": 1.2716004848480225,
    "softplus": 1.9203323125839233,
    "identity": 1.0,
}


@pytest.fixture(scope="module")
def timm_module():
    module = import_timm()
    if module is None:
        pytest.skip("timm is not installed")
    return module


@pytest.fixture
def timm(timm_module, monkeypatch):
    """timm, with its cast of statistics to float32 (``x.float()`` in FRN and EvoNorm) made a
    no-op on float64 tensors, so that float64 runs compare the formulas to float64 rounding."""
    to_float32 = torch.Tensor.float

    def keep_float64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else to_float32(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "float", keep_float64)
    return timm_module


def _input(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64) * scale


def _randomize(*modules: nn.Module, seed: int = 1) -> None:
    """The same random values in the parameters of each module (matched by order)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for params in zip(*(list(m.parameters()) for m in modules), strict=True):
            value = torch.rand(params[0].shape, generator=generator, dtype=torch.float64) + 0.5
            for p in params:
                p.copy_(value.reshape(p.shape))


def _outputs_and_grads(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    y = module(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    (y * weights).sum().backward()
    return [y.detach(), x.grad] + [p.grad for p in module.parameters()]


def assert_same_layer(
    ours: nn.Module, theirs: nn.Module, x: torch.Tensor, rtol: float = 1e-10, atol: float = 1e-12
) -> None:
    ours, theirs = ours.double(), theirs.double()
    _randomize(ours, theirs)
    for a, b in zip(_outputs_and_grads(ours, x), _outputs_and_grads(theirs, x), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def max_difference(ours: nn.Module, theirs: nn.Module, x: torch.Tensor) -> float:
    ours, theirs = ours.double(), theirs.double()
    _randomize(ours, theirs)
    with torch.no_grad():
        return float((ours(x) - theirs(x)).abs().max())


# -- the published gains ---------------------------------------------------------------------------


def test_published_gains_are_the_published_digits():
    assert PUBLISHED_GAINS == PUBLISHED


def test_published_gains_equal_timms_table(timm):
    from timm.models.nfnet import _nonlin_gamma

    for name, value in PUBLISHED_GAINS.items():
        assert _nonlin_gamma[name] == value, name


def test_exact_gains_differ_from_the_published_ones_by_sampling_error():
    for name, value in PUBLISHED_GAINS.items():
        exact = activation_gain(name)
        assert exact == pytest.approx(value, rel=1e-3)
        if name != "identity":
            assert exact != pytest.approx(value, rel=1e-4), name


def test_cli_moments_prints_the_published_relu_gain(capsys):
    from normlab.cli import main

    assert main(["moments"]) == 0
    out = capsys.readouterr().out
    assert "1.713959" in out  # 1.7139588594436646 to six decimals
    assert "1.713966" not in out  # the value the README and the CLI used to quote


# -- Filter Response Normalization + TLU -----------------------------------------------------------


def _frn_tlu(eps: float | None = None) -> NormAct:
    norm = (
        FilterResponseNorm(16, affine=False) if eps is None else FilterResponseNorm(16, eps, False)
    )
    return NormAct(norm, TLU(16))


def test_frn_tlu_equals_timm_with_eps_1e_5(timm):
    theirs = timm.layers.FilterResponseNormTlu2d(16)
    x = _input(2, 16, 3, 3, scale=0.01)
    assert_same_layer(_frn_tlu(eps=1e-5), theirs, x)


def test_frn_default_eps_differs_from_timm(timm):
    assert FilterResponseNorm(16).eps == 1e-6
    assert timm.layers.FilterResponseNormTlu2d(16).eps == 1e-5
    x = _input(2, 16, 3, 3, scale=0.003)  # ν² ~ 1e-5: ε matters
    assert max_difference(_frn_tlu(), timm.layers.FilterResponseNormTlu2d(16), x) > 1e-2


# -- EvoNorm ---------------------------------------------------------------------------------------


def test_evonorm_b0_equals_timm_with_eps_1e_3_in_training_and_eval(timm):
    ours, theirs = EvoNormB0(16, eps=1e-3).double(), timm.layers.EvoNorm2dB0(16).double()
    assert_same_layer(ours, theirs, _input(4, 16, 5, 5))
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    assert_same_layer(ours, theirs, _input(3, 16, 5, 5, seed=2))


def test_evonorm_b0_default_eps_differs_from_timm(timm):
    assert EvoNormB0(16).eps == 1e-5
    assert timm.layers.EvoNorm2dB0(16).eps == 1e-3
    x = _input(4, 16, 5, 5, scale=0.02)
    assert max_difference(EvoNormB0(16), timm.layers.EvoNorm2dB0(16), x) > 1e-2


def test_evonorm_without_nonlinearity_still_normalizes_where_timm_keeps_only_the_affine(timm):
    x = _input(4, 16, 5, 5, scale=3.0)
    theirs_b0 = timm.layers.EvoNorm2dB0(16, apply_act=False)
    theirs_s0 = timm.layers.EvoNorm2dS0(16, groups=16, apply_act=False)
    affine_only = _randomize_affine_only(x)
    # normlab: B0 without its nonlinearity is Variance Normalization, S0 is x / σ_group
    assert_same_layer(EvoNormB0(16, nonlinear=False), VarianceNorm(16), x)
    s0 = _forward_randomized(EvoNormS0(16, num_groups=4, nonlinear=False), x)
    grouped = x.reshape(x.shape[0], 4, -1)
    sigma = (grouped.var(-1, correction=0, keepdim=True) + 1e-5).sqrt()
    divided = (grouped / sigma).reshape(x.shape)
    torch.testing.assert_close(s0, _randomize_affine_only(divided), rtol=1e-12, atol=1e-12)
    # timm: the affine alone
    torch.testing.assert_close(_forward_randomized(theirs_b0, x), affine_only)
    torch.testing.assert_close(_forward_randomized(theirs_s0, x), affine_only)
    assert (_forward_randomized(EvoNormB0(16, nonlinear=False), x) - affine_only).abs().max() > 1


def _forward_randomized(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    module = module.double()
    _randomize(module)
    with torch.no_grad():
        return module(x)


def _randomize_affine_only(x: torch.Tensor) -> torch.Tensor:
    """weight·x + bias with the values :func:`_randomize` gives a (weight, bias) layer."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.rand(x.shape[1], generator=generator, dtype=torch.float64) + 0.5
    bias = torch.rand(x.shape[1], generator=generator, dtype=torch.float64) + 0.5
    return x * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def test_evonorm_s0_groups_min_32_c_where_timm_fixes_32(timm):
    x = _input(2, 64, 4, 4)
    assert EvoNormS0(64).num_groups == 32
    assert_same_layer(EvoNormS0(64), timm.layers.EvoNorm2dS0(64), x)
    assert EvoNormS0(16).num_groups == 16
    with pytest.raises(AssertionError):  # timm's 32 groups do not divide 16 channels
        timm.layers.EvoNorm2dS0(16).double()(_input(2, 16, 4, 4))
    theirs = timm.layers.EvoNorm2dS0(16, groups=16)
    assert_same_layer(EvoNormS0(16), theirs, _input(2, 16, 4, 4))


# -- normlab's LayerNorm is timm's GroupNorm1, not its LayerNorm2d ---------------------------------


def test_layer_norm_is_group_norm_with_one_group_as_timms_group_norm1(timm):
    x = _input(2, 16, 4, 4)
    assert_same_layer(LayerNorm(16), timm.layers.GroupNorm1(16), x)
    assert max_difference(LayerNorm(16), timm.layers.LayerNorm2d(16), x) > 0.1


def test_layer_norm_equals_torch_layer_norm_over_c_h_w_at_its_initial_affine():
    """torch's LayerNorm([C, H, W]) has an elementwise affine; normlab's a per-channel one: they
    agree where torch's affine is constant over positions, as at its initialisation."""
    x = _input(2, 16, 4, 4)
    ours, theirs = LayerNorm(16).double(), nn.LayerNorm([16, 4, 4]).double()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    assert sum(p.numel() for p in ours.parameters()) == 2 * 16
    assert sum(p.numel() for p in theirs.parameters()) == 2 * 16 * 4 * 4


# -- Weight Standardization ------------------------------------------------------------------------


def _conv_pair(ours_cls, theirs, **ours_kwargs):
    ours = ours_cls(8, 16, 3, padding=1, bias=theirs.bias is not None, **ours_kwargs)
    return ours, theirs


def test_ws_equals_timm_std_conv_with_eps_1e_6(timm):
    theirs = timm.layers.StdConv2d(8, 16, 3, eps=1e-6)
    ours, theirs = _conv_pair(WSConv2d, theirs, eps=1e-6)
    assert_same_layer(ours, theirs, _input(2, 8, 6, 6))


def test_ws_default_eps_differs_from_timm(timm):
    assert WSConv2d(8, 16, 3).eps == 1e-5
    assert timm.layers.StdConv2d(8, 16, 3).eps == 1e-6
    ours, theirs = _conv_pair(WSConv2d, timm.layers.StdConv2d(8, 16, 3))
    ours, theirs = ours.double(), theirs.double()
    _randomize(ours, theirs)
    with torch.no_grad():  # weights of variance ~1e-5: ε matters
        ours.weight.mul_(3e-3)
        theirs.weight.mul_(3e-3)
        assert float((ours(_input(2, 8, 6, 6)) - theirs(_input(2, 8, 6, 6))).abs().max()) > 1e-2


def test_scaled_ws_equals_timm_with_eps_times_fan_in_and_the_published_gain(timm):
    """normlab: g·γ_φ·(W − μ)/sqrt(N·var + ε); timm: g·γ·N^(-1/2)·(W − μ)/sqrt(var + ε_timm);
    the same layer for ε = N·ε_timm and γ_φ = γ."""
    gain = PUBLISHED_GAINS["relu"]
    theirs = timm.layers.ScaledStdConv2d(8, 16, 3, gamma=gain, eps=1e-6)
    fan_in = 8 * 3 * 3
    ours, theirs = _conv_pair(ScaledWSConv2d, theirs, eps=fan_in * 1e-6, act_gain=gain)
    assert_same_layer(ours, theirs, _input(2, 8, 6, 6))


def test_scaled_ws_defaults_differ_from_timm_by_the_exact_gain(timm):
    gain = PUBLISHED_GAINS["relu"]
    theirs = timm.layers.ScaledStdConv2d(8, 16, 3, bias=False, gamma=gain, eps=1e-6)
    ours, theirs = _conv_pair(ScaledWSConv2d, theirs, act="relu", eps=8 * 3 * 3 * 1e-6)
    x = _input(2, 8, 6, 6)
    ratio = activation_gain("relu") / PUBLISHED_GAINS["relu"]
    with torch.no_grad():
        ours, theirs = ours.double(), theirs.double()
        _randomize(ours, theirs)
        torch.testing.assert_close(ours(x), theirs(x) * ratio, rtol=1e-10, atol=1e-12)
    assert abs(ratio - 1) > 5e-4


def test_scaled_ws_act_gain_is_validated():
    with pytest.raises(ValueError, match="either act='relu'"):
        ScaledWSConv2d(8, 16, 3, act="relu", act_gain=1.7)
    for bad in (0.0, -1.0, float("inf"), float("nan"), "1.7", True):
        with pytest.raises(ValueError, match="act_gain must be a positive finite number"):
            ScaledWSConv2d(8, 16, 3, act_gain=bad)


# -- BatchNorm and ghost batches against torch -----------------------------------------------------


def test_batch_norm_equals_torch_in_training_and_eval():
    ours, theirs = BatchNorm(16).double(), nn.BatchNorm2d(16).double()
    for step in range(3):
        assert_same_layer(ours, theirs, _input(4, 16, 3, 3, seed=step))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
    ours.eval(), theirs.eval()
    assert_same_layer(ours, theirs, _input(4, 16, 3, 3, seed=9))


def _ghost_batches_through_torch(x: torch.Tensor, size: int, momentum: float) -> nn.BatchNorm2d:
    """torch's BatchNorm2d run once per sub-batch: one running-statistics update each."""
    bn = nn.BatchNorm2d(x.shape[1], momentum=momentum).double()
    for part in x.split(size):
        bn(part)
    return bn


def test_ghost_batch_norm_updates_running_stats_once_from_the_size_weighted_mean():
    x = _input(10, 4, 3, 3, scale=2.0) + 1.0
    ghost = BatchNorm(4, norm_batch_size=4).double()
    y = ghost(x)
    # each sub-batch (4, 4, 2 samples) normalized by its own statistics, as torch's BN would
    reference = torch.cat([nn.BatchNorm2d(4).double()(part) for part in x.split(4)])
    torch.testing.assert_close(y, reference, rtol=1e-12, atol=1e-12)
    # one update: running ← (1 − m)·running + m·(size-weighted mean of the sub-batch statistics)
    parts = x.split(4)
    weights = torch.tensor([p.shape[0] for p in parts], dtype=torch.float64) / x.shape[0]
    means = torch.stack([p.mean((0, 2, 3)) for p in parts])
    variances = torch.stack([p.var((0, 2, 3), correction=1) for p in parts])
    torch.testing.assert_close(ghost.running_mean, 0.1 * (weights @ means), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        ghost.running_var, 0.9 + 0.1 * (weights @ variances), rtol=1e-12, atol=0
    )
    assert int(ghost.num_batches_tracked) == 1
    # not one update per sub-batch, as a loop over torch's BatchNorm2d would make
    per_part = _ghost_batches_through_torch(x, 4, 0.1)
    assert int(per_part.num_batches_tracked) == 3
    assert (per_part.running_mean - ghost.running_mean).abs().max() > 1e-2
