r"""Gradient norms through depth and their exponential growth (Beyond BatchNorm, Section 3.2 and
Fig. 8: at initialization, gradient norms explode with depth in BN networks and stay flat with
batch-independent normalizers).

For each probed layer, ‖∂L/∂(output)‖ is read by a tensor hook on the layer's output (a backward
hook that, unlike a module backward hook, tolerates in-place operations downstream). The
backward pass asks only for the gradient of the inputs (or, for non-floating inputs, of the
parameters) with ``torch.autograd.grad``: no parameter's ``.grad`` is touched.

The loss is the caller's choice:

* ``"readout"`` (default): a fixed random linear readout of the model's output,
  L = (1/N) Σ_n ⟨w, out_n⟩ with w ~ N(0, I/D) drawn once from ``seed``, D the per-input output
  size: it needs no labels and works for any output shape;
* ``"cross_entropy"``: cross-entropy of logits (N, K) against the batch's targets: integer
  class indices (N,) or (N, 1), or one-hot or probability rows (N, K) (floating, or integer
  one-hot); against labels drawn uniformly from ``seed`` when the data has none. Any other
  target (float indices, indices out of [0, K), rows that are not distributions, a batch size
  or class count unlike the logits') raises a ValueError saying what was expected;
* any callable ``loss(output, targets_or_None) -> scalar tensor``.

The growth fit is a least-squares line through log ‖∂L/∂(output_l)‖ vs the depth index l = 0, 1,
... (execution order): ``rate`` is its slope, so gradients that explode toward the input show
as a negative rate, ``exp(-rate)`` being the per-layer growth factor from output to input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_reals, unknown
from .fit import linear_fit
from .probes import (
    Data,
    Mode,
    Selector,
    Where,
    check_finite,
    check_where,
    iter_batches,
    model_mode,
    model_place,
    resolve,
    to_model,
)

LossFn = Callable[[Tensor, Tensor | None], Tensor]
LOSSES = ("readout", "cross_entropy")


@dataclass(frozen=True)
class GrowthFit:
    """log(norm) ≈ rate·depth + intercept, with the fit's R²."""

    rate: float
    intercept: float
    r2: float

    @property
    def factor(self) -> float:
        """exp(rate): the norm's growth factor per layer of depth."""
        return math.exp(self.rate)


def fit_growth(norms: Sequence[float], depths: Sequence[float] | None = None) -> GrowthFit:
    """Fit log(norm) = rate·depth + intercept by least squares (depths default to 0, 1, ...)."""
    values = check_reals("norms", norms)
    for index, value in enumerate(values):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"an exponential growth fit needs positive finite norms, got {value} at "
                f"index {index}"
            )
    depths = list(range(len(values))) if depths is None else check_reals("depths", depths)
    fit = linear_fit(depths, [math.log(v) for v in values])
    return GrowthFit(fit.slope, fit.intercept, fit.r2)


@dataclass(frozen=True)
class GradientProfile:
    """Per-layer gradient norms (root mean square over batches of ‖∂L/∂output‖) in execution
    order, and their growth fit (None with fewer than 2 layers or a zero norm)."""

    names: list[str]
    norms: list[float]
    fit: GrowthFit | None


def gradient_profile(
    model: nn.Module,
    data: Data,
    where: Where = "post",
    select: Selector | None = None,
    loss: str | LossFn = "readout",
    mode: Mode = None,
    seed: int = 0,
) -> GradientProfile:
    """‖∂L/∂(output)‖ of every probed layer (default: activation-step outputs), in execution
    order, with the exponential growth fit. ``where``/``select``/``mode`` as for
    :func:`~normlab.diagnostics.power_profile` (here with gradients enabled); ``loss`` as in
    the module docstring."""
    check_where(where)
    seed = check_int("seed", seed, None)
    loss_fn = _loss(loss, seed)
    modules = resolve(model, where, select)
    squares: dict[str, float] = {}
    order: list[str] = []
    state = {"batch": 0}

    def record(name: str) -> Callable[[Tensor], None]:
        def hook(grad: Tensor) -> None:
            check_finite(grad, name, state["batch"], "gradient")
            squares[name] = squares.get(name, 0.0) + float(grad.double().square().sum())

        return hook

    def forward_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            t = args[0] if where == "pre" and args else output
            if not isinstance(t, Tensor):
                raise ValueError(f"layer {name!r} has no tensor {where} activation to probe")
            check_finite(t, name, state["batch"], "input" if where == "pre" else "output")
            if name not in order:
                order.append(name)
            if t.requires_grad:
                t.register_hook(record(name))

        return hook

    handles = [m.register_forward_hook(forward_hook(n)) for n, m in modules]
    try:
        batches = _run(model, data, loss_fn, mode, state)
    finally:
        for handle in handles:
            handle.remove()
    norms = [math.sqrt(squares.get(name, 0.0) / batches) for name in order]
    fit = fit_growth(norms) if len(norms) >= 2 and all(n > 0 for n in norms) else None
    return GradientProfile(order, norms, fit)


