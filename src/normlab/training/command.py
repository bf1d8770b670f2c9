"""``normlab train``: the command line over :func:`normlab.training.train`.

Each flag is a :class:`~normlab.training.TrainConfig` key (``--batch-size`` for ``batch_size``).
Settings come from the defaults, then ``--config FILE.yaml``, then the flags given; with
``--resume`` and no ``--config``, from the run folder's own ``config.yaml``. The resolved
configuration is saved in the run folder. Exit codes: 0 finished, 1 diverged, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from .._argtypes import (
    fraction,
    integer,
    non_negative_float,
    non_negative_int,
    number,
    positive_float,
    positive_int,
)
from ..models._common import MAX_WIDTH
from .config import TrainConfig, from_dict, load_yaml

HELP = {
    "model": "a zoo model (`normlab models`), e.g. resnet20, resnet50, efficientnet_b0",
    "norm": "normalization scheme spec (`normlab schemes`), e.g. bn, gn8+pn, ln+pn",
    "act": "activation φ (relu, silu, gelu, ...)",
    "width": "model width multiplier",
    "data": "data spec: gaussian, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, cifar100:DIR, "
    "folder:DIR (DIR/train/CLASS/*.png and DIR/val/CLASS/...)",
    "epochs": "epochs to train",
    "batch_size": "optimization batch per process",
    "norm_batch_size": "BatchNorm's normalization batch (ghost batches), dividing --batch-size",
    "accum_steps": "gradient accumulation steps per optimizer step",
    "lr": "base learning rate (default 0.1·B/256, B = batch × accum-steps × processes)",
    "optimizer": "sgd or adamw",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum",
    "schedule": "step (×decay at the milestones), cosine or constant, after the warm-up",
    "milestones": "step schedule milestones, as fractions of the run (default 0.5 0.75)",
    "decay": "step schedule factor",
    "warmup": "linear warm-up, in epochs (fractions allowed)",
    "weight_decay": "weight decay of conv/linear weights and PN's β̃, γ̃",
    "regularization": "none or extra (label smoothing, mixup, dropout, stochastic depth)",
    "label_smoothing": "label smoothing ε (overrides the preset)",
    "mixup": "mixup α (0 off; overrides the preset)",
    "cutmix": "cutmix α (0 off; overrides the preset)",
    "dropout": "dropout before the classifier (overrides the preset)",
    "drop_path": "stochastic depth rate of the last residual block (overrides the preset)",
    "ema": "EMA decay of the weights, e.g. 0.999 (off by default)",
    "agc": "adaptive gradient clipping λ, e.g. 0.01 for NF nets (off by default)",
    "seed": "random seed",
    "limit": "train on the first N training samples only",
    "test_limit": "evaluate on the first N test samples only",
    "device": "torch device: cpu, cuda (cuda:LOCAL_RANK under torchrun)",
    "amp": "mixed precision (bfloat16 on CPU, float16 with loss scaling on CUDA)",
    "compile": "torch.compile the model",
    "channels_last": "channels-last memory format",
    "sync_bn": "synchronize BatchNorm statistics across processes (DDP)",
    "workers": "data-loader worker processes (folder data)",
    "eval_batch_size": "evaluation batch (default: --batch-size)",
    "diagnostics_every": "power decomposition and feature probes every k epochs (0: off)",
    "out": "run folder",
    "resume": "continue the run in --out from its last checkpoint",
    "tensorboard": "also write TensorBoard event files",
    "progress": "per-epoch log lines",
}
HIDDEN = ("extra",)
# The valid range of every numeric flag (the same as TrainConfig.validate's), checked when parsed.
FLAG_TYPES = {
    "width": number(low=0.0, high=MAX_WIDTH, low_open=True),
    "epochs": positive_int,
    "batch_size": positive_int,
    "norm_batch_size": positive_int,
    "accum_steps": positive_int,
    "lr": positive_float,
    "momentum": fraction,
    "milestones": number(low=0.0, high=1.0, low_open=True, high_open=True),
    "decay": number(low=0.0, high=1.0, low_open=True),
    "warmup": non_negative_float,
    "weight_decay": non_negative_float,
    "label_smoothing": fraction,
    "mixup": non_negative_float,
    "cutmix": non_negative_float,
    "dropout": fraction,
    "drop_path": fraction,
    "ema": number(low=0.0, high=1.0, low_open=True, high_open=True),
    "agc": positive_float,
    "seed": non_negative_int,
    "limit": positive_int,
    "test_limit": positive_int,
    "workers": non_negative_int,
    "eval_batch_size": positive_int,
    "diagnostics_every": non_negative_int,
}


def _flag_type(annotation: str) -> tuple[type, bool]:
    """(element type, repeated) of a TrainConfig annotation such as ``int | None``."""
    hint = eval(annotation, {"tuple": tuple}) if isinstance(annotation, str) else annotation
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "train",
        help="train a zoo model under a normalization scheme (resumable, distributed)",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--config", help="a YAML file of config keys (flags override it)")
    for field in dataclasses.fields(TrainConfig):
        if field.name in HIDDEN:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind, repeated = _flag_type(field.type)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=HELP[field.name])
            continue
        nargs = "+" if repeated else None
        metavar = field.name.upper()
        if kind in (int, float):
            kind = FLAG_TYPES.get(field.name, integer() if kind is int else number())
        parser.add_argument(flag, type=kind, nargs=nargs, metavar=metavar, help=HELP[field.name])
    parser.set_defaults(run=run_command, **{f.name: None for f in dataclasses.fields(TrainConfig)})
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    base = TrainConfig()
    if args.config:
        base = from_dict(load_yaml(args.config))
    elif given.get("resume"):
        saved = Path(given.get("out", base.out)) / "config.yaml"
        if saved.exists():
            base = from_dict(load_yaml(saved))
    return from_dict(given, base).validate()


def run_command(args: argparse.Namespace, console) -> int:
    from .loop import train

    summary = train(config_from_args(args))
    if summary["status"] == "diverged":
        print(
            f"normlab train: the loss diverged (NaN or inf) in epoch "
            f"{summary['diverged_epoch'] + 1}; summary.json records status 'diverged'. Lower "
            f"--lr or use a more stable scheme.",
            file=sys.stderr,
        )
        return 1
    accuracy = summary["final_test_accuracy"]
    if accuracy is not None:
        console.print(
            f"finished {summary['epochs']} epochs: test accuracy {accuracy:.4f} "
            f"(best {summary['best_test_accuracy']:.4f}), run folder {args.out or 'runs/run'}"
        )
    return 0
