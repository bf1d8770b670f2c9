r"""Regularizers of the training loop: soft targets (label smoothing, mixup, cutmix), EMA of the
weights and adaptive gradient clipping.

* Label smoothing (Szegedy et al. 2016): targets (1 − ε)·onehot + ε/K.
* Mixup (Zhang et al. 2018): x̃ = λx + (1 − λ)x_π, ỹ = λy + (1 − λ)y_π, λ ~ Beta(α, α), π a
  permutation of the batch.
* CutMix (Yun et al. 2019): a box of area (1 − λ) of x_π pasted into x, ỹ mixed by the box's
  actual area. With both mixup and cutmix on, each batch uses one of them with probability 1/2.
* EMA of the weights (and buffers): :class:`torch.optim.swa_utils.AveragedModel` with torch's
  EMA rule, evaluated beside the model.
* AGC (Brock et al. 2021b): each output unit's gradient G_i is rescaled to at most
  λ·max(‖W_i‖, 10⁻³)·G_i/‖G_i‖, on every parameter but the classifier's.

Randomness comes from an explicit generator, so that a resumed run draws the same λ and π.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

AGC_EPS = 1e-3


def soft_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """One-hot targets with label smoothing ε: (1 − ε)·onehot + ε/K."""
    onehot = F.one_hot(labels, num_classes).to(torch.float32)
    return onehot * (1.0 - smoothing) + smoothing / num_classes


def mix_batch(
    x: Tensor,
    targets: Tensor,
    mixup: float,
    cutmix: float,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """(x̃, ỹ) with mixup (α = ``mixup``) or cutmix (α = ``cutmix``); unchanged when both are 0."""
    use = [name for name, alpha in (("mixup", mixup), ("cutmix", cutmix)) if alpha > 0]
    if not use or x.shape[0] < 2:
        return x, targets
    kind = use[0] if len(use) == 1 else use[int(rng.integers(2))]
    alpha = mixup if kind == "mixup" else cutmix
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(x.shape[0])).to(x.device)
    if kind == "mixup":
        mixed = x * lam + x[perm] * (1.0 - lam)
    else:
        mixed, lam = _paste_box(x, x[perm], lam, rng)
    return mixed, targets * lam + targets[perm] * (1.0 - lam)


def _paste_box(
    x: Tensor, other: Tensor, lam: float, rng: np.random.Generator
) -> tuple[Tensor, float]:
    """x with a box of ``other`` of area ≈ (1 − λ)·H·W at a uniform centre (clipped); the λ of
    the box actually pasted."""
    height, width = x.shape[-2:]
    ratio = np.sqrt(1.0 - lam)
    box_h, box_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = np.clip([cy - box_h // 2, cy + box_h // 2], 0, height)
    left, right = np.clip([cx - box_w // 2, cx + box_w // 2], 0, width)
    mixed = x.clone()
    mixed[..., top:bottom, left:right] = other[..., top:bottom, left:right]
    return mixed, 1.0 - float((bottom - top) * (right - left)) / (height * width)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of −Σ_k ỹ_k log softmax(logits)_k."""
    return F.cross_entropy(logits, targets.to(logits.dtype))


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """torch's averaged copy of ``model`` (weights and buffers) with decay ``decay``."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def classifier_parameters(model: nn.Module) -> set[int]:
    """ids of the parameters of the model's last linear layer (its classifier)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return {id(p) for p in linears[-1].parameters()} if linears else set()


def _unitwise_norm(t: Tensor) -> Tensor:
    """‖·‖ per output unit: over every dim but the first (the whole tensor for vectors)."""
    if t.dim() <= 1:
        return torch.linalg.vector_norm(t).expand_as(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())), keepdim=True)


@torch.no_grad()
def adaptive_gradient_clip(parameters: Iterable[nn.Parameter], clip: float) -> None:
    """AGC in place: G_i ← G_i·min(1, λ·max(‖W_i‖, ε)/‖G_i‖) per output unit i."""
    for param in parameters:
        if param.grad is None:
            continue
        limit = _unitwise_norm(param).clamp_min(AGC_EPS) * clip
        norm = _unitwise_norm(param.grad).clamp_min(1e-6)
        param.grad.mul_(torch.where(norm > limit, limit / norm, torch.ones_like(norm)))
