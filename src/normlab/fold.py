r"""Fold a model's normalization and activation steps into plain layers, for inference.

In evaluation everything per-channel in a normalization-activation step is a constant: BatchNorm's
running statistics, the activation step's γ, β, and Proxy Normalization's scale a = (Var + ε)^(-1/2)
and shift c = -E·a (PN paper Eq. 7, computed once from γ, β, β̃, γ̃). ``normlab.fold(model)``
returns a copy of the model in evaluation mode that computes the same function with those
constants folded into standard layers:

* GN (LN, IN) + activation step → :class:`torch.nn.GroupNorm` holding the step's affine, then φ.
  With relu-PN, a·relu(γỹ + β) + c = max(γa·ỹ + (βa + c), c) (a > 0): GroupNorm with weight γa and
  bias βa + c, then a per-channel threshold max (:class:`ChannelMax`). With any other φ, PN's
  a·φ(u) + c stays after φ as a per-channel affine (:class:`ChannelAffine`).
* A normalizer that is a per-channel affine in evaluation (normlab's BatchNorm, ghost BN,
  VarianceNorm, EvoNorm-B0 without its nonlinearity, torch's BatchNorm1d/2d/3d with running
  statistics), composed with its own or its activation step's affine, is folded into the
  convolution right before it: W' = W·s, b' = b·s + t per output channel (weight-standardized
  convs contribute their effective weight). Then the tail: φ, the PN threshold max, or φ and
  PN's affine. Where no convolution feeds it alone, the affine stays as a :class:`ChannelAffine`.
* A weight-space conv (WS, SWS, WN, CWN) becomes an :class:`torch.nn.Conv2d` holding its
  effective weight; FRN + TLU becomes FRN holding γ, β, then the TLU's threshold max; the
  zoo's per-channel scale after a normalizer without shift (EfficientNet's projection under
  +pn) goes into that GroupNorm's affine or conv.
* EvoNorm-B0/S0 with their nonlinearity, a BatchNorm without running statistics and activation
  steps normlab does not know stay as they are; :class:`FoldReport` lists them.

"Right before" is read from the model's :mod:`torch.fx` graph: the normalization's input is the
conv's output and nothing else uses it, and neither module is called at another place. The
trace evaluates whatever depends on parameters alone (such as EfficientNet's squeeze-excite, which
reads PN's scale) into constants. The result is a :class:`torch.fx.GraphModule` of standard
modules (Conv2d, GroupNorm, torch activations, and the small per-channel modules here, which
export to ONNX as Max, Mul and Add). A model in training mode is folded as its evaluation-mode
function; the input model is never modified. Hooks on replaced modules are not carried over.

Where its input is a fresh intermediate that nothing else reads (a conv's, a normalizer's or a
φ's output), a per-channel part overwrites it when no gradient is recorded through it, and torch's
relu, silu, elu and leaky relu run in place (which autograd supports): inference allocates no
more than the unfolded model, and gradients through the folded model stay exact.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from ._checks import channel_view
from .layers import (
    TLU,
    Act,
    ActivationStep,
    BatchNorm,
    CWNConv2d,
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm,
    GainedAct,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    NormAct,
    Normalization,
    ProxyNormAct,
    ScaledWSConv2d,
    VarianceNorm,
    WNConv2d,
    WSConv2d,
    get_activation,
)
from .layers.activations import TORCH_ACTIVATIONS, Activation
from .models._common import ChannelScale

logger = logging.getLogger(__name__)

TORCH_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
GROUP_NORMS = (GroupNorm, LayerNorm, InstanceNorm)
WEIGHT_SPACE_CONVS = (WSConv2d, ScaledWSConv2d, WNConv2d, CWNConv2d)
PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


# -- the folded model's own modules ---------------------------------------------------------------


class _Pointwise(nn.Module):
    """A per-channel map that may overwrite its input: ``inplace`` is set by :func:`fold` where
    the input is a fresh intermediate that nothing else reads (a conv's, a normalizer's or a φ's
    output), and used only when no gradient is recorded through it (inference)."""

    inplace = False

    def overwrites(self, x: Tensor) -> bool:
        return self.inplace and not (torch.is_grad_enabled() and x.requires_grad)


class ChannelAffine(_Pointwise):
    """x·weight + bias with constant per-channel weight and bias (buffers), for (N, C, *)."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = channel_view(self.weight, x.dim()), channel_view(self.bias, x.dim())
        if self.overwrites(x):
            return x.mul_(weight).add_(bias)
        return x * weight + bias

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, inplace={self.inplace}"


