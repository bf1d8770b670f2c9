r"""``train(config)``: train a zoo (or given) model under a normalization scheme, epoch by epoch.

Each epoch is a pure function of the state at its start and of (seed, epoch, rank): the batches
and their augmentation (:class:`~normlab.data.TrainBatches`), mixup's draws and the global RNG
(dropout, stochastic depth) are all seeded from them. A checkpoint at the end of each epoch holds
that state, so ``resume=True`` after a kill at any point reruns the interrupted epoch and ends in
the same bits as an uninterrupted run (on CPU, same seed and number of threads).

The run folder (``config.out``), written by rank 0 only and every file atomically:

    config.yaml      the resolved configuration
    metrics.jsonl    one JSON object per epoch (see :data:`METRIC_KEYS`)
    metrics.csv      the same as a table
    diagnostics.jsonl  power decomposition, SPP, feature geometry at init and every k epochs
    summary.json     status (finished | diverged | failed), epochs, accuracies, wall_seconds
    last.pt          the checkpoint of the last epoch; best.pt that of the best test accuracy
    tensorboard/     event files, with ``tensorboard=True``
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import models
from .._checks import NonFiniteError, unknown
from ..data import TrainBatches
from ..scheme import scheme
from . import checkpoint as ckpt
from . import distributed
from .config import ConfigError, TrainConfig, config_differences, dump_yaml
from .diagnostics import PROBE_SIZE, snapshot
from .optim import make_optimizer, make_scheduler
from .regularizers import (
    adaptive_gradient_clip,
    classifier_parameters,
    ema_model,
    mix_batch,
    soft_cross_entropy,
    soft_targets,
)

METRIC_KEYS = (
    "epoch",
    "train_samples",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "ema_test_accuracy",
    "lr",
    "seconds",
    "cpu_seconds",
    "images_per_second",
    "data_fraction",
)
TIMING_KEYS = frozenset({"seconds", "cpu_seconds", "images_per_second", "data_fraction"})
STATUSES = ("finished", "diverged", "failed")
BATCH_DEPENDENT = ("bn", "vn", "evo-b0")


class DivergedError(Exception):
    """The training loss became NaN or infinite."""


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from (seed, epoch, rank, purpose): independent streams for each part."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# -- the model -----------------------------------------------------------------------------------


def model_spec(config: TrainConfig) -> str:
    """The scheme spec with BatchNorm's normalization batch from ``norm_batch_size``."""
    parsed = scheme(config.norm, config.act)
    if config.norm_batch_size is None:
        return parsed.spec
    if parsed.normalizer != "bn":
        raise ConfigError(
            f"norm_batch_size sets BatchNorm's normalization batch, but norm {config.norm!r} has "
            f"no BatchNorm; use norm 'bn' (or 'bn+pn', ...) or drop norm_batch_size"
        )
    if parsed.norm_batch_size not in (None, config.norm_batch_size):
        raise ConfigError(
            f"norm {config.norm!r} already sets a normalization batch of "
            f"{parsed.norm_batch_size}, but norm_batch_size is {config.norm_batch_size}"
        )
    return dataclasses.replace(parsed, norm_batch_size=config.norm_batch_size).spec


TIMM_PREFIX = "timm:"


