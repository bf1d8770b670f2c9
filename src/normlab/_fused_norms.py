r"""What a BatchNorm subclass computes: a plain BatchNorm, or one carrying its own activation.

Model zoos fuse the activation into the normalization module: timm's ``BatchNormAct2d`` (and
``SyncBatchNormAct``) subclass torch's BatchNorm and hold ``drop`` and ``act`` submodules, with

    y = act(drop(BN(x))),                                  BN(x) = γ (x - μ) / sqrt(σ² + ε) + β.

:func:`batch_norm_form` tells which of the two a module is *by what it computes*, not by its class
name: a subclass that keeps torch's ``forward`` is a plain BatchNorm whatever it holds; one that
overrides ``forward`` is run once, in evaluation mode on a copy given random statistics and affine,
and compared with BN(x) and with act(drop(BN(x))) for its own ``drop`` and ``act`` modules. One that
matches neither is reported as unknown (convert leaves it alone).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_TORCH_FORWARDS = {nn.BatchNorm1d.forward, nn.SyncBatchNorm.forward}  # _BatchNorm's and Sync's
_PROBE_SHAPES = {nn.BatchNorm1d: (2, -1, 3), nn.BatchNorm3d: (2, -1, 2, 2, 2)}  # else (2, C, 3, 3)


@dataclass(frozen=True)
class BatchNormForm:
    """What a BatchNorm module computes.

    Attributes:
        kind: ``"plain"`` (BN(x)), ``"fused"`` (act(drop(BN(x))) with ``act`` or ``drop`` not an
            identity) or ``"unknown"`` (neither; ``why`` says so).
        act: the module's own activation module (None when it is an identity).
        drop: the module's own module between BN and act (None when it is an identity).
    """

    kind: str
    act: nn.Module | None = None
    drop: nn.Module | None = None
    why: str = ""


PLAIN = BatchNormForm("plain")

# forms found during one conversion (cleared by :func:`forget_forms`)
_FORMS: WeakKeyDictionary[nn.Module, BatchNormForm] = WeakKeyDictionary()


def is_identity(module: object) -> bool:
    """An ``nn.Identity`` (or a subclass that keeps its forward): returns its input object."""
    return isinstance(module, nn.Identity) and type(module).forward is nn.Identity.forward


def batch_norm_form(module: nn.Module) -> BatchNormForm | None:
    """The form of a torch BatchNorm (or subclass); None for any other module."""
    if not isinstance(module, TORCH_BATCH_NORMS):
        return None
    if type(module).forward in _TORCH_FORWARDS:
        return PLAIN
    form = _FORMS.get(module)
    if form is None:
        form = _FORMS[module] = _probe(module)
    return form


def forget_forms() -> None:
    """Drop the forms found so far (a module's attributes may change between conversions)."""
    _FORMS.clear()


def _own(module: nn.Module, name: str) -> nn.Module | None:
    sub = getattr(module, name, None)
    return sub if isinstance(sub, nn.Module) and not is_identity(sub) else None


@torch.no_grad()
def _probe(module: nn.Module) -> BatchNormForm:
    label = type(module).__name__
    if module.running_mean is None or module.running_var is None:
        return BatchNormForm("unknown", why=f"{label} overrides forward without running statistics")
    probe = copy.deepcopy(module).eval()
    generator = torch.Generator().manual_seed(0)
    tensor = probe.running_mean
    C = tensor.numel()

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator).to(tensor)

    probe.running_mean.copy_(rand(C) - 0.5)
    probe.running_var.copy_(0.5 + rand(C))
    if probe.weight is not None:
        probe.weight.copy_(0.5 + rand(C))
        probe.bias.copy_(rand(C) - 0.5)
    shape = next(
        (s for kind, s in _PROBE_SHAPES.items() if isinstance(module, kind)), (2, -1, 3, 3)
    )
    x = 3 * rand(*(C if n == -1 else n for n in shape)) - 1.5
    try:
        out = probe(x.clone())
    except Exception as error:  # any failure means we do not know what it computes
        return BatchNormForm("unknown", why=f"{label} fails on a probe input ({error})")
    bn = F.batch_norm(
        x, probe.running_mean, probe.running_var, probe.weight, probe.bias, False, 0.0, probe.eps
    )
    act, drop = _own(probe, "act"), _own(probe, "drop")
    if act is not None or drop is not None:
        fused = bn.clone()
        for step in (drop, act):
            fused = fused if step is None else step(fused)
        if _same(out, fused):
            return BatchNormForm("fused", _own(module, "act"), _own(module, "drop"))
    if _same(out, bn):
        return PLAIN
    steps = "BN(x)" + (" or act(drop(BN(x))) with its own act and drop" if act or drop else "")
    return BatchNormForm("unknown", why=f"{label} overrides forward and computes neither {steps}")


def _same(a: object, b: Tensor) -> bool:
    return isinstance(a, Tensor) and a.shape == b.shape and torch.allclose(a, b, 1e-5, 1e-6)


__all__ = ["PLAIN", "TORCH_BATCH_NORMS", "BatchNormForm", "batch_norm_form", "forget_forms"]