class ChannelMax(_Pointwise):
    """max(x, c) with a constant per-channel threshold c (buffer): relu-PN once its affine is in
    the normalizer (z = max(u, c)), or a TLU."""

    def __init__(self, threshold: Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        threshold = channel_view(self.threshold, x.dim())
        if self.overwrites(x):
            return x.clamp_min_(threshold)
        return torch.maximum(x, threshold)

    def extra_repr(self) -> str:
        return f"{self.threshold.numel()}, inplace={self.inplace}"


class Gain(_Pointwise):
    """x·g with a constant scalar g: the gained activation of normalizer-free networks."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = float(gain)

    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(self.gain) if self.overwrites(x) else x * self.gain

    def extra_repr(self) -> str:
        return f"{self.gain:.6f}, inplace={self.inplace}"


# torch's φ modules with an in-place form that autograd differentiates
_IN_PLACE_PHI = (nn.ReLU, nn.SiLU, nn.ELU, nn.LeakyReLU)


def _chain(parts: list[nn.Module], fresh_input: bool) -> list[nn.Module]:
    """``parts`` to run in turn, each overwriting its input where that input is fresh: the
    output of the part before it, or the chain's input when ``fresh_input``."""
    for index, part in enumerate(parts):
        overwritable = isinstance(part, _Pointwise) or type(part) in _IN_PLACE_PHI
        if overwritable and (index or fresh_input):
            part.inplace = True
    return parts


class Phi(nn.Module):
    """A registered φ that torch has no module for (a user's own activation)."""

    def __init__(self, activation: Activation) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.activation.fn(x)

    def extra_repr(self) -> str:
        return self.activation.name


def phi_modules(activation: Activation) -> list[nn.Module]:
    """φ as modules: torch's own for normlab's built-in φ, none for the identity."""
    if not _is_builtin(activation):
        return [Phi(activation)]
    return [TORCH_ACTIVATIONS[activation.name]()] if activation.name != "identity" else []


def _is_builtin(activation: Activation) -> bool:
    """Whether ``activation`` is normlab's built-in φ of its name (or a copy of it: a deep copy
    of a model copies its activations' partials)."""
    if activation.name not in TORCH_ACTIVATIONS:
        return False
    ours, theirs = get_activation(activation.name).fn, activation.fn
    if isinstance(ours, functools.partial) and isinstance(theirs, functools.partial):
        return (ours.func, ours.args, ours.keywords) == (theirs.func, theirs.args, theirs.keywords)
    return ours is theirs


# -- the report -----------------------------------------------------------------------------------


@dataclass
class FoldReport:
    """What :func:`fold` folded (``folded``: path → what it became) and what it left as it was
    (``kept``: path → why)."""

    folded: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"fold: {len(self.folded)} folded, {len(self.kept)} kept"]
        lines += [f"  [folded] {path}: {what}" for path, what in self.folded.items()]
        lines += [f"  [kept] {path}: {why}" for path, why in self.kept.items()]
        return "\n".join(lines)


# -- what a module folds to -----------------------------------------------------------------------


@dataclass
class _Fold:
    """A module as ``tail(head(x))`` where ``head`` is a normalizer with the affine inside, or
    else ``tail(x·scale + shift)`` (scale, shift per channel, either may be None)."""

    head: nn.Module | None = None
    scale: Tensor | None = None
    shift: Tensor | None = None
    tail: list[nn.Module] = field(default_factory=list)

    @property
    def is_affine(self) -> bool:
        return self.head is None and (self.scale is not None or self.shift is not None)

    def modules(self) -> list[nn.Module]:
        """The parts, for an input that other modules may read too."""
        if self.head is not None:
            return _chain([self.head, *self.tail], fresh_input=False)
        if not self.is_affine:
            return _chain(list(self.tail), fresh_input=False)
        affine = ChannelAffine(*_full_affine(self.scale, self.shift))
        return _chain([affine, *self.tail], fresh_input=False)


def _full_affine(scale: Tensor | None, shift: Tensor | None) -> tuple[Tensor, Tensor]:
    if scale is None:
        return torch.ones_like(shift), shift
    return scale, torch.zeros_like(scale) if shift is None else shift


