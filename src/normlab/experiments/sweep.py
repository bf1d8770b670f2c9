r"""``normlab sweep``: run a grid of trainings through submitit, locally or on Slurm, resumably.

Each planned run (:mod:`~normlab.experiments.grid`) is one submitit job calling
:func:`normlab.training.train` in its own folder. Before submitting, the sweep reads every run
folder:

* ``finished`` or ``diverged`` (its ``summary.json`` says so): a result, skipped;
* started but not finished (a ``config.yaml`` without a final summary, e.g. after a kill): resumed
  from its last checkpoint (``resume=True``);
* ``failed``, or not started: run (again).

A run that fails or diverges is recorded in its ``summary.json`` and the sweep goes on; the sweep
writes ``sweep.json`` (one entry per run: folder, varying keys, status) when it ends.

Executors: ``local`` is submitit's :class:`~submitit.LocalExecutor` (a process per job on this
machine, at most ``max_parallel`` at a time, each with cores / max_parallel threads); ``slurm`` is
its Slurm executor: one job array, ``slurm_array_parallelism = max_parallel``, with the parameters
given (``timeout_min``, ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import check_int
from ..training.checkpoint import write_text_atomic
from ..training.config import ConfigError
from .grid import PlannedRun

EXECUTORS = ("local", "slurm")
FINAL = ("finished", "diverged")
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class RunState:
    """What a run folder holds: ``new``, ``started``, ``finished``, ``diverged`` or ``failed``."""

    run: PlannedRun
    status: str


def read_status(folder: Path) -> str:
    summary = folder / "summary.json"
    if summary.exists():
        try:
            status = json.loads(summary.read_text(encoding="utf-8")).get("status")
        except (ValueError, AttributeError, OSError):  # corrupt, not UTF-8, not a mapping
            status = None
        if status in (*FINAL, "failed"):
            return status
    return "started" if (folder / "config.yaml").exists() else "new"


def plan(runs: list[PlannedRun]) -> list[RunState]:
    return [RunState(run, read_status(Path(run.config.out))) for run in runs]


def run_one(config: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """One job: train the run (resuming it when its folder holds a started run); a failure is
    recorded in its summary.json and returned, not raised, so that the sweep goes on."""
    import torch

    from ..training import from_dict, train

    if threads:
        torch.set_num_threads(threads)
    settings = from_dict(config)
    print(f"normlab job: start {settings.out} at {time.time():.3f}", flush=True)
    folder = Path(settings.out)
    settings = dataclasses.replace(
        settings, resume=(folder / "config.yaml").exists(), progress=False
    )
    try:
        summary = train(settings)
    except Exception as error:  # recorded, the sweep goes on
        summary = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "config": config,
        }
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"normlab job: end {settings.out} at {time.time():.3f}", flush=True)
    return summary


def make_executor(
    kind: str, folder: Path, max_parallel: int, parameters: dict[str, Any] | None = None
):
    """submitit's executor for ``kind`` with its logs under ``folder/.submitit``."""
    import submitit

    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; valid choices: {', '.join(EXECUTORS)}")
    logs = folder / ".submitit" / "%j"
    if kind == "local":
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=(parameters or {}).get("timeout_min", 24 * 60))
        return executor
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm")
    executor.update_parameters(slurm_array_parallelism=max_parallel, **(parameters or {}))
    return executor


def job_threads(max_parallel: int) -> int:
    """Torch threads of each local job: the cores shared by the jobs running at a time."""
    return max(1, (os.cpu_count() or 1) // max_parallel)


def run_sweep(
    folder: Path,
    runs: list[PlannedRun],
    executor: str = "local",
    max_parallel: int = 1,
    parameters: dict[str, Any] | None = None,
    on_event: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run what is not done yet (see the module docstring); return the sweep's entries."""
    try:
        max_parallel = check_int("max_parallel", max_parallel, 1)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    states = plan(runs)
    todo = [s for s in states if s.status not in FINAL]
    for state in states:
        if state.status in FINAL:
            on_event(f"skip   {state.run.name} ({state.status})")
    folder.mkdir(parents=True, exist_ok=True)
    if todo and executor == "local":
        check_data(todo)
    if todo:
        engine = make_executor(executor, folder, max_parallel, parameters)
        threads = job_threads(max_parallel) if executor == "local" else None
        configs = [s.run.config.to_dict() for s in todo]
        if executor == "local":
            _run_local(engine, todo, configs, threads, max_parallel, on_event)
        else:
            jobs = engine.map_array(run_one, configs, [None] * len(configs))
            for state, job in zip(todo, jobs, strict=True):
                on_event(f"submit {state.run.name} (Slurm job {job.job_id})")
            for state, job in zip(todo, jobs, strict=True):
                _report(state, job, on_event)
    entries = [
        {"name": s.run.name, "folder": s.run.config.out, "varying": s.run.varying,
         "status": read_status(Path(s.run.config.out))}
        for s in states
    ]  # fmt: skip
    write_text_atomic(folder / "sweep.json", json.dumps(entries, indent=2, default=str) + "\n")
    return entries


def check_data(todo: list[RunState]) -> None:
    """Open every data spec the runs use once, before any job starts: a missing folder fails
    the sweep at once instead of every run one by one (locally; a cluster's nodes may see
    other files)."""
    from ..data import load_data

    for spec in dict.fromkeys(state.run.config.data for state in todo):
        try:
            load_data(spec, "train", limit=1)
        except (ValueError, OSError) as error:
            raise ConfigError(f"data {spec!r}: {error}") from None


def _run_local(engine, todo, configs, threads, max_parallel, on_event) -> None:
    """Submit to the local executor with at most ``max_parallel`` jobs in flight."""
    pending = list(zip(todo, configs, strict=True))
    running: list[tuple[RunState, Any]] = []
    while pending or running:
        while pending and len(running) < max_parallel:
            state, config = pending.pop(0)
            verb = "resume" if state.status == "started" else "start "
            job = engine.submit(run_one, config, threads)
            on_event(f"{verb} {state.run.name} (job {job.job_id})")
            running.append((state, job))
        done = [(s, j) for s, j in running if j.done()]
        for state, job in done:
            running.remove((state, job))
            _report(state, job, on_event)
        if not done:
            time.sleep(POLL_SECONDS)


def _report(state: RunState, job, on_event: Callable[[str], None]) -> None:
    try:
        summary = job.result()
    except Exception as error:  # the job itself died (killed, out of memory, ...)
        summary = {"status": "failed", "error": str(error).strip().splitlines()[-1]}
    status = summary.get("status", "failed")
    detail = f": {summary['error']}" if status == "failed" and summary.get("error") else ""
    on_event(f"{status:8s} {state.run.name}{detail}")
