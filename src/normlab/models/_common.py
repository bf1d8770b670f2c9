r"""Building blocks shared by normlab's models.

:class:`Layers` wraps a :class:`~normlab.Scheme` with the path of the layer being built, so that
a scheme a layer cannot take (a GroupNorm that cannot divide its channels, an activation without a
normalization before it under ``+pn``) fails with an error naming that layer. The small modules
here are the pieces the papers add around the scheme's layers: a plain φ, a per-channel scale, a
SkipInit gain, stochastic depth and the classifier head.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import Tensor, nn

from .._checks import channel_view, check_model_input, check_number, check_positive_int
from ..layers import get_activation
from ..scheme import Scheme, scheme

T = TypeVar("T")


@dataclass(frozen=True)
class Layers:
    """The scheme's builders, naming the model layer in their errors.

    ``Layers(s, "ResNetV2").at("layer2", 0).norm_act("norm_act1", 24)`` builds
    ``s.norm_act(24)`` and turns a ValueError into one that starts with
    ``"ResNetV2 layer2.0.norm_act1: "``.
    """

    scheme: Scheme
    model: str
    path: str = ""

    def at(self, *names: str | int) -> Layers:
        """The builder for a submodule path below this one."""
        return replace(self, path=self.where(*names))

    def where(self, *names: str | int) -> str:
        return ".".join(str(n) for n in (self.path, *names) if str(n))

    def build(self, name: str, make: Callable[..., T], *args, **kwargs) -> T:
        """``make(*args, **kwargs)``, with a ValueError naming the layer ``name``."""
        try:
            return make(*args, **kwargs)
        except ValueError as error:
            raise ValueError(f"{self.model} {self.where(name)}: {error}") from error

    def conv(self, name: str, in_channels: int, out_channels: int, kernel_size: int, **kw):
        return self.build(name, self.scheme.conv, in_channels, out_channels, kernel_size, **kw)

    def norm(self, name: str, num_channels: int, affine: bool = True) -> nn.Module:
        return self.build(name, self.scheme.norm, num_channels, affine=affine)

    def norm_act(self, name: str, num_channels: int, act: str | None = None) -> nn.Module:
        return self.build(name, self.scheme.norm_act, num_channels, act)

    def plain_act(self, name: str, act: str | None, follows: str, fix: str) -> Nonlinearity:
        """A plain φ where no normalization precedes the activation (``follows`` says what
        does). PN cannot follow it: under ``+pn`` this raises, suggesting ``fix``."""
        if self.scheme.proxy:
            raise ValueError(
                f"{self.model} {self.where(name)}: scheme {self.scheme.spec!r} proxy-normalizes "
                f"every activation step, and PN needs a normalization step right before it "
                f"(PN paper, Section 5), but this activation follows {follows}. {fix}"
            )
        return Nonlinearity(self.scheme.activation if act is None else act)


def layers(norm: str | Scheme, act: str | None, model: str) -> Layers:
    """The :class:`Layers` of ``scheme(norm, act)`` for the model called ``model``."""
    return Layers(scheme(norm, act), model)


class Nonlinearity(nn.Module):
    """A plain φ with no parameters, for activations that no normalization precedes."""

    def __init__(self, act: str = "relu") -> None:
        super().__init__()
        self.activation = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.activation.fn(x)

    def extra_repr(self) -> str:
        return self.activation.name


class ChannelScale(nn.Module):
    """x·g with a learnable per-channel g (init 1) and no shift."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(check_positive_int("num_channels", num_channels)))

    def forward(self, x: Tensor) -> Tensor:
        return x * channel_view(self.weight, x.dim())

    def extra_repr(self) -> str:
        return str(self.weight.numel())


class SkipInitGain(nn.Module):
    """A learnable scalar gain on a residual branch, initialised at 0 (SkipInit, De & Smith
    2020): every residual block starts as the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a sample's residual branch with
    probability ``rate`` and scale the kept ones by 1 / (1 - rate)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = check_number("the drop-path rate", rate, 0.0, 1.0, high_open=True)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def set_drop_path(blocks: list[nn.Module], rate: float) -> None:
    """Stochastic depth on residual blocks with the linear rule of Huang et al. (2016): block l
    of L drops its branch with probability rate·l/L. Each block applies its ``drop_path``."""
    rate = check_number("drop_path_rate", rate, 0.0, 1.0, high_open=True)
    if rate == 0.0:
        return
    for index, block in enumerate(blocks):
        block.drop_path = DropPath(rate * (index + 1) / len(blocks))


class ClassifierHead(nn.Module):
    """Global average pooling, optional dropout, then a linear classifier."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        dropout = check_number("dropout", dropout, 0.0, 1.0, high_open=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(x.mean(dim=(2, 3)), 1)))


def resnet_stem(S: Layers, in_channels: int, channels: int, cifar: bool) -> nn.Sequential:
    """A ResNet stem from the layers ``S`` of the "stem" module: a 3×3 conv for CIFAR inputs,
    else a 7×7 stride-2 conv and a 3×3 stride-2 max-pool (He et al. 2016)."""
    if cifar:
        return nn.Sequential(OrderedDict(conv=S.conv("conv", in_channels, channels, 3)))
    conv = S.conv("conv", in_channels, channels, 7, stride=2)
    return nn.Sequential(OrderedDict(conv=conv, pool=nn.MaxPool2d(3, stride=2, padding=1)))


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded, at least 1."""
    return max(1, round(channels * width))


MAX_WIDTH = 64.0
"""The largest width multiplier a model takes: 64 times a ResNet-50's channels already needs
over 10¹¹ parameters; a larger value is a mistyped one (an extra digit, a channel count
passed as the multiplier)."""


def check_width(width: float) -> float:
    """The width multiplier: a finite number in (0, :data:`MAX_WIDTH`]. NaN and inf would fail
    in a rounding (OverflowError) and a huge value in an allocation of terabytes."""
    return check_number("width (the width multiplier)", width, 0.0, MAX_WIDTH, low_open=True)


def check_images(model: nn.Module, x: object) -> None:
    """Check the input of ``model`` at its entry (:func:`~normlab._checks.check_model_input`):
    images (N, C, H, W) with C = ``model.in_channels``, on the model's device and dtype."""
    reference = next(iter(model.parameters()), None)
    check_model_input(type(model).__name__, x, model.in_channels, reference)


def init_weights(model: nn.Module) -> None:
    """He initialisation (He et al. 2015): convs N(0, 2/fan_in), linear layers N(0, 0.01²)
    with zero biases. Normalization and activation-step parameters keep their own init."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


def count_params(model: nn.Module) -> int:
    """The number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one input sample of size
    ``in_channels × input_size × input_size``, counted with forward hooks on a dummy input.

    Normalizations, activations, pooling and additions are not counted (they are a few percent
    of a CNN's arithmetic); this is the number papers report as "FLOPs" for ResNets and
    EfficientNets, which are in fact MACs.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        per_output = module.weight[0].numel()  # (in/groups)·kh·kw, or in_features
        total += output[0].numel() * per_output

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, input_size, input_size))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def round_to(value: float, divisor: int) -> int:
    """``value`` rounded to a multiple of ``divisor``, never below 90% of it (Tan & Le 2019)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def depth_of(repeats: int, multiplier: float) -> int:
    return math.ceil(repeats * multiplier)
