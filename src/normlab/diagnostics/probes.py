r"""Probes: forward hooks on chosen modules of any ``nn.Module``, streamed over data.

Every diagnostic of :mod:`normlab.diagnostics` that looks inside a model goes through here:

* **Which modules.** ``where`` names the papers' places: ``"norm"`` is the output of every
  normalization step (normlab's :class:`~normlab.layers.Normalization`, including the ``.norm``
  inside a :class:`~normlab.layers.NormAct`, and torch's BatchNorm, GroupNorm, LayerNorm and
  InstanceNorm), ``"pre"`` the input ỹ and ``"post"`` the output z of every activation step
  (:class:`~normlab.layers.ActivationStep`, including a NormAct's ``.act``). ``select`` overrides
  it with a module type (or tuple of types), an fnmatch pattern on qualified module names
  (``"layers.*.norm_act.norm"``), a sequence of names or patterns, or a predicate
  ``(name, module) -> bool``. A NormAct whose ``.norm`` is hooked, or whose ``.act`` is hooked
  for its input, runs unfused, so the hooks see ỹ exactly; the output z of its ``.act`` is read
  off the NormAct itself, which keeps its fused path.
* **Which data.** A tensor (one batch); one ``(x, y)`` batch of inputs and targets, a
  2-tuple (or 2-list) of tensors with as many targets as inputs whose targets look like labels:
  of lower rank than the inputs, or at most 2-d and shaped unlike them (labels (N,) or (N, 1),
  one-hot or probability targets (N, K)); or any other iterable of batches: tensors, or
  ``(x, y)`` tuples and lists as a DataLoader yields them. Two same-shaped input batches in a
  tuple remain two batches. Batches go to the model's device and floating dtype.
* **Which mode.** ``mode=None`` (default) leaves the model's train/eval mode alone; ``"train"``
  or ``"eval"`` sets it for the run and restores every module's flag afterwards. In train mode,
  BatchNorm normalizes with batch statistics and updates its running statistics.

Results come in depth order: the order in which the probed modules first ran. Activations are
checked to be finite: a non-finite one raises a ValueError naming the layer and the batch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from .._checks import closest, unknown
from ..layers import ActivationStep, NormAct, Normalization
from .statistics import NonFiniteStatisticsError

Where = Literal["norm", "pre", "post"]
Mode = Literal["train", "eval"] | None
Selector = (
    str
    | type[nn.Module]
    | tuple[type[nn.Module], ...]
    | Sequence[str]
    | Callable[[str, nn.Module], bool]
)
Data = Tensor | Iterable[Tensor] | Iterable[Sequence[Tensor]]
Observer = Callable[[str, Tensor, Tensor], None]
Check = Literal["data", "statistics"]

WHERE: tuple[str, ...] = ("norm", "pre", "post")
NORM_TYPES: tuple[type[nn.Module], ...] = (
    Normalization,
    _BatchNorm,
    _InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)
MODES = ("train", "eval")


def check_where(where: str) -> str:
    if where not in WHERE:
        raise unknown("probe place 'where'", where, WHERE)
    return where


def where_types(where: str) -> tuple[type[nn.Module], ...]:
    """The module types probed at ``where`` ("norm", "pre" or "post")."""
    return NORM_TYPES if check_where(where) == "norm" else (ActivationStep,)


def select_modules(model: nn.Module, select: Selector) -> list[tuple[str, nn.Module]]:
    """The (qualified name, module) pairs of ``model`` matched by ``select``, in registration
    order. Raises a ValueError listing the module types found when nothing matches."""
    named = list(model.named_modules())
    if isinstance(select, str):
        chosen = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, select)]
    elif isinstance(select, type) or (
        isinstance(select, tuple) and select and all(isinstance(t, type) for t in select)
    ):
        chosen = [(n, m) for n, m in named if isinstance(m, select)]
    elif callable(select):
        chosen = [(n, m) for n, m in named if select(n, m)]
    elif isinstance(select, Sequence) and all(isinstance(p, str) for p in select):
        chosen = _by_names(model, named, select)
    else:
        raise TypeError(
            f"select must be a module type, a tuple of types, a name pattern, a sequence of "
            f"names or a predicate (name, module) -> bool, got {select!r}"
        )
    if not chosen:
        raise no_match(model, select)
    return chosen


def _by_names(
    model: nn.Module, named: list[tuple[str, nn.Module]], patterns: Sequence[str]
) -> list[tuple[str, nn.Module]]:
    names = [n for n, _ in named]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            suggestion = closest(pattern, names)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            raise ValueError(
                f"no module of {type(model).__name__} is named {pattern!r}{hint} "
                f"(names look like {', '.join(repr(n) for n in names[1:4])}, ...)"
            )
    return [(n, m) for n, m in named if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def no_match(model: nn.Module, select: object) -> ValueError:
    types = sorted({type(m).__name__ for m in model.modules()})
    return ValueError(
        f"no probe-able module of {type(model).__name__} matches {_describe(select)}; the model "
        f"holds modules of types: {', '.join(types)}. Pass select= a type, a name pattern or a "
        f"predicate that matches some of them"
    )


def _describe(select: object) -> str:
    if isinstance(select, type):
        return select.__name__
    if isinstance(select, tuple) and all(isinstance(t, type) for t in select):
        return "any of " + ", ".join(t.__name__ for t in select)
    return repr(select)


def resolve(model: nn.Module, where: str, select: Selector | None) -> list[tuple[str, nn.Module]]:
    """The modules probed for ``where`` unless ``select`` overrides it. For outputs
    (``where="post"``) the ``.act`` of a :class:`~normlab.layers.NormAct` is hooked on the
    NormAct itself, whose output is the same z: the NormAct then keeps its fused path."""
    if select is not None:
        chosen = select_modules(model, select)
    else:
        try:
            chosen = select_modules(model, where_types(where))
        except ValueError as error:
            raise ValueError(f"where={where!r}: {error}") from None
    if where != "post":
        return chosen
    return [(name, _output_site(model, name, module)) for name, module in chosen]


def _output_site(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """The NormAct whose ``.act`` is ``module`` (named ``name``), else ``module``."""
    parent_name, _, leaf = name.rpartition(".")
    if leaf != "act":
        return module
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent if isinstance(parent, NormAct) and parent.act is module else module


def is_one_batch(data: object) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` batch rather than an iterable of two
    batches (see "Which data" in the module docstring)."""
    if not (isinstance(data, tuple | list) and len(data) == 2):
        return False
    x, y = data
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or x.dim() == 0 or y.dim() == 0:
        return False
    if x.shape[0] != y.shape[0]:
        return False
    return y.dim() < x.dim() or (y.dim() <= 2 and y.shape != x.shape)


