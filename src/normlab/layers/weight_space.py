r"""Weight-space normalization as 2-d convolutions: the effective weight Ŵ is a normalized
function of the raw weight W, per output channel o over its fan-in (in/groups, kh, kw).

    WS   (Qiao et al. 2019):            Ŵ_o = (W_o - mean W_o) / sqrt(var W_o + ε)
    SWS  (Brock et al. 2021):           Ŵ_o = g_o · γ_φ · (W_o - mean W_o) / sqrt(N·var W_o + ε)
    WN   (Salimans & Kingma 2016):      Ŵ_o = g_o · W_o / ||W_o||
    CWN  (Huang et al. 2017):           Ŵ_o = g_o · (W_o - mean W_o) / ||W_o - mean W_o||

N is the fan-in, g a learnable per-channel gain (init 1) and γ_φ = 1/sqrt(Var[φ(N(0,1))]) the gain
of the activation that produced the input, computed exactly by normlab
(:func:`~normlab.layers.proxy_moments.activation_gain`). The raw ``weight`` keeps Conv2d's name
and shape, so Conv2d state dicts load (the gain, where present, keeps its initial value).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_conv, check_conv_input, check_dtype, check_eps, check_number
from .activations import Activation
from .proxy_moments import activation_gain


class WeightSpaceConv2d(nn.Conv2d):
    """A Conv2d whose forward uses :meth:`effective_weight` in place of ``weight``.

    Takes Conv2d's arguments, checked at construction (:func:`~normlab._checks.check_conv`):
    positive channel counts divisible by ``groups``, positive kernel size, stride and dilation,
    non-negative padding. Inputs must be floating point, of the weight's dtype (outside
    autocast)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        *args,
        **kwargs,
    ) -> None:
        check_conv(in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            *args,
            **kwargs,
        )

    def effective_weight(self) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        check_conv_input(type(self).__name__, x, self)
        check_dtype(type(self).__name__, x, self.weight, mixed_precision=False)
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def _centered_weight(self) -> tuple[Tensor, Tensor]:
        """W_o - mean W_o and var W_o, per output channel o over its fan-in."""
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), correction=0, keepdim=True)
        return self.weight - mean, var

    def _gain_parameter(self) -> nn.Parameter:
        return nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))


class WSConv2d(WeightSpaceConv2d):
    r"""Weight Standardization: Ŵ_o = (W_o - mean W_o) / sqrt(var W_o + ε)."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = check_eps(eps)

    def effective_weight(self) -> Tensor:
        centered, var = self._centered_weight()
        return centered * torch.rsqrt(var + self.eps)


class ScaledWSConv2d(WeightSpaceConv2d):
    r"""Scaled Weight Standardization: Ŵ_o = g_o·γ_φ·(W_o - mean W_o)/sqrt(N·var W_o + ε).

    ``act`` names the activation whose gain γ_φ is folded in, computed exactly; ``act=None`` gives
    γ_φ = 1 (for networks whose activations carry the gain themselves, as normlab's ``nf``
    scheme). ``act_gain`` sets γ_φ directly instead, e.g. to Brock et al.'s sampled value
    ``PUBLISHED_GAINS["relu"]`` as timm's and DeepMind's NF-ResNets use.
    """

    def __init__(
        self,
        *args,
        act: str | Activation | None = None,
        eps: float = 1e-5,
        act_gain: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eps = check_eps(eps)
        self.act_gain = _act_gain(act, act_gain)
        self.fan_in = self.weight[0].numel()
        self.gain = self._gain_parameter()

    def effective_weight(self) -> Tensor:
        centered, var = self._centered_weight()
        scale = torch.rsqrt(var * self.fan_in + self.eps) * self.act_gain
        return centered * (self.gain * scale)


class WNConv2d(WeightSpaceConv2d):
    r"""Weight Normalization: Ŵ_o = g_o·W_o / ||W_o||."""

    center = False

    def __init__(self, *args, eps: float = 1e-12, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.eps = check_eps(eps)
        self.gain = self._gain_parameter()

    def effective_weight(self) -> Tensor:
        direction = self.weight
        if self.center:
            direction = direction - direction.mean(dim=(1, 2, 3), keepdim=True)
        norm = torch.linalg.vector_norm(direction, dim=(1, 2, 3), keepdim=True)
        return direction * (self.gain / norm.clamp_min(self.eps))


class CWNConv2d(WNConv2d):
    r"""Centered Weight Normalization: Ŵ_o = g_o·(W_o - mean W_o) / ||W_o - mean W_o||."""

    center = True


def _act_gain(act: str | Activation | None, act_gain: float | None) -> float:
    """γ_φ of Scaled WS: exact for ``act``, 1 for neither, or ``act_gain`` as given."""
    if act_gain is None:
        return 1.0 if act is None else activation_gain(act)
    if act is not None:
        raise ValueError(
            f"give either act={act!r} (γ_φ computed exactly) or act_gain={act_gain!r}, not both"
        )
    return check_number("act_gain", act_gain, 0.0, low_open=True)
