r"""Proxy Normalization of the activation step (Labatie et al. 2021, Eq. 7).

    z = (φ(γ·ỹ + β) - E[φ(γ·Y + β)]) / sqrt(Var[φ(γ·Y + β)] + ε),   Y_c ~ N(β̃_c, (1 + γ̃_c)²)

per channel c, with γ = 1, β = 0, β̃ = γ̃ = 0 at initialisation and ε = 0.03 (the reference
implementation's value). The proxy moments are exact (see :mod:`normlab.layers.proxy_moments`)
and differentiable, so γ, β, β̃ and γ̃ all receive gradients through them.

How it stays cheap. PN is an affine map of φ(γỹ + β) with per-channel scale a = (Var + ε)^(-1/2)
and shift c = -E·a, computed on C-sized vectors. For relu, a > 0 and positive homogeneity give
a·relu(γỹ + β) + c = max(aγ·ỹ + (aβ + c), c): the rescaled affine folds into the normalizer's
native kernel and the whole step becomes one max against a per-channel threshold, whose
backward saves only the output (as relu does): GN (LN, IN) + relu runs as one node with the
normalizer. After any other normalizer, and for every φ with C++ moments (relu, and the φ of
the trapezoid), the normalizer applies (γ, β) and one C++ node computes the moments and
φ(u)·a + c (:func:`~.tails.proxy_norm_step`); elsewhere the moments are computed in Python and
φ(u)·a + c runs as one node (:func:`~.tails.scale_shift_act`, C++ on CPU) that saves u or the
output, as φ alone does, and recomputes φ and φ' in backward.

Under a tracer (torch.compile, torch.export, ONNX export, torch.jit.trace; see
:func:`~normlab._checks.tracing`) the same equations run as standard differentiable ops: no
hand-written node, no in-place tail, no finite check (it reads data back) and no plan cache.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .._checks import (
    NonFiniteError,
    check_eps,
    check_positive_int,
    finite_checks_enabled,
    tracing,
    unknown,
)
from .act import ActivationStep, Plan
from .activations import Activation
from .base import Normalization
from .compiled import kernels
from .group_norm import GroupNorm
from .group_norm_pn import group_norm_threshold_pn
from .proxy_moments import METHODS, REFERENCE_POINTS, MomentMethod, proxy_moments
from .tails import NonFiniteShiftError, channel_max, proxy_norm_step, scale_shift_act
from .threshold_fold import ThresholdFold, fold, threshold_is_finite

DEFAULT_EPS = 0.03


class ProxyNormAct(ActivationStep):
    r"""Proxy-normalized activation step (PN paper Eq. 7) for an input normalized by the
    preceding normalization step (LN, GN, IN, BN, ...: Section 5 of the paper requires one).

    Args:
        num_channels: C.
        act: φ, a registered activation name.
        eps: ε of Eq. 7, in (0, 1] (see :func:`~normlab._checks.check_eps`).
        method: "exact" proxy moments (default) or the reference implementation's "reference"
            estimator over ``points`` midpoint quantiles.
        points: K of the reference estimator.

    Parameters: ``gamma`` (γ), ``beta`` (β), ``proxy_beta`` (β̃) and ``proxy_gamma`` (γ̃).
    """

    def __init__(
        self,
        num_channels: int,
        act: str | Activation = "relu",
        eps: float = DEFAULT_EPS,
        method: MomentMethod = "exact",
        points: int = REFERENCE_POINTS,
    ) -> None:
        super().__init__(num_channels, act)
        eps = check_eps(eps)
        if method not in METHODS:
            raise unknown("proxy-moment method", method, METHODS)
        points = check_positive_int("points", points)
        if points < 2:
            raise ValueError(
                f"points must be an integer >= 2, got {points}: the reference estimator's "
                f"variance of a single quantile is 0"
            )
        self.eps, self.method, self.points = eps, method, points
        self.gamma = nn.Parameter(torch.ones(num_channels))
        self.beta = nn.Parameter(torch.zeros(num_channels))
        self.proxy_beta = nn.Parameter(torch.zeros(num_channels))
        self.proxy_gamma = nn.Parameter(torch.zeros(num_channels))
        self._plan_cache: tuple[tuple, Plan] | None = None

    def proxy_moments(self) -> tuple[Tensor, Tensor]:
        """E[φ(γY + β)] and Var[φ(γY + β)] per channel, Y ~ N(β̃, (1 + γ̃)²)."""
        return proxy_moments(
            self.activation,
            self.gamma,
            self.beta,
            self.proxy_beta,
            1.0 + self.proxy_gamma,
            method=self.method,
            points=self.points,
        )

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel a = (Var + ε)^(-1/2) and c = -E·a, so that z = φ(γỹ + β)·a + c."""
        mean, var = self.proxy_moments()
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        self._check_finite(shift)
        return scale.to(self.gamma.dtype), shift.to(self.gamma.dtype)

    def plan(self) -> Plan:
        """The folded affine and tail; cached while no gradient is recorded and no parameter
        has changed (inference and diagnostics pay for the proxy moments once), never while
        tracing (whose tensors may be fake, and whose graph must compute the plan)."""
        if torch.is_grad_enabled() or tracing():
            return self._build_plan()
        key = (tuple(p._version for p in self.parameters()), self.gamma.device, self.gamma.dtype)
        if self._plan_cache is None or self._plan_cache[0] != key:
            self._plan_cache = (key, self._build_plan())
        return self._plan_cache[1]

    def after(self, norm: Normalization, x: Tensor) -> Tensor:
        """PN(norm(x)); GN (LN, IN) then relu-PN runs as one autograd node while training."""
        if not self._fuses_with_group_norm(norm, x):
            return super().after(norm, x)
        norm.check_input(x, self.gamma)
        params = (self.gamma, self.beta, self.proxy_beta, self.proxy_gamma)
        rule = self.activation.moment_rule
        check = finite_checks_enabled()
        try:
            return group_norm_threshold_pn(
                x, params, norm.num_groups, norm.eps, self.eps, rule, check
            )
        except NonFiniteShiftError:
            raise self._non_finite_error() from None

    def _fuses_with_group_norm(self, norm: Normalization, x: Tensor) -> bool:
        """Whether :func:`group_norm_threshold_pn` computes this step exactly: a group
        normalizer, relu with exact moments, gradients recorded (else the cached plan is
        cheaper), and no autocast or dtype mismatch for F.group_norm to resolve."""
        return (
            isinstance(norm, GroupNorm)
            and self._folds_into_threshold
            and torch.is_grad_enabled()
            and x.dtype == self.gamma.dtype
            and not torch.is_autocast_enabled(x.device.type)
            and not self._channels_last_on_cpu_kernels(x)
        )

    @staticmethod
    def _channels_last_on_cpu_kernels(x: Tensor) -> bool:
        """A channels-last CPU input where the C++ tails are available: native GroupNorm keeps
        the layout and :func:`~.tails.proxy_norm_step` reads it in place, while the GN + relu
        node (:func:`group_norm_threshold_pn`) would run its Python version."""
        return (
            x.device.type == "cpu"
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
            and kernels("normlab_tails") is not None
        )

    @property
    def _folds_into_threshold(self) -> bool:
        """relu with exact closed-form moments: the whole step is :mod:`~.threshold_fold`'s."""
        act = self.activation
        return act.threshold_form and act.moment_rule is not None and self.method == "exact"

    def _build_plan(self) -> Plan:
        if self._steps_in_one_node:
            return Plan(self.gamma, self.beta, self._step)
        if self._folds_into_threshold:
            params = (self.gamma, self.beta, self.proxy_beta, self.proxy_gamma)
            rule = self.activation.moment_rule
            if tracing():  # standard ops: the bias carries c, the max has the true partials
                (weight, bias, shift), _ = fold(*params, self.eps, rule)
                return Plan(weight, bias, functools.partial(channel_max, c=shift))
            weight, bias, shift = ThresholdFold.apply(*params, self.eps, rule)
            self._check_finite(shift)
            return Plan(weight, bias, functools.partial(_shifted_max, shift=shift))
        scale, shift = self.scale_shift()
        if self.activation.threshold_form:
            bias = torch.addcmul(shift.detach(), self.beta, scale)
            return Plan(self.gamma * scale, bias, functools.partial(_shifted_max, shift=shift))
        tail = functools.partial(scale_shift_act, scale=scale, shift=shift, act=self.activation)
        return Plan(self.gamma, self.beta, tail)

    @property
    def _steps_in_one_node(self) -> bool:
        """Whether to try :func:`~.tails.proxy_norm_step` (moments and tail as one C++ node):
        exact moments, gradients recorded (else the cached plan is cheaper), no tracer, CPU."""
        return (
            self.method == "exact"
            and torch.is_grad_enabled()
            and not tracing()
            and self.gamma.device.type == "cpu"
        )

    def _step(self, u: Tensor) -> Tensor:
        """The tail of the one-node plan, u = γỹ + β: :func:`~.tails.proxy_norm_step`, or where
        it does not apply the moments in Python and :func:`~.tails.scale_shift_act`."""
        return self._step_with_scale(u)[0]

    def _step_with_scale(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`_step`'s z with the scale a it applied."""
        params = (self.gamma, self.beta, self.proxy_beta, self.proxy_gamma)
        try:
            check = finite_checks_enabled()
            out = proxy_norm_step(u, params, self.activation, self.eps, check, inplace=True)
        except NonFiniteShiftError:
            raise self._non_finite_error() from None
        if out is not None:
            return out
        scale, shift = self.scale_shift()
        return scale_shift_act(u, scale, shift, self.activation), scale

    def after_with_scale(self, norm: Normalization, x: Tensor) -> tuple[Tensor, Tensor]:
        """(PN(norm(x)), a) with a = (Var + ε)^(-1/2) the per-channel scale of Eq. 7, both
        differentiable, for models that read a (EfficientNet's squeeze-excite): where the
        moments and the tail run as one node, a is that node's, else :meth:`scale_shift`'s."""
        if self._steps_in_one_node and not self._fuses_with_group_norm(norm, x):
            return self._step_with_scale(norm.normalize(x, self.gamma, self.beta))
        return self.after(norm, x), self.scale_shift()[0]

    def _check_finite(self, shift: Tensor) -> None:
        """Raise, naming the parameters, when checks are on and c is not finite."""
        if finite_checks_enabled() and not threshold_is_finite(shift):
            raise self._non_finite_error()

    def _non_finite_error(self) -> NonFiniteError:
        bad = [
            f"{name} ({int((~torch.isfinite(p)).sum())} of {p.numel()} entries)"
            for name, p in self.named_parameters(recurse=False)
            if not bool(torch.isfinite(p).all())
        ]
        detail = ", ".join(bad) if bad else "finite parameters whose proxy moments overflow"
        return NonFiniteError(
            f"ProxyNormAct({self.num_channels}) has non-finite parameters: {detail}; its proxy "
            f"moments are undefined. Training has likely diverged (lower the learning rate), or "
            f"the parameters were loaded or set wrongly."
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}, method={self.method}"


def _shifted_max(u: Tensor, shift: Tensor) -> Tensor:
    return channel_max(u, shift, shift=True, inplace=True)
