r"""Proxy moments of Proxy Normalization (Labatie et al. 2021, Eq. 7) and activation gains.

For a channel with activation step φ(γ·y + β), PN's proxy is Y ~ N(β̃, (1+γ̃)²) and the proxy
moments are E[φ(γY + β)] and Var[φ(γY + β)]. normlab computes them exactly ("exact": closed forms
or quadrature, see :mod:`normlab.layers.gaussian`), in float64, to 1e-6·|exact| + 1e-9 for every
built-in φ over |γ| <= 1e4, |β| <= 1e4, |β̃| <= 2, 1 + γ̃ in [0.25, 2] (and, as far as tested,
beyond). The reference implementation's estimator ("reference": K midpoint quantiles of N(0, 1),
biased variance) is offered to compare with.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._checks import cached, check_int, check_number, unknown
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


_ARGUMENTS = ("gamma", "beta", "proxy_mean", "proxy_std")


def _as_tensors(values: tuple[Tensor | float, ...]) -> tuple[list[Tensor], torch.dtype]:
    """The arguments as tensors in the working dtype, and the dtype of the result.

    The result takes the first tensor's dtype where it is floating (float32 for half
    precision), else the default dtype; the moments are computed
    in float64 whatever it is (they are per-channel vectors: cheap), except on a device without
    float64 (MPS), so that float32 results are rounded once, from float64 values. Floats must
    be finite numbers, tensors real (not complex or bool), and tensor shapes must broadcast:
    each error names the argument."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    for name, value in zip(_ARGUMENTS, values, strict=True):
        if not isinstance(value, Tensor):
            check_number(name, value)
        elif value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"proxy_moments: {name} must be a real tensor or number, got a tensor of dtype "
                f"{str(value.dtype).removeprefix('torch.')}"
            )
    if len(tensors) > 1 and any(t.shape != tensors[0].shape for t in tensors):
        try:
            torch.broadcast_shapes(*(t.shape for t in tensors))
        except RuntimeError:
            shapes = ", ".join(
                f"{name} {tuple(v.shape)}"
                for name, v in zip(_ARGUMENTS, values, strict=True)
                if isinstance(v, Tensor)
            )
            raise ValueError(
                f"proxy_moments: the argument shapes do not broadcast together: {shapes}"
            ) from None
    like = tensors[0] if tensors else None
    dtype = torch.get_default_dtype()
    if like is not None and like.is_floating_point():
        dtype = torch.float32 if like.dtype in (torch.float16, torch.bfloat16) else like.dtype
    device = like.device if like is not None else torch.device("cpu")
    work = torch.float32 if device.type == "mps" else torch.float64
    return [torch.as_tensor(v, dtype=work, device=device) for v in values], dtype


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
    differentiable with respect to every tensor argument. It has the first tensor's dtype
    (float32 for half precision inputs) and is computed in float64 (see :func:`_as_tensors`).

    ``method="exact"`` maps to U = γY + β ~ N(μ, s²), μ = γ·proxy_mean + β, s = γ·proxy_std,
    and uses closed forms (relu, leaky_relu, elu, identity) or, for the smooth φ, a trapezoidal
    quadrature for |s| <= 2 and a split of φ into a closed-form part and a localised residual
    beyond (:mod:`normlab.layers.gaussian`). Validated against 32-digit adaptive integration
    (mpmath) for every built-in φ over |γ| <= 1e4, |β| <= 1e4, |proxy_mean| <= 2,
    proxy_std in [0.25, 2] (|s| up to 2e4, down to 0): E and Var within
    1e-6·|exact| + 1e-9 in float64 (typically 1e-10 relative), and float32 results are the
    float64 ones rounded. ``method="reference"`` uses ``points`` (an integer >= 2) midpoint
    quantiles of N(0, 1) and the biased sample variance, as the reference implementation.

    Float arguments must be finite (a ValueError names the argument). Tensor entries that are
    NaN or ±inf are not checked (that would read data back from the device at every call of a
    layer): they give NaN moments at their positions, never finite ones, so that PN's own check
    of its threshold catches them.
    """
    activation = get_activation(act)
    if method not in METHODS:
        raise unknown("proxy-moment method", method, METHODS)
    if method == "reference":
        points = check_int("points", points, minimum=2)
    (gamma, beta, proxy_mean, proxy_std), dtype = _as_tensors((gamma, beta, proxy_mean, proxy_std))
    mu, s = torch.addcmul(beta, gamma, proxy_mean), gamma * proxy_std
    if method == "exact":
        mean, var = activation.moments(mu, s)
    else:
        q = reference_quantiles(points, gamma.dtype, gamma.device)
        y = proxy_mean.unsqueeze(-1) + proxy_std.unsqueeze(-1) * q
        values = activation.fn(gamma.unsqueeze(-1) * y + beta.unsqueeze(-1))
        var, mean = torch.var_mean(values, dim=-1, correction=0)
    # NaN where an argument is NaN or ±inf (so is μ or s), else 0: (μ - μ)·s
    poison = torch.sub(mu.detach(), mu.detach()).mul(s.detach())
    return (mean + poison).to(dtype), (var + poison).to(dtype)


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
