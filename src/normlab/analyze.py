r"""``normlab analyze``: the demo's analyses on one model of the zoo and real (or white-noise) data.

For a model (``normlab.models.create(name, norm=spec)``, optionally loaded from a checkpoint)
and a data set (``gaussian``, ``mnist:DIR``, ``fashion-mnist:DIR``, ``cifar10:DIR``,
``cifar100:DIR``) it measures, layer by layer in depth order: the power decomposition of every
normalization step's output and its collapse measures, the activation variance, cosine similarity
and stable rank of the activation steps' outputs, the gradient norm through depth (cross-entropy
on the data's labels) and its growth rate, and the signal propagation plot where the model has
residual blocks; it checks the PN paper's theorems where they apply (Theorem 2 for IN, Theorem 1
for LN), and writes the same ``report.html``, figures and ``metrics.json`` as the demo.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import load_data
from .diagnostics import (
    activation_variance,
    collapse_measures,
    gradient_profile,
    power_profile,
    signal_propagation,
    similarity_profile,
)
from .diagnostics.signal import signal_layout
from .diagnostics.theory import check_theorem1, check_theorem2, theorem1_bound, theorem1_rho
from .models import create, info
from .report import (
    Check,
    ReportFiles,
    Section,
    Table,
    check_report_folder,
    plot_cosine_similarity,
    plot_gradient_norms,
    plot_power_decomposition,
    plot_signal_propagation,
    write_report,
)
from .scheme import scheme


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``normlab analyze`` runs on.

    Attributes:
        model, norm, act: the model of the zoo and its scheme.
        data: the data spec (see :func:`normlab.data.load_data`).
        out: the report directory.
        checkpoint: a state dict saved with ``torch.save`` (or a dict holding one under
            "model" or "state_dict"), loaded before the analyses.
        samples, batch_size: how many inputs of the training split, in batches of this size.
        mode: "train" (batch statistics) or "eval" (running statistics); default: eval with a
            checkpoint, train at initialisation.
        width: the model's width multiplier.
        device: where the model runs ("cpu", "cuda", ...); batches follow it.
    """

    model: str
    norm: str
    out: Path
    data: str = "gaussian"
    act: str = "relu"
    checkpoint: Path | None = None
    samples: int = 256
    batch_size: int = 64
    mode: str | None = None
    width: float = 1.0
    device: str = "cpu"

    @property
    def run_mode(self) -> str:
        return self.mode or ("eval" if self.checkpoint else "train")


