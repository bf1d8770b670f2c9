"""Grid expansion: the product, readable slugs with a config hash, and every malformed grid."""

from __future__ import annotations

import dataclasses

import pytest

from normlab.experiments import config_hash, expand, preset
from normlab.training import TrainConfig

BASE = {"model": "resnet20", "epochs": 2}


def test_the_grid_is_the_product_of_its_lists_times_the_cases(tmp_path):
    spec = {
        "base": BASE,
        "grid": {"norm": ["bn", "gn8+pn"], "seed": [0, 1, 2]},
        "cases": [{}, {"regularization": "extra"}],
    }
    folder, runs = expand(spec, tmp_path / "sweep")
    assert folder == tmp_path / "sweep"
    assert len(runs) == 2 * 3 * 2
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    first = runs[0]
    assert first.varying == {"norm": "bn", "seed": 0}
    assert first.name.startswith("norm-bn_seed-0_")
    extra = runs[1]
    assert extra.varying == {"norm": "bn", "seed": 0, "regularization": "extra"}
    assert extra.config.regularization == "extra"
    assert all(r.config.epochs == 2 for r in runs)
    assert all(r.config.out == str(folder / r.name) for r in runs)


def test_the_hash_changes_with_any_setting_that_changes_the_run():
    config = TrainConfig(model="resnet20")
    assert config_hash(config) == config_hash(dataclasses.replace(config, out="elsewhere"))
    assert config_hash(config) == config_hash(dataclasses.replace(config, workers=4))
    for change in ({"lr": 0.2}, {"seed": 1}, {"norm": "ln+pn"}, {"milestones": (0.3, 0.6)}):
        assert config_hash(config) != config_hash(dataclasses.replace(config, **change))


def test_a_value_that_is_not_filesystem_safe_is_slugged(tmp_path):
    spec = {"base": BASE, "grid": {"data": ["folder:/a b/c", "gaussian:3x8x8"]}}
    _, runs = expand(spec, tmp_path)
    assert runs[0].name.startswith("data-folder_a_b_c_")
    assert "/" not in runs[0].name
    assert " " not in runs[0].name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"base": BASE, "grid": {"nrom": ["bn"]}},
            "'nrom' is not a config key; did you mean 'norm'",
        ),
        ({"base": {"epoch": 2}}, "did you mean 'epochs'"),
        ({"grid": {"norm": []}}, "non-empty list"),
        ({"grid": {"norm": "bn"}}, "non-empty list"),
        ({}, "the grid is empty"),
        ({"base": BASE, "grids": {}}, "unknown grid section"),
        ({"base": BASE, "cases": [{"seed": 1}, {"seed": 1}]}, "the same run twice"),
        ({"base": BASE, "grid": {"optimizer": ["sgd", "adam"]}}, "Did you mean 'adamw'"),
    ],
)
def test_malformed_grids_are_refused_with_the_reason(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        expand(spec, tmp_path)


def test_presets_have_the_papers_settings():
    _, runs = expand(preset("beyond-bn-cifar100", "cifar100:/data"), "runs/bb")
    assert len(runs) == 30
    config = runs[0].config
    assert (config.epochs, config.batch_size, config.weight_decay) == (60, 256, 1e-4)
    assert config.milestones == (0.75, 0.9)
    assert config.base_lr() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs --data"):
        preset("pn-imagenet-resnet50", None)
    with pytest.raises(ValueError, match="Did you mean 'beyond-bn-cifar100'"):
        preset("beyond-bn-cifar10", "x")
