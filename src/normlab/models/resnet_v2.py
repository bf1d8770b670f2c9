r"""Pre-activation ResNets (ResNet v2) and ResNeXts built from a normalization scheme.

He et al. 2016, "Identity Mappings in Deep Residual Networks" (arXiv:1603.05027): each residual
branch starts with its normalization and activation, x_{l+1} = x_l + F(σ(N(x_l))), so that the
shortcut path is a clean identity. Every activation step is therefore right after a normalization
step, as Proxy Normalization needs (Labatie et al. 2021, Section 5), and a final
normalization-activation closes the network before the classifier.

* CIFAR ResNet-20/32/44/56/110 (He et al. 2016a, Section 4.2): a 3×3 stem, three stages of
  n = (depth - 2) / 6 basic blocks with 16, 32 and 64 channels.
* ImageNet ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottleneck blocks, 4× expansion),
  with the 7×7 stride-2 stem and max pool, stride on the 3×3 conv of a bottleneck.
* ResNeXt-50/101 32×4d (Xie et al. 2017, "Aggregated Residual Transformations"): bottlenecks
  whose 3×3 conv has 32 groups of 4·(planes/64) channels, with the same v2 ordering.

When a block changes shape, its shortcut is a 1×1 convolution of the pre-activated input
(``shortcut="conv"``, He et al. 2016's projection), or, for the CIFAR nets, the parameter-free
subsample-and-zero-pad shortcut of He et al. 2016a (``shortcut="pad"``, their option A).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ..scheme import Scheme
from ._common import (
    ClassifierHead,
    Layers,
    check_images,
    check_width,
    init_weights,
    layers,
    resnet_stem,
    scaled,
    set_drop_path,
)
from .registry import register

Shortcut = Literal["conv", "pad"]
SHORTCUTS = ("conv", "pad")


@dataclass(frozen=True)
class ResNetV2Config:
    """One ResNet v2 / ResNeXt architecture.

    Attributes:
        block: "basic" (two 3×3 convs) or "bottleneck" (1×1, 3×3, 1×1, 4× expansion).
        depths: blocks per stage.
        widths: planes per stage (the output channels of a basic block; a quarter of a
            bottleneck's).
        stem: "cifar" (3×3 conv) or "imagenet" (7×7 stride-2 conv, 3×3 stride-2 max pool).
        stem_width: output channels of the stem.
        groups: groups of a bottleneck's 3×3 conv (32 for ResNeXt 32×4d).
        base_width: channels per group at planes = 64 (4 for 32×4d; 64 gives a ResNet).
        num_classes: the default number of classes.
    """

    block: Literal["basic", "bottleneck"]
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stem: Literal["cifar", "imagenet"]
    stem_width: int
    groups: int = 1
    base_width: int = 64
    num_classes: int = 1000


def cifar_config(depth: int) -> ResNetV2Config:
    """The CIFAR ResNet of He et al. 2016a with ``depth`` = 6n + 2 layers."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return ResNetV2Config("basic", (n, n, n), (16, 32, 64), "cifar", 16, num_classes=10)


IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def imagenet_config(depth: int, groups: int = 1, base_width: int = 64) -> ResNetV2Config:
    """The ImageNet ResNet (or ResNeXt, with ``groups`` × ``base_width``d) of this depth."""
    block, depths = IMAGENET_DEPTHS[depth]
    widths = (64, 128, 256, 512)
    return ResNetV2Config(block, depths, widths, "imagenet", 64, groups, base_width)


class PadShortcut(nn.Module):
    """He et al. 2016a's option A: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"a zero-padding shortcut cannot reduce {in_channels} to {out_channels} channels"
            )
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))


def make_shortcut(
    L: Layers, in_channels: int, out_channels: int, stride: int, kind: Shortcut
) -> nn.Module | None:
    """None (identity) when the shape is kept, else the ``kind`` shortcut."""
    if stride == 1 and in_channels == out_channels:
        return None
    if kind == "pad":
        return L.build("shortcut", PadShortcut, in_channels, out_channels, stride)
    return L.conv("shortcut", in_channels, out_channels, 1, stride=stride)


class PreActBlock(nn.Module):
    """Pre-activation residual block: x + F(σ(N(x))) (He et al. 2016, Fig. 4e).

    Subclasses build ``branch``: the convs and the inner normalization-activations. A conv
    shortcut takes the pre-activated input, as the paper's projection does; a padding
    shortcut takes x.
    """

    norm_act1: nn.Module
    shortcut: nn.Module | None

    def __init__(self) -> None:
        super().__init__()
        self.drop_path: nn.Module | None = None  # stochastic depth (set_drop_path)

    def branch(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        pre = self.norm_act1(x)
        if self.shortcut is None:
            skip = x
        elif isinstance(self.shortcut, PadShortcut):
            skip = self.shortcut(x)
        else:
            skip = self.shortcut(pre)
        out = self.branch(pre)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return skip + out


class PreActBasicBlock(PreActBlock):
    """σN → 3×3 conv (stride) → σN → 3×3 conv."""

    expansion = 1
    branch_output = "conv2"  # the residual branch's output, for signal propagation plots

    def __init__(
        self, L: Layers, in_channels: int, planes: int, stride: int, shortcut: Shortcut, **_
    ) -> None:
        super().__init__()
        self.norm_act1 = L.norm_act("norm_act1", in_channels)
        self.conv1 = L.conv("conv1", in_channels, planes, 3, stride=stride)
        self.norm_act2 = L.norm_act("norm_act2", planes)
        self.conv2 = L.conv("conv2", planes, planes, 3)
        self.shortcut = make_shortcut(L, in_channels, planes, stride, shortcut)

    def branch(self, pre: Tensor) -> Tensor:
        return self.conv2(self.norm_act2(self.conv1(pre)))


class PreActBottleneck(PreActBlock):
    """σN → 1×1 conv → σN → 3×3 conv (stride, groups) → σN → 1×1 conv (4× planes)."""

    expansion = 4
    branch_output = "conv3"  # the residual branch's output, for signal propagation plots

    def __init__(
        self,
        L: Layers,
        in_channels: int,
        planes: int,
        stride: int,
        shortcut: Shortcut,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        mid = groups * max(1, planes * base_width // 64)
        out = planes * self.expansion
        self.norm_act1 = L.norm_act("norm_act1", in_channels)
        self.conv1 = L.conv("conv1", in_channels, mid, 1)
        self.norm_act2 = L.norm_act("norm_act2", mid)
        self.conv2 = L.conv("conv2", mid, mid, 3, stride=stride, groups=groups)
        self.norm_act3 = L.norm_act("norm_act3", mid)
        self.conv3 = L.conv("conv3", mid, out, 1)
        self.shortcut = make_shortcut(L, in_channels, out, stride, shortcut)

    def branch(self, pre: Tensor) -> Tensor:
        out = self.conv2(self.norm_act2(self.conv1(pre)))
        return self.conv3(self.norm_act3(out))


BLOCKS: dict[str, type[PreActBasicBlock | PreActBottleneck]] = {
    "basic": PreActBasicBlock,
    "bottleneck": PreActBottleneck,
}


class ResNetV2(nn.Module):
    r"""A pre-activation ResNet / ResNeXt (He et al. 2016; Xie et al. 2017).

    stem → stages of pre-activation blocks → σ(N(·)) → global average pool → linear.

    Args:
        config: the architecture (:func:`cifar_config`, :func:`imagenet_config`).
        norm: the normalization scheme spec ("bn", "gn8+pn", "ln+pn", "nf", ...).
        act: the activation φ.
        num_classes: classifier outputs (None: the config's, 10 for CIFAR, 1000 otherwise).
        in_channels: input channels.
        width: multiplier of every stage's channels (and the stem's).
        shortcut: "conv" (1×1 projection of the pre-activated input) or "pad" (option A of
            He et al. 2016a: subsample and zero-pad, no parameters).
        drop_path_rate: stochastic depth of the last block, linearly increasing from 0.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        config: ResNetV2Config,
        norm: str | Scheme = "bn",
        act: str = "relu",
        num_classes: int | None = None,
        in_channels: int = 3,
        width: float = 1.0,
        shortcut: Shortcut = "conv",
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # checked at the entry: check_images
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        width = check_width(width)
        L = layers(norm, act, type(self).__name__)
        self.config, self.scheme = config, L.scheme
        channels = scaled(config.stem_width, width)
        self.stem = resnet_stem(L.at("stem"), in_channels, channels, config.stem == "cifar")
        block = BLOCKS[config.block]
        for index, (depth, planes) in enumerate(zip(config.depths, config.widths, strict=True)):
            name = f"layer{index + 1}"
            stride = 1 if index == 0 else 2
            planes = scaled(planes, width)
            stage = []
            for b in range(depth):
                stage.append(
                    block(
                        L.at(name, b),
                        channels,
                        planes,
                        stride if b == 0 else 1,
                        shortcut,
                        groups=config.groups,
                        base_width=config.base_width,
                    )
                )
                channels = planes * block.expansion
            self.add_module(name, nn.Sequential(*stage))
        self.num_stages = len(config.depths)
        set_drop_path([b for s in range(self.num_stages) for b in self.stage(s)], drop_path_rate)
        self.norm_act = L.norm_act("norm_act", channels)
        self.head = ClassifierHead(
            channels, config.num_classes if num_classes is None else num_classes, dropout
        )
        self.num_features = channels
        init_weights(self)

    def stage(self, index: int) -> nn.Sequential:
        return getattr(self, f"layer{index + 1}")

    def forward_features(self, x: Tensor) -> Tensor:
        check_images(self, x)
        x = self.stem(x)
        for index in range(self.num_stages):
            x = self.stage(index)(x)
        return self.norm_act(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


CIFAR_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}
IMAGENET_PARAMS = {18: 11.7e6, 34: 21.8e6, 50: 25.6e6, 101: 44.5e6, 152: 60.2e6}


def _register_resnet(
    depth: int, config: ResNetV2Config, family: str, input_size: int, published: float, doc: str
) -> None:
    @register(f"resnet{depth}", family=family, input_size=input_size, published_params=published)
    def factory(**kwargs) -> ResNetV2:
        return ResNetV2(config, **kwargs)

    factory.__doc__ = doc


for _depth, _params in CIFAR_PARAMS.items():
    _register_resnet(
        _depth,
        cifar_config(_depth),
        "ResNet v2, CIFAR",
        32,
        _params,
        f"CIFAR ResNet-{_depth} v2 (16/32/64 channels, 10 classes).",
    )
for _depth, _params in IMAGENET_PARAMS.items():
    _register_resnet(
        _depth,
        imagenet_config(_depth),
        "ResNet v2, ImageNet",
        224,
        _params,
        f"ImageNet ResNet-{_depth} v2 (1000 classes).",
    )


@register(
    "resnext50_32x4d",
    family="ResNeXt, v2 order",
    input_size=224,
    published_params=25.0e6,
)
def resnext50_32x4d(**kwargs) -> ResNetV2:
    """ResNeXt-50 32×4d with pre-activation blocks."""
    return ResNetV2(imagenet_config(50, groups=32, base_width=4), **kwargs)


@register(
    "resnext101_32x4d",
    family="ResNeXt, v2 order",
    input_size=224,
    published_params=44.2e6,
)
def resnext101_32x4d(**kwargs) -> ResNetV2:
    """ResNeXt-101 32×4d with pre-activation blocks."""
    return ResNetV2(imagenet_config(101, groups=32, base_width=4), **kwargs)
