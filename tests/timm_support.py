"""timm for the tests, as users have it, on a machine where torchvision has no working build.

timm imports a few torchvision names at import time (``torchvision.ops.misc.FrozenBatchNorm2d``,
transforms and datasets for ``timm.data``); none of them is used by the models the tests build.
:func:`import_timm` returns the real timm, serving a test-only stand-in for torchvision when the
real one cannot be imported, or None when timm is not installed (tests then skip).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """torchvision's BatchNorm with fixed statistics and affine (buffers, not parameters)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


class _Placeholder(type):
    """A class whose every attribute is another placeholder: enough for import-time uses such
    as ``InterpolationMode.BILINEAR`` or ``class X(transforms.RandomResizedCrop)``."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        if name == "FrozenBatchNorm2d":
            return FrozenBatchNorm2d
        return _Placeholder(name, (), {})


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "0.0+normlab-test-stand-in"
        return module

    def exec_module(self, module):
        pass


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:  # absent, or a wheel that fails at import (no CPU build here)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return True


def import_timm() -> types.ModuleType | None:
    """timm, or None when it is not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    if not _torchvision_importable() and not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())
    return importlib.import_module("timm")