def build_model(config: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The zoo model ``config.model`` under ``config.norm`` with the configured regularizers;
    ``timm:NAME`` builds timm's model NAME (untrained) and converts it to the scheme."""
    if config.model.startswith(TIMM_PREFIX):
        return _timm_model(config, num_classes, in_channels)
    kwargs: dict[str, Any] = {
        "norm": model_spec(config),
        "act": config.act,
        "num_classes": num_classes,
        "in_channels": in_channels,
    }
    if config.width != 1.0:
        kwargs["width"] = config.width
    for option, key in (("dropout", "dropout"), ("drop_path", "drop_path_rate")):
        if config.regularizer(option) > 0:
            kwargs[key] = config.regularizer(option)
    try:
        return models.create(config.model, **kwargs)
    except TypeError as error:
        raise ConfigError(f"model {config.model!r} does not take these settings: {error}") from None


def _timm_model(config: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    from ..convert import convert

    try:
        import timm
    except ImportError:
        raise ConfigError(f"--model {config.model} needs timm (pip install timm)") from None
    name = config.model[len(TIMM_PREFIX) :]
    if name not in timm.list_models():
        raise ConfigError(str(unknown("timm model", name, timm.list_models())))
    model = timm.create_model(
        name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_channels,
        drop_rate=config.regularizer("dropout"),
        drop_path_rate=config.regularizer("drop_path"),
    )
    return convert(model, model_spec(config), None if config.act == "relu" else config.act)


def _check_norm_batch(config: TrainConfig) -> None:
    """A batch-dependent normalizer needs more than one sample per normalization batch."""
    parsed = scheme(config.norm, config.act)
    size = config.norm_batch_size or parsed.norm_batch_size or config.batch_size
    if parsed.normalizer in BATCH_DEPENDENT and size < 2:
        raise ConfigError(
            f"norm {parsed.spec!r} normalizes over the batch, but a normalization batch of {size} "
            f"sample leaves it one value per channel after global pooling and none to compare "
            f"within a sample; use a batch size of at least 2 or a batch-independent scheme "
            f"such as 'gn8+pn' or 'ln+pn'"
        )


# -- one run -------------------------------------------------------------------------------------


@dataclass
class EpochResult:
    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    data_seconds: float = 0.0
    seconds: float = 0.0


@dataclass
class Run:
    """The state of one training run (see the module docstring)."""

    config: TrainConfig
    info: distributed.DistInfo
    model: nn.Module | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.config.out)
        self.device = self.info.device

    # -- set-up ---------------------------------------------------------------------------------

    def prepare(self) -> None:
        config = self.config
        _check_norm_batch(config)
        self._on_main(self._prepare_folder)
        common = {"seed": config.seed, "rank": self.info.rank, "world_size": self.info.world_size}
        common |= {"limit": config.limit, "workers": config.workers, "device": self.device}
        self.train_data = TrainBatches(
            config.data, "train", config.batch_size, train=True, **common
        )
        eval_batch = config.eval_batch_size or config.batch_size
        test_common = common | {"limit": config.test_limit}
        self.test_data = TrainBatches(config.data, "test", eval_batch, train=False, **test_common)
        if len(self.train_data) == 0:
            raise ConfigError(
                f"batch size {config.batch_size} is larger than the {self.train_data.num_samples} "
                f"training samples of this process: no full batch to train on"
            )
        torch.manual_seed(derived_seed(config.seed, "init"))  # the same weights on every rank
        model = self.model or build_model(
            config, self.train_data.num_classes, self.train_data.in_channels
        )
        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.sync_bn:
            model = distributed.convert_sync_batchnorm(model)
        self.module = model  # the bare model: state dicts, EMA
        self.classifier = classifier_parameters(model)
        self.net = distributed.wrap(model, self.info)
        if config.compile:
            self.net = torch.compile(self.net)
        self.resolved = config.resolved(self.info.world_size)
        self.optimizer = make_optimizer(
            model,
            config.optimizer,
            self.resolved.lr,
            config.weight_decay,
            config.momentum,
            config.nesterov,
        )
        steps_per_epoch = max(1, len(self.train_data) // config.accum_steps)
        self.scheduler = make_scheduler(
            self.optimizer,
            config.schedule,
            steps_per_epoch * config.epochs,
            round(config.warmup * steps_per_epoch),
            config.milestones,
            config.decay,
        )
        self.ema = ema_model(model, config.ema) if config.ema else None
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=config.amp and self.device.type == "cuda"
        )
        self.start_epoch = self._resume() if config.resume else 0
        self.probe = self._probe_batch() if config.diagnostics_every else None

    def _probe_batch(self) -> Tensor:
        """The first test images (no augmentation): the same batch at every probe."""
        parts, count = [], 0
        for x, _ in self.test_data.epoch(0):
            parts.append(x)
            count += x.shape[0]
            if count >= PROBE_SIZE:
                break
        return torch.cat(parts)[:PROBE_SIZE]

    def _diagnose(self, epochs_done: int) -> None:
        every, last = self.config.diagnostics_every, epochs_done == self.config.epochs
        if self.probe is None or not self.info.is_main:
            return
        if epochs_done % every and not last:
            return
        self.diagnostics.append(snapshot(self.module, self.probe, epochs_done))
        lines = "".join(json.dumps(record) + "\n" for record in self.diagnostics)
        ckpt.write_text_atomic(self.out / "diagnostics.jsonl", lines)

    def _prepare_folder(self) -> None:
        """Check that ``out`` is writable and holds no other run, before any work."""
        out, config = self.out, self.config
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        self.made_folders = [f for f in (out, *out.parents) if not f.exists()]  # deepest first
        try:
            out.mkdir(parents=True, exist_ok=True)
            ckpt.write_text_atomic(out / ".write-test", "")
            (out / ".write-test").unlink()
        except OSError as error:
            raise ConfigError(f"cannot write to --out {out}: {error.strerror}") from None
        if not config.resume and (out / "config.yaml").exists():
            raise ConfigError(
                f"--out {out} already holds a run (config.yaml); pass --resume to continue it or "
                f"choose another --out"
            )
        ckpt.remove_stale_temporaries(out)

    def remove_made_folders(self) -> None:
        """Remove the folders :meth:`_prepare_folder` created, where they are still empty."""
        for folder in getattr(self, "made_folders", []):
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): it holds something else now
                break

    def _on_main(self, work):
        """``work()`` on rank 0, its result (or its error, raised on every rank) sent to all."""
        outcome = None
        if self.info.is_main:
            try:
                outcome = ("ok", work())
            except ValueError as error:  # ConfigError, CheckpointError
                outcome = ("error", error)
        kind, value = distributed.broadcast_object(outcome, self.info)
        if kind == "error":
            raise value
        return value

    def _resume(self) -> int:
        """Load ``last.pt`` when there is one (read by rank 0, sent to every rank); return the
        first epoch to run."""
        state = self._on_main(self._read_checkpoint)
        if state is None:
            return 0
        path = self.out / "last.pt"
        try:
            self.module.load_state_dict(state["model"])
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise ckpt.CheckpointError(f"{path} holds another model's weights ({first})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        ckpt.set_rng_states(state["rng"])
        self.history = state["history"]
        self.diagnostics = state.get("diagnostics", [])
        return int(state["epoch"]) + 1

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """The run folder's last checkpoint, after checking its configuration is this run's."""
        path = self.out / "last.pt"
        saved_config = self.out / "config.yaml"
        if saved_config.exists():
            import yaml

            differences = config_differences(
                yaml.safe_load(saved_config.read_text()) or {}, self.resolved
            )
            if differences:
                raise ConfigError(
                    f"--resume: {self.out} holds a run of another configuration; differing keys: "
                    + "; ".join(differences)
                )
        return ckpt.load_checkpoint(path) if path.exists() else None

    # -- the epochs -----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        config, started = self.config, time.perf_counter()
        if self.info.is_main:
            ckpt.write_text_atomic(self.out / "config.yaml", dump_yaml(self.resolved))
        status, stopped_at, error = "finished", None, None
        writer = self._tensorboard()
        try:
            if self.start_epoch == 0:
                self._diagnose(0)
            for epoch in range(self.start_epoch, config.epochs):
                try:
                    row = self._epoch(epoch)
                except (DivergedError, NonFiniteError):  # a NaN/inf loss or activation
                    status, stopped_at = "diverged", epoch
                    break
                self.history.append(row)
                self._diagnose(epoch + 1)
                if self.info.is_main:
                    self._write_epoch(row, writer)
                distributed.barrier(self.info)
        except Exception as failure:  # recorded in summary.json, then raised to the caller
            status, error = "failed", f"{type(failure).__name__}: {failure}"
            raise
        finally:
            if writer is not None:
                writer.close()
            summary = self._summary(status, stopped_at, time.perf_counter() - started, error)
            if self.info.is_main:
                text = json.dumps(summary, indent=2) + "\n"
                ckpt.write_text_atomic(self.out / "summary.json", text)
        return summary

    def _epoch(self, epoch: int) -> dict[str, Any]:
        torch.manual_seed(derived_seed(self.config.seed, epoch, self.info.rank, "global"))
        started, cpu_started = time.perf_counter(), time.process_time()
        result = self._train_epoch(epoch)
        train_seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # this process, all its threads
        test_loss, test_accuracy = self._evaluate(self.module)  # not through DDP: no buffer sync
        ema_accuracy = self._evaluate(self.ema)[1] if self.ema is not None else None
        sums = distributed.all_reduce_sum(
            torch.tensor(
                [result.loss_sum, result.correct, result.count, result.data_seconds],
                dtype=torch.float64,
            ),
            self.info,
        )
        loss_sum, correct, count, data_seconds = (float(v) for v in sums)
        return {
            "epoch": epoch,
            "train_samples": int(count),
            "train_loss": loss_sum / count,
            "train_accuracy": correct / count,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "ema_test_accuracy": ema_accuracy,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": train_seconds,
            "cpu_seconds": cpu_seconds,
            "images_per_second": count / train_seconds,
            "data_fraction": data_seconds / self.info.world_size / train_seconds,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.config.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _train_epoch(self, epoch: int) -> EpochResult:
        config, result = self.config, EpochResult()
        self.net.train()
        rng = np.random.default_rng(derived_seed(config.seed, epoch, self.info.rank, "mix"))
        num_classes = self.train_data.num_classes
        smoothing = config.regularizer("label_smoothing")
        mixup, cutmix = config.regularizer("mixup"), config.regularizer("cutmix")
        batches = iter(self.train_data.epoch(epoch))
        steps = (len(self.train_data) // config.accum_steps) * config.accum_steps
        bar = _ProgressBar(epoch, config.epochs, steps, self.config.progress and self.info.is_main)
        for step in range(steps):
            waited = time.perf_counter()
            x, y = next(batches)
            result.data_seconds += time.perf_counter() - waited
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            targets = soft_targets(y, num_classes, smoothing)
            x, targets = mix_batch(x, targets, mixup, cutmix, rng)
            last = (step + 1) % config.accum_steps == 0
            sync = (
                contextlib.nullcontext()
                if last or not self.info.distributed
                else self.net.no_sync()
            )
            with sync:
                with self._autocast():
                    logits = self.net(x)
                    loss = soft_cross_entropy(logits.float(), targets)
                if not torch.isfinite(loss):
                    raise DivergedError
                self.scaler.scale(loss / config.accum_steps).backward()
            result.loss_sum += float(loss.detach()) * y.shape[0]
            result.correct += float((logits.argmax(1) == y).sum())
            result.count += y.shape[0]
            if last:
                self._step()
            bar.advance(result.loss_sum / result.count, result.count)
        bar.close()
        return result

    def _step(self) -> None:
        if self.config.agc:
            self.scaler.unscale_(self.optimizer)
            params = [p for p in self.module.parameters() if id(p) not in self.classifier]
            adaptive_gradient_clip(params, self.config.agc)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)

    @torch.no_grad()
    def _evaluate(self, net: nn.Module) -> tuple[float, float]:
        net.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        for x, y in self.test_data.epoch(0):
            if self.config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = net(x).float()
            sums += torch.tensor(
                [
                    float(F.cross_entropy(logits, y, reduction="sum")),
                    float((logits.argmax(1) == y).sum()),
                    y.shape[0],
                ],
                dtype=torch.float64,
            )
        loss, correct, count = (float(v) for v in distributed.all_reduce_sum(sums, self.info))
        return loss / max(count, 1), correct / max(count, 1)

    # -- files ----------------------------------------------------------------------------------

    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": ckpt.rng_states(),
            "history": self.history,
            "diagnostics": self.diagnostics,
            "config": self.resolved.to_dict(),
        }

    def _write_epoch(self, row: dict[str, Any], writer) -> None:
        write_metrics(self.out, self.history)
        state = self._checkpoint_state(row["epoch"])
        best = max(self.history, key=lambda r: r["test_accuracy"])
        if best is row:
            ckpt.save_checkpoint(self.out / "best.pt", state)
        ckpt.save_checkpoint(self.out / "last.pt", state)
        if writer is not None:
            for key in METRIC_KEYS[1:]:
                if row[key] is not None:
                    writer.add_scalar(key, row[key], row["epoch"])
        self._log(row)

    def _log(self, row: dict[str, Any]) -> None:
        if not self.config.progress:
            return
        print(
            f"epoch {row['epoch'] + 1}/{self.config.epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} "
            f"acc {row['test_accuracy']:.4f} | lr {row['lr']:.4g} | "
            f"{row['images_per_second']:.0f} img/s, data {100 * row['data_fraction']:.1f}%",
            file=sys.stderr,
            flush=True,
        )

    def _tensorboard(self):
        if not (self.config.tensorboard and self.info.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package (pip install tensorboard)"
            ) from None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _summary(
        self, status: str, diverged_at: int | None, seconds: float, error: str | None
    ) -> dict[str, Any]:
        accuracies = [r["test_accuracy"] for r in self.history]
        train = [r["train_accuracy"] for r in self.history]
        return {
            "status": status,
            "epochs": len(self.history),
            "diverged_epoch": diverged_at,
            "final_test_accuracy": accuracies[-1] if accuracies else None,
            "best_test_accuracy": max(accuracies) if accuracies else None,
            "mean_train_accuracy": sum(train) / len(train) if train else None,
            "final_train_loss": self.history[-1]["train_loss"] if self.history else None,
            "wall_seconds": seconds,
            "error": error,
            "config": self.resolved.to_dict(),
        }


class _ProgressBar:
    """A rich progress bar over an epoch's steps (loss, images/s) on a terminal; nothing
    otherwise (the per-epoch log line is printed either way)."""

    def __init__(self, epoch: int, epochs: int, steps: int, enabled: bool) -> None:
        self.progress = None
        if not (enabled and sys.stderr.isatty()):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn(f"epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("train", total=steps, status="")
        self.progress.start()

    def advance(self, loss: float, images: float) -> None:
        if self.progress is None:
            return
        rate = images / max(time.perf_counter() - self.started, 1e-9)
        self.progress.update(self.task, advance=1, status=f"loss {loss:.4f}, {rate:.0f} img/s")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` and ``metrics.csv`` of every epoch so far."""
    lines = "".join(json.dumps(row) + "\n" for row in history)
    ckpt.write_text_atomic(out / "metrics.jsonl", lines)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=METRIC_KEYS)
    writer.writeheader()
    writer.writerows(history)
    ckpt.write_text_atomic(out / "metrics.csv", table.getvalue())


def train(config: TrainConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """Train as ``config`` says (see the module docstring); return the summary.

    ``model`` replaces the zoo model ``config.model`` (e.g. a converted torchvision or timm
    model); launched by torchrun, every process calls ``train`` and rank 0 writes the files.
    """
    config.validate()
    info = distributed.setup(config.device)
    try:
        run = Run(config, info, model)
        try:
            run.prepare()
        except BaseException:  # a run refused before it started leaves no empty --out behind
            run.remove_made_folders()
            raise
        return run.fit()
    finally:
        distributed.cleanup(info)


__all__ = ["METRIC_KEYS", "TIMING_KEYS", "Run", "build_model", "train", "write_metrics"]
