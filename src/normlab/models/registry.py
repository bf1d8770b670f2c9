"""The model registry: ``create(name, **kwargs)`` and ``names()``.

Each model module registers its named configurations with :func:`register`::

    @register("resnet20", family="ResNet v2 (CIFAR)", input_size=32, published_params=0.27e6)
    def resnet20(**kwargs) -> ResNetV2: ...
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .._checks import closest, name_modules, unknown

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model.

    Attributes:
        name: the registry name, in snake case (``resnet50``, ``efficientnet_b0``).
        factory: builds the model from keyword arguments.
        family: the architecture family and its paper, for listings.
        input_size: the side of the square input the model is meant for (224 for ImageNet
            ResNets, 32 for CIFAR models, 240 and 260 for EfficientNet-B1 and B2).
        published_params: the parameter count the papers report for the default
            configuration (BatchNorm, 1000 or 10 classes), where there is one.
    """

    name: str
    factory: Factory
    family: str
    input_size: int
    published_params: float | None = None
    fixed: tuple[str, ...] = ()

    @property
    def keywords(self) -> tuple[str, ...]:
        """The keyword arguments :func:`create` takes for this model: those of the factory
        or, for a factory ``f(**kwargs)`` that forwards to its return annotation's class, those
        of the class with defaults, less the ``fixed`` ones the factory sets itself."""
        return _keywords(self.factory, self.fixed)


_MODELS: dict[str, ModelInfo] = {}


def register(
    name: str,
    *,
    family: str,
    input_size: int,
    published_params: float | None = None,
    fixed: tuple[str, ...] = (),
) -> Callable[[Factory], Factory]:
    """Register the decorated factory under ``name``. ``fixed`` names the keyword arguments of
    the model's class that the factory sets itself (and :func:`create` refuses)."""

    def decorate(factory: Factory) -> Factory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelInfo(name, factory, family, input_size, published_params, fixed)
        return factory

    return decorate


def names() -> list[str]:
    """The registered model names, in registration order."""
    return list(_MODELS)


def info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; unknown names suggest the closest."""
    if name not in _MODELS:
        raise _unknown_model(name)
    return _MODELS[name]


def _unknown_model(name: object) -> ValueError:
    """An unknown-model error suggesting the name written in snake case, or the one name it
    begins, or else the closest by edit similarity."""
    key = str(name).strip().lower().replace("-", "_")
    prefixed = [n for n in _MODELS if n.startswith(key)]
    if key not in _MODELS and len(prefixed) != 1:
        return unknown("model", name, names())
    suggestion = key if key in _MODELS else prefixed[0]
    return ValueError(
        f"unknown model {name!r}; valid choices: {', '.join(names())}. Did you mean {suggestion!r}?"
    )


def create(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with the keyword arguments of its class
    (``norm``, ``act``, ``num_classes``, ``in_channels``, ``width``, ...).

    An unknown keyword is a TypeError listing the model's keywords (:attr:`ModelInfo.keywords`)
    and suggesting the closest. The model's modules record their qualified names, so that an
    error raised in a forward (a non-finite input to a BatchNorm, ...) names the layer."""
    entry = info(name)
    valid = entry.keywords
    for key in kwargs:
        if key in valid:
            continue
        if key in entry.fixed:
            message = f"model {name!r} sets {key!r} itself (it is part of the model's name)"
        else:
            message = f"model {name!r} takes no keyword argument {key!r}"
        message += f"; its keywords are {', '.join(valid)}"
        suggestion = None if key in entry.fixed else closest(key, valid, cutoff=0.6)
        if suggestion is not None:
            message += f". Did you mean {suggestion!r}?"
        raise TypeError(message)
    return name_modules(entry.factory(**kwargs))


def _keywords(factory: Factory, fixed: tuple[str, ...]) -> tuple[str, ...]:
    parameters = inspect.signature(factory).parameters.values()
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        return tuple(n for n in named if n not in fixed)
    built = typing.get_type_hints(factory).get("return")
    if not isinstance(built, type):
        raise TypeError(
            f"model factory {factory.__qualname__} takes **kwargs but its return annotation "
            f"names no class whose keywords create() could check"
        )
    own = inspect.signature(built).parameters.values()
    forwarded = [
        p.name
        for p in own
        if p.default is not p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return tuple(n for n in (*named, *forwarded) if n not in fixed)
