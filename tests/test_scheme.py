"""The scheme grammar: parsing, canonical specs, the layers each scheme builds, and its errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special
from torch import nn

import normlab
from normlab import Scheme, scheme
from normlab.layers import (
    TLU,
    Act,
    BatchNorm,
    CWNConv2d,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GainedAct,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NormAct,
    ProxyNormAct,
    ScaledWSConv2d,
    VarianceNorm,
    WNConv2d,
    WSConv2d,
    activation_names,
)

# The grammar, written out by hand (not read from normlab.scheme).
ALL_FORMS = {
    "bn",
    "bn/<k>",
    "ln",
    "in",
    "gn<G>",
    "gn/<S>",
    "vn",
    "frn",
    "evo-b0",
    "evo-s0",
    "evo-s0/<S>",
    "none",
    "nf",
    "+pn",
    "+ws",
    "+sws",
    "+wn",
    "+cwn",
}
WEIGHT_CONVS = {"ws": WSConv2d, "sws": ScaledWSConv2d, "wn": WNConv2d, "cwn": CWNConv2d}
PN_OK = {"bn", "ln", "in", "gn", "vn"}


def gaussian_gain(fn) -> float:
    """γ_φ = Var[φ(Z)]^(-1/2), Z ~ N(0, 1), by adaptive quadrature (independent of normlab)."""
    pdf = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    m1 = integrate.quad(lambda z: fn(z) * pdf(z), -math.inf, math.inf)[0]
    m2 = integrate.quad(lambda z: fn(z) ** 2 * pdf(z), -math.inf, math.inf)[0]
    return 1.0 / math.sqrt(m2 - m1 * m1)


RELU_GAIN = gaussian_gain(lambda z: max(z, 0.0))
GELU_GAIN = gaussian_gain(lambda z: z * 0.5 * (1.0 + special.erf(z / math.sqrt(2.0))))


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        ("bn", {"normalizer": "bn"}),
        ("bn/16", {"normalizer": "bn", "norm_batch_size": 16}),
        ("ln", {"normalizer": "ln"}),
        ("in", {"normalizer": "in"}),
        ("gn8", {"normalizer": "gn", "num_groups": 8}),
        ("gn/16", {"normalizer": "gn", "group_size": 16}),
        ("vn", {"normalizer": "vn"}),
        ("frn", {"normalizer": "frn"}),
        ("evo-b0", {"normalizer": "evo-b0"}),
        ("evo-s0", {"normalizer": "evo-s0"}),
        ("evo-s0/8", {"normalizer": "evo-s0", "group_size": 8}),
        ("none", {"normalizer": "none"}),
        ("nf", {"normalizer": "nf"}),
        ("gn8+pn", {"normalizer": "gn", "num_groups": 8, "proxy": True}),
        ("ln+ws+pn", {"normalizer": "ln", "weight": "ws", "proxy": True}),
        ("bn/4+pn+sws", {"normalizer": "bn", "norm_batch_size": 4, "proxy": True, "weight": "sws"}),
        ("in+wn", {"normalizer": "in", "weight": "wn"}),
        ("vn+cwn+pn", {"normalizer": "vn", "weight": "cwn", "proxy": True}),
        ("frn+ws", {"normalizer": "frn", "weight": "ws"}),
        ("evo-s0/4+cwn", {"normalizer": "evo-s0", "group_size": 4, "weight": "cwn"}),
        ("none+sws", {"normalizer": "none", "weight": "sws"}),
        (
            "  GN/16 + PN + WS ",
            {"normalizer": "gn", "group_size": 16, "proxy": True, "weight": "ws"},
        ),
        ("Evo-B0+WN", {"normalizer": "evo-b0", "weight": "wn"}),
    ],
)
def test_every_form_parses_to_its_fields(spec, fields):
    expected = Scheme(**fields)
    assert scheme(spec) == expected
    # The canonical spec reads back to the same scheme.
    assert scheme(expected.spec) == expected
    assert expected.spec == expected.spec.strip().lower()


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("  GN/16 + PN + WS ", "gn/16+ws+pn"),
        ("BN/4+pn", "bn/4+pn"),
        ("Evo-S0/8", "evo-s0/8"),
        ("gn8+pn+cwn", "gn8+cwn+pn"),
        ("nf", "nf"),
        ("none+wn", "none+wn"),
    ],
)
def test_canonical_spec(spec, canonical):
    assert scheme(spec).spec == canonical


def test_modifier_order_does_not_matter():
    orders = ["gn8+pn+ws", "gn8+ws+pn", "GN8 +WS+ pn"]
    assert len({scheme(s) for s in orders}) == 1
    assert scheme("gn8+ws+pn").spec in {"gn8+ws+pn", "gn8+pn+ws"}


def test_activation_is_part_of_the_scheme():
    s = scheme("gn8+pn", act="swish")
    assert s.activation == "silu"  # aliases resolve to the registered name
    assert scheme(s.spec, act=s.activation) == s
    # Passing a Scheme keeps its activation unless another one is asked for.
    assert scheme(s).activation == "silu"
    assert scheme(s, act="tanh").activation == "tanh"


def test_schemes_lists_every_form_with_a_description():
    forms = normlab.schemes()
    assert {f.form for f in forms} == ALL_FORMS
    assert all(f.description.strip() for f in forms)


@pytest.mark.parametrize(
    ("modifier", "words"),
    [
        ("pn", "Proxy Normalization"),
        ("ws", "Weight Standardization"),
        ("sws", "Scaled Weight Standardization"),
        ("wn", "Weight Normalization"),
        ("cwn", "Centered Weight Normalization"),
    ],
)
def test_describe_mentions_each_modifier(modifier, words):
    assert words in scheme(f"bn+{modifier}").describe()
    assert words not in scheme("bn").describe()


@pytest.mark.parametrize(
    ("spec", "words"),
    [("bn", "BatchNorm"), ("bn/16", "ghost"), ("gn/16", "GroupNorm"), ("evo-s0/8", "EvoNorm-S0")],
)
def test_describe_names_the_normalizer(spec, words):
    assert words in scheme(spec).describe()


# -- conv -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["bn", "gn8+ws", "ln+sws", "in+wn", "vn+cwn", "none", "nf"])
@pytest.mark.parametrize("kernel", [1, 3, 5, (3, 5)])
def test_conv_padding_keeps_or_halves_the_size(spec, kernel):
    s = scheme(spec)
    x = torch.randn(2, 8, 12, 10)
    assert s.conv(8, 16, kernel)(x).shape == (2, 16, 12, 10)
    assert s.conv(8, 16, kernel, stride=2)(x).shape == (2, 16, 6, 5)


def test_conv_padding_with_dilation():
    conv = scheme("bn").conv(4, 4, 3, dilation=2)
    assert conv(torch.randn(1, 4, 9, 9)).shape == (1, 4, 9, 9)


@pytest.mark.parametrize(
    ("spec", "has_bias"),
    [
        ("bn", False),
        ("gn8+pn", False),
        ("frn", False),
        ("evo-s0", False),
        ("none", True),
        ("nf", True),
        ("none+ws", True),
        ("ln+sws", False),
    ],
)
def test_conv_bias_only_without_activation_normalization(spec, has_bias):
    conv = scheme(spec).conv(8, 16, 3)
    assert (conv.bias is not None) == has_bias
    assert scheme(spec).conv(8, 16, 3, bias=True).bias is not None
    assert scheme(spec).conv(8, 16, 3, bias=False).bias is None


@pytest.mark.parametrize("spec", ["bn", "bn+ws", "bn+sws", "bn+wn", "bn+cwn", "nf"])
def test_depthwise_conv(spec):
    conv = scheme(spec).conv(16, 16, 3, groups=16)
    assert conv.weight.shape == (16, 1, 3, 3)
    x = torch.randn(2, 16, 6, 6)
    assert conv(x).shape == (2, 16, 6, 6)
    # A depthwise conv mixes no channels: channel 3 of the output depends on channel 3 only.
    x2 = x.clone()
    x2[:, 5] += 1.0
    out, out2 = conv(x), conv(x2)
    assert torch.equal(out[:, 3], out2[:, 3])
    assert not torch.allclose(out[:, 5], out2[:, 5])


CONV_SPECS = ["bn", "bn+ws", "bn+sws", "gn2+wn", "ln+cwn", "none", "nf"]

# (args, kwargs, words of the message): sizes that build broken layers, failing only later
BAD_CONVS = [
    ((0, 16, 3), {}, "in_channels must be a positive integer, got 0"),
    ((-1, 16, 3), {}, "in_channels must be a positive integer, got -1"),
    ((3.5, 16, 3), {}, "in_channels must be a positive integer, got 3.5 (a float)"),
    ((True, 16, 3), {}, "in_channels must be a positive integer, got True (a bool)"),
    ((4, 0, 3), {}, "out_channels must be a positive integer, got 0"),
    ((4, "16", 3), {}, "out_channels must be a positive integer, got '16' (a str)"),
    ((4, 16, 0), {}, "kernel_size must be a positive integer or a pair of them"),
    ((4, 16, -3), {}, "kernel_size must be a positive integer or a pair of them"),
    ((4, 16, (3, 0)), {}, "kernel_size must be a positive integer or a pair"),
    ((4, 16, (3, 3, 3)), {}, "kernel_size must be a positive integer or a pair"),
    ((4, 16, 2.0), {}, "kernel_size must be a positive integer or a pair"),
    ((4, 16, 3), {"stride": 0}, "stride must be a positive integer or a pair of them"),
    ((4, 16, 3), {"dilation": 0}, "dilation must be a positive integer or a pair of them"),
    ((4, 16, 3), {"padding": -1}, "padding must be an integer >= 0 or a pair of them"),
    ((4, 16, 3), {"padding": "full"}, "unknown padding 'full'; valid choices: same, valid"),
    ((4, 16, 3), {"groups": 0}, "groups must be a positive integer, got 0"),
    ((4, 16, 3), {"groups": 3}, "groups=3 does not divide in_channels=4"),
    ((4, 6, 3), {"groups": 4}, "groups=4 does not divide out_channels=6"),
]


@pytest.mark.parametrize("spec", CONV_SPECS)
@pytest.mark.parametrize(("args", "kwargs", "words"), BAD_CONVS, ids=lambda v: repr(v)[:24])
def test_bad_conv_sizes_are_refused_at_construction(spec, args, kwargs, words):
    with pytest.raises(ValueError) as info:  # noqa: PT011 (the words are checked below)
        scheme(spec).conv(*args, **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("spec", CONV_SPECS)
def test_conv_edge_sizes_build_and_run(spec):
    s = scheme(spec)
    assert s.conv(1, 1, 1)(torch.randn(2, 1, 3, 3)).shape == (2, 1, 3, 3)
    assert s.conv(4, 6, (1, 3), stride=(1, 2))(torch.randn(2, 4, 5, 5)).shape == (2, 6, 5, 3)
    assert s.conv(4, 4, 3, padding=0, groups=2)(torch.randn(2, 4, 5, 5)).shape == (2, 4, 3, 3)
    assert s.conv(4, 4, 3, padding="same")(torch.randn(2, 4, 5, 5)).shape == (2, 4, 5, 5)


@pytest.mark.parametrize("spec", ["bn", "gn2+pn", "none", "nf", "evo-b0", "frn"])
@pytest.mark.parametrize("channels", [0, -4, 2.0, True])
def test_norm_and_act_builders_check_the_channel_count(spec, channels):
    """Identity (none, nf) takes any channel count: the builders check it themselves."""
    s = scheme(spec)
    for build in (s.norm, s.act, s.norm_act):
        with pytest.raises(ValueError, match="num_channels must be a positive integer"):
            build(channels)


@pytest.mark.parametrize(("modifier", "cls"), list(WEIGHT_CONVS.items()))
def test_weight_modifier_picks_the_conv_class(modifier, cls):
    assert type(scheme(f"gn8+{modifier}").conv(8, 16, 3)) is cls
    assert type(scheme("gn8").conv(8, 16, 3)) is nn.Conv2d


def test_sws_folds_the_activation_gain():
    # SWS with relu: γ_φ = 1/sqrt(Var[relu(Z)]) = 1/sqrt(1/2 - 1/(2π)) ≈ 1.7139.
    assert scheme("bn+sws").conv(8, 16, 3).act_gain == pytest.approx(RELU_GAIN, rel=1e-6)
    assert math.isclose(RELU_GAIN, 1.0 / math.sqrt(0.5 - 0.5 / math.pi), rel_tol=1e-9)
    gelu_conv = scheme("bn+sws", act="gelu").conv(8, 16, 3)
    assert gelu_conv.act_gain == pytest.approx(GELU_GAIN, rel=1e-6)


def test_sws_effective_weight_has_the_gain_over_sqrt_fan_in():
    conv = scheme("bn+sws", act="gelu").conv(8, 16, 3)
    w = conv.effective_weight().detach()
    # Each output channel: mean 0 and norm γ_φ (Var = γ_φ²/N over N = 8·3·3 fan-in).
    assert w.mean(dim=(1, 2, 3)).abs().max() < 1e-6
    norms = w.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((16,), GELU_GAIN), rtol=1e-4)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_nf_uses_unit_gain_convs_and_gained_activations(act):
    s = scheme("nf", act=act)
    conv = s.conv(8, 16, 3)
    assert type(conv) is ScaledWSConv2d
    assert conv.act_gain == 1.0
    step = s.norm_act(16)
    assert type(step) is GainedAct
    assert step.activation.name == act
    assert type(s.act(16)) is GainedAct


def test_nf_gained_activation_value():
    # GainedAct(gelu)(y) = γ_gelu · gelu(y).
    step = scheme("nf", act="gelu").norm_act(3)
    y = torch.randn(5, 3, dtype=torch.float64)
    expected = GELU_GAIN * 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    torch.testing.assert_close(step(y), expected, rtol=1e-6, atol=1e-9)


# -- norm, act, norm_act ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["bn", "bn/4", "ln", "in", "gn8", "gn/4", "vn", "frn", "evo-b0", "evo-s0", "evo-s0/4"]
)
def test_norm_has_affine(spec):
    layer = scheme(spec).norm(16)
    assert layer.affine
    assert layer.weight.shape == layer.bias.shape == (16,)
    assert scheme(spec).norm(16, affine=False).weight is None


@pytest.mark.parametrize("spec", ["none", "nf"])
def test_norm_is_identity_without_a_normalizer(spec):
    assert isinstance(scheme(spec).norm(16), nn.Identity)


@pytest.mark.parametrize(
    ("spec", "norm_cls", "act_cls"),
    [
        ("bn", BatchNorm, Act),
        ("bn/4", BatchNorm, Act),
        ("ln", LayerNorm, Act),
        ("in", InstanceNorm, Act),
        ("gn8", GroupNorm, Act),
        ("gn/4", GroupNorm, Act),
        ("vn", VarianceNorm, Act),
        ("frn", FilterResponseNorm, TLU),
        ("bn+pn", BatchNorm, ProxyNormAct),
        ("ln+pn", LayerNorm, ProxyNormAct),
        ("in+pn", InstanceNorm, ProxyNormAct),
        ("gn8+pn", GroupNorm, ProxyNormAct),
        ("gn/4+pn", GroupNorm, ProxyNormAct),
        ("vn+pn", VarianceNorm, ProxyNormAct),
        ("bn+ws", BatchNorm, Act),
    ],
)
def test_norm_act_is_an_affine_free_normalizer_and_an_activation_step(spec, norm_cls, act_cls):
    layer = scheme(spec).norm_act(16)
    assert type(layer) is NormAct
    assert type(layer.norm) is norm_cls
    assert type(layer.act) is act_cls
    assert not layer.norm.affine
    assert layer.norm.weight is None
    assert layer.act.activation.name == "relu"


def test_norm_act_grouping_and_ghost_batch():
    assert scheme("gn8").norm_act(16).norm.num_groups == 8
    assert scheme("gn/4").norm_act(16).norm.num_groups == 4
    assert scheme("bn/16").norm_act(16).norm.norm_batch_size == 16
    assert scheme("bn").norm_act(16).norm.norm_batch_size is None
    assert scheme("ln").norm_act(16).norm.num_groups == 1
    assert scheme("in").norm_act(16).norm.num_groups == 16


@pytest.mark.parametrize(
    ("spec", "cls", "groups"),
    [("evo-b0", EvoNormB0, None), ("evo-s0", EvoNormS0, 16), ("evo-s0/8", EvoNormS0, 2)],
)
def test_evonorm_norm_act_is_one_nonlinear_layer(spec, cls, groups):
    layer = scheme(spec).norm_act(16)
    assert type(layer) is cls
    assert layer.nonlinear
    assert layer.affine
    if groups is not None:
        assert layer.num_groups == groups  # default min(32, C) groups; /8: 16/8 groups
    assert not scheme(spec).norm(16).nonlinear


def test_none_norm_act_is_a_plain_act():
    layer = scheme("none", act="elu").norm_act(16)
    assert type(layer) is Act
    assert layer.activation.name == "elu"


@pytest.mark.parametrize("spec", ["bn", "gn8+pn", "frn", "none", "nf"])
def test_act_override(spec):
    s = scheme(spec)
    assert s.act(16, act="gelu").activation.name == "gelu"
    assert s.act(16).activation.name == "relu"
    overridden = s.norm_act(16, act="gelu")
    step = overridden.act if isinstance(overridden, NormAct) else overridden
    assert step.activation.name == "gelu"
    assert scheme(spec, act="tanh").act(16).activation.name == "tanh"


# -- errors -----------------------------------------------------------------------------------


def error_of(spec, **kwargs) -> str:
    with pytest.raises(ValueError) as info:  # noqa: PT011 (messages are checked by the callers)
        scheme(spec, **kwargs)
    return str(info.value)


@pytest.mark.parametrize(("spec", "fix"), [("gm8", "gn8"), ("bm", "bn"), ("evo-s1", "evo-s0")])
def test_unknown_normalizer_lists_forms_and_suggests(spec, fix):
    message = error_of(spec)
    assert repr(spec) in message
    for form in ("bn/<k>", "gn<G>", "gn/<S>", "evo-s0/<S>", "frn", "nf", "+pn", "+cwn"):
        assert form in message
    assert f"Did you mean {fix!r}" in message


@pytest.mark.parametrize(
    ("spec", "fix"),
    [
        ("batchnorm", "bn"),
        ("LayerNorm", "ln"),
        ("groupnorm+pn", "gn8+pn"),
        ("instance_norm", "in"),
    ],
)
def test_long_normalizer_names_suggest_the_short_form(spec, fix):
    assert f"Did you mean {fix!r}" in error_of(spec)


@pytest.mark.parametrize(("spec", "fix"), [("gn8+pm", "gn8+pn"), ("bn+sww", "bn+sws")])
def test_unknown_modifier_suggests(spec, fix):
    message = error_of(spec)
    assert "modifier" in message
    assert f"Did you mean {fix!r}" in message


@pytest.mark.parametrize("spec", ["gn8+pn+pn", "bn+ws+WS"])
def test_repeated_modifier(spec):
    assert "repeats" in error_of(spec)


@pytest.mark.parametrize("spec", ["bn+ws+sws", "ln+wn+cwn+pn", "gn8+cwn+ws"])
def test_two_weight_modifiers(spec):
    message = error_of(spec)
    assert "at most one" in message


@pytest.mark.parametrize("spec", ["none+pn", "frn+pn", "evo-b0+pn", "evo-s0+pn", "evo-s0/8+pn"])
def test_pn_needs_a_normalizer_it_can_follow(spec):
    message = error_of(spec)
    assert "+pn" in message
    assert spec.split("/")[0].split("+")[0] in message


@pytest.mark.parametrize("spec", ["nf+pn", "nf+ws", "nf+sws", "nf+cwn"])
def test_nf_takes_no_modifier(spec):
    assert "'nf' takes no modifiers" in error_of(spec)


@pytest.mark.parametrize("spec", ["bn/0", "gn0", "gn/0", "evo-s0/0"])
def test_zero_sizes(spec):
    assert "positive integer" in error_of(spec)


@pytest.mark.parametrize("spec", ["", "+pn", "bn+", "bn++pn", "gn", "bn/", "bn/x", "gn/-2"])
def test_malformed_specs(spec):
    assert "unknown scheme" in error_of(spec)


def test_unknown_activation_suggests():
    message = error_of("bn", act="rleu")
    assert "Did you mean 'relu'" in message
    assert "gelu" in message  # lists the choices


@pytest.mark.parametrize("spec", [None, 8, ["bn"], b"bn"])
def test_non_string_spec_is_a_type_error(spec):
    with pytest.raises(TypeError, match="string"):
        scheme(spec)


# -- random valid schemes build trainable blocks -----------------------------------------------

NORMALIZER_FORMS = st.sampled_from(
    [
        "bn",
        "bn/2",
        "bn/3",
        "bn/16",
        "ln",
        "in",
        "gn1",
        "gn4",
        "gn16",
        "gn/2",
        "gn/16",
        "vn",
        "frn",
        "evo-b0",
        "evo-s0",
        "evo-s0/4",
        "evo-s0/16",
        "none",
        "nf",
    ]
)


@st.composite
def valid_specs(draw):
    """A random valid spec: a normalizer, then modifiers allowed with it, in random order,
    case and spacing; returns (spec, normalizer, proxy, weight)."""
    base = draw(NORMALIZER_FORMS)
    kind = base.rstrip("0123456789/") if not base.startswith("evo") else base.split("/")[0]
    modifiers = []
    if kind != "nf":
        if kind in PN_OK and draw(st.booleans()):
            modifiers.append("pn")
        weight = draw(st.sampled_from([None, "ws", "sws", "wn", "cwn"]))
        if weight:
            modifiers.append(weight)
    modifiers = draw(st.permutations(modifiers))
    tokens = [draw(st.sampled_from([t, t.upper(), f" {t} "])) for t in [base, *modifiers]]
    weight = next((m for m in modifiers if m != "pn"), None)
    return "+".join(tokens), kind, "pn" in modifiers, weight


@settings(max_examples=30, deadline=None)
@given(spec=valid_specs(), act=st.sampled_from(activation_names()))
def test_random_schemes_train(spec, act):
    text, kind, proxy, weight = spec
    s = scheme(text, act=act)
    assert (s.normalizer, s.proxy, s.weight, s.activation) == (kind, proxy, weight, act)
    assert scheme(s.spec, act=act) == s

    torch.manual_seed(0)
    block = nn.Sequential(s.conv(8, 16, 3), s.norm_act(16))
    x = torch.randn(4, 8, 6, 6)
    out = block(x)
    assert out.shape == (4, 16, 6, 6)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # The conv's weight learns: some gradient is non-zero.
    assert block[0].weight.grad.abs().sum() > 0
