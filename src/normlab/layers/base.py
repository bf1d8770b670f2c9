"""The normalization step: the common interface of every activation-space normalizer.

PN paper Eq. 3–4 split a layer into a normalization step ỹ = norm(x) and an activation step
z = φ(γ·ỹ + β). A :class:`Normalization` computes ỹ and can apply a per-channel affine given by its
caller (``normalize(x, weight, bias)``), which lets an activation step fold its γ and β (or PN's
rescaled ones) into the normalizer's native kernel. With ``affine=True`` the layer holds that
affine itself (``weight``, ``bias``), like torch's layers, for use without an activation step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import (
    channel_view,
    check_bool,
    check_eps,
    check_input,
    check_positive_int,
    reference_tensor,
)


def apply_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """y·weight + bias with per-channel weight and bias (either may be None).

    Two binary ops rather than one ``addcmul``: with two broadcast operands eager addcmul runs
    about 3x slower on CPU, forward and backward."""
    if weight is not None and bias is not None:
        return (y * channel_view(weight, y.dim())).add_(channel_view(bias, y.dim()))
    if weight is not None:
        return y * channel_view(weight, y.dim())
    if bias is not None:
        return y + channel_view(bias, y.dim())
    return y


def is_empty(x: Tensor) -> bool:
    """Whether ``x`` holds no value (a batch of N = 0). Always False while torch.jit.trace
    records, where ``numel`` is a traced value: traces run on real batches."""
    return not torch.jit.is_tracing() and x.numel() == 0


def empty_batch(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """The output for an empty input (numel 0, e.g. a batch of N = 0): an empty tensor of
    x's shape, computed as x·weight + bias so that autograd reaches x, weight and bias and their
    gradients are (empty or) exactly zero. No statistics are computed or updated."""
    return apply_affine(x.clone(), weight, bias)


class Normalization(nn.Module):
    """Base class of the normalization step, for (N, C, *spatial) inputs.

    Subclasses implement :meth:`normalize`. ``min_dim`` is the least input rank they accept.
    """

    min_dim = 2

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.eps = check_eps(eps)
        self.affine = check_bool("affine", affine)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def normalize(
        self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """Normalize ``x`` and apply the per-channel affine ``weight``, ``bias`` (if given)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x, self.weight, self.bias)

    def check_input(self, x: Tensor, weight: Tensor | None = None) -> None:
        """Check the shape (N, C, *spatial) and the dtype of ``x``: floating point, and that of
        ``weight`` (the affine given to :meth:`normalize`) or else of the layer's own parameters
        and buffers (float16 and bfloat16 inputs to float32 layers pass, as in torch)."""
        reference = reference_tensor(self, weight)
        check_input(type(self).__name__, x, self.num_channels, self.min_dim, reference)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