def iter_batches(data: Data) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(inputs, targets or None) for each batch of ``data``."""
    if isinstance(data, Tensor):
        yield data, None
        return
    if is_one_batch(data):
        yield data[0], data[1]
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor, an iterable of batches or a DataLoader, got "
            f"{type(data).__name__}"
        )
    empty = True
    for index, item in enumerate(data):
        empty = False
        if isinstance(item, Tensor):
            yield item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
            target = item[1] if len(item) > 1 and isinstance(item[1], Tensor) else None
            yield item[0], target
        else:
            raise TypeError(
                f"batch {index} of data is a {type(item).__name__}; expected a tensor or an "
                f"(inputs, targets) tuple of tensors"
            )
    if empty:
        raise ValueError("data yielded no batch: give at least one batch of inputs")


def model_place(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter or buffer (CPU, float32 when
    it has none)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def to_model(x: Tensor, place: tuple[torch.device, torch.dtype]) -> Tensor:
    device, dtype = place
    if x.device.type == "meta" and device.type != "meta":
        raise ValueError(
            f"data holds a meta tensor of shape {tuple(x.shape)} (shape only, no values) for a "
            f"model on {device}; give real inputs"
        )
    return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)


@contextmanager
def model_mode(model: nn.Module, mode: Mode) -> Iterator[nn.Module]:
    """Set train or eval mode for the block (None: leave it), then restore every flag."""
    if mode is None:
        yield model
        return
    if mode not in MODES:
        raise unknown("mode", mode, MODES)
    flags = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def check_finite(t: Tensor, name: str, batch: int, what: str = "output") -> None:
    """Raise a ValueError naming the layer and the batch when ``t`` holds NaN or inf."""
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"non-finite activations in the {what} of layer {name!r} in batch {batch}: {bad} "
            f"of {t.numel()} values are NaN or inf"
        )


class Recorder:
    """Forward hooks calling ``observe(name, input, output)`` on each probed module; records
    the order in which the modules first ran and the current batch index.

    ``check="data"`` checks every probed tensor to be finite before ``observe`` (a pass over
    it); ``check="statistics"`` leaves that to an observer built on
    :func:`~normlab.diagnostics.statistics.plane_moments`, whose
    :class:`~normlab.diagnostics.statistics.NonFiniteStatisticsError` the hook turns into the same
    error naming the layer and batch, at no extra pass."""

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        observe: Observer,
        inputs: bool = False,
        check: Check = "data",
    ) -> None:
        self.modules, self.observe, self.check_inputs = list(modules), observe, inputs
        self.check = check
        self.order: list[str] = []
        self.batch = 0

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            x = args[0] if args and isinstance(args[0], Tensor) else None
            if not isinstance(output, Tensor):
                raise ValueError(
                    f"layer {name!r} ({type(module).__name__}) returned a "
                    f"{type(output).__name__}; probes need modules whose output is one tensor"
                )
            if self.check == "data":
                self._check_finite(name, x, output)
            if name not in self.order:
                self.order.append(name)
            try:
                self.observe(name, x, output)
            except NonFiniteStatisticsError as error:
                self._check_finite(name, x, output)
                raise ValueError(f"layer {name!r} in batch {self.batch}: {error}") from None

        return hook

    def _check_finite(self, name: str, x: Tensor | None, output: Tensor) -> None:
        if self.check_inputs and x is not None:
            check_finite(x, name, self.batch, "input")
        check_finite(output, name, self.batch, "output")

    @contextmanager
    def attached(self) -> Iterator[Recorder]:
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def stream(
    model: nn.Module,
    data: Data,
    modules: Sequence[tuple[str, nn.Module]],
    observe: Observer,
    mode: Mode = None,
    inputs: bool = False,
    check: Check = "data",
) -> tuple[list[str], int]:
    """Run ``model`` over every batch of ``data`` under ``torch.no_grad`` with ``observe``
    hooked on ``modules``; return the names that ran (depth order) and the number of inputs.
    ``inputs=True`` also checks the modules' inputs to be finite; ``check`` as for
    :class:`Recorder`."""
    recorder = Recorder(modules, observe, inputs, check)
    place, count = model_place(model), 0
    with model_mode(model, mode), recorder.attached(), torch.no_grad():
        for index, (x, _) in enumerate(iter_batches(data)):
            recorder.batch = index
            model(to_model(x, place))
            count += x.shape[0] if x.dim() else 1
    if not recorder.order:
        names = ", ".join(repr(n) for n, _ in modules[:5])
        raise ValueError(
            f"none of the probed modules ({names}{', ...' if len(modules) > 5 else ''}) ran in "
            f"the forward pass of {type(model).__name__}"
        )
    return recorder.order, count


def observed_tensor(where: str, x: Tensor | None, output: Tensor, name: str) -> Tensor:
    """The input ỹ for ``where="pre"``, the output otherwise."""
    if where != "pre":
        return output
    if x is None:
        raise ValueError(f"layer {name!r} was called without a tensor input to probe")
    return x
