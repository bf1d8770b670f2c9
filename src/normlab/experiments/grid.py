r"""Grids of training runs: a YAML file expanded into one :class:`TrainConfig` per run folder.

A grid file::

    out: runs/table2                 # the sweep folder (one sub-folder per run)
    base:                            # keys shared by every run
      model: resnet20
      data: fashion-mnist:../shared/data/fashion-mnist
      epochs: 10
    grid:                            # the product of these lists
      norm: [bn, ln, ln+pn, gn8, gn8+pn]
      regularization: [none, extra]
      seed: [0, 1, 2]
    cases:                           # optional: each case is merged into every grid point
      - {}
      - {norm: bn, norm_batch_size: 16}

Every key is a :class:`~normlab.training.TrainConfig` key. Each run's folder is named by a
readable slug of the keys that vary across the sweep, and a short hash of its whole configuration
(``norm-gn8+pn_seed-0-3f2a9c1e``), so that a changed setting never reuses an old run's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from ..training.config import ConfigError, TrainConfig, check_keys, from_dict, load_yaml

GRID_KEYS = ("out", "base", "grid", "cases")
# Keys that do not change what a run computes, left out of its hash.
UNHASHED = frozenset({"out", "resume", "workers", "progress", "tensorboard"})


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its folder name, the values that vary, and its configuration."""

    name: str
    varying: dict[str, Any]
    config: TrainConfig


def config_hash(config: TrainConfig) -> str:
    """8 hex digits of the SHA-256 of the configuration (without :data:`UNHASHED` keys)."""
    values = {k: v for k, v in config.to_dict().items() if k not in UNHASHED}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _slug_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return re.sub(r"[^A-Za-z0-9.+=-]+", "_", text).strip("_") or "_"


def slug(varying: dict[str, Any], digest: str) -> str:
    """``key-value_key-value-<hash>`` for the varying keys, in grid order."""
    parts = [f"{key.replace('_', '-')}-{_slug_value(value)}" for key, value in varying.items()]
    return "_".join([*parts, digest]) if parts else digest


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of config keys, got {type(value).__name__}")
    check_keys(value, where)
    return value


def expand(spec: dict[str, Any], out: str | Path | None = None) -> tuple[Path, list[PlannedRun]]:
    """The sweep folder and its runs, validated, for a grid mapping (see the module docstring)."""
    if not isinstance(spec, dict):
        raise ConfigError(
            f"a grid must be a mapping of sections ({', '.join(GRID_KEYS)}), got "
            f"{type(spec).__name__}"
        )
    unknown = set(spec) - set(GRID_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown grid section(s) {sorted(unknown)}; valid sections: {', '.join(GRID_KEYS)}"
        )
    out = out or spec.get("out") or "runs/sweep"
    if not isinstance(out, str | PathLike):
        raise ConfigError(f"out must be a folder path, got {out!r} ({type(out).__name__})")
    folder = Path(out)
    base = _mapping(spec.get("base"), "base")
    grid = _mapping(spec.get("grid"), "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid: {key!r} must be a non-empty list of values, got {values!r}")
    cases = spec.get("cases") or [{}]
    if not isinstance(cases, list):
        raise ConfigError(f"cases must be a list of mappings, got {type(cases).__name__}")
    cases = [_mapping(case, f"cases[{i}]") for i, case in enumerate(cases)]
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    combined = [point | case for point in points for case in cases]
    if not grid and len(cases) == 1 and not base and not cases[0]:
        raise ConfigError("the grid is empty: give base keys, grid lists or cases")
    varying_keys = _varying(combined)
    runs, seen = [], {}
    for values in combined:
        config = from_dict(base | values).validate()
        varying = {k: values[k] for k in varying_keys if k in values}
        digest = config_hash(config)
        if digest in seen:
            raise ConfigError(
                f"the grid holds the same run twice ({seen[digest]} and {varying}): remove the "
                f"duplicate case"
            )
        seen[digest] = varying
        name = slug(varying, digest)
        config = dataclasses.replace(config, out=str(folder / name))
        runs.append(PlannedRun(name, varying, config))
    return folder, runs


def _varying(combined: list[dict[str, Any]]) -> list[str]:
    """Keys whose value is not the same in every run, in first-seen order."""
    keys: list[str] = []
    for values in combined:
        keys += [k for k in values if k not in keys]
    return [k for k in keys if len({json.dumps(v.get(k), default=str) for v in combined}) > 1]


def load_grid(path: str | Path, out: str | Path | None = None) -> tuple[Path, list[PlannedRun]]:
    return expand(load_yaml(path), out)
