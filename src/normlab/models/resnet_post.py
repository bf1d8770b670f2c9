r"""The post-activation CIFAR ResNet-56 of Beyond BatchNorm, with SkipInit and the option of a
nonlinearity on the residual path.

He et al. 2016a, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), Section 4.2:
a 3×3 stem with its normalization-activation, three stages of 9 basic blocks with 16, 32 and 64
channels, global pooling and a linear classifier. A post-activation block is

    x_{l+1} = φ(x_l + g·N(conv(σN(conv(x_l)))))

where the last φ follows the residual addition, not a normalization. Lubana et al. 2021
("Beyond BatchNorm", arXiv:2106.05956) train it with every normalizer and study two options:

* ``skipinit``: g a learnable scalar initialised at 0 (De & Smith 2020, "Batch Normalization
  Biases Residual Blocks Towards the Identity Function in Deep Networks"); g = 1 otherwise;
* ``act_on_residual``: the nonlinearity moves onto the residual path,
  x_{l+1} = x_l + g·σN(conv(σN(conv(x_l)))), so every activation follows a normalization.

Proxy Normalization needs a normalization right before each activation step (Labatie et al.
2021, Section 5), so ``+pn`` schemes need ``act_on_residual=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import Tensor, nn

from ..scheme import Scheme
from ._common import (
    ClassifierHead,
    Layers,
    SkipInitGain,
    check_images,
    check_width,
    init_weights,
    layers,
    scaled,
    set_drop_path,
)
from .registry import register
from .resnet_v2 import SHORTCUTS, PadShortcut


class PostActBasicBlock(nn.Module):
    """conv → σN → conv → N → ·g → + shortcut → φ, or with ``act_on_residual``
    conv → σN → conv → σN → ·g → + shortcut."""

    def __init__(
        self,
        L: Layers,
        in_channels: int,
        planes: int,
        stride: int,
        shortcut: Literal["conv", "pad"],
        skipinit: bool,
        act_on_residual: bool,
    ) -> None:
        super().__init__()
        self.conv1 = L.conv("conv1", in_channels, planes, 3, stride=stride)
        self.norm_act1 = L.norm_act("norm_act1", planes)
        self.conv2 = L.conv("conv2", planes, planes, 3)
        if act_on_residual:
            self.norm_act2 = L.norm_act("norm_act2", planes)
        else:
            self.norm2 = L.norm("norm2", planes)
        self.gain = SkipInitGain() if skipinit else None
        self.drop_path: nn.Module | None = None  # stochastic depth (set_drop_path)
        self.shortcut = self._shortcut(L, in_channels, planes, stride, shortcut)
        self.act = None
        if not act_on_residual:
            spec = L.scheme.spec.replace("+pn", "")
            self.act = L.plain_act(
                "act",
                None,
                follows="the residual addition, not a normalization",
                fix=f"Use act_on_residual=True (the activation moves onto the residual branch, "
                f"after its normalization), or a scheme without +pn such as {spec!r}.",
            )

    @staticmethod
    def _shortcut(L: Layers, in_channels: int, planes: int, stride: int, kind: str):
        if stride == 1 and in_channels == planes:
            return None
        if kind == "pad":
            return PadShortcut(in_channels, planes, stride)
        S = L.at("shortcut")
        conv = S.conv("conv", in_channels, planes, 1, stride=stride)
        return nn.Sequential(OrderedDict(conv=conv, norm=S.norm("norm", planes)))

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm_act1(self.conv1(x))
        out = self.conv2(out)
        out = self.norm2(out) if self.act is not None else self.norm_act2(out)
        if self.gain is not None:
            out = self.gain(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return out if self.act is None else self.act(out)


class ResNetPost(nn.Module):
    r"""Post-activation CIFAR ResNet (He et al. 2016a) as used by Beyond BatchNorm.

    Args:
        depth: 6n + 2 (56 for Beyond BatchNorm's ResNet-56).
        norm, act, num_classes, in_channels: as for every normlab model.
        width: multiplier of the 16/32/64 channels (Beyond BatchNorm's code uses width=2).
        skipinit: a learnable scalar gain, initialised at 0, on each residual branch.
        act_on_residual: put the block's last activation on the residual branch (after its
            normalization) instead of after the addition; needed by ``+pn`` schemes.
        shortcut: "conv" (1×1 conv and normalization, option B) or "pad" (option A).
        drop_path_rate: stochastic depth of the last block, linearly increasing from 0.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        depth: int = 56,
        norm: str | Scheme = "bn",
        act: str = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        skipinit: bool = False,
        act_on_residual: bool = False,
        shortcut: Literal["conv", "pad"] = "conv",
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # checked at the entry: check_images
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
        L = layers(norm, act, type(self).__name__)
        width = check_width(width)
        self.scheme = L.scheme
        channels = scaled(16, width)
        S = L.at("stem")
        self.stem = nn.Sequential(
            OrderedDict(
                conv=S.conv("conv", in_channels, channels, 3),
                norm_act=S.norm_act("norm_act", channels),
            )
        )
        n = (depth - 2) // 6
        for index, planes in enumerate((16, 32, 64)):
            name, planes = f"layer{index + 1}", scaled(planes, width)
            blocks = []
            for b in range(n):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(
                    PostActBasicBlock(
                        L.at(name, b), channels, planes, stride, shortcut, skipinit, act_on_residual
                    )
                )
                channels = planes
            self.add_module(name, nn.Sequential(*blocks))
        residual = [b for stage in (self.layer1, self.layer2, self.layer3) for b in stage]
        set_drop_path(residual, drop_path_rate)
        self.head = ClassifierHead(channels, num_classes, dropout)
        self.num_features = channels
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_images(self, x)
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.head(x)


@register(
    "resnet56_post",
    family="ResNet, post-act",
    input_size=32,
    published_params=0.85e6,
    fixed=("depth",),
)
def resnet56_post(**kwargs) -> ResNetPost:
    """ResNet-56, post-activation, with the options ``skipinit=`` and ``act_on_residual=``."""
    return ResNetPost(56, **kwargs)
