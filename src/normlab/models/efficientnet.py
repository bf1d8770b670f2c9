r"""EfficientNet-B0/B1/B2 built from a normalization scheme, depthwise or with group convolutions.

Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
(arXiv:1905.11946): a 3×3 stride-2 stem, seven stages of MBConv blocks (Sandler et al. 2018)
with squeeze-excite (Hu et al. 2018), a 1×1 head conv to 1280 channels, pooling and a linear
classifier. B1 and B2 scale the depth by 1.1 and 1.2 and B2 the width by 1.1, channels rounded
to multiples of 8.

Masters et al. 2021, "Making EfficientNet More Efficient: Exploring Batch-Independent
Normalization, Group Convolutions and Reduced Resolution Training" (arXiv:2106.03640): the
depthwise convs become group convolutions with groups of 16 channels and the expansion ratio
drops from 6 to 4 ("G16" below).

MBConv block (``norm`` without ``+pn``)::

    x → 1×1 expand → σN → k×k depthwise → σN → SE → 1×1 project → N (affine) → (+ x)

Under ``+pn`` (Labatie et al. 2021, Section 6 and their reference implementation):

* every σN is a NormAct whose normalizer has no affine, PN holding γ, β;
* squeeze-excite sees the centred activation φ(u) − E[φ(U)] = z / a, z the PN output and
  a = (Var + ε)^(-1/2) PN's scale, and gates it by a·g: PN's scale is folded into the gate. The
  output (φ(u) − E)·a·g equals z·g with g computed from pool(z) / a (pooling is linear), which
  is how it is computed here, at the cost of C divisions;
* the projection conv's normalization has a per-channel scale and no shift, and no activation;
* the head conv's σN is proxy-normalized like every other activation step.

The squeeze-excite MLP acts on pooled vectors: its φ and sigmoid gate are plain functions, not
activation steps of the scheme.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .._checks import channel_view
from ..layers import NormAct, ProxyNormAct
from ..scheme import Scheme
from ._common import (
    ChannelScale,
    ClassifierHead,
    DropPath,
    Layers,
    Nonlinearity,
    check_images,
    check_width,
    depth_of,
    init_weights,
    layers,
    round_to,
)
from .registry import register


@dataclass(frozen=True)
class MBConvStage:
    """One stage of MBConv blocks: expansion ratio, kernel size, stride of the first block,
    output channels and number of blocks (at B0 scale)."""

    expansion: int
    kernel_size: int
    stride: int
    channels: int
    repeats: int


B0_STAGES = (
    MBConvStage(1, 3, 1, 16, 1),
    MBConvStage(6, 3, 2, 24, 2),
    MBConvStage(6, 5, 2, 40, 2),
    MBConvStage(6, 3, 2, 80, 3),
    MBConvStage(6, 5, 1, 112, 3),
    MBConvStage(6, 5, 2, 192, 4),
    MBConvStage(6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet variant.

    Attributes:
        width: width coefficient (1.0 for B0 and B1, 1.1 for B2).
        depth: depth coefficient (1.0, 1.1, 1.2).
        resolution: input resolution (224, 240, 260).
        dropout: dropout before the classifier (0.2, 0.2, 0.3).
        group_size: channels per group of the k×k convs; None for depthwise (Tan & Le), 16 for
            Masters et al.'s G16.
        expansion: replaces the stages' expansion ratio 6 (4 for G16); None keeps it.
    """

    width: float
    depth: float
    resolution: int
    dropout: float
    group_size: int | None = None
    expansion: int | None = None
    stages: tuple[MBConvStage, ...] = B0_STAGES
    stem_width: int = 32
    head_width: int = 1280
    se_ratio: float = 0.25


VARIANTS = {
    "b0": EfficientNetConfig(1.0, 1.0, 224, 0.2),
    "b1": EfficientNetConfig(1.0, 1.1, 240, 0.2),
    "b2": EfficientNetConfig(1.1, 1.2, 260, 0.3),
}


def g16(config: EfficientNetConfig) -> EfficientNetConfig:
    """Masters et al. 2021's group-convolution variant: groups of 16, expansion 4."""
    return replace(config, group_size=16, expansion=4)


class SqueezeExcite(nn.Module):
    r"""Squeeze-excite (Hu et al. 2018): x·g, g = sigmoid(W₂ φ(W₁ pool(x) + b₁) + b₂).

    ``forward(x, input_scale)`` computes the gate from pool(x) / input_scale (per channel):
    with x = z the output of PN and input_scale = a its scale, the gate sees the centred
    activation φ(u) − E and x·g = (φ(u) − E)·a·g (see the module docstring).
    """

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = Nonlinearity(act)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: Tensor, input_scale: Tensor | None = None) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        if input_scale is not None:
            pooled = pooled / channel_view(input_scale, 4)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(pooled))))


