r"""The PN paper's theorems as computable statements.

* Theorem 1 (LN collapses channels): in the random net of Definition 1 with LN, the power of
  the normalized pre-activations ỹ^l that is not channel-wise constant shrinks geometrically
  with depth, (P(ỹ^l) − P1(ỹ^l)) / P(ỹ^l) ≤ ρ^(l−1) with ρ = γ²/(γ² + β²) (see
  :func:`theorem1_bound` for the exact quantities).
* Theorem 2 (IN removes the variability of instance statistics): the output ỹ of IN has, in
  every channel, μ_{x,c} = 0 and σ_{x,c} = 1 for every input, so P1 = P2 = P4 = 0 and P3 = 1.
* Theorem 3 (PN keeps channels normalized): if ỹ_c ~ N(0, 1) and the proxy matches it
  (β̃ = γ̃ = 0), PN's output z_c has mean 0 and variance Var_c / (Var_c + ε), with
  Var_c = Var[φ(γ_c·Y + β_c)]: each channel is centred and of unit scale up to ε.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._checks import check_device, check_int, check_number
from ..layers import ActivationStep, ProxyNormAct, get_activation, proxy_moments
from ..layers.gaussian import trapezoid_nodes
from .power import PowerDecomposition

# -- Theorem 1 ------------------------------------------------------------------------------


def activation_affines(model: nn.Module) -> list[tuple[str, Tensor, Tensor]]:
    """(name, γ, β) of every activation step of ``model`` that holds a per-channel affine: Act,
    ProxyNormAct, TLU, and the ``.act`` of every NormAct (detached copies)."""
    affines = []
    for name, module in model.named_modules():
        gamma, beta = getattr(module, "gamma", None), getattr(module, "beta", None)
        if not isinstance(module, ActivationStep):
            continue
        if isinstance(gamma, Tensor) and isinstance(beta, Tensor):
            affines.append((name, gamma.detach().clone(), beta.detach().clone()))
    return affines


def theorem1_rho(model: nn.Module | Sequence[tuple[str, Tensor, Tensor]]) -> float:
    """ρ = γ_rms² / (γ_rms² + β_rms²), the root mean squares taken over every channel of every
    activation step of ``model`` (or of given (name, γ, β) triples)."""
    affines = activation_affines(model) if isinstance(model, nn.Module) else list(model)
    if not affines:
        found = (
            sorted({type(m).__name__ for m in model.modules()})
            if isinstance(model, nn.Module)
            else []
        )
        raise ValueError(
            "Theorem 1's ρ needs activation steps with per-channel γ and β (Act, ProxyNormAct, "
            "a NormAct's .act); found none" + (f" among {', '.join(found)}" if found else "")
        )
    gamma2 = float(torch.cat([g.double().flatten().square() for _, g, _ in affines]).mean())
    beta2 = float(torch.cat([b.double().flatten().square() for _, _, b in affines]).mean())
    if not gamma2 + beta2 > 0:
        raise ValueError("Theorem 1's ρ is undefined when every γ and β is 0")
    return gamma2 / (gamma2 + beta2)


MAX_DEPTH = 100_000
"""The deepest net :func:`theorem1_bound` lists (a list of one float per layer)."""
MAX_THEOREM3_VALUES = 50_000_000
"""The most input values (samples × channels) :func:`check_theorem3` draws: 400 MB in float64."""


def theorem1_bound(rho: float, depth: int) -> list[float]:
    r"""ρ^(l−1) for the layers l = 1, ..., ``depth``.

    Theorem 1 of the PN paper (random net of Definition 1 with LN, at initialization): at layer
    l, the fraction of the power of the normalized pre-activation ỹ^l = LN(x^l) (the output of
    the normalization step, before the activation step's γ, β) that is *not* channel-wise
    constant, (P(ỹ^l) − P1(ỹ^l)) / P(ỹ^l), is at most ρ^(l−1), with P and P1 averaged over the
    channels (Σ_c P_c, Σ_c P1_c) and ρ = γ²/(γ² + β²) from the activation steps' affine. So
    the collapsed fraction P1/P is at least 1 − ρ^(l−1). The statement is in the limit of wide
    layers; at finite width, a measured fraction may exceed the bound by sampling noise.
    """
    rho = check_number("rho (ρ = γ²/(γ² + β²))", rho, 0.0, 1.0)
    depth = check_int("depth", depth, 0, MAX_DEPTH)
    return [rho ** (layer - 1) for layer in range(1, depth + 1)]


@dataclass(frozen=True)
class Theorem1Check:
    """Measured (P − P1)/P of each LN output against ρ^(l−1) (+ ``tolerance``)."""

    names: list[str]
    rho: float
    measured: list[float]
    bound: list[float]
    tolerance: float

    @property
    def excess(self) -> list[float]:
        """measured − bound per layer (≤ tolerance where the theorem holds)."""
        return [m - b for m, b in zip(self.measured, self.bound, strict=True)]

    @property
    def passed(self) -> bool:
        return all(e <= self.tolerance for e in self.excess)

    @property
    def worst_layer(self) -> str:
        excess = self.excess
        return self.names[excess.index(max(excess))]


def check_theorem1(
    profile: Sequence[tuple[str, PowerDecomposition]],
    rho: float,
    tolerance: float = 0.02,
) -> Theorem1Check:
    """Compare a power profile of an LN net's normalization steps (layer l = 1, 2, ... in
    profile order, e.g. :func:`~normlab.diagnostics.power_profile` with ``where="norm"``) with
    Theorem 1's bound."""
    tolerance = check_number("tolerance", tolerance, 0.0)
    if not profile:
        raise ValueError("check_theorem1 needs a non-empty power profile")
    names = [name for name, _ in profile]
    measured = [1.0 - d.fractions()["p1"] for _, d in profile]
    return Theorem1Check(names, rho, measured, theorem1_bound(rho, len(profile)), tolerance)


