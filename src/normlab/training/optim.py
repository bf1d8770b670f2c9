r"""Optimizer, weight-decay groups and learning-rate schedule.

Weight decay follows the PN paper: it applies to the convolution and linear weights and to PN's
proxy parameters β̃, γ̃ (which it keeps near 0, so that the proxy stays close to the
normalized pre-activation), and not to the affine γ, β, biases, weight-space gains, EvoNorm's v
or TLU's τ.

The schedule is a per-optimizer-step multiplier of the base learning rate: linear warm-up over
the first ``warmup`` epochs, then constant, step decay (×``decay`` at each milestone, given as
fractions of the run) or cosine decay to 0 over the remaining steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..layers import ProxyNormAct

DECAYED_PROXY_PARAMETERS = ("proxy_beta", "proxy_gamma")


def _decays(module: nn.Module, name: str) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):
        return name == "weight"
    return isinstance(module, ProxyNormAct) and name in DECAYED_PROXY_PARAMETERS


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two optimizer parameter groups: ``"decay"`` (conv/linear weights, PN's β̃ and γ̃) with
    ``weight_decay``, and ``"no_decay"`` (everything else) with none. Shared parameters count once.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            (decay if _decays(module, name) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float, nesterov: bool
) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; valid choices: sgd, adamw")


def lr_multiplier(
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    milestones: tuple[float, ...] = (0.5, 0.75),
    decay: float = 0.1,
) -> Callable[[int], float]:
    """The factor of the base learning rate at optimizer step ``t`` (0-based)."""

    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            passed = sum(t >= round(m * total_steps) for m in milestones)
            return decay**passed
        progress = (t - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    milestones: tuple[float, ...],
    decay: float,
) -> torch.optim.lr_scheduler.LambdaLR:
    factor = lr_multiplier(schedule, total_steps, warmup_steps, milestones, decay)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