def _compose(
    scale: Tensor | None, shift: Tensor | None, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """(x·scale + shift)·weight + bias as one per-channel affine."""
    if weight is not None:
        scale = weight if scale is None else scale * weight
        shift = None if shift is None else shift * weight
    if bias is not None:
        shift = bias if shift is None else shift + bias
    return scale, shift


def _fold_step(step: ActivationStep) -> _Fold | None:
    """The activation step as (scale, shift, tail); None for a step normlab cannot fold."""
    phi = step.activation
    kind = type(step)
    if kind is Act:
        return _Fold(scale=step.gamma, shift=step.beta, tail=phi_modules(phi))
    if kind is ProxyNormAct:
        a, c = step.scale_shift()
        if phi.threshold_form:  # a·relu(γỹ + β) + c = max(γa·ỹ + βa + c, c), a > 0
            return _Fold(scale=step.gamma * a, shift=step.beta * a + c, tail=[ChannelMax(c)])
        return _Fold(
            scale=step.gamma, shift=step.beta, tail=[*phi_modules(phi), ChannelAffine(a, c)]
        )
    if kind is TLU:
        tail = [ChannelMax(step.tau)]
        if not phi.threshold_form:  # max(φ(u), τ)
            tail = [*phi_modules(phi), *tail]
        return _Fold(scale=step.gamma, shift=step.beta, tail=tail)
    if kind is GainedAct:
        return _Fold(tail=[*phi_modules(phi), Gain(step.gain)])
    return None


def _eval_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """(s, t) with norm(x) = x·s + t per channel in evaluation, the normalizer's own affine
    excluded; None when the normalizer is not such an affine."""
    kind = type(norm)
    if kind in (BatchNorm, *TORCH_BATCH_NORMS) and norm.running_mean is not None:
        scale = torch.rsqrt(norm.running_var + norm.eps)
        return scale, -norm.running_mean * scale
    plain_b0 = kind is EvoNormB0 and not norm.nonlinear
    if (kind is VarianceNorm or plain_b0) and norm.running_var is not None:
        scale = torch.rsqrt(norm.running_var + norm.eps)
        return scale, torch.zeros_like(scale)
    return None


def _fold_normalizer(norm: nn.Module, step: _Fold) -> _Fold | None:
    """The normalizer ``norm`` (with its own affine, if any) followed by ``step``'s affine and
    tail; None when ``norm`` does not fold."""
    weight, bias = (norm.weight, norm.bias) if getattr(norm, "affine", False) else (None, None)
    weight, bias = _compose(weight, bias, step.scale, step.shift)
    affine = _eval_affine(norm)
    if affine is not None:
        scale, shift = _compose(*affine, weight, bias)
        return _Fold(scale=scale, shift=shift, tail=step.tail)
    if type(norm) in GROUP_NORMS:
        return _Fold(head=_group_norm(norm, weight, bias), tail=step.tail)
    if type(norm) is FilterResponseNorm and not norm.affine:  # inside a NormAct, before a TLU
        return _Fold(head=_filter_response_norm(norm, weight, bias), tail=step.tail)
    return None


def _group_norm(norm: GroupNorm, weight: Tensor | None, bias: Tensor | None) -> nn.GroupNorm:
    affine = weight is not None or bias is not None
    reference = next(t for t in (weight, bias) if t is not None) if affine else None
    target = nn.GroupNorm(norm.num_groups, norm.num_channels, norm.eps, affine=affine)
    if affine:
        target = target.to(device=reference.device, dtype=reference.dtype)
        scale, shift = _full_affine(weight, bias)
        target.weight.data.copy_(scale)
        target.bias.data.copy_(shift)
    return target


def _filter_response_norm(
    norm: FilterResponseNorm, weight: Tensor | None, bias: Tensor | None
) -> FilterResponseNorm:
    target = FilterResponseNorm(norm.num_channels, norm.eps, True, norm.learnable_eps)
    reference = next(t for t in (weight, bias) if t is not None)
    target = target.to(device=reference.device, dtype=reference.dtype)
    scale, shift = _full_affine(weight, bias)
    target.weight.data.copy_(scale)
    target.bias.data.copy_(shift)
    if norm.learnable_eps:
        target.eps_offset.data.copy_(norm.eps_offset)
    return target


def _fold_unit(module: nn.Module) -> tuple[_Fold | None, str]:
    """What a normalization and/or activation module folds to, or None and why not."""
    if isinstance(module, NormAct):
        step = _fold_step(module.act)
        if step is None:
            return None, f"normlab cannot fold the activation step {type(module.act).__name__}"
        folded = _fold_normalizer(module.norm, step)
        if folded is None:
            return None, _why_kept(module.norm)
        return folded, ""
    if isinstance(module, ActivationStep):
        step = _fold_step(module)
        why = f"normlab cannot fold the activation step {type(module).__name__}"
        return step, "" if step is not None else why
    if type(module) is FilterResponseNorm:
        return None, "FRN normalizes by each sample's statistics; it is already one layer"
    folded = _fold_normalizer(module, _Fold())
    return folded, "" if folded is not None else _why_kept(module)


def _why_kept(norm: nn.Module) -> str:
    name = type(norm).__name__
    if getattr(norm, "nonlinear", False):
        return f"{name}'s built-in nonlinearity depends on each input's statistics"
    if getattr(norm, "track_running_stats", True) is False:
        return f"{name} without running statistics normalizes by batch statistics in evaluation"
    if isinstance(norm, EvoNormS0):
        return f"{name} normalizes by each sample's group statistics; it is already one layer"
    return f"normlab cannot fold {name}"


def _is_unit(module: nn.Module) -> bool:
    return isinstance(module, (NormAct, Normalization, ActivationStep, *TORCH_BATCH_NORMS))


def _is_conv(module: nn.Module) -> bool:
    return type(module) in PLAIN_CONVS or type(module) in WEIGHT_SPACE_CONVS


def _describe(modules: list[nn.Module]) -> str:
    return " → ".join(type(m).__name__ for m in modules) or "nothing (the identity)"


# -- convolutions ---------------------------------------------------------------------------------


def _plain_conv(
    conv: nn.Conv2d, scale: Tensor | None = None, shift: Tensor | None = None
) -> nn.Module:
    """A plain conv computing conv(x)·scale + shift per output channel."""
    weight = conv.effective_weight() if isinstance(conv, WEIGHT_SPACE_CONVS) else conv.weight
    bias = conv.bias
    if scale is not None:
        weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        bias = None if bias is None else bias * scale
    if shift is not None:
        bias = shift if bias is None else bias + shift
    cls = PLAIN_CONVS[weight.dim() - 3]
    target = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=bias is not None,
        padding_mode=conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    target.weight.data.copy_(weight)
    if bias is not None:
        target.bias.data.copy_(bias)
    return target


# -- the torch.fx pass ----------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """Normalizations, activation steps, convs and per-channel scales are leaves; with
    ``opaque``, so is every
    module without one inside. Parameters are read as their values, so that what depends on
    parameters alone is computed once, at trace time, into a constant."""

    def __init__(self, opaque: bool) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _is_unit(m) or _is_conv(m) or isinstance(m, ChannelScale):
            return True
        if super().is_leaf_module(m, module_qualified_name):
            return True
        return self.opaque and not any(_is_unit(sub) or _is_conv(sub) for sub in m.modules())

    def getattr(self, attr: str, attr_val: object, parameter_proxy_cache: dict) -> object:
        return attr_val


def _trace(root: nn.Module) -> fx.GraphModule:
    error = None
    for opaque in (False, True):
        tracer = _Tracer(opaque)
        try:
            with torch.no_grad():
                graph = tracer.trace(root)
        except Exception as caught:  # try the next tracer, then report the last failure
            error = caught
            continue
        return fx.GraphModule(tracer.root, graph, type(root).__name__)
    first_line = (str(error).strip().splitlines() or [""])[0]
    raise ValueError(
        f"fold needs a model that torch.fx can trace (to see which conv feeds which "
        f"normalization), but tracing {type(root).__name__} failed: "
        f"{type(error).__name__}: {first_line}"
    ) from error


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def _sole_conv_input(node: fx.Node, modules: dict, calls: Counter) -> fx.Node | None:
    """The conv node that feeds ``node`` alone, called at this one place, if there is one."""
    if len(node.args) != 1 or node.kwargs or calls[node.target] != 1:
        return None
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module":
        return None
    conv = modules[source.target]
    if not _is_conv(conv) or len(source.users) != 1 or calls[source.target] != 1:
        return None
    return source


def _place(gm: fx.GraphModule, node: fx.Node, parts: list[nn.Module]) -> None:
    """Put ``parts`` (in order) where the module called at ``node`` was."""
    if parts:
        _set_module(gm, str(node.target), parts[0] if len(parts) == 1 else nn.Sequential(*parts))
    else:
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)


def _fold_graph(gm: fx.GraphModule, report: FoldReport) -> None:
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if n.op == "call_module"]
    calls = Counter(n.target for n in nodes)
    done: set[str] = set()
    for node in nodes:
        module, path = modules[node.target], str(node.target)
        if path in done or not _is_unit(module):
            continue
        done.add(path)
        folded, why = _fold_unit(module)
        if folded is None:
            report.kept[path] = why
            continue
        conv = _sole_conv_input(node, modules, calls) if folded.is_affine else None
        if conv is not None:
            _set_module(
                gm,
                str(conv.target),
                _plain_conv(modules[conv.target], *_full_affine(folded.scale, folded.shift)),
            )
            done.add(str(conv.target))
            report.folded[f"{conv.target} + {path}"] = f"Conv → {_describe(folded.tail)}"
            _place(gm, node, _chain(folded.tail, fresh_input=True))
            continue
        parts = folded.modules()
        report.folded[path] = _describe(parts)
        _place(gm, node, parts)
    for node in nodes:
        path = str(node.target)
        if path not in done and type(modules[node.target]) in WEIGHT_SPACE_CONVS:
            done.add(path)
            _set_module(gm, path, _plain_conv(modules[node.target]))
            report.folded[path] = "Conv2d holding the effective weight"
    _absorb_channel_scales(gm, report)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()


def _absorb_channel_scales(gm: fx.GraphModule, report: FoldReport) -> None:
    """Fold each per-channel scale (the zoo's :class:`ChannelScale`, as EfficientNet's
    projection under +pn has) into the GroupNorm, conv or affine that alone feeds it."""
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]) is not ChannelScale:
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        if len(source.users) != 1 or calls[source.target] != 1 or calls[node.target] != 1:
            continue
        scaled = _scaled(modules[source.target], modules[node.target].weight.detach())
        if scaled is None:
            continue
        _set_module(gm, str(source.target), scaled)
        node.replace_all_uses_with(source)
        gm.graph.erase_node(node)
        report.folded[str(node.target)] = f"ChannelScale folded into {source.target}"


def _scaled(module: nn.Module, scale: Tensor) -> nn.Module | None:
    """``module`` followed by x·scale per channel, as one module of its kind (or None)."""
    if type(module) is nn.GroupNorm:
        weight = scale if module.weight is None else module.weight * scale
        bias = None if module.bias is None else module.bias * scale
        target = nn.GroupNorm(module.num_groups, module.num_channels, module.eps)
        target = target.to(device=weight.device, dtype=weight.dtype)
        target.weight.data.copy_(weight)
        target.bias.data.copy_(torch.zeros_like(weight) if bias is None else bias)
        return target
    if type(module) in PLAIN_CONVS:
        return _plain_conv(module, scale, None)
    if type(module) is ChannelAffine:
        target = ChannelAffine(module.weight * scale, module.bias * scale)
        target.inplace = module.inplace
        return target
    return None


# -- the entry point ------------------------------------------------------------------------------


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference, in evaluation mode, with its normalization and
    activation steps folded into standard layers (see the module docstring).

    The copy computes ``model.eval()``'s function (to rounding) whatever mode ``model`` is in;
    ``model`` is not modified. The copy is a :class:`torch.fx.GraphModule` (or, when ``model``
    is itself one normalization or activation module, the module it folds to) carrying a
    :class:`FoldReport` as ``fold_report``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: torch.fx cannot trace ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold expects an nn.Module, got {type(model).__name__}")
    source = copy.deepcopy(model).eval()
    report = FoldReport()
    if _is_unit(source) or _is_conv(source):
        result = _fold_single(source, report)
    else:
        result = _trace(source)
        _fold_graph(result, report)
    result.eval()
    result.fold_report = report
    logger.info("%s", report)
    return result


def _fold_single(module: nn.Module, report: FoldReport) -> nn.Module:
    if _is_conv(module):
        return _plain_conv(module)
    folded, why = _fold_unit(module)
    if folded is None:
        report.kept["(model)"] = why
        return module
    parts = folded.modules()
    report.folded["(model)"] = _describe(parts)
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


__all__ = ["ChannelAffine", "ChannelMax", "FoldReport", "Gain", "Phi", "fold"]
