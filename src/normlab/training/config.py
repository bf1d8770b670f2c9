r"""The training configuration: one dataclass, read from YAML and overridden from the command line.

:class:`TrainConfig` holds every setting of a run. It is validated as a whole
(:meth:`TrainConfig.validate`) before any work, saved resolved (defaults filled in, ``lr`` computed)
as the run folder's ``config.yaml``, and compared key by key when a run is resumed
(:func:`config_differences`).

The learning rate defaults to the linear scaling rule of Goyal et al. (2017), lr = 0.1·B/256, B
the global optimization batch (per-device batch × accumulation steps × processes).
``regularization="extra"`` switches on the PN paper's extra regularization (label smoothing,
mixup, dropout before the classifier, stochastic depth); each of them can also be set alone, and an
explicit value always wins over the preset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .._checks import closest, unknown
from ..models._common import MAX_WIDTH

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine", "constant")
REGULARIZATIONS = ("none", "extra")

# The PN paper's extra regularization (Labatie et al. 2021, Appendix: EfficientNets and ResNets
# "with extra regularization"), as one preset of the per-regularizer settings.
EXTRA = {"label_smoothing": 0.1, "mixup": 0.2, "cutmix": 0.0, "dropout": 0.2, "drop_path": 0.1}

# Keys that may differ between a run and its resumption (they do not change the computation).
RESUME_FREE = frozenset({"out", "resume", "epochs", "workers", "tensorboard", "progress"})


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it and the valid choices."""


