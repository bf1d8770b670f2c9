r"""The plain CNNs of Beyond BatchNorm: CNN-10 and CNN-20.

Lubana, Dick & Tanaka 2021, "Beyond BatchNorm: Towards a Unified Understanding of Normalization
in Deep Learning" (arXiv:2106.05956) study normalizers on VGG-like networks without residual
connections: a stack of 3×3 conv → normalization → activation layers, global average pooling and
a linear classifier. A layer is given by its channels, or (channels, stride) where it downsamples:

* CNN-10: 64, (64, 2), 128, (128, 2), 256, (256, 2), 512, (512, 2), 512, 512
* CNN-20: 64 ×3, (64, 2), 128 ×3, (128, 2), 256 ×3, (256, 2), 256 ×3, (256, 2), 512 ×4
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ..scheme import Scheme
from ._common import ClassifierHead, Layers, check_images, check_width, init_weights, layers, scaled
from .registry import register

LayerSpec = int | tuple[int, int]

CNN10: tuple[LayerSpec, ...] = (64, (64, 2), 128, (128, 2), 256, (256, 2), 512, (512, 2), 512, 512)
CNN20: tuple[LayerSpec, ...] = (
    *(64, 64, 64, (64, 2)),
    *(128, 128, 128, (128, 2)),
    *(256, 256, 256, (256, 2)),
    *(256, 256, 256, (256, 2)),
    *(512, 512, 512, 512),
)


def conv_norm_act(L: Layers, in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3×3 conv → normalization → activation, as one named layer."""
    conv = L.conv("conv", in_channels, out_channels, 3, stride=stride)
    return nn.Sequential(OrderedDict(conv=conv, norm_act=L.norm_act("norm_act", out_channels)))


class PlainCNN(nn.Module):
    """A stack of conv → σN layers, global average pooling, a linear classifier.

    Args:
        config: the layers, each ``channels`` or ``(channels, stride)``.
        norm, act, num_classes, in_channels: as for every normlab model.
        width: multiplier of every layer's channels.
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        config: tuple[LayerSpec, ...],
        norm: str | Scheme = "bn",
        act: str = "relu",
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # checked at the entry: check_images
        L = layers(norm, act, type(self).__name__)
        width = check_width(width)
        self.config, self.scheme = config, L.scheme
        features, channels = [], in_channels
        for index, spec in enumerate(config):
            out, stride = spec if isinstance(spec, tuple) else (spec, 1)
            out = scaled(out, width)
            features.append(conv_norm_act(L.at("features", index), channels, out, stride))
            channels = out
        self.features = nn.Sequential(*features)
        self.head = ClassifierHead(channels, num_classes, dropout)
        self.num_features = channels
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_images(self, x)
        return self.head(self.features(x))


@register("cnn10", family="plain CNN", input_size=32)
def cnn10(**kwargs) -> PlainCNN:
    """CNN-10 of Beyond BatchNorm."""
    return PlainCNN(CNN10, **kwargs)


@register("cnn20", family="plain CNN", input_size=32)
def cnn20(**kwargs) -> PlainCNN:
    """CNN-20 of Beyond BatchNorm."""
    return PlainCNN(CNN20, **kwargs)
