"""The demo's sizes (:class:`DemoConfig`), an analysis' result (:class:`Analysis`), its
white-noise inputs and seeded models, and small helpers of the checks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .._checks import check_device, check_int
from ..models import create
from ..models.random_net import MAX_DEPTH, MAX_WIDTH
from ..report import Check, Section


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo's experiments.

    Attributes:
        out: the report directory.
        width, depth: the random net of Figure 2 (the paper used width 1024).
        samples, size: white-noise inputs (N, 3, size, size) of the random nets.
        cnn_width, cnn_depth: the plain CNN of Beyond BatchNorm's Figures 6a and 8.
        spp_samples, spp_size: inputs of the ResNet-50s of the signal propagation plots.
        cifar_samples, cifar_size: inputs of the CIFAR models (ResNet-56, CNN-10) of Beyond
            BatchNorm's Claims 1-2 and Figure 5.
        seeds: seeds of the gradient-growth fits, averaged.
        pn_samples: samples per channel of the Theorem 3 check.
        device: where the models run ("cpu", "cuda", ...).
    """

    out: Path
    width: int = 256
    depth: int = 50
    samples: int = 64
    size: int = 16
    cnn_width: int = 64
    cnn_depth: int = 30
    spp_samples: int = 8
    spp_size: int = 128
    cifar_samples: int = 32
    cifar_size: int = 32
    seeds: int = 3
    pn_samples: int = 200_000
    device: str = "cpu"

    def __post_init__(self) -> None:
        """Check every size before any work: a zero or a float fails deep in a model, a huge
        depth or width exhausts memory while the net is built."""
        check_int("width", self.width, 1, MAX_WIDTH)
        check_int("depth", self.depth, 1, MAX_DEPTH)
        for name in ("samples", "size", "spp_samples", "spp_size", "cifar_samples",
                     "cifar_size", "seeds", "pn_samples"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        for name in ("cnn_width", "cnn_depth"):
            limit = MAX_WIDTH if name == "cnn_width" else MAX_DEPTH
            check_int(name, getattr(self, name), 1, limit)
        check_device(self.device)

    @classmethod
    def quick(cls, out: Path) -> DemoConfig:
        """The CI-sized run (well under a minute on 2 cores)."""
        return cls(
            out,
            width=64,
            depth=20,
            samples=32,
            size=8,
            spp_samples=4,
            spp_size=64,
            cifar_samples=16,
            pn_samples=20_000,
        )


@dataclass
class Analysis:
    """One analysis' part of the report: its section, its checks and its data for metrics."""

    key: str
    section: Section
    checks: list[Check]
    metrics: dict = field(default_factory=dict)


def white_noise(samples: int, size: int, seed: int, device: str = "cpu") -> Tensor:
    """N(0, 1) images of shape (samples, 3, size, size), drawn on the CPU (the same on every
    device) and moved to ``device``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(samples, 3, size, size, generator=generator).to(device)


def _model(
    config: DemoConfig, name: str, init_seed: int | None = None, **kwargs
) -> torch.nn.Module:
    """``create(name, **kwargs)`` on the config's device; with ``init_seed``, its parameters
    drawn from that seed (whatever ran before) without touching the global random state."""
    if init_seed is None:
        return create(name, **kwargs).to(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return create(name, **kwargs).to(config.device)


def _plain_cnn(config: DemoConfig, spec: str, seed: int = 0) -> torch.nn.Module:
    """A plain conv-norm-relu CNN at initialisation: the random net with γ = 1, β = 0."""
    return _model(
        config,
        "random_net",
        depth=config.cnn_depth,
        width=config.cnn_width,
        norm=spec,
        gamma_std=0.0,
        beta_std=0.0,
        seed=seed,
    )


def _smallest(values: Iterable[float]) -> float:
    """The minimum, NaN if any value is NaN."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def _all_at_least(values: Iterable[float], bound: float) -> bool:
    return all(math.isfinite(v) and v >= bound for v in values)


def _all_at_most(values: Iterable[float], bound: float) -> bool:
    return all(math.isfinite(v) and v <= bound for v in values)


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    """Values to 4 significant digits, for a check's measurement."""
    return {key: float(f"{value:.4g}") for key, value in values.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan
