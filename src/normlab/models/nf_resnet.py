r"""Normalizer-free ResNets (NF-ResNets).

Brock, De & Smith 2021, "Characterizing signal propagation to close the performance gap in
unnormalized ResNets" (arXiv:2101.08692), Section 4: pre-activation residual blocks

    x_{l+1} = x_l + α·f_l(x_l / β_l),

with β_l = sqrt(Var[x_l]) the analytically expected standard deviation of the block input, so
that every residual branch f_l sees a unit-variance input, and α (0.2) the rate at which the
variance grows: Var[x_{l+1}] = Var[x_l] + α². A transition block (one that changes the shape)
applies its shortcut conv to the scaled, activated input, so that the variance after it is
reset to 1 + α². Convolutions are Scaled Weight Standardized and activations carry the gain
γ_φ that keeps unit-Gaussian inputs at unit variance (the "nf" scheme: ScaledWSConv2d +
GainedAct). ``skipinit=True`` adds a learnable scalar gain, initialised at 0, at the end of each
residual branch (De & Smith 2020), which the paper also evaluates.

Sizes: NF-ResNet-26/50/101 (bottleneck blocks, the ImageNet ResNet stem) and a CIFAR
NF-ResNet-20 (basic blocks, 16/32/64 channels). Under a normalizing scheme ("bn", "gn8+pn", ...)
the same architecture has a normalization before each activation, and the β_l scaling is then
harmless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from .._checks import check_number
from ..scheme import Scheme
from ._common import (
    ClassifierHead,
    Layers,
    SkipInitGain,
    check_images,
    check_width,
    init_weights,
    layers,
    resnet_stem,
    scaled,
    set_drop_path,
)
from .registry import register

DEFAULT_ALPHA = 0.2


@dataclass(frozen=True)
class NFResNetConfig:
    """An NF-ResNet architecture: block type, blocks and planes per stage, stem."""

    block: Literal["basic", "bottleneck"]
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    stem: Literal["cifar", "imagenet"]
    stem_width: int
    num_classes: int = 1000


CONFIGS = {
    "nf_resnet20": NFResNetConfig("basic", (3, 3, 3), (16, 32, 64), "cifar", 16, 10),
    "nf_resnet26": NFResNetConfig("bottleneck", (2, 2, 2, 2), (64, 128, 256, 512), "imagenet", 64),
    "nf_resnet50": NFResNetConfig("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), "imagenet", 64),
    "nf_resnet101": NFResNetConfig(
        "bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), "imagenet", 64
    ),
}


class NFBlock(nn.Module):
    """x + α·f(x / β): ``f`` starts with the activation of x/β, which a transition block's
    shortcut conv also takes. Subclasses build the convs of f in ``branch``."""

    expansion = 1
    norm_act1: nn.Module
    shortcut: nn.Module | None

    def _finish(self, L: Layers, in_channels: int, out_channels: int, stride: int, **kw) -> None:
        self.alpha, self.beta = kw["alpha"], kw["beta"]
        self.drop_path: nn.Module | None = None  # stochastic depth (set_drop_path)
        self.gain = SkipInitGain() if kw["skipinit"] else None
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = L.conv("shortcut", in_channels, out_channels, 1, stride=stride)

    @property
    def transition(self) -> bool:
        """Whether the block changes the shape (its shortcut resets the variance)."""
        return self.shortcut is not None

    def branch(self, pre: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        pre = self.norm_act1(x / self.beta)
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.branch(pre)
        if self.gain is not None:
            out = self.gain(out)
        if self.drop_path is not None:
            out = self.drop_path(out)
        return skip + self.alpha * out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta:.4f}"


class NFBasicBlock(NFBlock):
    """f = conv3×3 ∘ σ ∘ conv3×3 (stride) ∘ σ."""

    branch_output = "conv2"  # f's output before α (and SkipInit), for signal propagation plots

    def __init__(self, L: Layers, in_channels: int, planes: int, stride: int, **kw) -> None:
        super().__init__()
        self.norm_act1 = L.norm_act("norm_act1", in_channels)
        self.conv1 = L.conv("conv1", in_channels, planes, 3, stride=stride)
        self.norm_act2 = L.norm_act("norm_act2", planes)
        self.conv2 = L.conv("conv2", planes, planes, 3)
        self._finish(L, in_channels, planes, stride, **kw)

    def branch(self, pre: Tensor) -> Tensor:
        return self.conv2(self.norm_act2(self.conv1(pre)))


class NFBottleneck(NFBlock):
    """f = conv1×1 ∘ σ ∘ conv3×3 (stride) ∘ σ ∘ conv1×1 ∘ σ, 4× expansion."""

    expansion = 4
    branch_output = "conv3"  # f's output before α (and SkipInit), for signal propagation plots

    def __init__(self, L: Layers, in_channels: int, planes: int, stride: int, **kw) -> None:
        super().__init__()
        out = planes * self.expansion
        self.norm_act1 = L.norm_act("norm_act1", in_channels)
        self.conv1 = L.conv("conv1", in_channels, planes, 1)
        self.norm_act2 = L.norm_act("norm_act2", planes)
        self.conv2 = L.conv("conv2", planes, planes, 3, stride=stride)
        self.norm_act3 = L.norm_act("norm_act3", planes)
        self.conv3 = L.conv("conv3", planes, out, 1)
        self._finish(L, in_channels, out, stride, **kw)

    def branch(self, pre: Tensor) -> Tensor:
        return self.conv3(self.norm_act3(self.conv2(self.norm_act2(self.conv1(pre)))))


class NFResNet(nn.Module):
    r"""Normalizer-free ResNet (Brock et al. 2021a).

    Args:
        config: the architecture (``CONFIGS["nf_resnet50"]``, ...).
        norm: the scheme, "nf" (Scaled WS convs, gained activations) by default.
        act, num_classes, in_channels, width: as for every normlab model.
        alpha: α, the variance added by each residual branch (0.2).
        skipinit: a learnable scalar gain, initialised at 0, on each residual branch.
        drop_path_rate: stochastic depth of the last block, linearly increasing from 0.
        dropout: dropout before the classifier.

    ``expected_std`` lists every block's β_l.
    """

    def __init__(
        self,
        config: NFResNetConfig,
        norm: str | Scheme = "nf",
        act: str = "relu",
        num_classes: int | None = None,
        in_channels: int = 3,
        width: float = 1.0,
        alpha: float = DEFAULT_ALPHA,
        skipinit: bool = False,
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # checked at the entry: check_images
        alpha = check_number("alpha", alpha, 0.0, low_open=True)
        L = layers(norm, act, type(self).__name__)
        width = check_width(width)
        self.config, self.scheme, self.alpha = config, L.scheme, float(alpha)
        channels = scaled(config.stem_width, width)
        self.stem = resnet_stem(L.at("stem"), in_channels, channels, config.stem == "cifar")
        block = NFBottleneck if config.block == "bottleneck" else NFBasicBlock
        variance, self.expected_std = 1.0, []
        for index, (depth, planes) in enumerate(zip(config.depths, config.widths, strict=True)):
            name, planes, stage = f"layer{index + 1}", scaled(planes, width), []
            for b in range(depth):
                beta = math.sqrt(variance)
                stride = 2 if index > 0 and b == 0 else 1
                unit = block(
                    L.at(name, b),
                    channels,
                    planes,
                    stride,
                    alpha=alpha,
                    beta=beta,
                    skipinit=skipinit,
                )
                variance = 1.0 + alpha**2 if unit.transition else variance + alpha**2
                self.expected_std.append(beta)
                stage.append(unit)
                channels = planes * block.expansion
            self.add_module(name, nn.Sequential(*stage))
        self.num_stages = len(config.depths)
        stages = [getattr(self, f"layer{index + 1}") for index in range(self.num_stages)]
        set_drop_path([block for stage in stages for block in stage], drop_path_rate)
        self.final_act = L.norm_act("final_act", channels)
        self.head = ClassifierHead(
            channels, config.num_classes if num_classes is None else num_classes, dropout
        )
        self.num_features = channels
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        check_images(self, x)
        x = self.stem(x)
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.final_act(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))


def _register(name: str) -> None:
    config = CONFIGS[name]
    size = 32 if config.stem == "cifar" else 224

    @register(name, family="NF-ResNet", input_size=size)
    def factory(**kwargs) -> NFResNet:
        return NFResNet(config, **kwargs)

    factory.__doc__ = f"{name}: normalizer-free ResNet, scheme 'nf' by default."


for _name in ("nf_resnet26", "nf_resnet50", "nf_resnet101", "nf_resnet20"):
    _register(_name)