def _run(model: nn.Module, data: Data, loss_fn: LossFn, mode: Mode, state: dict) -> int:
    place, batches = model_place(model), 0
    with model_mode(model, mode), torch.enable_grad():
        for index, (x, y) in enumerate(iter_batches(data)):
            state["batch"] = index
            x = to_model(x, place).detach()
            if x.is_floating_point():
                x.requires_grad_(True)
            value = loss_fn(model(x), None if y is None else y.to(x.device))
            wrt = [x] if x.requires_grad else [p for p in model.parameters() if p.requires_grad]
            if not value.requires_grad or not wrt:
                raise ValueError(
                    "the loss does not depend on anything that requires a gradient: the model "
                    "output is detached from its input and parameters"
                )
            torch.autograd.grad(value, wrt, allow_unused=True)
            batches += 1
    return batches


def _loss(loss: str | LossFn, seed: int) -> LossFn:
    if callable(loss):
        return loss
    if loss == "readout":
        return _Readout(seed)
    if loss == "cross_entropy":
        return _RandomLabelCrossEntropy(seed)
    raise unknown("loss", loss, LOSSES)


class _Readout:
    """L = mean_n ⟨w, out_n⟩, w ~ N(0, I/D) fixed by the seed."""

    def __init__(self, seed: int) -> None:
        self.seed, self.weight = seed, None

    def __call__(self, output: Tensor, target: Tensor | None) -> Tensor:
        flat = output.reshape(output.shape[0], -1)
        if self.weight is None or self.weight.shape[0] != flat.shape[1]:
            generator = torch.Generator().manual_seed(self.seed)
            self.weight = torch.randn(flat.shape[1], generator=generator, dtype=torch.float64)
            self.weight /= math.sqrt(flat.shape[1])
        return (flat @ self.weight.to(flat)).mean()


class _RandomLabelCrossEntropy:
    """Cross-entropy of logits (N, K) against the batch's targets or seeded random labels."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, output: Tensor, target: Tensor | None) -> Tensor:
        if output.dim() != 2:
            raise ValueError(
                f"loss='cross_entropy' needs logits of shape (N, K), got the model output shape "
                f"{tuple(output.shape)}; use loss='readout' for feature outputs"
            )
        if target is None:
            target = torch.randint(output.shape[1], output.shape[:1], generator=self.generator)
            return F.cross_entropy(output, target.to(output.device))
        target = cross_entropy_target(target, output.shape).to(output.device)
        return F.cross_entropy(
            output, target.to(output.dtype) if target.is_floating_point() else target
        )


def cross_entropy_target(target: Tensor, logits: torch.Size) -> Tensor:
    """``target`` as F.cross_entropy takes it for logits of shape (N, K): class indices (N,)
    (from (N,) or (N, 1) integers), or probability rows (N, K) (from floating one-hot or
    probability rows; integer one-hot rows become indices). Raises a ValueError otherwise."""
    n, classes = logits
    forms = (
        f"expected class indices of shape ({n},) or ({n}, 1) in [0, {classes}), or one-hot or "
        f"probability rows of shape ({n}, {classes})"
    )
    shape, dtype = tuple(target.shape), str(target.dtype).removeprefix("torch.")
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"loss='cross_entropy': targets of dtype {dtype}; {forms}")
    if target.dim() == 0 or target.shape[0] != n:
        raise ValueError(f"loss='cross_entropy': targets of shape {shape} for {n} inputs; {forms}")
    if target.dim() == 2 and target.shape[1] == classes and classes > 1:
        rows = target.double()
        if (rows < 0).any() or not torch.allclose(
            rows.sum(1), torch.ones(n, dtype=torch.float64), atol=1e-3
        ):
            raise ValueError(
                f"loss='cross_entropy': targets of shape {shape} are read as one-hot or "
                f"probability rows, but some row is negative or does not sum to 1; {forms}"
            )
        if target.is_floating_point():
            return target
        return target.argmax(1)  # integer one-hot rows
    if target.dim() == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.dim() != 1:
        raise ValueError(f"loss='cross_entropy': targets of shape {shape}; {forms}")
    if target.is_floating_point():
        raise ValueError(
            f"loss='cross_entropy': class indices must be integers, got targets of dtype "
            f"{dtype} and shape {shape} (cast them with y.long() if they hold whole numbers); "
            f"{forms}"
        )
    if n and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ValueError(
            f"loss='cross_entropy': class indices range over [{int(target.min())}, "
            f"{int(target.max())}], outside [0, {classes}) for logits of {classes} classes; "
            f"{forms}"
        )
    return target.long()
