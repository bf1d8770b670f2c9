"""``models.create`` checks its keywords against the model's class and names the model's layers."""

from __future__ import annotations

import inspect

import pytest
import torch

from normlab import models
from normlab._checks import layer_name
from normlab.models import create, info, names


@pytest.mark.parametrize("name", names())
def test_an_unknown_keyword_lists_the_models_keywords(name):
    with pytest.raises(TypeError, match=f"model {name!r} takes no keyword argument 'bogus'") as e:
        create(name, bogus=1)
    message = str(e.value)
    for keyword in info(name).keywords:
        assert keyword in message
    assert "Did you mean" not in message  # nothing is close to 'bogus'


@pytest.mark.parametrize(
    ("name", "typo", "suggestion"),
    [
        ("resnet20", "widht", "width"),
        ("resnet20", "num_class", "num_classes"),
        ("efficientnet_b0", "drop_path", "drop_path_rate"),
        ("resnet56_post", "skip_init", "skipinit"),
        ("random_net", "gamma_sd", "gamma_std"),
        ("nf_resnet20", "alpah", "alpha"),
    ],
)
def test_a_mistyped_keyword_suggests_the_closest(name, typo, suggestion):
    with pytest.raises(TypeError, match=f"Did you mean {suggestion!r}"):
        create(name, **{typo: 1})


def test_a_keyword_the_factory_sets_is_refused_as_such():
    with pytest.raises(TypeError, match="'resnet56_post' sets 'depth' itself"):
        create("resnet56_post", depth=20)


@pytest.mark.parametrize("name", names())
def test_the_keywords_are_the_classes(name):
    """Every listed keyword is a parameter of the class the factory builds (no keyword is
    refused that the class takes, none is listed that it does not)."""
    built = inspect.signature(info(name).factory).return_annotation
    cls = getattr(models, built) if isinstance(built, str) else built
    own = inspect.signature(cls).parameters
    keywords = info(name).keywords
    assert set(keywords) <= set(own)
    assert {"norm", "act", "num_classes", "in_channels"} <= set(keywords)
    assert "config" not in keywords


def test_valid_keywords_build():
    model = create("resnet20", norm="gn8", act="gelu", num_classes=3, width=0.5, dropout=0.1)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    net = create("random_net", depth=2, width=4, kernel_size=1, seed=3)
    assert net(torch.randn(2, 3, 4, 4)).shape == (2, 4, 4, 4)


def test_created_models_name_their_layers():
    model = create("resnet20", norm="bn", width=0.25)
    norm = model.layer2[1].norm_act2.norm
    assert layer_name(norm) == "BatchNorm 'layer2.1.norm_act2.norm'"
    assert "_normlab_name" not in str(model.state_dict().keys())


@pytest.mark.parametrize(
    ("name", "kwargs", "words"),
    [
        ("resnet20", {"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ("resnet20", {"in_channels": 0}, "stem.conv: in_channels must be a positive integer"),
        ("cnn10", {"in_channels": 2.0}, "in_channels must be a positive integer, got 2.0"),
        ("resnet20", {"drop_path_rate": 1.0}, "drop_path_rate must be a finite number in [0, 1)"),
        ("resnet20", {"dropout": -0.1}, "dropout must be a finite number in [0, 1), got -0.1"),
        ("cnn10", {"dropout": "0.1"}, "dropout must be a finite number in [0, 1), got '0.1'"),
        ("nf_resnet20", {"alpha": 0}, "alpha must be a positive finite number, got 0"),
        ("nf_resnet20", {"alpha": "0.2"}, "alpha must be a positive finite number, got '0.2'"),
        ("random_net", {"gamma_std": -1}, "gamma_std must be a finite number in [0, inf)"),
        ("random_net", {"beta_mean": float("nan")}, "beta_mean must be a finite number, got nan"),
        ("random_net", {"seed": 1.5}, "seed must be an integer, got 1.5 (a float)"),
        ("random_net", {"kernel_size": 0}, "kernel_size must be a positive integer, got 0"),
    ],
)
def test_bad_values_name_the_keyword_and_the_range(name, kwargs, words):
    with pytest.raises(ValueError) as info:  # noqa: PT011 (the words are checked below)
        create(name, **kwargs)
    assert words in str(info.value)
