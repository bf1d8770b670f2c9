r"""Which activation module runs right after each normalization: found by running the model once.

For a model :mod:`torch.fx` cannot trace, :func:`record_run` runs a copy of it (evaluation mode, no
gradient) on the user's example inputs and records every module call (forward hooks) and every
torch operation (a :class:`~torch.overrides.TorchFunctionMode`), with the tensors they take. A
normalization's output tensor *y* then "goes alone" to an activation module A when

- the only consumer of *y* is one call of A, with *y* its only tensor input (operations inside A,
  and ``nn.Identity`` modules, which return *y* itself, do not count; metadata reads such as
  ``y.shape`` do not either), and *y* is not an output of the model;
- the normalization and A are each called exactly once in the run.

This proves act(norm(x)) for the run recorded; a module that another path (a branch the example
inputs do not take) would call is not seen, so the example inputs should take every path.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ._fused_norms import is_identity

# operations that read a tensor's metadata, not its values
_METADATA = {"shape", "ndim", "dtype", "device", "layout", "is_cuda", "requires_grad", "grad_fn"}
_METADATA |= {"is_leaf", "dim", "size", "numel", "stride", "is_floating_point", "is_contiguous"}
_METADATA |= {"get_device", "element_size", "nelement", "ndimension"}


@dataclass(frozen=True)
class _Use:
    """One use of a tensor: a module call (``call`` is its id) or an operation, made while the
    module calls ``stack`` were running."""

    what: str
    stack: tuple[int, ...]
    call: int | None = None
    tensor_inputs: int = 0
    first: bool = False


@dataclass
class Recording:
    """What one run showed.

    Attributes:
        calls: how many times each module (by path) was called.
        followers: normalization path -> the activation module path its output went to alone.
        reasons: normalization path -> why no activation module takes its output alone.
    """

    calls: Counter = field(default_factory=Counter)
    followers: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


class _Recorder(TorchFunctionMode):
    def __init__(self, watched: set[int]) -> None:
        super().__init__()
        self.watched_ids = watched  # ids of the modules whose outputs we follow
        self.stack: list[int] = []
        self.calls: Counter = Counter()  # id(module) -> calls
        self.produced: dict[int, tuple[int, Tensor]] = {}  # id(tensor) -> (id(module), tensor)
        self.uses: dict[int, list[_Use]] = {}  # id(tensor) -> its uses
        self.module_of_call: dict[int, nn.Module] = {}
        self.counter = itertools.count()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        if name not in _METADATA:
            self._note(name, (args, kwargs), call=None)
        return func(*args, **kwargs)

    def _note(self, what: str, inputs: object, call: int | None) -> None:
        leaves = [leaf for leaf in tree_flatten(inputs)[0] if isinstance(leaf, Tensor)]
        for index, leaf in enumerate(leaves):
            if id(leaf) in self.produced and self.produced[id(leaf)][1] is leaf:
                use = _Use(what, tuple(self.stack), call, len(leaves), index == 0)
                self.uses[id(leaf)].append(use)

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls[id(module)] += 1
        call = next(self.counter)
        self.module_of_call[call] = module
        if not is_identity(module):
            self._note(type(module).__name__, (args, kwargs), call)
        self.stack.append(call)

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        self.stack.pop()
        watched = id(module) in self.watched_ids and isinstance(output, Tensor)
        if watched and id(output) not in self.produced:
            self.produced[id(output)] = (id(module), output)
            self.uses[id(output)] = []


def record_run(
    model: nn.Module,
    example_inputs: tuple,
    watched: Iterable[str],
    is_activation: Callable[[nn.Module], bool],
) -> Recording:
    """Run a copy of ``model`` on ``example_inputs`` and find, for each module path in ``watched``,
    the activation module (one for which ``is_activation`` holds) its output goes to alone."""
    copied = copy.deepcopy(model).eval()
    paths = {id(m): p for p, m in reversed(list(copied.named_modules(remove_duplicate=False)))}
    modules = dict(copied.named_modules())
    watched = [p for p in watched if p in modules]
    recorder = _Recorder({id(modules[p]) for p in watched})
    handles = []
    for module in modules.values():
        handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(recorder.hook, with_kwargs=True))
    try:
        with torch.no_grad(), recorder:
            outputs = copied(*example_inputs)
    except Exception as error:
        raise ValueError(
            f"convert could not run the model on example_inputs to record which activation "
            f"follows each normalization: {type(error).__name__}: {error}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    returned = {id(t) for t in tree_flatten(outputs)[0] if isinstance(t, Tensor)}
    recording = Recording(Counter({paths[i]: n for i, n in recorder.calls.items() if i in paths}))
    outputs_of: dict[int, list[int]] = {}
    for tensor_id, (module_id, _) in recorder.produced.items():
        outputs_of.setdefault(module_id, []).append(tensor_id)
    for path in watched:
        module = modules[path]
        calls = recorder.calls[id(module)]
        if calls != 1:
            recording.reasons[path] = f"the run calls it {calls} times" if calls else "never runs"
            continue
        (tensor_id,) = outputs_of.get(id(module), [None])
        if tensor_id is None:
            recording.reasons[path] = "its output is not a tensor"
            continue
        uses = _consumers(recorder.uses[tensor_id])
        follower, why = _alone(uses, tensor_id in returned, recorder, paths, is_activation)
        if follower is None:
            recording.reasons[path] = why
        else:
            recording.followers[path] = follower
    return recording


def _consumers(uses: list[_Use]) -> list[_Use]:
    """The uses not made inside a module call that itself took the tensor."""
    calls = {use.call for use in uses if use.call is not None}
    return [use for use in uses if not calls.intersection(use.stack)]


def _alone(
    uses: list[_Use],
    returned: bool,
    recorder: _Recorder,
    paths: dict[int, str],
    is_activation: Callable[[nn.Module], bool],
) -> tuple[str | None, str]:
    if returned:
        return None, "its output is an output of the model"
    if not uses:
        return None, "its output is not used in the run"
    if len(uses) > 1:
        names = ", ".join(_name(use, recorder, paths) for use in uses)
        return None, f"its output has {len(uses)} uses in the run ({names})"
    (use,) = uses
    module = recorder.module_of_call.get(use.call) if use.call is not None else None
    if module is None:
        return None, f"its output goes to {use.what}, not to an activation module"
    path = paths.get(id(module), "?")
    if not is_activation(module):
        return None, f"its output goes to {path} ({use.what}), not an activation"
    if not use.first or use.tensor_inputs != 1:
        return None, f"its output is one of several inputs of {path}"
    if recorder.calls[id(module)] != 1:
        calls = recorder.calls[id(module)]
        return None, f"the activation {path} is called {calls} times in the run"
    return path, ""


def _name(use: _Use, recorder: _Recorder, paths: dict[int, str]) -> str:
    module = recorder.module_of_call.get(use.call) if use.call is not None else None
    return use.what if module is None else paths.get(id(module), use.what)


__all__ = ["Recording", "record_run"]
