r"""Normalization schemes from spec strings: the contract between normlab's layers and its models.

A spec names one normalizer and optional modifiers, joined by ``+`` in any order::

    spec      := normalizer ("+" modifier)*  |  "nf"
    normalizer:= bn | bn/<k> | ln | in | gn<G> | gn/<S> | vn | frn | evo-b0 | evo-s0 | evo-s0/<S>
                 | none
    modifier  := pn | ws | sws | wn | cwn       (at most one of ws, sws, wn, cwn)

``bn/16`` normalizes over ghost batches of 16 samples, ``gn8`` uses 8 groups, ``gn/16`` groups of 16
channels. ``+pn`` proxy-normalizes the activation step (it needs a normalizer that PN can follow:
bn, ln, in, gn, vn). ``+ws/+sws/+wn/+cwn`` make the convolutions weight-standardized, scaled
weight-standardized, weight-normalized or centered weight-normalized. ``nf`` is normalizer-free:
scaled-WS convolutions, gained activations, no activation normalization.

A :class:`Scheme` builds the layers: ``conv``, ``norm`` (a normalizer with its own affine, for
places without an activation after it), ``act`` (an activation step) and ``norm_act`` (the pair,
fused: the normalizer without affine, the activation step holding γ, β).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from torch import nn

from ._checks import check_bool, check_conv, check_positive_int, closest
from .layers import (
    TLU,
    Act,
    ActivationStep,
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
    get_activation,
)

WEIGHT_MODIFIERS = ("ws", "sws", "wn", "cwn")
MODIFIERS = ("pn", *WEIGHT_MODIFIERS)
PN_NORMALIZERS = ("bn", "ln", "in", "gn", "vn")


@dataclass(frozen=True)
class SchemeForm:
    """One form of the spec grammar, for listings."""

    form: str
    description: str


FORMS: tuple[SchemeForm, ...] = (
    SchemeForm("bn", "BatchNorm over (N, *spatial) per channel (Ioffe & Szegedy 2015)"),
    SchemeForm("bn/<k>", "BatchNorm over ghost batches of k samples, e.g. bn/16"),
    SchemeForm("ln", "LayerNorm over (C, *spatial) per sample, per-channel affine (Ba et al.)"),
    SchemeForm("in", "InstanceNorm over spatial positions per sample and channel (Ulyanov et al.)"),
    SchemeForm("gn<G>", "GroupNorm with G groups per sample, e.g. gn8 (Wu & He 2018)"),
    SchemeForm("gn/<S>", "GroupNorm with groups of S channels, e.g. gn/16"),
    SchemeForm("vn", "Variance Normalization: BatchNorm without centering (Daneshmand et al.)"),
    SchemeForm("frn", "Filter Response Normalization with TLU activation (Singh & Krishnan)"),
    SchemeForm("evo-b0", "EvoNorm-B0: batch and instance variance, built-in nonlinearity"),
    SchemeForm("evo-s0", "EvoNorm-S0: x·sigmoid(vx) / group std, min(32, C) groups (Liu et al.)"),
    SchemeForm("evo-s0/<S>", "EvoNorm-S0 with groups of S channels"),
    SchemeForm("none", "no normalization: plain activation step φ(γx + β), biased convs"),
    SchemeForm("nf", "normalizer-free: scaled WS convs, gained activations (Brock et al. 2021)"),
    SchemeForm("+pn", "Proxy Normalization of the activation step (Labatie et al. 2021)"),
    SchemeForm("+ws", "Weight Standardization of the convs (Qiao et al. 2019)"),
    SchemeForm("+sws", "Scaled Weight Standardization with activation gain (Brock et al. 2021)"),
    SchemeForm("+wn", "Weight Normalization of the convs (Salimans & Kingma 2016)"),
    SchemeForm("+cwn", "Centered Weight Normalization of the convs (Huang et al. 2017)"),
)

EXAMPLES = (
    "bn",
    "bn/16",
    "ln",
    "in",
    "gn8",
    "gn/16",
    "vn",
    "frn",
    "evo-b0",
    "evo-s0",
    "none",
    "nf",
    "gn8+pn",
    "ln+pn",
    "gn8+ws",
    "bn+sws",
)

_NORMALIZER_PATTERN = re.compile(
    r"^(?:(?P<bn>bn)(?:/(?P<bn_batch>\d+))?|gn(?P<groups>\d+)|gn/(?P<group_size>\d+)"
    r"|(?P<evo_s0>evo-s0)(?:/(?P<evo_group_size>\d+))?"
    r"|(?P<plain>ln|in|vn|frn|evo-b0|none|nf))$"
)

# Full names a user may type for a normalizer, and the form to suggest for each.
_LONG_NAMES = {
    "batchnorm": "bn",
    "layernorm": "ln",
    "instancenorm": "in",
    "groupnorm": "gn8",
    "variancenorm": "vn",
    "filterresponsenorm": "frn",
    "evonorm": "evo-s0",
    "evonormb0": "evo-b0",
    "evonorms0": "evo-s0",
    "normalizerfree": "nf",
}

_CONVS: dict[str | None, type[nn.Conv2d]] = {
    None: nn.Conv2d,
    "ws": WSConv2d,
    "sws": ScaledWSConv2d,
    "wn": WNConv2d,
    "cwn": CWNConv2d,
}


@dataclass(frozen=True)
class Scheme:
    """A parsed normalization scheme; build one with :func:`scheme`.

    Attributes:
        normalizer: bn, ln, in, gn, vn, frn, evo-b0, evo-s0, none or nf.
        norm_batch_size: ghost-batch size of bn/<k>.
        num_groups, group_size: grouping of gn<G>, gn/<S>, evo-s0/<S>.
        proxy: whether the activation step is proxy-normalized (+pn).
        weight: the weight-space modifier (ws, sws, wn, cwn) or None.
        activation: the default φ (also the one whose gain +sws folds into its convs).
    """

    normalizer: str
    norm_batch_size: int | None = None
    num_groups: int | None = None
    group_size: int | None = None
    proxy: bool = False
    weight: str | None = None
    activation: str = "relu"

    @property
    def spec(self) -> str:
        """The canonical spec string (modifiers in a fixed order)."""
        base = self.normalizer
        if self.norm_batch_size is not None:
            base += f"/{self.norm_batch_size}"
        elif self.num_groups is not None:
            base += str(self.num_groups)
        elif self.group_size is not None:
            base += f"/{self.group_size}"
        if self.weight is not None:
            base += f"+{self.weight}"
        return base + ("+pn" if self.proxy else "")

    @property
    def has_norm(self) -> bool:
        """Whether the scheme normalizes activations (all but none and nf)."""
        return self.normalizer not in ("none", "nf")

    def describe(self) -> str:
        parts = [_form_of(self).description]
        if self.weight is not None:
            parts.append(_describe_form("+" + self.weight))
        if self.proxy:
            parts.append(_describe_form("+pn"))
        return "; ".join(parts)

    # -- builders --------------------------------------------------------------------------

    def conv(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        bias: bool | None = None,
        dilation: int = 1,
    ) -> nn.Conv2d:
        """A 2-d convolution of the scheme. ``padding=None`` keeps the size ("same" for odd
        kernels at stride 1); ``bias=None`` gives a bias only when the scheme has no activation
        normalization (a normalizer's centering or affine makes it redundant). The sizes are
        checked (:func:`~normlab._checks.check_conv`): a zero, negative or non-integer channel
        count, kernel size, stride or dilation raises a ValueError naming it."""
        check_conv(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            0 if padding is None else padding,
            dilation,
            groups,
        )
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = tuple(dilation * (size - 1) // 2 for size in k)
        bias = not self.has_norm if bias is None else check_bool("bias", bias)
        kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        kwargs["bias"] = bias
        if self.normalizer == "nf":
            return ScaledWSConv2d(in_channels, out_channels, kernel_size, act=None, **kwargs)
        if self.weight == "sws":
            return ScaledWSConv2d(
                in_channels, out_channels, kernel_size, act=self.activation, **kwargs
            )
        return _CONVS[self.weight](in_channels, out_channels, kernel_size, **kwargs)

    def norm(self, num_channels: int, affine: bool = True) -> nn.Module:
        """The normalizer alone (with its own affine by default); Identity for none and nf."""
        check_positive_int("num_channels", num_channels)
        affine = check_bool("affine", affine)
        if not self.has_norm:
            return nn.Identity()
        return self._normalizer(num_channels, affine=affine, nonlinear=False)

    def act(self, num_channels: int, act: str | None = None) -> ActivationStep:
        """The activation step: Act φ(γx + β), ProxyNormAct with +pn, TLU for frn, the gained
        activation for nf. With +pn it expects a normalized input: prefer :meth:`norm_act`."""
        act = self._act_name(act)
        check_positive_int("num_channels", num_channels)
        if self.normalizer == "nf":
            return GainedAct(num_channels, act)
        if self.normalizer == "frn":
            return TLU(num_channels, act)
        if self.proxy:
            return ProxyNormAct(num_channels, act)
        return Act(num_channels, act)

    def norm_act(self, num_channels: int, act: str | None = None) -> nn.Module:
        """Normalization step then activation step, fused (:class:`~normlab.layers.NormAct`).

        EvoNorm layers hold their own nonlinearity, which takes the place of ``act``.
        """
        act = self._act_name(act)
        check_positive_int("num_channels", num_channels)
        if self.normalizer in ("evo-b0", "evo-s0"):
            return self._normalizer(num_channels, affine=True, nonlinear=True)
        if not self.has_norm:
            return self.act(num_channels, act)
        return NormAct(self._normalizer(num_channels, affine=False), self.act(num_channels, act))

    # -- helpers ---------------------------------------------------------------------------

    def _act_name(self, act: str | None) -> str:
        return get_activation(self.activation if act is None else act).name

    def _normalizer(self, num_channels: int, affine: bool, nonlinear: bool = False) -> nn.Module:
        kind = self.normalizer
        if kind == "bn":
            return BatchNorm(num_channels, affine=affine, norm_batch_size=self.norm_batch_size)
        if kind == "ln":
            return LayerNorm(num_channels, affine=affine)
        if kind == "in":
            return InstanceNorm(num_channels, affine=affine)
        if kind == "gn":
            return GroupNorm(num_channels, self.num_groups, self.group_size, affine=affine)
        if kind == "vn":
            return VarianceNorm(num_channels, affine=affine)
        if kind == "frn":
            return FilterResponseNorm(num_channels, affine=affine)
        if kind == "evo-b0":
            return EvoNormB0(num_channels, affine=affine, nonlinear=nonlinear)
        return EvoNormS0(
            num_channels, group_size=self.group_size, affine=affine, nonlinear=nonlinear
        )


def scheme(spec: str | Scheme, act: str | None = None) -> Scheme:
    """Parse a spec string (see the module docstring) into a :class:`Scheme`.

    ``act`` is the scheme's default activation φ (relu when not given; a :class:`Scheme` passed
    in keeps its own). Unknown specs raise a ValueError that lists the valid forms and suggests
    the closest one.
    """
    if isinstance(spec, Scheme):
        return spec if act is None else replace(spec, activation=get_activation(act).name)
    act = get_activation("relu" if act is None else act).name
    if not isinstance(spec, str):
        raise TypeError(f"a scheme spec must be a string, got {type(spec).__name__}")
    tokens = [token.strip() for token in spec.strip().lower().split("+")]
    fields = _parse_normalizer(spec, tokens)
    proxy, weight = _parse_modifiers(spec, tokens)
    parsed = Scheme(**fields, proxy=proxy, weight=weight, activation=act)
    _check_combination(spec, parsed)
    return parsed


def schemes() -> list[SchemeForm]:
    """The forms of the spec grammar with one-line descriptions."""
    return list(FORMS)


def _parse_normalizer(spec: str, tokens: list[str]) -> dict:
    match = _NORMALIZER_PATTERN.match(tokens[0])
    if match is None:
        raise _bad_token(spec, tokens, 0)
    groups = match.groupdict()
    if groups["bn"]:
        return {"normalizer": "bn", "norm_batch_size": _size(spec, groups["bn_batch"], "batch")}
    if groups["groups"]:
        return {"normalizer": "gn", "num_groups": _size(spec, groups["groups"], "group count")}
    if groups["group_size"]:
        return {"normalizer": "gn", "group_size": _size(spec, groups["group_size"], "group size")}
    if groups["evo_s0"]:
        size = _size(spec, groups["evo_group_size"], "group size")
        return {"normalizer": "evo-s0", "group_size": size}
    return {"normalizer": groups["plain"]}


def _size(spec: str, digits: str | None, what: str) -> int | None:
    if digits is None:
        return None
    if int(digits) < 1:
        raise ValueError(f"scheme {spec!r}: the {what} must be a positive integer, got {digits}")
    return int(digits)


def _parse_modifiers(spec: str, tokens: list[str]) -> tuple[bool, str | None]:
    modifiers = tokens[1:]
    for index, token in enumerate(modifiers, start=1):
        if token not in MODIFIERS:
            raise _bad_token(spec, tokens, index)
        if modifiers.count(token) > 1:
            raise ValueError(f"scheme {spec!r} repeats the modifier '+{token}'")
    weights = [m for m in modifiers if m in WEIGHT_MODIFIERS]
    if len(weights) > 1:
        raise ValueError(
            f"scheme {spec!r} combines weight-space modifiers "
            f"{', '.join('+' + w for w in weights)}; choose at most one of "
            f"{', '.join('+' + w for w in WEIGHT_MODIFIERS)}"
        )
    return "pn" in modifiers, (weights[0] if weights else None)


def _check_combination(spec: str, parsed: Scheme) -> None:
    if parsed.normalizer == "nf" and (parsed.proxy or parsed.weight):
        raise ValueError(
            f"scheme {spec!r}: 'nf' takes no modifiers (its convs are already scaled-WS and it "
            f"has no normalization step for +pn to follow)"
        )
    if parsed.proxy and parsed.normalizer not in PN_NORMALIZERS:
        raise ValueError(
            f"scheme {spec!r}: +pn needs a normalization step before the activation step "
            f"(PN paper, Section 5) that PN can follow: one of {', '.join(PN_NORMALIZERS)} "
            f"(with their /k or group forms); '{parsed.normalizer}' is not"
        )


def _bad_token(spec: str, tokens: list[str], index: int) -> ValueError:
    """An error listing the valid forms, with the spec corrected at ``tokens[index]``."""
    kind = "normalizer" if index == 0 else "modifier"
    candidates = [e for e in EXAMPLES if "+" not in e] if index == 0 else list(MODIFIERS)
    normalizers = ", ".join(f.form for f in FORMS if not f.form.startswith("+"))
    message = (
        f"unknown scheme {spec!r}: {tokens[index]!r} is not a valid {kind}. Valid forms: a "
        f"normalizer ({normalizers}) followed by any of the modifiers +{', +'.join(MODIFIERS)} "
        f"(e.g. 'gn8+pn', 'ln+ws')"
    )
    fix = _LONG_NAMES.get(re.sub(r"[\s_-]", "", tokens[index])) if index == 0 else None
    fix = fix or closest(tokens[index], candidates)
    if fix is not None:
        fixed = [*tokens[:index], fix, *tokens[index + 1 :]]
        message += f". Did you mean {'+'.join(fixed)!r}?"
    return ValueError(message)


def _form_of(parsed: Scheme) -> SchemeForm:
    key = parsed.normalizer
    if parsed.norm_batch_size is not None:
        key = "bn/<k>"
    elif parsed.num_groups is not None:
        key = "gn<G>"
    elif parsed.group_size is not None:
        key = f"{parsed.normalizer}/<S>"
    return next(f for f in FORMS if f.form == key)


def _describe_form(form: str) -> str:
    return next(f.description for f in FORMS if f.form == form)
