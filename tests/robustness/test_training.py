"""The training configuration, its YAML files, checkpoints and train() at their edges: every
config key with values it refuses (each error names the key and the valid range or choices), and
files that are missing, corrupt or of another run."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from normlab.training import ConfigError, TrainConfig, from_dict, load_yaml, train
from normlab.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

from .probes import check, ids

# key -> [(bad value, words of the error)]
BAD_VALUES = {
    "model": [("bogus", "unknown model 'bogus'; valid choices: resnet20"), (3, "model must be a string"), ("", "model must be a non-empty string")],
    "norm": [("bogus", "unknown scheme 'bogus'"), (None, "norm must be a string"), ("gn8+pn+pn", "repeats the modifier")],
    "act": [("bogus", "unknown activation 'bogus'"), (1.0, "act must be a string")],
    "width": [(0, "width must be a finite number in (0.0, 64.0]"), (math.inf, "got inf"), (1e9, "got 1000000000.0"), ("1", "got '1'")],
    "data": [("bogus:x", "unknown dataset 'bogus'"), (3, "data must be a string"), ("", "data must be a non-empty string")],
    "epochs": [(0, "epochs must be a positive integer, got 0"), (1.5, "got 1.5"), (True, "got True")],
    "batch_size": [(0, "batch_size must be a positive integer"), (-8, "got -8"), ("8", "got '8'")],
    "norm_batch_size": [(0, "norm_batch_size must be a positive integer"), (3, "norm_batch_size 3 does not divide the per-device batch size 128")],
    "accum_steps": [(0, "accum_steps must be a positive integer"), (2.0, "got 2.0")],
    "lr": [(0, "lr must be a finite number in (0.0, inf]"), (-1, "got -1"), (math.nan, "got nan"), ("0.1", "got '0.1'")],
    "optimizer": [("adam", "unknown optimizer 'adam'; valid choices: sgd, adamw"), (None, "unknown optimizer None")],
    "momentum": [(1.0, "momentum must be a finite number in [0.0, 1.0)"), (-0.1, "got -0.1")],
    "schedule": [("linear", "unknown schedule 'linear'; valid choices: step, cosine, constant")],
    "milestones": [((0.5, 1.5), "milestones must be fractions of the epochs in (0, 1)"), (0.5, "milestones must be a list"), ("0.5", "got '0.5'"), ((True,), "got [True]")],
    "decay": [(0, "decay must be a finite number in (0.0, 1.0]"), (2, "got 2")],
    "warmup": [(-1, "warmup must be a finite number in [0.0, inf]"), (5, "warmup (5 epochs) must be shorter than the run (1 epochs)")],
    "weight_decay": [(-1e-4, "weight_decay must be a finite number in [0.0, inf]"), (math.inf, "got inf")],
    "regularization": [("heavy", "unknown regularization 'heavy'; valid choices: none, extra")],
    "label_smoothing": [(1.0, "label_smoothing must be a finite number in [0.0, 1.0)")],
    "mixup": [(-0.2, "mixup must be a finite number in [0.0, inf]")],
    "cutmix": [(math.nan, "cutmix must be a finite number")],
    "dropout": [(1.0, "dropout must be a finite number in [0.0, 1.0)")],
    "drop_path": [(-0.1, "drop_path must be a finite number in [0.0, 1.0)")],
    "ema": [(1.0, "ema must be a finite number in (0.0, 1.0)"), (0, "got 0")],
    "agc": [(0, "agc must be a finite number in (0.0, inf]")],
    "seed": [(-1, "seed must be a non-negative integer, got -1"), (1.5, "got 1.5")],
    "limit": [(0, "limit must be a positive integer")],
    "test_limit": [(-1, "test_limit must be a positive integer")],
    "device": [("gpu0", "unknown device 'gpu0'; valid choices: 'cpu', 'cuda', 'cuda:K', 'mps'"), ("meta", "device 'meta' cannot train"), (0, "device must be a string")],
    "amp": [("yes", "amp must be true or false, got 'yes'"), (1, "got 1 (int)")],
    "compile": [("false", "compile must be true or false, got 'false'")],
    "channels_last": [(None, "channels_last must be true or false")],
    "sync_bn": [("no", "sync_bn must be true or false")],
    "nesterov": [(0, "nesterov must be true or false")],
    "resume": [("true", "resume must be true or false")],
    "progress": [("off", "progress must be true or false")],
    "tensorboard": [(1.0, "tensorboard must be true or false")],
    "workers": [(-1, "workers must be a non-negative integer")],
    "eval_batch_size": [(0, "eval_batch_size must be a positive integer")],
    "diagnostics_every": [(-1, "diagnostics_every must be a non-negative integer")],
    "out": [(3, "out must be a string"), ("", "out must be a non-empty string")],
    "extra": [([1], "extra must be a mapping, got list")],
}  # fmt: skip
CASES = [(key, value, words) for key, values in BAD_VALUES.items() for value, words in values]


def test_every_config_key_is_probed():
    keys = {f.name for f in dataclasses.fields(TrainConfig)}
    assert keys == set(BAD_VALUES)


@pytest.mark.parametrize(("key", "value", "words"), CASES, ids=ids)
def test_a_bad_config_value_names_its_key(key, value, words):
    """A mistyped name or a "yes" for a flag used to pass validate() and fail (or silently
    switch the option on) only when the run started, one grid run at a time."""
    config = dataclasses.replace(TrainConfig(), **{key: value})
    check(config.validate, ConfigError, words)


def test_the_defaults_and_timm_names_validate():
    assert TrainConfig().validate().model == "resnet20"
    assert TrainConfig(model="timm:resnet18", device="cuda:3").validate().device == "cuda:3"


@pytest.mark.parametrize(
    ("values", "words"),
    [([1, 2], "a config must be a mapping of config keys, got list"),
     (None, "a config must be a mapping of config keys, got NoneType"),
     ({"epoch": 3}, "'epoch' is not a config key; did you mean 'epochs'?"),
     ({"milestones": 5}, "milestones must be a list"),
     ({"milestones": "0.5"}, "got '0.5'")],
    ids=ids,
)  # fmt: skip
def test_from_dict_refuses_what_is_not_a_config(values, words):
    check(lambda: from_dict(values).validate(), ConfigError, words)


@pytest.mark.parametrize(
    ("content", "words"),
    [("epochs: [1\n", "is not valid YAML"),
     ("- 1\n- 2\n", "must hold a mapping of config keys, got list"),
     ("just text\n", "must hold a mapping of config keys, got str"),
     (b"\xff\xfe\x00binary", "is not a YAML text file: byte 0 is not UTF-8")],
    ids=ids,
)  # fmt: skip
def test_bad_yaml_files_name_the_file(tmp_path, content, words):
    path = tmp_path / "config.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    check(lambda: load_yaml(path), (ConfigError, ValueError), (str(path), words))


def test_missing_and_folder_yaml_paths(tmp_path):
    check(lambda: load_yaml(tmp_path / "none.yaml"), ConfigError, "No such file or directory")
    check(lambda: load_yaml(tmp_path), ConfigError, "Is a directory")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}


# -- checkpoints -----------------------------------------------------------------------------


def _truncated() -> bytes:
    stream = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 0}, stream)
    return stream.getvalue()[: len(stream.getvalue()) // 2]


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "is not a readable normlab checkpoint"),
     (b"\x00garbage" * 20, "is not a readable normlab checkpoint"),
     (_truncated(), "is not a readable normlab checkpoint"),
     ("list", "is not a normlab training checkpoint"),
     ("no-epoch", "is not a normlab training checkpoint")],
    ids=ids,
)  # fmt: skip
def test_corrupt_checkpoints_are_refused_by_name(tmp_path, content, words):
    path = tmp_path / "last.pt"
    if content == "list":
        torch.save([1, 2], path)
    elif content == "no-epoch":
        torch.save({"model": {}}, path)
    else:
        path.write_bytes(content)
    check(lambda: load_checkpoint(path), CheckpointError, (str(path), words))


def test_missing_checkpoint_and_folder(tmp_path):
    check(lambda: load_checkpoint(tmp_path / "none.pt"), CheckpointError, "no checkpoint at")
    check(lambda: load_checkpoint(tmp_path), CheckpointError, "is not a readable")
    check(
        lambda: save_checkpoint(tmp_path / "nodir" / "last.pt", {"model": {}, "epoch": 0}),
        FileNotFoundError,
        "cannot write a file into a folder that does not exist",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_round_trip_is_exact(tmp_path):
    state = {"model": {"w": torch.randn(3)}, "epoch": 4, "metrics": [1.5]}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["epoch"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# -- train() ---------------------------------------------------------------------------------

TINY = {"model": "resnet20", "width": 0.25, "data": "gaussian:3x8x8", "limit": 8,
        "test_limit": 8, "batch_size": 8, "progress": False}  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"batch_size": 16}, ValueError, "fewer than batch_size 16"),
     ({"data": "gaussian:1x8x8", "model": "bogus"}, ConfigError, "unknown model 'bogus'"),
     ({"norm": "gn3"}, (ConfigError, ValueError), "3 groups do not divide")],
    ids=ids,
)  # fmt: skip
def test_train_refuses_before_writing_anything(tmp_path, kwargs, error, words):
    out = tmp_path / "run"
    config = TrainConfig(**(TINY | {"out": str(out)} | kwargs))
    check(lambda: train(config), error, words)
    assert not out.exists() or not (out / "summary.json").exists()


def test_a_tiny_run_finishes_and_resume_refuses_another_configuration(tmp_path):
    out = tmp_path / "run"
    summary = train(TrainConfig(**(TINY | {"out": str(out)})))
    assert summary["status"] == "finished"
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    again = TrainConfig(**(TINY | {"out": str(out)}))
    check(lambda: train(again), ConfigError, "already holds a run (config.yaml); pass --resume")
    other = TrainConfig(**(TINY | {"out": str(out), "resume": True, "lr": 0.5, "epochs": 2}))
    check(lambda: train(other), ConfigError, "holds a run of another configuration")
