"""Experiments: grids of training runs on an existing engine (submitit), the papers' tables, and
the papers' training claims reproduced at CPU scale with verdicts from the numbers.

normlab sweep GRID.yaml [--dry-run] [--executor local|slurm] [--max-parallel K]
normlab table DIR [--rows norm] [--cols model] [--metric final_test_accuracy]
normlab reproduce NAME --data SPEC [--max-parallel K]
"""

from .grid import PlannedRun, config_hash, expand, load_grid, slug
from .presets import PRESETS, preset
from .reproduce import reproduce
from .reproductions import REPRODUCTIONS
from .sweep import run_sweep
from .table import build_table, read_runs, write_table

__all__ = [
    "PRESETS",
    "REPRODUCTIONS",
    "PlannedRun",
    "build_table",
    "config_hash",
    "expand",
    "load_grid",
    "preset",
    "read_runs",
    "reproduce",
    "run_sweep",
    "slug",
    "write_table",
]