@dataclass
class TrainConfig:
    """Every setting of ``normlab train``; see the README's "Training" section for each flag."""

    model: str = "resnet20"
    norm: str = "bn"
    act: str = "relu"
    width: float = 1.0
    data: str = "gaussian"
    epochs: int = 1
    batch_size: int = 128
    norm_batch_size: int | None = None
    accum_steps: int = 1
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "step"
    milestones: tuple[float, ...] = (0.5, 0.75)
    decay: float = 0.1
    warmup: float = 0.0
    weight_decay: float = 1e-4
    regularization: str = "none"
    label_smoothing: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    dropout: float | None = None
    drop_path: float | None = None
    ema: float | None = None
    agc: float | None = None
    seed: int = 0
    limit: int | None = None
    test_limit: int | None = None
    device: str = "cpu"
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    sync_bn: bool = False
    workers: int = 0
    eval_batch_size: int | None = None
    diagnostics_every: int = 0
    out: str = "runs/run"
    resume: bool = False
    tensorboard: bool = False
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    # -- derived values ------------------------------------------------------------------------

    def regularizer(self, name: str) -> float:
        """The value of one regularizer: as set, else the ``extra`` preset's, else off (0)."""
        value = getattr(self, name)
        if value is not None:
            return float(value)
        return EXTRA[name] if self.regularization == "extra" else 0.0

    def base_lr(self, world_size: int = 1) -> float:
        """lr as set, or 0.1·B/256 for the global optimization batch B."""
        if self.lr is not None:
            return float(self.lr)
        return 0.1 * self.batch_size * self.accum_steps * world_size / 256

    def resolved(self, world_size: int = 1) -> TrainConfig:
        """A copy with the learning rate and every regularizer written out."""
        values = {name: self.regularizer(name) for name in EXTRA}
        return dataclasses.replace(self, lr=self.base_lr(world_size), **values)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    # -- validation ----------------------------------------------------------------------------

    def validate(self) -> TrainConfig:
        """Check every setting; raise :class:`ConfigError` naming the first bad one.

        Names are checked too (model, norm, act, data, device: their spelling and form, not
        that the data's files exist or the device is present, which a cluster's node may differ
        in), so that a grid with a mistyped name fails before any run starts."""
        _names(self)
        for name in BOOL_KEYS:
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                raise ConfigError(
                    f"{name} must be true or false, got {value!r} ({type(value).__name__})"
                )
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a mapping, got {type(self.extra).__name__}")
        if isinstance(self.milestones, str) or not isinstance(self.milestones, tuple | list):
            raise ConfigError(
                f"milestones must be a list of fractions of the epochs in (0, 1), got "
                f"{self.milestones!r}"
            )
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("regularization", self.regularization, REGULARIZATIONS)
        for name in ("epochs", "batch_size", "accum_steps"):
            _positive_int(name, getattr(self, name))
        for name in ("norm_batch_size", "limit", "test_limit", "eval_batch_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("workers", "diagnostics_every", "seed"):
            _non_negative_int(name, getattr(self, name))
        _number("width", self.width, low=0.0, high=MAX_WIDTH, low_open=True)
        if self.lr is not None:
            _number("lr", self.lr, low=0.0, low_open=True)
        _number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _number("decay", self.decay, low=0.0, high=1.0, low_open=True)
        _number("warmup", self.warmup, low=0.0)
        _number("weight_decay", self.weight_decay, low=0.0)
        for name in ("label_smoothing", "dropout", "drop_path"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        for name in ("mixup", "cutmix"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), low=0.0)
        if self.ema is not None:
            _number("ema", self.ema, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.agc is not None:
            _number("agc", self.agc, low=0.0, low_open=True)
        if not all(
            isinstance(m, int | float) and not isinstance(m, bool) and 0 < m < 1
            for m in self.milestones
        ):
            raise ConfigError(
                f"milestones must be fractions of the epochs in (0, 1), got "
                f"{list(self.milestones)!r}"
            )
        if self.warmup >= self.epochs:
            raise ConfigError(
                f"warmup ({self.warmup} epochs) must be shorter than the run ({self.epochs} epochs)"
            )
        if self.norm_batch_size is not None and self.batch_size % self.norm_batch_size:
            raise ConfigError(
                f"norm_batch_size {self.norm_batch_size} does not divide the per-device batch "
                f"size {self.batch_size}: BatchNorm's normalization batches would be uneven"
            )
        return self


BOOL_KEYS = (
    "nesterov", "amp", "compile", "channels_last", "sync_bn", "resume", "tensorboard", "progress",
)  # fmt: skip
DEVICE_TYPES = ("cpu", "cuda", "mps")


def _names(config: TrainConfig) -> None:
    """The names of a config: strings of a known model, scheme, activation, data spec form and
    device type, each refused with the library's own error (which lists the choices)."""
    from .._checks import check_str
    from ..data import parse_spec
    from ..layers import get_activation
    from ..models import info
    from ..scheme import scheme

    examples = {"model": "resnet20", "norm": "gn8+pn", "act": "relu", "data": "gaussian"}
    examples |= {"device": "cpu", "out": "runs/run"}
    for name, example in examples.items():
        try:
            check_str(name, getattr(config, name), example)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:
        if not config.model.startswith("timm:"):
            info(config.model)
        get_activation(config.act)
        scheme(config.norm, config.act)
        parse_spec(config.data)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    try:
        device = torch_device(config.device)
    except (RuntimeError, ValueError):
        device = None
    if device is not None and device.type == "meta":
        raise ConfigError(
            "device 'meta' cannot train: meta tensors hold no values; valid choices: 'cpu', "
            "'cuda', 'cuda:K', 'mps'"
        )
    if device is None or device.type not in DEVICE_TYPES:
        raise ConfigError(
            f"unknown device {config.device!r}; valid choices: 'cpu', 'cuda', 'cuda:K', 'mps'"
        )


def torch_device(name: str):
    import torch

    return torch.device(name)


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(str(unknown(name, value, choices)))


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def _number(
    name: str,
    value: object,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(
            f"{name} must be a finite number in {left}{low}, {high}{right}, got {value!r}"
        )


# -- YAML ----------------------------------------------------------------------------------------

CONFIG_KEYS = tuple(f.name for f in fields(TrainConfig))


def check_keys(values: dict[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` for the first key of ``values`` that is no config key, with
    the closest one suggested; ``where`` names the place (a file section, a grid case)."""
    for key in values:
        if key not in CONFIG_KEYS:
            suggestion = closest(key, CONFIG_KEYS)
            hint = f"; did you mean {suggestion!r}?" if suggestion else ""
            raise ConfigError(
                f"{where}: {key!r} is not a config key{hint} Valid keys: {', '.join(CONFIG_KEYS)}"
            )


def from_dict(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) with ``values`` set; unknown keys suggest the closest."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of config keys, got {type(values).__name__}")
    check_keys(values, "config")
    milestones = values.get("milestones")
    if isinstance(milestones, list | tuple):
        values = {**values, "milestones": tuple(milestones)}
    return dataclasses.replace(base or TrainConfig(), **values)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML config file, with errors that name the file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not a YAML text file: byte {error.start} is not UTF-8 ({error.reason})"
        ) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return values


def dump_yaml(config: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_differences(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """The keys (other than :data:`RESUME_FREE`) whose values differ, as ``key: saved -> now``."""
    now = current.to_dict()
    keys = [k for k in CONFIG_KEYS if k not in RESUME_FREE]
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in keys if saved.get(k) != now[k]]
