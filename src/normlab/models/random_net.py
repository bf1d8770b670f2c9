r"""The random net of Definition 1 of the Proxy Normalization paper.

Labatie, Masters, Eaton-Rosen & Luschi 2021, "Proxy-Normalizing Activations to Match Batch
Normalization while Removing Batch Dependence" (arXiv:2106.03743), Definition 1: L layers, each

    x^l = conv^l(z^{l-1}),  ỹ^l = norm(x^l),  z^l = φ(γ^l·ỹ^l + β^l)

with C channels, K×K kernels and periodic (circular) boundary conditions, so that every spatial
position is alike. The weights are i.i.d. Gaussian with fan-in scaling, ω ~ N(0, 1/(K²·C_in)),
and the per-channel γ, β are i.i.d. draws, by default γ ~ N(1, 0.2²) and β ~ N(0, 0.2²) as in the
paper's Figure 2. This is the model behind the paper's analysis of channel collapse and of the
power decomposition; normlab's diagnostics run on it.

Everything is drawn from one ``torch.Generator`` seeded with ``seed``, in a fixed order (per
layer: conv weights, then γ, then β) and whatever the scheme, so that one seed gives the same
weights and affine values under every normalizer. γ and β go into the activation step: a
NormAct's ``act.gamma``/``act.beta``, the ``gamma``/``beta`` of a plain activation step (``none``,
``frn``'s TLU, ``+pn``'s ProxyNormAct), or the ``weight``/``bias`` of an EvoNorm layer. The ``nf``
scheme's gained activations have no per-channel affine: there the draws are made and discarded.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .._checks import check_int, check_number, check_positive_int
from ..scheme import Scheme
from ._common import ClassifierHead, check_images, layers
from .registry import register


def activation_affine(norm_act: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The (γ, β) parameters of a scheme's normalization-activation step, or None."""
    step = getattr(norm_act, "act", norm_act)
    if hasattr(step, "gamma") and hasattr(step, "beta"):
        return step.gamma, step.beta
    if (
        getattr(norm_act, "weight", None) is not None
        and getattr(norm_act, "bias", None) is not None
    ):
        return norm_act.weight, norm_act.bias  # EvoNorm: its affine is the activation's
    return None


MAX_DEPTH = 10_000
"""The deepest random net: each layer is a module, and 10⁸ of them exhaust memory while being
built (the papers go to a few hundred)."""
MAX_WIDTH = 8192
"""The widest random net: a 3×3 conv of 8192 channels already holds 6·10⁸ weights (the PN paper
used 1024)."""


class RandomNet(nn.Module):
    r"""The random net of Definition 1 (Labatie et al. 2021).

    Args:
        depth: L, the number of conv → normalization → activation layers.
        width: C, the channels of every layer (an int here, not a multiplier).
        kernel_size: K, odd (circular padding keeps the spatial size).
        norm: the normalization scheme spec.
        act: φ.
        in_channels: channels of the input.
        num_classes: None (default) returns the last layer's activations (N, C, H, W); an int
            adds global pooling and a linear classifier.
        gamma_mean, gamma_std: γ ~ N(gamma_mean, gamma_std²) per channel.
        beta_mean, beta_std: β ~ N(beta_mean, beta_std²) per channel.
        seed: seed of the torch.Generator that draws weights, γ and β.
    """

    def __init__(
        self,
        depth: int = 10,
        width: int = 64,
        kernel_size: int = 3,
        norm: str | Scheme = "bn",
        act: str = "relu",
        in_channels: int = 3,
        num_classes: int | None = None,
        gamma_mean: float = 1.0,
        gamma_std: float = 0.2,
        beta_mean: float = 0.0,
        beta_std: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels  # checked at the entry: check_images
        depth = check_int("depth", depth, 1, MAX_DEPTH)
        width = check_int("width", width, 1, MAX_WIDTH)
        check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd so that circular padding keeps the size, got "
                f"{kernel_size}"
            )
        for name, std in (("gamma_std", gamma_std), ("beta_std", beta_std)):
            check_number(name, std, 0.0)
        for name, mean in (("gamma_mean", gamma_mean), ("beta_mean", beta_mean)):
            check_number(name, mean)
        check_int("seed", seed, None)
        L = layers(norm, act, type(self).__name__)
        self.scheme, self.seed = L.scheme, seed
        self.gamma_mean, self.gamma_std = float(gamma_mean), float(gamma_std)
        self.beta_mean, self.beta_std = float(beta_mean), float(beta_std)
        blocks, channels = [], in_channels
        for index in range(depth):
            Li = L.at("layers", index)
            conv = Li.conv(
                "conv", channels, width, kernel_size, padding=kernel_size // 2, bias=False
            )
            conv.padding_mode = "circular"
            blocks.append(
                nn.Sequential(OrderedDict(conv=conv, norm_act=Li.norm_act("norm_act", width)))
            )
            channels = width
        self.layers = nn.Sequential(*blocks)
        self.head = None if num_classes is None else ClassifierHead(width, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the weights, γ and β again from the seed (Definition 1)."""
        generator = torch.Generator().manual_seed(self.seed)
        for layer in self.layers:
            conv, norm_act = layer.conv, layer.norm_act
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(
                torch.randn(conv.weight.shape, generator=generator) / math.sqrt(fan_in)
            )
            gamma = torch.randn(conv.out_channels, generator=generator) * self.gamma_std
            beta = torch.randn(conv.out_channels, generator=generator) * self.beta_std
            affine = activation_affine(norm_act)
            if affine is not None:
                affine[0].copy_(gamma + self.gamma_mean)
                affine[1].copy_(beta + self.beta_mean)

    def forward(self, x: Tensor) -> Tensor:
        check_images(self, x)
        x = self.layers(x)
        return x if self.head is None else self.head(x)


@register("random_net", family="random net (Def. 1)", input_size=32)
def random_net(**kwargs) -> RandomNet:
    """The random net of Definition 1: ``depth``, ``width``, ``kernel_size``, ``in_channels``,
    ``gamma_std``, ``beta_std``, ``seed`` (and the means, ``norm``, ``act``, ``num_classes``)."""
    return RandomNet(**kwargs)