def with_proxy_scale(norm_act: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(norm_act(x), a): with a = (Var + ε)^(-1/2) PN's per-channel scale where ``norm_act`` is
    a NormAct whose activation step is a :class:`~normlab.layers.ProxyNormAct` (computed with
    the output, once), None for any other module."""
    if not (isinstance(norm_act, NormAct) and isinstance(norm_act.act, ProxyNormAct)):
        return norm_act(x), None
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing (fold): the NormAct stays one call
        return norm_act(x), norm_act.act.scale_shift()[0]
    return norm_act.forward_with_scale(x)


def projection_norm(L: Layers, channels: int) -> nn.Module:
    """The projection conv's normalization: the scheme's norm with its affine, or under +pn the
    normalizer without affine followed by a per-channel scale, no shift."""
    if not L.scheme.proxy:
        return L.norm("norm_project", channels)
    norm = L.norm("norm_project", channels, affine=False)
    return nn.Sequential(OrderedDict(norm=norm, scale=ChannelScale(channels)))


class MBConv(nn.Module):
    """Inverted-residual block with squeeze-excite (Sandler et al. 2018; Tan & Le 2019)."""

    def __init__(
        self,
        L: Layers,
        in_channels: int,
        out_channels: int,
        expansion: int,
        kernel_size: int,
        stride: int,
        group_size: int | None,
        se_ratio: float,
        act: str,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        mid = in_channels * expansion
        self.conv_expand = self.norm_act_expand = None
        if expansion != 1:
            self.conv_expand = L.conv("conv_expand", in_channels, mid, 1)
            self.norm_act_expand = L.norm_act("norm_act_expand", mid)
        groups = mid if group_size is None else mid // math.gcd(mid, group_size)
        self.conv_dw = L.conv("conv_dw", mid, mid, kernel_size, stride=stride, groups=groups)
        self.norm_act_dw = L.norm_act("norm_act_dw", mid)
        self.se = SqueezeExcite(mid, max(1, int(in_channels * se_ratio)), act)
        self.conv_project = L.conv("conv_project", mid, out_channels, 1)
        self.norm_project = projection_norm(L, out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_path = DropPath(drop_path) if self.residual else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.conv_expand is not None:
            out = self.norm_act_expand(self.conv_expand(out))
        out, scale = with_proxy_scale(self.norm_act_dw, self.conv_dw(out))
        out = self.se(out, scale)
        out = self.norm_project(self.conv_project(out))
        return x + self.drop_path(out) if self.residual else out


class EfficientNet(nn.Module):
    r"""EfficientNet (Tan & Le 2019), optionally with group convs (Masters et al. 2021).

    Args:
        config: the variant (``VARIANTS["b0"]``, ``g16(VARIANTS["b1"])``, ...).
        norm: the normalization scheme spec.
        act: φ (silu, the paper's swish, by default).
        num_classes: classifier outputs.
        in_channels: input channels.
        width: an extra multiplier of every channel count (rounded to multiples of 8).
        drop_path_rate: stochastic-depth rate of the last block, linearly increasing from 0
            (0.2 in the paper's training).
        dropout: dropout before the classifier (None: the variant's).
    """

    def __init__(
        self,
        config: EfficientNetConfig,
        norm: str | Scheme = "bn",
        act: str = "silu",
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        drop_path_rate: float = 0.2,
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # checked at the entry: check_images
        L = layers(norm, act, type(self).__name__)
        self.config, self.scheme = config, L.scheme
        multiplier = config.width * check_width(width)

        def channels(c: int) -> int:
            return round_to(c * multiplier, 8)

        stem = channels(config.stem_width)
        self.stem = nn.Sequential(
            OrderedDict(
                conv=L.at("stem").conv("conv", in_channels, stem, 3, stride=2),
                norm_act=L.at("stem").norm_act("norm_act", stem),
            )
        )
        total = sum(depth_of(s.repeats, config.depth) for s in config.stages)
        index, in_channels, stages = 0, stem, []
        for s, stage in enumerate(config.stages):
            blocks = []
            expansion = stage.expansion
            if config.expansion is not None and expansion != 1:
                expansion = config.expansion
            for b in range(depth_of(stage.repeats, config.depth)):
                out = channels(stage.channels)
                blocks.append(
                    MBConv(
                        L.at("blocks", s, b),
                        in_channels,
                        out,
                        expansion,
                        stage.kernel_size,
                        stage.stride if b == 0 else 1,
                        config.group_size,
                        config.se_ratio,
                        act,
                        drop_path_rate * index / total,
                    )
                )
                in_channels, index = out, index + 1
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        head = channels(config.head_width)
        self.conv_head = L.conv("conv_head", in_channels, head, 1)
        self.norm_act_head = L.norm_act("norm_act_head", head)
        self.head = ClassifierHead(
            head, num_classes, config.dropout if dropout is None else dropout
        )
        self.num_features = head
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        check_images(self, x)
        x = self.blocks(self.stem(x))
        return self.norm_act_head(self.conv_head(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


PUBLISHED = {"b0": 5.3e6, "b1": 7.8e6, "b2": 9.1e6}


def _register(variant: str, grouped: bool) -> None:
    config = g16(VARIANTS[variant]) if grouped else VARIANTS[variant]

    @register(
        f"efficientnet_g16_{variant}" if grouped else f"efficientnet_{variant}",
        family="EfficientNet G16" if grouped else "EfficientNet",
        input_size=config.resolution,
        published_params=None if grouped else PUBLISHED[variant],
    )
    def factory(**kwargs) -> EfficientNet:
        return EfficientNet(config, **kwargs)

    kind = "G16: groups of 16 channels, expansion 4" if grouped else "depthwise, expansion 6"
    factory.__doc__ = f"EfficientNet-{variant.upper()}, {kind}."


for _grouped in (False, True):
    for _variant in VARIANTS:
        _register(_variant, _grouped)
