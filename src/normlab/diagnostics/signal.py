r"""Signal propagation plots (SPPs) of residual networks.

Brock, De & Smith 2021 ("Characterizing signal propagation to close the performance gap in
unnormalized ResNets", Section 3) and Hoedt et al. 2022 ("Normalization is dead, long live
normalization!") follow three statistics through depth, at the output of the stem and of every
residual block, for one batch of inputs (here: streamed over all of ``data``):

* the average squared channel mean, mean_c (E_{n,h,w}[x_{n,c,h,w}])²;
* the average channel variance, mean_c Var_{n,h,w}[x_{n,c,h,w}];
* the residual-branch variance: the average channel variance at the end of each residual branch,
  before its scaling (α, a SkipInit gain) and its merge with the skip path.

Which modules are "the stem", "the blocks" and "the branches" is explicit. Pass their names (or a
predicate) to :func:`signal_propagation`, or let :func:`signal_layout` read them off the model by
this convention:

* a model's stem is its submodule named ``stem`` (if it has one);
* a residual block is any module with a ``branch_output`` attribute: the name, relative to the
  block, of the submodule whose output is the residual branch before its scaling (for
  x + α·conv2(...), ``branch_output = "conv2"``), or None when the block has no such module;
* a model may instead define ``signal_layout(self) -> SignalLayout``, which takes precedence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from .._checks import check_sequence
from .probes import Data, Mode, no_match, select_modules, stream
from .statistics import ChannelMoments, NonFiniteStatisticsError

BRANCH_ATTRIBUTE = "branch_output"
STEM_NAME = "stem"

Blocks = Sequence[str] | Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class SignalLayout:
    """The modules an SPP reads: the stem, the residual blocks (in depth order) and, per block,
    the module whose output is its residual branch before scaling."""

    stem: str | None
    blocks: tuple[str, ...]
    branches: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SignalPropagation:
    """SPP statistics at the stem (if any) then every block, in depth order.

    ``branch_variance[i]`` is the residual-branch variance of ``names[i]``, or None for the
    stem and for blocks without a known branch module.
    """

    names: list[str]
    squared_mean: list[float]
    variance: list[float]
    branch_variance: list[float | None]
    has_stem: bool

    @property
    def depth(self) -> list[int]:
        """The x axis of the SPP: 0 for the stem, then 1, 2, ... for the blocks."""
        start = 0 if self.has_stem else 1
        return list(range(start, start + len(self.names)))


def signal_layout(model: nn.Module) -> SignalLayout:
    """The stem, blocks and branches of ``model`` by the convention of this module."""
    custom = getattr(model, "signal_layout", None)
    if callable(custom):
        return custom()
    modules = dict(model.named_modules())
    blocks = [name for name, m in modules.items() if hasattr(m, BRANCH_ATTRIBUTE) and name]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} declares no residual block: give signal_propagation the "
            f"block names (blocks=...), or give its block classes a '{BRANCH_ATTRIBUTE}' "
            f"attribute naming the module whose output is the residual branch"
        )
    branches = {}
    for name in blocks:
        branch = getattr(modules[name], BRANCH_ATTRIBUTE)
        if branch is not None:
            branches[name] = f"{name}.{branch}"
    stem = STEM_NAME if STEM_NAME in modules else None
    return SignalLayout(stem, tuple(blocks), branches)


def signal_propagation(
    model: nn.Module,
    data: Data,
    blocks: Blocks | None = None,
    stem: str | None = None,
    branches: Mapping[str, str] | Sequence[str] | None = None,
    mode: Mode = None,
) -> SignalPropagation:
    """The SPP statistics of ``model`` over ``data``.

    Args:
        blocks: names (or fnmatch patterns) of the residual blocks, or a predicate
            ``(name, module) -> bool``; None reads the layout off the model
            (:func:`signal_layout`), stem and branches included unless given.
        stem: the name of the stem module, whose output is the SPP's first point (optional).
        branches: per block, the module whose output is its residual branch before scaling:
            a mapping block name → module name, or a sequence aligned with ``blocks``.
        mode: as for :func:`~normlab.diagnostics.power_profile`.
    """
    layout = _layout(model, blocks, stem, branches)
    block_names = [name for name, _ in select_modules(model, list(layout.blocks))]
    watched = ([layout.stem] if layout.stem else []) + block_names + list(layout.branches.values())
    modules = select_modules(model, watched)
    moments: dict[str, ChannelMoments] = {}

    def observe(name: str, x: Tensor | None, output: Tensor) -> None:
        try:
            moments.setdefault(name, ChannelMoments()).update(output)
        except NonFiniteStatisticsError:  # the hook names layer and batch
            raise
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None

    order, _ = stream(model, data, modules, observe, mode, check="statistics")
    points = [n for n in order if n == layout.stem or n in block_names]
    return _result(points, moments, layout)


def _layout(
    model: nn.Module,
    blocks: Blocks | None,
    stem: str | None,
    branches: Mapping[str, str] | Sequence[str] | None,
) -> SignalLayout:
    if blocks is None:
        found = signal_layout(model)
        stem = found.stem if stem is None else stem
        return SignalLayout(stem, found.blocks, _branches(found.blocks, branches, found.branches))
    if callable(blocks):
        chosen = tuple(name for name, m in model.named_modules() if blocks(name, m))
        if not chosen:
            raise no_match(model, blocks)
    else:
        chosen = check_sequence("blocks", blocks, str, "['layer1.0', 'layer1.1'] or ['layer*']")
    return SignalLayout(stem, chosen, _branches(chosen, branches, {}))


def _branches(
    blocks: Sequence[str], given: Mapping[str, str] | Sequence[str] | None, default: dict
) -> dict[str, str]:
    if given is None:
        return dict(default)
    if isinstance(given, Mapping):
        return dict(given)
    given = check_sequence("branches", given, str, "['layer1.0.conv2', 'layer1.1.conv2']")
    if len(given) != len(blocks):
        raise ValueError(
            f"branches lists {len(given)} modules for {len(blocks)} blocks; give one branch "
            f"module per block, or a mapping block name -> branch module name"
        )
    return dict(zip(blocks, given, strict=True))


def _result(
    points: list[str], moments: dict[str, ChannelMoments], layout: SignalLayout
) -> SignalPropagation:
    squared, variance, branch = [], [], []
    for name in points:
        try:
            squared.append(moments[name].average_squared_mean)
            variance.append(moments[name].average_variance)
            module = layout.branches.get(name)
            branch.append(moments[module].average_variance if module in moments else None)
        except ValueError as error:
            raise ValueError(f"layer {name!r}: {error}") from None
    has_stem = bool(points) and points[0] == layout.stem
    return SignalPropagation(points, squared, variance, branch, has_stem)
