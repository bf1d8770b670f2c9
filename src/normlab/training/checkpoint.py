r"""Checkpoints and run-folder files, written atomically.

Every file of a run folder is written to a temporary name in the same folder, flushed to disk and
renamed over the target (``os.replace``), so that a run killed at any point leaves either the old
complete file or the new complete one, never a partial file that looks complete. A checkpoint
holds the model, optimizer, scheduler, EMA and RNG states, the epoch and the metrics so far.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .._files import TEMP_PREFIX, write_atomic, write_text_atomic  # noqa: F401 (re-exported)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    write_atomic(path, lambda stream: _save(state, stream))


def _save(state: dict[str, Any], stream) -> None:
    """torch.save, raising the file's own error: when a write fails (a full disk), torch's zip
    writer fails again while closing ("unexpected pos 64 vs 0"), a RuntimeError that would hide
    the OSError and read as a bug."""
    try:
        torch.save(state, stream)
    except RuntimeError as error:
        if isinstance(error.__context__, OSError):
            raise error.__context__ from None
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU; a clear error when it is missing or corrupt."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable normlab checkpoint ({detail})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a normlab training checkpoint")
    return state


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete the temporary files an interrupted write left in ``folder``."""
    for temp in Path(folder).glob(TEMP_PREFIX + "*"):
        temp.unlink(missing_ok=True)


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