# -- Theorem 2 ------------------------------------------------------------------------------

THEOREM2_EXPECTED = {"p1": 0.0, "p2": 0.0, "p3": 1.0, "p4": 0.0}


@dataclass(frozen=True)
class Theorem2Check:
    """Channel-averaged P1..P4 of an IN output against P1 = P2 = P4 = 0, P3 = 1."""

    name: str
    measured: dict[str, float]
    tolerance: float

    @property
    def expected(self) -> dict[str, float]:
        return dict(THEOREM2_EXPECTED)

    @property
    def errors(self) -> dict[str, float]:
        """|measured − expected| per constraint."""
        return {k: abs(self.measured[k] - v) for k, v in THEOREM2_EXPECTED.items()}

    @property
    def constraints(self) -> dict[str, bool]:
        """Whether each constraint holds within the tolerance."""
        return {k: e <= self.tolerance for k, e in self.errors.items()}

    @property
    def passed(self) -> bool:
        return all(self.constraints.values())


def check_theorem2(
    decomposition: PowerDecomposition, tolerance: float = 1e-2, name: str = ""
) -> Theorem2Check:
    """Theorem 2 of the PN paper on the power decomposition of an IN output ỹ (without affine):
    μ_{x,c} = 0 and σ_{x,c} = 1 for every input and channel give P1 = P2 = P4 = 0 and P3 = 1
    (P3 = E[σ²/(σ² + ε)] < 1 by IN's ε, hence the tolerance)."""
    tolerance = check_number("tolerance", tolerance, 0.0)
    if not isinstance(decomposition, PowerDecomposition):
        raise TypeError(
            f"check_theorem2 needs a PowerDecomposition (power_decomposition(y)), got "
            f"{type(decomposition).__name__}"
        )
    measured = {k: v for k, v in decomposition.layer_average().items() if k != "p"}
    if not all(math.isfinite(v) for v in measured.values()):
        raise ValueError(f"layer {name!r}: non-finite power decomposition {measured}")
    return Theorem2Check(name, measured, tolerance)


