"""Experiments: grids of training runs on an existing engine (submitit), and the papers' tables.

normlab sweep GRID.yaml [--dry-run] [--executor local|slurm] [--max-parallel K]
normlab table DIR [--rows norm] [--cols model] [--metric final_test_accuracy]
"""

from .grid import PlannedRun, config_hash, expand, load_grid, slug
from .presets import PRESETS, preset
from .sweep import run_sweep
from .table import build_table, read_runs, write_table

__all__ = [
    "PRESETS",
    "PlannedRun",
    "build_table",
    "config_hash",
    "expand",
    "load_grid",
    "preset",
    "read_runs",
    "run_sweep",
    "slug",
    "write_table",
]
