r"""Proxy moments of Proxy Normalization (Labatie et al. 2021, Eq. 7) and activation gains.

For a channel with activation step φ(γ·y + β), PN's proxy is Y ~ N(β̃, (1+γ̃)²) and the proxy
moments are E[φ(γY + β)] and Var[φ(γY + β)]. normlab computes them exactly ("exact": closed forms
or quadrature, see :mod:`normlab.layers.gaussian`). The reference implementation's estimator
("reference": K midpoint quantiles of N(0, 1), biased variance) is offered to compare with.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._checks import cached, unknown
from .activations import Activation, get_activation

MomentMethod = Literal["exact", "reference"]
METHODS: tuple[str, ...] = ("exact", "reference")
REFERENCE_POINTS = 200

_quantile_cache: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}


def reference_quantiles(count: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The reference implementation's proxy samples sqrt(2)·erfinv(2(i + 0.5)/K - 1), i < K."""
    return cached(_quantile_cache, (count, dtype, device), lambda: _quantiles(count, dtype, device))


def _quantiles(count: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    i = torch.arange(count, dtype=torch.float64)
    q = torch.special.erfinv(2.0 * (i + 0.5) / count - 1.0) * 2.0**0.5
    return q.to(dtype=dtype, device=device)


def _as_tensors(*values: Tensor | float) -> list[Tensor]:
    tensors = [v for v in values if isinstance(v, Tensor)]
    like = tensors[0] if tensors else torch.zeros(())
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return [torch.as_tensor(v, dtype=dtype, device=like.device) for v in values]


def proxy_moments(
    act: str | Activation,
    gamma: Tensor | float,
    beta: Tensor | float,
    proxy_mean: Tensor | float = 0.0,
    proxy_std: Tensor | float = 1.0,
    *,
    method: MomentMethod = "exact",
    points: int = REFERENCE_POINTS,
) -> tuple[Tensor, Tensor]:
    """Mean and variance of φ(γ·Y + β) for Y ~ N(proxy_mean, proxy_std²), elementwise.

    Arguments broadcast against each other and may be tensors or floats; the result is
    differentiable with respect to every tensor argument. Half-precision inputs are computed in
    float32. ``method="exact"`` uses closed forms (relu, leaky_relu, elu, identity) or a
    trapezoidal quadrature accurate to 1e-6 relative error for |γ| <= 3, |β| <= 3,
    |proxy_mean| <= 1, |proxy_std - 1| <= 0.5 (float64); ``method="reference"`` uses ``points``
    midpoint quantiles of N(0, 1) and the biased sample variance, as the reference implementation.
    """
    activation = get_activation(act)
    gamma, beta, proxy_mean, proxy_std = _as_tensors(gamma, beta, proxy_mean, proxy_std)
    if method == "exact":
        return activation.moments(torch.addcmul(beta, gamma, proxy_mean), gamma * proxy_std)
    if method == "reference":
        q = reference_quantiles(points, gamma.dtype, gamma.device)
        y = proxy_mean.unsqueeze(-1) + proxy_std.unsqueeze(-1) * q
        values = activation.fn(gamma.unsqueeze(-1) * y + beta.unsqueeze(-1))
        var, mean = torch.var_mean(values, dim=-1, correction=0)
        return mean, var
    raise unknown("proxy-moment method", method, METHODS)


# γ_φ as Brock et al. (2021) published them, estimated by sampling: the table of DeepMind's
# NFNets code, which timm's NF models use, to all its digits (float32 values printed in full).
PUBLISHED_GAINS: dict[str, float] = {
    "relu": 1.7139588594436646,
    "leaky_relu": 1.70590341091156,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "tanh": 1.5939117670059204,
    "sigmoid": 4.803835391998291,
    "elu": 1.2716004848480225,
    "softplus": 1.9203323125839233,
    "identity": 1.0,
}


def activation_gain(act: str | Activation) -> float:
    """γ_φ = 1/sqrt(Var[φ(Z)]), Z ~ N(0, 1), computed exactly (Brock et al. 2021, Scaled WS).

    Brock et al. published these gains estimated by sampling (:data:`PUBLISHED_GAINS`); normlab
    evaluates the variance with the same exact moments as PN, so its values differ from the
    published table from the 4th digit on (relu: 1.7128586 exact, 1.7139589 published).
    """
    _, var = proxy_moments(act, torch.ones((), dtype=torch.float64), 0.0)
    return float(var.rsqrt())