# -- Theorem 3 ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Theorem3Check:
    """Measured per-channel mean and variance of PN's output against Theorem 3, with the
    standard errors both estimates have if the theorem holds: sqrt(V/n) for the mean and
    sqrt((m4 - V²)/n) for the variance, where V = Var/(Var + ε) and m4 = E[z⁴] are the output's
    exact moments (by quadrature). Exact errors keep the test fair for channels whose φ is
    nearly constant (relu of a proxy far below 0), where a sample rarely sees the tail that
    carries the variance and sample-based errors collapse to zero."""

    act: str
    mean: Tensor
    var: Tensor
    expected_var: Tensor
    mean_se: Tensor
    var_se: Tensor

    @property
    def max_abs_mean(self) -> float:
        return float(self.mean.abs().max())

    @property
    def max_var_error(self) -> float:
        return float((self.var - self.expected_var).abs().max())

    @property
    def max_z_score(self) -> float:
        """The largest deviation from Theorem 3, in standard errors, over channels and moments."""
        tiny = torch.finfo(self.mean_se.dtype).tiny
        z_mean = self.mean.abs() / self.mean_se.clamp_min(tiny)
        z_var = (self.var - self.expected_var).abs() / self.var_se.clamp_min(tiny)
        return float(torch.maximum(z_mean, z_var).max())


def theorem3_expected_variance(act: str, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """Var_c / (Var_c + ε) for the proxy Y ~ N(0, 1)."""
    _, var = proxy_moments(act, gamma, beta)
    return var / (var + eps)


def theorem3_fourth_moment(act: str, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    """E[z⁴] per channel for z = (φ(γY + β) - E) / sqrt(Var + ε), Y ~ N(0, 1): the trapezoidal
    rule on 4001 nodes over [-12, 12] (accurate to about 1e-5 even at relu's kink)."""
    nodes, weights = trapezoid_nodes(4001, 12.0, gamma.dtype, gamma.device)
    values = get_activation(act).fn(gamma.unsqueeze(-1) * nodes + beta.unsqueeze(-1))
    mean = values @ weights
    centred = values - mean.unsqueeze(-1)
    var = centred.square() @ weights
    return (centred.square() / (var + eps).unsqueeze(-1)).square() @ weights


@torch.no_grad()
def check_theorem3(
    act: str = "relu",
    channels: int = 16,
    samples: int = 200_000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Theorem3Check:
    """Feed channel-wise N(0, 1) inputs to a PN step with random γ ∈ [0.25, 2.5], β ∈ [-1.5, 1.5]
    (β̃ = γ̃ = 0) and measure its output's per-channel mean and variance."""
    channels = check_int("channels", channels, 1)
    samples = check_int("samples", samples, 2)
    seed = check_int("seed", seed, None)
    if samples * channels > MAX_THEOREM3_VALUES:
        raise ValueError(
            f"samples × channels must be at most {MAX_THEOREM3_VALUES:,} (the inputs drawn), got "
            f"{samples:,} × {channels:,}"
        )
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if device is not None:
        device = check_device(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pn = ProxyNormAct(channels, act).to(dtype=dtype, device=device)
    pn.gamma.copy_(torch.empty(channels, dtype=dtype).uniform_(0.25, 2.5, generator=generator))
    pn.beta.copy_(torch.empty(channels, dtype=dtype).uniform_(-1.5, 1.5, generator=generator))
    y = torch.randn(samples, channels, generator=generator, dtype=dtype).to(pn.gamma.device)
    z = pn(y)
    var, mean = torch.var_mean(z, dim=0, correction=0)
    name, gamma, beta = pn.activation.name, pn.gamma, pn.beta
    expected = theorem3_expected_variance(name, gamma, beta, pn.eps)
    fourth = theorem3_fourth_moment(name, gamma, beta, pn.eps)
    mean_se = (expected / samples).sqrt()
    var_se = ((fourth - expected.square()).clamp_min(0.0) / samples).sqrt()
    values = (mean, var, expected, mean_se, var_se)
    return Theorem3Check(pn.activation.name, *(v.cpu() for v in values))