def build_model(config: AnalyzeConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The zoo model for the data's channels and classes, loaded from the checkpoint if any."""
    kwargs = {"norm": config.norm, "act": config.act, "in_channels": in_channels}
    if config.model == "random_net":
        kwargs["num_classes"] = num_classes
    else:
        kwargs |= {"num_classes": num_classes, "width": config.width}
    model = create(config.model, **kwargs)
    if config.checkpoint is not None:
        _load_weights(model, _state_dict(config.checkpoint), config)
    return model.to(config.device)


def _state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist (expected a torch.save file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, zipfile.BadZipFile) as error:
        # torch.load of a truncated or corrupt file raises any of these
        lines = str(error).strip().splitlines()
        detail = lines[0] if lines else type(error).__name__
        raise ValueError(
            f"checkpoint {str(path)!r} is not a readable torch.save file of tensors ({detail})"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {type(state).__name__}, not a "
            "state dict (or a dict with one under 'model' or 'state_dict')"
        )
    return state


def _load_weights(model: nn.Module, state: dict, config: AnalyzeConfig) -> None:
    """Load ``state`` into ``model``; a ValueError saying how it differs when it does not fit
    (the checkpoint of another model, scheme or width)."""
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    reshaped = [
        key
        for key, value in state.items()
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the model's tensors missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the model lacks (e.g. {unexpected[0]!r})")
    if reshaped:
        key = reshaped[0]
        shapes = f"{tuple(state[key].shape)} in the checkpoint, {tuple(own[key].shape)} here"
        problems.append(f"{len(reshaped)} tensors of another shape (e.g. {key!r}: {shapes})")
    try:
        if not problems:
            model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as error:
        lines = str(error).strip().splitlines()
        problems.append(" ".join(lines[1:2] or lines[:1]).strip() or type(error).__name__)
    if problems:
        width = "" if config.model == "random_net" else f", --width {config.width:g}"
        raise ValueError(
            f"checkpoint {str(config.checkpoint)!r} does not fit {config.model} "
            f"(--norm {config.norm}, --act {config.act}{width}): "
            f"{'; '.join(problems)}. Was it saved from another model, scheme or width?"
        )


def run_analyze(config: AnalyzeConfig) -> ReportFiles:
    """Run the analyses of one model on one data set and write the report. The model name, the
    scheme, the checkpoint and the report folder are checked before any work."""
    info(config.model)  # an unknown model: the closest name suggested
    scheme(config.norm, config.act)
    if config.checkpoint is not None and not config.checkpoint.is_file():
        _state_dict(config.checkpoint)  # the error naming the missing file
    check_report_folder(config.out)
    dataset = load_data(config.data, split="train", limit=config.samples)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False)
    model = build_model(config, dataset.input_shape[0], dataset.num_classes)
    mode = config.run_mode
    sections, checks, metrics = [], [], {}
    for part in (_power, _features, _gradients, _signal_propagation):
        result = part(model, loader, mode, config)
        if result is not None:
            section, part_checks, part_metrics = result
            sections.append(section)
            checks += part_checks
            metrics |= part_metrics
    metrics["config"] = vars(config) | {"run_mode": mode}  # write_report makes it JSON-safe
    label = f"{config.model} ({scheme(config.norm, config.act).spec}) on {dataset.name}"
    return write_report(
        config.out,
        f"normlab analyze: {label}",
        sections,
        checks,
        metrics,
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )


def _power(model, loader, mode, config):
    profile = power_profile(model, loader, where="norm", mode=mode)
    measures = [collapse_measures(d) for _, d in profile]
    parsed = scheme(config.norm, config.act)
    checks, bounds = [], {}
    if parsed.normalizer == "in" and not parsed.proxy:
        errors = [check_theorem2(d, 1e-4, name).errors for name, d in profile]
        checks.append(
            Check.at_most(
                "Theorem 2: IN's P2 = P4 = 0 at every normalization step (max P2, P4)",
                max(max(e["p2"], e["p4"]) for e in errors),
                1e-4,
            )
        )
    if parsed.normalizer == "ln":
        rho = theorem1_rho(model)
        result = check_theorem1(profile, rho)
        bounds[parsed.spec] = theorem1_bound(rho, len(profile))
        checks.append(
            Check(
                f"Theorem 1 (LN; stated for the random net): (P − P1)/P ≤ ρ^(l−1), ρ = {rho:.4f}",
                max(result.excess),
                "≤ 0.02 above the bound at every layer",
                result.passed,
            )
        )
    table = Table(
        ["layer", "P1/P", "P2/P", "P3/P", "P4/P", "channel imbalance", "effective width"],
        [
            [name, *d.fractions().values(), m.channel_imbalance, m.effective_width]
            for (name, d), m in zip(profile, measures, strict=True)
        ],
    )
    figure = plot_power_decomposition({parsed.spec: profile}, bounds=bounds or None)
    section = Section(
        "Power decomposition of the normalization steps (PN paper, Eq. 5)",
        "Fractions P1/P (collapse) ... P4/P of every normalization step's output ỹ.",
        figures=[figure],
        tables=[table],
    )
    metrics = {
        "power": {name: d.fractions() for name, d in profile},
        "collapse": {name: m for (name, _), m in zip(profile, measures, strict=True)},
    }
    return section, checks, metrics


def _features(model, loader, mode, config):
    variance = activation_variance(model, loader, mode=mode)
    geometry = similarity_profile(model, loader, mode=mode)
    table = Table(
        ["layer", "activation variance", "cosine similarity", "stable rank"],
        [
            [name, v, g.cosine_similarity, g.stable_rank]
            for (name, v), g in zip(variance, geometry, strict=True)
        ],
    )
    section = Section(
        "Activations: variance, similarity and rank (Beyond BatchNorm, Sections 3-4)",
        "Per activation step: mean channel variance, mean pairwise cosine similarity of the "
        "inputs' features and the stable rank of their Gram matrix (averaged over batches).",
        figures=[plot_cosine_similarity({config.norm: geometry})],
        tables=[table],
    )
    metrics = {
        "activation_variance": dict(variance),
        "cosine_similarity": {g.name: g.cosine_similarity for g in geometry},
        "stable_rank": {g.name: g.stable_rank for g in geometry},
    }
    return section, [], metrics


def _gradients(model, loader, mode, config):
    profile = gradient_profile(model, loader, loss="cross_entropy", mode=mode)
    growth = None if profile.fit is None else -profile.fit.rate
    section = Section(
        "Gradient norm through depth (Beyond BatchNorm, Figure 8)",
        "‖∂L/∂z^l‖ of every activation step for the cross-entropy on the data's labels"
        + (
            ""
            if growth is None
            else f"; growth towards the input: ×{profile.fit.factor**-1:.3f} per layer"
        )
        + ".",
        figures=[plot_gradient_norms({config.norm: profile})],
    )
    return (
        section,
        [],
        {"gradients": {"names": profile.names, "norms": profile.norms, "growth_rate": growth}},
    )


def _signal_propagation(model, loader, mode, config):
    try:
        signal_layout(model)
    except ValueError:
        return None  # no residual blocks: no SPP
    spp = signal_propagation(model, loader, mode=mode)
    section = Section(
        "Signal propagation (Brock et al. 2021; Hoedt et al. 2022)",
        "Average squared channel mean and channel variance after the stem and each residual "
        "block, and the residual branches' variance before their scaling.",
        figures=[plot_signal_propagation({f"{config.model} ({config.norm})": spp})],
    )
    return (
        section,
        [],
        {
            "signal_propagation": {
                "names": spp.names,
                "squared_mean": spp.squared_mean,
                "variance": spp.variance,
                "branch_variance": spp.branch_variance,
            }
        },
    )
