r"""Convert any model's BatchNorms, and the activations right after them, to a normalization scheme.

``normlab.convert(model, norm="gn8+pn")`` returns a new module in which every BatchNorm (torch's
BatchNorm1d/2d/3d and SyncBatchNorm, and normlab's own normalization layers) becomes the scheme's
normalization, and a BatchNorm *directly followed by an activation* becomes, together with that
activation, the scheme's normalization-activation step (``Scheme.norm_act``: with ``+pn``, the
activation is proxy-normalized). The input model is never modified.

What "directly follows" means. The model is traced with :mod:`torch.fx`: a BatchNorm and an
activation are paired when the activation's input is the BatchNorm's output and nothing else uses
that output; ``nn.Identity`` modules between them (timm's disabled drop-block and similar
placeholders) do not count, anything else (a dropout, a drop-block, an addition) keeps them apart
and the report says what. Activations are torch's modules (ReLU, GELU, SiLU, Tanh, Sigmoid, ELU,
LeakyReLU, Softplus with the arguments normlab's φ has), their functional forms (``F.relu``,
``torch.relu``, ``x.relu()``, ...) and normlab's activation steps. The result is then a
:class:`torch.fx.GraphModule` with the original's module hierarchy (state-dict keys are kept for
every module that was not replaced). Modules that contain no normalization are traced as single
calls when tracing through them fails. The model is traced in training and in evaluation mode:
an argument that is ``self.training`` (``F.dropout(x, p, training=self.training)``) reads the
module's flag in the result, and any other difference between the two graphs (``if
self.training:``) sends the model to the path for models torch.fx cannot trace. Other
normalizations (torch's GroupNorm, LayerNorm, InstanceNorm, frozen BatchNorms, timm's
GroupNormAct, ...) are left alone and reported.

Fused normalization-activation modules. A BatchNorm subclass carrying its own activation, such
as timm's ``BatchNormAct2d`` (act(drop(BN(x)))), is recognised by what it computes
(:mod:`normlab._fused_norms`), not by its name, and is a pair by itself: it becomes the scheme's
norm_act with its activation's φ. Where φ has no normlab activation step (Hardswish, ReLU6,
approximate GELU, ...), or a drop layer sits between BN and act, the normalization is converted
alone and the module's own drop and act are kept after it (an ``nn.Sequential(norm, [drop,]
act)``): an activation is never dropped. A BatchNorm subclass that computes something else is
left alone.

Models torch.fx cannot trace (data-dependent control flow), and models whose forward reads
``self.training`` where normalizations are (the graphs traced in training and in evaluation mode
differ, so one graph would compute the other mode wrongly). Nothing is paired by registration
order. A BatchNorm is paired only with an activation proven to run right after it: inside an
``nn.Sequential`` (its own forward) when the activation module is the next child (``nn.Identity``
children skipped) and neither module is registered anywhere else; or, given
``example_inputs``, when a run of the model on them (:mod:`normlab._run_record`) shows its output
going to that activation module alone, each called once. The activation module is then replaced by
``nn.Identity`` and the model's own classes are kept. Every other normalization is converted
alone, so the outputs are those of the converted normalizations; the report says how to pair
them (pass ``example_inputs``). A :class:`torch.jit.ScriptModule` cannot be converted (convert
the eager model, then script it); scripted submodules are left alone.

What is carried over. The BatchNorm's affine (γ, β) goes to the target's affine: the activation
step's ``gamma``/``beta`` in a fused pair, the normalizer's ``weight``/``bias`` otherwise. An
activation step's own affine composes with it. Running statistics, eps and momentum go to a
target that keeps running statistics (``bn``, ``vn``), and a BatchNorm without running
statistics (``track_running_stats=False``) gives one without them; PN's ``proxy_beta``,
``proxy_gamma`` and TLU's ``tau`` go to a target that has them. Whatever the target cannot hold
is listed as dropped in the report. Converting to ``norm="bn"`` is the reverse: normlab's layers
(NormAct, GroupNorm, ...) become BatchNorm with their affine carried; a BatchNorm model converted to
``"bn"`` computes the same outputs. ``sync_batchnorm=True`` (with ``norm="bn"``) makes every
normalization a :class:`torch.nn.SyncBatchNorm` for distributed training and leaves the
activations as they are.

Convolutions change only when the scheme's convolutions differ from the model's: ``+ws``,
``+sws``, ``+wn``, ``+cwn`` and ``nf`` replace plain ``nn.Conv2d`` (raw weights carried), and a
weight-space conv converted to a scheme without weight modifier becomes a plain conv holding its
effective weight, which computes the same output.

The report (:class:`ConversionReport`) is attached to the returned module as
``conversion_report`` and logged at INFO level on the ``normlab.convert`` logger (WARNING when
the model could not be traced).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from ._checks import name_modules
from ._convert_activations import FoundActivation, module_activation, node_activation
from ._fused_norms import TORCH_BATCH_NORMS, batch_norm_form, forget_forms, is_identity
from ._fx_modes import ModeDependentError, mode_graph, owner
from ._run_record import Recording, record_run
from .layers import (
    ActivationStep,
    BatchDependentNorm,
    NormAct,
    Normalization,
    WeightSpaceConv2d,
)
from .layers.activations import TORCH_ACTIVATIONS
from .scheme import Scheme, scheme

logger = logging.getLogger(__name__)

NORM_ACT, NORM, LEFT_ALONE, CONV, FALLBACK = "norm+act", "norm", "left alone", "conv", "fallback"
ACTIONS = (NORM_ACT, NORM, LEFT_ALONE, CONV, FALLBACK)


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversionEntry:
    """One thing :func:`convert` found.

    Attributes:
        path: the module path; a fused pair is ``"bn1 + relu"``; a functional activation is
            named ``"layer1.0:F.relu"`` (the module whose forward calls it), or ``"F.relu"`` in
            the model's own forward.
        found: what was there, e.g. ``"BatchNorm2d(64) → ReLU"``.
        action: ``"norm+act"`` (a BatchNorm and its activation fused into the scheme's
            norm_act), ``"norm"`` (a normalization alone), ``"left alone"``, ``"conv"`` or
            ``"fallback"`` (the model could not be traced: its own classes are kept and only
            proven pairs are fused).
        detail: what it became and what was carried or dropped, or why it was left alone.
    """

    path: str
    found: str
    action: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.action}] {self.path}: {self.found} — {self.detail}"


@dataclass
class ConversionReport:
    """What :func:`convert` changed and what it could not, in the model's order."""

    spec: str
    method: str = "torch.fx"
    entries: list[ConversionEntry] = field(default_factory=list)

    def add(self, path: str, found: str, action: str, detail: str) -> None:
        self.entries.append(ConversionEntry(path, found, action, detail))

    def by_action(self, action: str) -> list[ConversionEntry]:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; valid choices: {', '.join(ACTIONS)}")
        return [entry for entry in self.entries if entry.action == action]

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(entry.action for entry in self.entries)
        return {action: counts[action] for action in ACTIONS if counts[action]}

    def __str__(self) -> str:
        summary = ", ".join(f"{n} {action}" for action, n in self.counts.items()) or "nothing"
        lines = [f"conversion to {self.spec!r} ({self.method}): {summary}"]
        lines += [f"  {entry}" for entry in self.entries]
        return "\n".join(lines)


# -- what is a normalization, what is an activation ---------------------------------------------


_OTHER_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_OTHER_NORMS += (nn.modules.instancenorm._InstanceNorm,)


def _other_norm(module: nn.Module) -> bool:
    """A normalization convert does not change (torch's GroupNorm, LayerNorm, InstanceNorm, a
    model zoo's frozen BatchNorm, ...): reported as left alone."""
    if _norm_kind(module) is not None or isinstance(module, TORCH_BATCH_NORMS):
        return False
    if not isinstance(module, _OTHER_NORMS) and "Norm" not in type(module).__name__:
        return False
    return not any(_norm_kind(sub) is not None for sub in module.modules())


_OTHER_NORM_DETAIL = "convert changes BatchNorms and normlab's normalization layers only"


def _norm_kind(module: nn.Module) -> str | None:
    """ "norm" for a normalization alone, "unit" for a normlab normalization-activation (a
    NormAct, an EvoNorm with its nonlinearity), "fused" for a BatchNorm carrying its own
    activation (timm's BatchNormAct2d), None for anything else (a BatchNorm subclass computing
    something else included)."""
    if isinstance(module, NormAct):
        return "unit"
    if isinstance(module, Normalization):
        return "unit" if getattr(module, "nonlinear", False) else "norm"
    form = batch_norm_form(module)
    if form is None or form.kind == "unknown":
        return None
    return "fused" if form.kind == "fused" else "norm"


def _channels(module: nn.Module) -> int:
    return module.num_features if isinstance(module, TORCH_BATCH_NORMS) else module.num_channels


def _describe_module(module: nn.Module) -> str:
    if isinstance(module, NormAct):
        return f"NormAct({type(module.norm).__name__}, {type(module.act).__name__})"
    if _norm_kind(module) == "fused":
        form = batch_norm_form(module)
        parts = (("drop", form.drop), ("act", form.act))
        inner = [f"{name}={type(m).__name__}" for name, m in parts if m is not None]
        return f"{type(module).__name__}({', '.join([str(_channels(module)), *inner])})"
    if isinstance(module, nn.Sequential) and isinstance(getattr(module, "norm", None), nn.Module):
        parts = ", ".join(_describe_module(m) for m in module)
        return f"Sequential({parts})"
    if _norm_kind(module) is not None:
        return f"{type(module).__name__}({_channels(module)})"
    return type(module).__name__


# -- building targets and carrying values --------------------------------------------------------


@dataclass
class _State:
    """The values a source normalization (and its activation) hold."""

    gamma: Tensor | None = None
    beta: Tensor | None = None
    stats: dict[str, Tensor] = field(default_factory=dict)
    hyper: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)
    untracked: bool = False  # a batch-statistics normalizer without running statistics


def _source_state(module: nn.Module, act: FoundActivation | None) -> _State:
    state = _State()
    normalizer, step = module, act.step if act is not None else None
    if isinstance(module, NormAct):
        normalizer, step = module.norm, module.act
    elif getattr(module, "weight", None) is not None:
        state.gamma, state.beta = module.weight.detach(), module.bias.detach()
    if step is not None and hasattr(step, "gamma"):
        gamma, beta = step.gamma.detach(), step.beta.detach()
        if state.gamma is None:
            state.gamma, state.beta = gamma, beta
        else:  # φ(γ_a(γ_n ỹ + β_n) + β_a)
            state.gamma, state.beta = gamma * state.gamma, gamma * state.beta + beta
    for holder, names in ((step, ("proxy_beta", "proxy_gamma", "tau")), (normalizer, ("v",))):
        for name in names:
            if isinstance(getattr(holder, name, None), Tensor):
                state.extras[name] = getattr(holder, name).detach()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if isinstance(getattr(normalizer, name, None), Tensor):
            state.stats[name] = getattr(normalizer, name)
    if state.stats:
        state.hyper = {"eps": normalizer.eps, "momentum": normalizer.momentum}
    batch_dependent = isinstance(normalizer, (*TORCH_BATCH_NORMS, BatchDependentNorm))
    state.untracked = batch_dependent and not normalizer.track_running_stats
    return state


def _split_target(target: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The normalizer and the activation step of a target module (either may be None)."""
    if isinstance(target, NormAct):
        return target.norm, target.act
    if isinstance(target, ActivationStep):
        return None, target
    if isinstance(target, nn.Sequential) and hasattr(target, "norm"):
        return target.norm, None
    if _norm_kind(target) is not None:
        return target, None
    return None, None


@torch.no_grad()
def _carry(state: _State, target: nn.Module) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``target``; return what was carried and what was dropped."""
    normalizer, step = _split_target(target)
    carried, dropped = [], []
    if state.gamma is not None:
        holder = step if hasattr(step, "gamma") else None
        names = ("gamma", "beta")
        if holder is None and getattr(target, "weight", None) is not None:
            holder, names = target, ("weight", "bias")
        elif holder is None and getattr(normalizer, "weight", None) is not None:
            holder, names = normalizer, ("weight", "bias")
        if holder is None:
            dropped.append("γ, β")
        else:
            getattr(holder, names[0]).copy_(state.gamma)
            getattr(holder, names[1]).copy_(state.beta)
            carried.append("γ, β")
    stats = [n for n in state.stats if isinstance(getattr(normalizer, n, None), Tensor)]
    for name in stats:
        getattr(normalizer, name).copy_(state.stats[name])
    if stats:
        normalizer.eps, normalizer.momentum = state.hyper["eps"], state.hyper["momentum"]
        carried.append("running statistics, eps, momentum")
    if set(state.stats) - set(stats) - {"num_batches_tracked"}:
        dropped.append("running statistics")
    if state.untracked and isinstance(normalizer, BatchDependentNorm | nn.SyncBatchNorm):
        _stop_tracking(normalizer)
        carried.append("track_running_stats=False")
    for name, value in state.extras.items():
        holder = next(
            (h for h in (step, normalizer) if isinstance(getattr(h, name, None), Tensor)), None
        )
        if holder is None:
            dropped.append(name)
        else:
            getattr(holder, name).copy_(value)
            carried.append(name)
    return carried, dropped


def _stop_tracking(norm: nn.Module) -> None:
    """Make ``norm`` use batch statistics in evaluation too, as a source without running
    statistics does."""
    norm.track_running_stats = False
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        if name in norm._buffers:
            norm._buffers[name] = None


def _like(target: nn.Module, source: nn.Module) -> nn.Module:
    """``target`` on the device and in the floating dtype of ``source``, in its mode."""
    tensor = next(iter([*source.parameters(), *source.buffers()]), None)
    if tensor is not None:
        target = target.to(device=tensor.device)
        floats = [t for t in [*source.parameters(), *source.buffers()] if t.is_floating_point()]
        if floats:
            target = target.to(dtype=floats[0].dtype)
    return target.train(source.training)


class _Converter:
    """Builds the target of each source and writes the report."""

    def __init__(self, s: Scheme, act: str | None, sync: bool, report: ConversionReport):
        self.scheme, self.act, self.sync, self.report = s, act, sync, report

    def _build(self, path: str, make: Callable[[], nn.Module]) -> nn.Module:
        try:
            return make()
        except ValueError as error:
            raise ValueError(f"cannot convert {path}: {error}") from error

    def target(self, path: str, source: nn.Module, act: FoundActivation | None) -> nn.Module:
        """The module replacing ``source`` (and ``act``, when given) under the scheme."""
        C, s = _channels(source), self.scheme
        unit = _norm_kind(source) == "unit"
        act_name = None
        if unit:
            act_name = self.act or _unit_act_name(source, s)
        elif act is not None:
            act_name = self.act or act.name
        if self.sync:
            norm = nn.SyncBatchNorm(C)
            if not unit:
                return norm
            return nn.Sequential(OrderedDict(norm=norm, act=TORCH_ACTIVATIONS[act_name]()))
        if act_name is None:
            return self._build(path, lambda: s.norm(C))
        return self._build(path, lambda: s.norm_act(C, act_name))

    def replace(
        self,
        path: str,
        source: nn.Module,
        act: FoundActivation | None = None,
        act_path: str = "",
        note: str = "",
        keep: dict[str, nn.Module] | None = None,
    ) -> nn.Module:
        """Build, carry and report the replacement of ``source`` (and ``act``, found at
        ``act_path``; a fused source's own when that is empty); ``note`` says why a
        normalization is converted without an activation; the modules in ``keep`` (a fused
        source's own drop and act) run after the converted normalization."""
        target = _like(self.target(path, source, act), source)
        carried, dropped = _carry(_source_state(source, act), target)
        if keep:
            target = nn.Sequential(OrderedDict(norm=target, **keep)).train(source.training)
        found = _describe_module(source) + (f" → {act.label}" if act and act_path else "")
        detail = f"→ {_describe_module(target)}"
        if carried:
            detail += f"; carried {', '.join(carried)}"
        if dropped:
            detail += f"; dropped {', '.join(dropped)} (the target has no place for them)"
        if note:
            detail += f"; norm only: {note}"
        if act is not None:
            self.report.add(f"{path} + {act_path}" if act_path else path, found, NORM_ACT, detail)
        else:
            unit = _norm_kind(source) == "unit"
            self.report.add(path, found, NORM_ACT if unit else NORM, detail)
        return target

    def replace_fused(self, path: str, source: nn.Module) -> nn.Module:
        """The replacement of a BatchNorm carrying its own activation: the scheme's norm_act
        with that activation's φ, or the normalization alone followed by the module's own drop
        and act where they cannot be fused (the activation is never dropped)."""
        form = batch_norm_form(source)
        act = module_activation(form.act) if form.act is not None else None
        if form.drop is None and act is not None and act.name is not None and not self.sync:
            return self.replace(path, source, act)
        keep = {name: m for name, m in (("drop", form.drop), ("act", form.act)) if m is not None}
        label = type(form.act).__name__ if form.act is not None else ""
        if self.sync:
            note = "sync_batchnorm=True converts normalizations only"
        elif form.drop is not None:
            note = f"its {type(form.drop).__name__} runs between the BatchNorm and {label}"
        elif act is None:
            note = f"normlab does not know the activation {label}"
        else:
            note = act.why
        kept = " and ".join(type(m).__name__ for m in keep.values())
        return self.replace(path, source, note=f"{note}; its own {kept} kept after it", keep=keep)


def _unit_act_name(source: nn.Module, s: Scheme) -> str:
    if isinstance(source, NormAct):
        return source.act.activation.name
    return s.activation  # EvoNorm's built-in nonlinearity has no φ of its own


# -- the torch.fx path ---------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """normlab's layers are leaves; with ``opaque``, so is every module without a
    normalization inside (there is nothing to convert in it)."""

    def __init__(self, opaque: bool) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        leaves = (*TORCH_BATCH_NORMS, ActivationStep, WeightSpaceConv2d, torch.jit.ScriptModule)
        if _norm_kind(m) is not None or isinstance(m, leaves) or _other_norm(m):
            return True
        if super().is_leaf_module(m, module_qualified_name):
            return True
        return self.opaque and not any(_norm_kind(sub) is not None for sub in m.modules())


def _trace(root: nn.Module) -> tuple[fx.GraphModule, str]:
    """The graph of ``root``, traced in training and in evaluation mode: a forward whose code
    depends on ``self.training`` (a drop-block written inline) gives two different graphs, and
    a graph of one mode would compute the other mode wrongly."""
    errors = []
    modes = {name: m.training for name, m in root.named_modules()}
    for opaque in (False, True):
        tracer = _Tracer(opaque)
        try:
            graph = _trace_in_both_modes(tracer, root)
        except Exception as error:  # any failure to trace sends us to the fallback
            mode = isinstance(error, ModeDependentError)
            errors.append(str(error) if mode else f"{type(error).__name__}: {error}")
            continue
        finally:
            for name, m in root.named_modules():
                m.training = modes[name]
        method = "torch.fx" + (" (modules without normalization traced as leaves)" * opaque)
        return fx.GraphModule(tracer.root, graph, type(root).__name__), method
    raise _UntraceableError(errors[-1].splitlines()[0])


def _trace_in_both_modes(tracer: fx.Tracer, root: nn.Module) -> fx.Graph:
    graphs = []
    for training in (True, False):
        root.train(training)
        graphs.append(tracer.trace(root))
    return mode_graph(*graphs)


class _UntraceableError(Exception):
    pass


def _node_path(node: fx.Node, label: str) -> str:
    if node.op == "call_module":
        return str(node.target)
    path = owner(node)
    return f"{path}:{label}" if path else label


def _describe_node(node: Any, modules: dict[str, nn.Module]) -> str:
    if not isinstance(node, fx.Node):
        return f"the constant {node!r}"
    if node.op == "placeholder":
        return "the model input"
    if node.op == "call_module":
        return f"{node.target} ({_describe_module(modules[node.target])})"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "get_attr":
        return f"the attribute {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    return {"add": "an addition", "iadd": "an addition", "mul": "a product"}.get(name, name)


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _follower(
    node: fx.Node, modules: dict[str, nn.Module]
) -> tuple[fx.Node | None, FoundActivation | None, str]:
    """The activation node that alone consumes ``node``'s output (through ``nn.Identity``
    calls), or why there is none."""
    while True:
        users = list(node.users)
        if not users:
            return None, None, "its output is not used"
        if len(users) > 1:
            why = f"its output has {len(users)} users, so no activation follows it alone"
            return None, None, why
        (user,) = users
        if not (_is_identity_node(user, modules) and user.args[0] is node):
            break
        node = user
    act = node_activation(user, modules)
    if act is None or not user.args or user.args[0] is not node:
        return (
            None,
            None,
            f"no activation follows it (its output goes to {_describe_node(user, modules)})",
        )
    return user, act, ""


def _is_identity_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and is_identity(modules[node.target]) and len(node.args) == 1


def _convert_graph(gm: fx.GraphModule, converter: _Converter) -> fx.GraphModule:
    graph = gm.graph
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    alone: dict[fx.Node, str] = {}  # normalization nodes converted without activation, and why
    replaced: set[str] = set()
    erased: set[fx.Node] = set()  # activations fused into the BatchNorm before them
    for node in list(graph.nodes):
        if node in erased:
            continue
        module = modules.get(node.target) if node.op == "call_module" else None
        if module is not None and _norm_kind(module) is not None:
            if node.target not in replaced:
                erased.add(_convert_norm_node(gm, node, modules, calls, converter, alone))
                replaced.add(node.target)
            else:
                alone[node] = alone.get(node, "the module is called at several places")
            continue
        if isinstance(module, TORCH_BATCH_NORMS) and node.target not in replaced:
            replaced.add(node.target)
            why = batch_norm_form(module).why
            converter.report.add(node.target, _describe_module(module), LEFT_ALONE, why)
            continue
        if module is not None and _other_norm(module) and node.target not in replaced:
            replaced.add(node.target)
            label = type(module).__name__
            converter.report.add(node.target, label, LEFT_ALONE, _OTHER_NORM_DETAIL)
            continue
        act = node_activation(node, modules)
        if act is not None:
            why = _lone_reason(node, modules, alone, converter.sync)
            converter.report.add(_node_path(node, act.label), act.label, LEFT_ALONE, why)
    graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def _convert_norm_node(
    gm: fx.GraphModule,
    node: fx.Node,
    modules: dict[str, nn.Module],
    calls: Counter,
    converter: _Converter,
    alone: dict[fx.Node, str],
) -> fx.Node | None:
    """Replace the normalization called at ``node``, with its activation where one follows;
    return the activation node fused into it (erased from the graph), if any."""
    source, path = modules[node.target], str(node.target)
    if _norm_kind(source) == "fused":
        _set_module(gm, path, converter.replace_fused(path, source))
        return None
    follower, act, why = None, None, ""
    if _norm_kind(source) == "norm":
        if converter.sync:
            why = ""
        elif calls[node.target] > 1:
            why = f"the module is called at {calls[node.target]} places"
        else:
            follower, act, why = _follower(node, modules)
        if act is not None and act.name is None:
            why, act, follower = f"{act.why}; the activation is left alone", None, None
        alone[node] = why
    act_path = _node_path(follower, act.label) if act is not None else ""
    target = converter.replace(path, source, act, act_path, note=why)
    _set_module(gm, path, target)
    if follower is not None:
        follower.replace_all_uses_with(follower.args[0])
        gm.graph.erase_node(follower)
    return follower


def _lone_reason(
    node: fx.Node, modules: dict[str, nn.Module], alone: dict[fx.Node, str], sync: bool
) -> str:
    source = node.args[0] if node.args else None
    while isinstance(source, fx.Node) and _is_identity_node(source, modules):
        source = source.args[0]
    if sync and isinstance(source, fx.Node) and source in alone:
        return f"kept after {source.target}: sync_batchnorm=True converts normalizations only"
    if isinstance(source, fx.Node) and source in alone:
        return f"its input comes from {source.target}, converted alone: {alone[source]}"
    return (
        f"its input is not a normalization output (it comes from {_describe_node(source, modules)})"
    )


# -- models torch.fx cannot trace ----------------------------------------------------------------

_PASS_EXAMPLE_INPUTS = (
    "pass example_inputs=(x,) to convert to pair it by recording which activation runs after it"
)


@dataclass
class _Untraced:
    """What is known of a model torch.fx cannot trace: its modules, how many times each is
    registered, and a recorded run when example inputs were given."""

    root: nn.Module
    recording: Recording | None
    registrations: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.registrations = Counter(
            id(m) for _, m in self.root.named_modules(remove_duplicate=False)
        )

    def follower(self, path: str) -> tuple[str, str]:
        """The path of the activation module proven to run right after the normalization at
        ``path``, or why none is."""
        recording = self.recording
        if recording is not None and path in recording.followers:
            act_path = recording.followers[path]
            if self.registrations[id(self.root.get_submodule(act_path))] > 1:
                return "", f"the activation {act_path} is registered at several places"
            return act_path, ""
        if recording is not None and recording.reasons.get(path, "never runs") != "never runs":
            return "", f"in the run on example_inputs, {recording.reasons[path]}"
        act_path, why = self._sequential_follower(path)
        if not act_path and recording is None:
            why += f"; {_PASS_EXAMPLE_INPUTS}"
        return act_path, why

    def _sequential_follower(self, path: str) -> tuple[str, str]:
        parent_path, _, name = path.rpartition(".")
        parent = self.root.get_submodule(parent_path)
        where = f"{parent_path} ({type(parent).__name__})" if parent_path else "the model"
        if not isinstance(parent, nn.Sequential) or type(parent).forward is not SEQUENTIAL_FORWARD:
            parent_is = f"its parent {where}" if parent_path else "the model"
            return "", (
                f"there is no traced graph of the model, and {parent_is} is not an "
                f"nn.Sequential, so nothing shows what runs after it"
            )
        if self.registrations[id(parent.get_submodule(name))] > 1:
            return "", "the module is registered at several places"
        children = list(parent._modules.items())
        index = next(i for i, (child, _) in enumerate(children) if child == name)
        following = next(((c, m) for c, m in children[index + 1 :] if not is_identity(m)), None)
        if following is None:
            return "", f"it is the last module of {where}"
        child, module = following
        act_path = f"{parent_path}.{child}" if parent_path else child
        if module_activation(module) is None:
            return "", f"the module after it in {where} is {child} ({type(module).__name__})"
        if self.registrations[id(module)] > 1:
            return "", f"the activation {act_path} is registered at several places"
        return act_path, ""


SEQUENTIAL_FORWARD = nn.Sequential.forward


def _convert_untraced(
    root: nn.Module, converter: _Converter, error: str, example_inputs: tuple | None
) -> nn.Module:
    """Convert a model torch.fx cannot trace in place, pairing only what is proven adjacent."""
    report = converter.report
    modules = list(root.named_modules())
    opaque = [p for p, m in modules if p and _is_opaque(m)]
    inner = [(p, m) for p, m in modules if p and not _inside(p, opaque)]
    norms = [p for p, m in inner if _norm_kind(m) == "norm"]
    recording = None
    if example_inputs is not None and not converter.sync:
        is_act = lambda m: module_activation(m) is not None  # noqa: E731
        recording = record_run(root, example_inputs, norms, is_act)
    known = _Untraced(root, recording)
    pairs: dict[str, tuple[str, FoundActivation]] = {}  # norm path -> its activation
    notes: dict[str, str] = {}  # norm path -> why converted alone
    lone: dict[str, str] = {}  # activation path -> why left alone
    for path in norms:
        act_path, notes[path] = ("", "") if converter.sync else known.follower(path)
        act = module_activation(root.get_submodule(act_path)) if act_path else None
        if act is not None and act.name is None:
            notes[path] = f"{act.why}; the activation is left alone"
            lone[act_path] = f"its input comes from {path}, converted alone: {notes[path]}"
        elif act is not None:
            pairs[path] = (act_path, act)
    fused = {act_path for act_path, _ in pairs.values()}
    unproven = sum(path not in pairs and _PASS_EXAMPLE_INPUTS in notes[path] for path in norms)
    report.method = "without torch.fx" + (" (a run recorded on example_inputs)" * bool(recording))
    report.add(
        "(model)",
        "a model torch.fx cannot trace",
        FALLBACK,
        _fallback_detail(error, recording, unproven),
    )
    plan: list[tuple[str, nn.Module]] = []
    for path, module in inner:
        kind = _norm_kind(module)
        if kind == "fused":
            plan.append((path, converter.replace_fused(path, module)))
        elif kind is not None:
            act_path, act = pairs.get(path, ("", None))
            plan.append((path, converter.replace(path, module, act, act_path, notes.get(path, ""))))
        elif isinstance(module, TORCH_BATCH_NORMS):
            why = batch_norm_form(module).why
            report.add(path, _describe_module(module), LEFT_ALONE, why)
        elif isinstance(module, torch.jit.ScriptModule):
            report.add(path, "ScriptModule", LEFT_ALONE, _SCRIPTED_CHILD)
        elif _other_norm(module):
            report.add(path, type(module).__name__, LEFT_ALONE, _OTHER_NORM_DETAIL)
        elif path in fused:
            plan.append((path, nn.Identity()))
        elif module_activation(module) is not None:
            why = lone.get(path, "no normalization is proven to run right before it")
            if converter.sync and not lone.get(path):
                why = "sync_batchnorm=True converts normalizations only"
            report.add(path, module_activation(module).label, LEFT_ALONE, why)
    for path, module in plan:
        _set_module(root, path, module)
    return root


def _is_opaque(module: nn.Module) -> bool:
    """Whether convert looks no further inside ``module``."""
    units = (NormAct, Normalization, ActivationStep, torch.jit.ScriptModule, *TORCH_BATCH_NORMS)
    return isinstance(module, units) or _other_norm(module)


def _fallback_detail(error: str, recording: Recording | None, unproven: int) -> str:
    proof = "the next child in an nn.Sequential"
    if recording is not None:
        proof = f"one its output goes to alone in the run on example_inputs, or {proof}"
    detail = (
        f"{error}. Without a graph, a BatchNorm is paired only with an activation module proven "
        f"to run right after it ({proof}); the others are converted alone and the model's own "
        f"classes are kept"
    )
    if unproven:
        detail += (
            f". {unproven} normalization(s) converted alone for want of proof: pass "
            f"example_inputs=(x,) to convert to pair them by recording a run"
        )
    return detail


_SCRIPTED_CHILD = (
    "a TorchScript module: convert cannot change what is inside it (convert the eager module, "
    "then script it)"
)


def _inside(path: str, prefixes: list[str]) -> bool:
    return any(path.startswith(p + ".") for p in prefixes)


# -- convolutions --------------------------------------------------------------------------------


def _convert_convs(root: nn.Module, s: Scheme, report: ConversionReport) -> None:
    """Give every 2-d conv the scheme's weight parametrization (see the module docstring)."""
    plan = []
    for path, conv in root.named_modules():
        if type(conv) is not nn.Conv2d and not isinstance(conv, WeightSpaceConv2d):
            continue
        if type(conv) is nn.Conv2d and s.weight is None and s.normalizer != "nf":
            continue  # a plain conv stays one
        new = s.conv(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            groups=conv.groups,
            bias=conv.bias is not None,
            dilation=conv.dilation,
        )
        if type(new) is type(conv) and getattr(new, "act_gain", 1) == getattr(conv, "act_gain", 1):
            continue
        with torch.no_grad():
            weight = conv.effective_weight() if isinstance(conv, WeightSpaceConv2d) else conv.weight
            new.weight.copy_(weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new.padding_mode = conv.padding_mode
        plan.append((path, _like(new, conv)))
        kind = "effective" if isinstance(conv, WeightSpaceConv2d) else "raw"
        detail = f"→ {type(new).__name__}; carried the {kind} weights"
        report.add(path, type(conv).__name__, CONV, detail)
    for path, new in plan:
        _set_module(root, path, new)


# -- the entry point -----------------------------------------------------------------------------


def convert(
    model: nn.Module,
    norm: str | Scheme = "gn8+pn",
    act: str | None = None,
    *,
    sync_batchnorm: bool = False,
    example_inputs: Tensor | tuple | list | None = None,
) -> nn.Module:
    """A copy of ``model`` with its BatchNorms (and the activations right after them) converted
    to the scheme ``norm``; see the module docstring for the rules.

    Args:
        model: any ``nn.Module``; it is not modified.
        norm: the target scheme spec ("gn8+pn", "ln+pn", "bn", "nf", ...).
        act: the φ of every converted activation step; None keeps each matched activation's
            own (and gives relu where none was matched, e.g. for EvoNorm sources).
        sync_batchnorm: make every normalization a :class:`torch.nn.SyncBatchNorm` (needs
            ``norm="bn"``, optionally with a weight modifier); activations are kept.
        example_inputs: an input tensor, or a tuple of the positional inputs, for a model
            torch.fx cannot trace: a copy of the model is run once on them (evaluation mode,
            no gradient) to record which activation module runs right after each BatchNorm.
            Unused when the model traces.

    Returns:
        the converted module (a :class:`torch.fx.GraphModule` when the model traces), with the
        :class:`ConversionReport` as its ``conversion_report`` attribute.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            f"convert cannot change a TorchScript module ({type(model).__name__}): its code is "
            f"compiled. Call normlab.convert on the eager model, then torch.jit.script the result"
        )
    inputs = _example_inputs(example_inputs)
    s = scheme(norm, act)
    if sync_batchnorm and (s.normalizer != "bn" or s.proxy or s.norm_batch_size is not None):
        raise ValueError(
            f"sync_batchnorm=True converts to torch.nn.SyncBatchNorm, so it needs norm='bn' "
            f"(with +ws, +sws, +wn or +cwn if wanted), got {s.spec!r}"
        )
    report = ConversionReport(s.spec)
    converter = _Converter(s, act, sync_batchnorm, report)
    try:
        result = _convert_model(model, converter, inputs)
    finally:
        forget_forms()
    _convert_convs(result, s, report)
    result.conversion_report = report
    level = logging.WARNING if report.by_action(FALLBACK) else logging.INFO
    logger.log(level, "%s", report)
    return name_modules(result)  # errors raised in a forward name the layer


def _convert_model(model: nn.Module, converter: _Converter, inputs: tuple | None) -> nn.Module:
    report = converter.report
    kind = _norm_kind(model)
    if kind == "fused":
        report.method = "single module"
        return converter.replace_fused("(model)", copy.deepcopy(model))
    if kind is not None:
        report.method = "single module"
        return converter.replace("(model)", model, None)
    copied = copy.deepcopy(model)
    for module in copied.modules():  # probed now: a probe cannot run while torch.fx traces
        batch_norm_form(module)
    try:
        gm, report.method = _trace(copied)
    except _UntraceableError as error:
        return _convert_untraced(copy.deepcopy(model), converter, str(error), inputs)
    result = _convert_graph(gm, converter)
    result.training = model.training
    scripted: list[str] = []
    for path, module in result.named_modules():
        if isinstance(module, torch.jit.ScriptModule) and not _inside(path, scripted):
            scripted.append(path)
            report.add(path, "ScriptModule", LEFT_ALONE, _SCRIPTED_CHILD)
    return result


def _example_inputs(example_inputs: object) -> tuple | None:
    if example_inputs is None or isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    raise TypeError(
        f"example_inputs must be a tensor or a tuple of the model's positional inputs, "
        f"got {type(example_inputs).__name__}"
    )


__all__ = ["ConversionEntry", "ConversionReport", "convert"]
