r"""A normalization step followed by an activation step, fused where nothing observes between them.

``NormAct(norm, act)`` computes act(norm(x)) (PN paper Eqs. 3–4, or Eq. 7 with PN). Its forward
runs ``act.after(norm, x)``, by default ``tail(norm.normalize(x, plan.weight, plan.bias))`` for
the activation step's :class:`~normlab.layers.act.Plan`: the step's affine runs inside the
normalizer's kernel (F.batch_norm, F.group_norm) and no intermediate tensor is kept. GroupNorm
followed by relu-PN goes further, as one autograd node (:mod:`~normlab.layers.group_norm_pn`).
When a hook is registered on ``norm`` or ``act`` (as normlab's diagnostics do), it runs the two
modules one after the other instead, so that hooks see the normalized ỹ and the activation z
exactly.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.modules import module as _module

from .._checks import check_same_device, reference_tensor
from .act import ActivationStep
from .base import Normalization
from .proxy_norm import ProxyNormAct

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def is_observed(module: nn.Module) -> bool:
    """Whether a hook would see ``module``'s own forward or backward."""
    if any(getattr(module, name, None) for name in _HOOK_DICTS):
        return True
    return any(getattr(_module, name, None) for name in _GLOBAL_HOOK_DICTS)


class NormAct(nn.Module):
    """Normalization step ``norm`` (without affine) then activation step ``act``.

    Args:
        norm: a :class:`Normalization` built with ``affine=False``: the activation step holds
            the per-channel affine.
        act: an :class:`ActivationStep` over the same channels.
        fuse: run the fused path when nothing observes the two steps (default True).
    """

    def __init__(self, norm: Normalization, act: ActivationStep, fuse: bool = True) -> None:
        super().__init__()
        if not isinstance(norm, Normalization):
            raise TypeError(f"norm must be a normlab Normalization, got {type(norm).__name__}")
        if not isinstance(act, ActivationStep):
            raise TypeError(f"act must be a normlab ActivationStep, got {type(act).__name__}")
        if norm.affine:
            raise ValueError(
                f"{type(norm).__name__} inside NormAct must have affine=False: the activation "
                f"step {type(act).__name__} holds the per-channel affine (γ, β)"
            )
        if norm.num_channels != act.num_channels:
            raise ValueError(
                f"channel mismatch: {type(norm).__name__} has {norm.num_channels} channels, "
                f"{type(act).__name__} has {act.num_channels}"
            )
        self.norm, self.act, self.fuse = norm, act, fuse

    @property
    def num_channels(self) -> int:
        return self.norm.num_channels

    def forward(self, x: Tensor) -> Tensor:
        if not self._fused(x):
            return self.act(self.norm(x))
        return self.act.after(self.norm, x)

    def forward_with_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(self(x), a) for a Proxy Normalization step: its output with the per-channel scale
        a = (Var + ε)^(-1/2) of PN Eq. 7, both differentiable, computed once (see
        :meth:`~normlab.layers.ProxyNormAct.after_with_scale`)."""
        if not isinstance(self.act, ProxyNormAct):
            raise TypeError(
                f"forward_with_scale needs a ProxyNormAct activation step, got "
                f"{type(self.act).__name__}: only Proxy Normalization has a scale a"
            )
        if not self._fused(x):
            return self.act(self.norm(x)), self.act.scale_shift()[0]
        return self.act.after_with_scale(self.norm, x)

    def _fused(self, x: Tensor) -> bool:
        """Check x's type and device; whether the fused path runs (nothing observes the steps)."""
        if not isinstance(x, Tensor):  # checked before the fused path reads x
            raise TypeError(
                f"{type(self.norm).__name__} expects a torch.Tensor, got {type(x).__name__}"
            )
        check_same_device(type(self.norm).__name__, x, reference_tensor(self.act))
        return self.fuse and not is_observed(self.norm) and not is_observed(self.act)
