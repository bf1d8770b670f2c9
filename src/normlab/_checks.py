"""Input checks shared by every layer: clear errors naming the offending value and the choices."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

import torch
from torch import Tensor

_finite_checks = True
_FAKE_MODE = torch._C._TorchDispatchModeKey.FAKE
T = TypeVar("T")


def set_finite_checks(enabled: bool) -> bool:
    """Turn Proxy Normalization's non-finite parameter checks on or off; return the old setting.

    The check reads one boolean back from the device at every forward. It is cheap on a CPU; on a
    GPU it synchronises the stream, so a user who has validated a model may turn it off.
    """
    global _finite_checks
    previous, _finite_checks = _finite_checks, bool(enabled)
    return previous


def finite_checks_enabled() -> bool:
    """Whether to read back PN's threshold: checks are on and real data flows (see tracing)."""
    return _finite_checks and not tracing()


def tracing() -> bool:
    """Whether a tracer runs this code: torch.compile (Dynamo), torch.export (which also serves
    ONNX export), torch.jit.trace, or any other code running on fake tensors.

    Layers then build their step from standard differentiable ATen ops, which every tracer
    captures and every backend (Inductor, ONNX, TorchScript) runs; eager runs keep the fused
    autograd nodes, in-place tails and caches. Nothing may be read back from a tensor, and no
    tensor made while tracing may be cached: it may be fake."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._get_dispatch_mode(_FAKE_MODE) is not None
    )


def cached(cache: dict, key: Hashable, make: Callable[[], T]) -> T:
    """``cache[key]``, made by ``make()`` on first use; made afresh, and not stored, while
    :func:`tracing` (a tracer's tensors must not outlive its trace)."""
    if tracing():
        return make()
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
    return found


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to ``name`` by edit similarity, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return matches[0] if matches else None


def unknown(kind: str, name: object, choices: Iterable[str]) -> ValueError:
    """A ValueError for an unknown ``kind``, listing the valid choices and the closest one."""
    choices = list(choices)
    message = f"unknown {kind} {name!r}; valid choices: {', '.join(choices)}"
    suggestion = closest(str(name), choices)
    if suggestion is not None:
        message += f". Did you mean {suggestion!r}?"
    return ValueError(message)


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_input(layer: str, x: Tensor, num_channels: int, min_dim: int = 2) -> None:
    """Check that ``x`` has shape (N, C, *spatial) with ``C == num_channels``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim:
        layout = "(N, C)" if min_dim == 2 else "(N, C, *spatial) with at least one spatial dim"
        raise ValueError(
            f"{layer} expects an input of shape {layout}, got a {x.dim()}-d tensor "
            f"of shape {tuple(x.shape)}"
        )
    if x.shape[1] != num_channels:
        raise ValueError(
            f"{layer} was built for {num_channels} channels but got an input with "
            f"{x.shape[1]} channels (shape {tuple(x.shape)})"
        )


def check_several_values(layer: str, x: Tensor, count: int, per: str = "group") -> None:
    """Statistics over ``count`` values need more than one of them."""
    if count <= 1:
        raise ValueError(
            f"{layer} needs more than one value per {per} to normalize, but input shape "
            f"{tuple(x.shape)} gives {count}"
        )


def first_order_only(name: str) -> None:
    """Refuse double backward through ``name``'s hand-written backward (whose saved partials are
    constants to autograd): a cheaper stand-in for ``once_differentiable`` on PN's hot path."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{name} supports first-order gradients only (backward with create_graph=True, "
            f"e.g. for double backward, is not implemented)"
        )


def channel_view(t: Tensor, ndim: int) -> Tensor:
    """View a per-channel vector (C,) as (1, C, 1, ..., 1) for an ``ndim``-d activation."""
    return t.view((1, -1) + (1,) * (ndim - 2))


def channel_sum(t: Tensor) -> Tensor:
    """Σ over (N, *spatial) for each channel of an (N, C, *spatial) tensor; summing the batch
    first is about twice as fast on CPU as one reduction over the strided dims."""
    return t.sum(0).reshape(t.shape[1], -1).sum(1)
