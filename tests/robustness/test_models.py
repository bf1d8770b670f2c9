"""scheme(), models.create, the models' inputs, convert and fold at their edges: each probe a
clear error naming the argument (or the model) and the choices, or a result that is checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normlab import convert, fold, models, scheme
from normlab._checks import ArgumentTypeError

from .probes import check, clear_error, ids

# -- scheme() --------------------------------------------------------------------------------

BAD_SPECS = [
    ("", "unknown scheme ''", "Valid forms"),
    ("+pn", "'' is not a valid normalizer", "Valid forms"),
    ("bn++pn", "'' is not a valid modifier", "+pn, +ws, +sws, +wn, +cwn"),
    ("bn/0", "the batch must be a positive integer, got 0", "bn/0"),
    ("gn0", "the group count must be a positive integer, got 0", "gn0"),
    ("gn/0", "the group size must be a positive integer, got 0", "gn/0"),
    ("evo-s0/0", "the group size must be a positive integer", "evo-s0/0"),
    ("bn/", "'bn/' is not a valid normalizer", "bn/<k>"),
    ("gn8+pn+pn", "repeats the modifier '+pn'", "gn8+pn+pn"),
    ("bn+ws+sws", "combines weight-space modifiers +ws, +sws", "choose at most one"),
    ("nf+pn", "'nf' takes no modifiers", "nf+pn"),
    ("none+pn", "+pn needs a normalization step", "'none' is not"),
    ("frn+pn", "+pn needs a normalization step", "'frn' is not"),
    ("batchnorm", "unknown scheme 'batchnorm'", "Did you mean 'bn'?"),
    ("groupnorm8+pn", "unknown scheme", "Did you mean"),
    ("bn+proxy", "'proxy' is not a valid modifier", "modifiers +pn, +ws"),
    ("gn-8", "unknown scheme 'gn-8'", "gn<G>"),
    ("ln+pn+", "'' is not a valid modifier", "ln+pn+"),
]


@pytest.mark.parametrize(("spec", "first", "second"), BAD_SPECS, ids=ids)
def test_bad_scheme_specs_list_the_forms(spec, first, second):
    check(lambda: scheme(spec), ValueError, (first, second))


@pytest.mark.parametrize("spec", [3, None, b"bn", ["bn"], 1.5], ids=ids)
def test_a_spec_is_a_string(spec):
    check(lambda: scheme(spec), TypeError, "a scheme spec must be a string")


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [("BN", "bn"), (" gn8 + pn ", "gn8+pn"), ("LN+PN", "ln+pn"), ("bn/16", "bn/16"),
     ("gn/4+ws", "gn/4+ws"), ("pn+gn8", None), ("evo-s0/8", "evo-s0/8"), ("nf", "nf")],
    ids=ids,
)  # fmt: skip
def test_spec_edges_parse_to_their_canonical_form(spec, canonical):
    if canonical is None:  # a modifier first is not a normalizer
        check(lambda: scheme(spec), ValueError, "'pn' is not a valid normalizer")
    else:
        assert scheme(spec).spec == canonical


@pytest.mark.parametrize("act", ["bogus", "", 3, None], ids=ids)
def test_a_bad_activation_lists_the_activations(act):
    if act is None:
        assert scheme("bn", None).activation == "relu"
        return
    check(lambda: scheme("bn", act), ValueError, ("unknown activation", "relu, leaky_relu"))


BUILDERS = {
    "norm": lambda v: scheme("bn").norm(v),
    "norm_act": lambda v: scheme("gn2+pn").norm_act(v),
    "act": lambda v: scheme("ln+pn").act(v),
    "conv-in": lambda v: scheme("bn").conv(v, 4, 3),
    "conv-out": lambda v: scheme("bn+ws").conv(4, v, 3),
}
ARGUMENT = {"norm": "num_channels", "norm_act": "num_channels", "act": "num_channels"}
ARGUMENT |= {"conv-in": "in_channels", "conv-out": "out_channels"}


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (2.0, ArgumentTypeError), ("4", ArgumentTypeError),
     (None, ArgumentTypeError), (True, ArgumentTypeError)],
    ids=ids,
)  # fmt: skip
def test_scheme_builders_name_their_channel_argument(builder, value, error):
    check(
        lambda: BUILDERS[builder](value),
        error,
        f"{ARGUMENT[builder]} must be a positive integer, got {value!r}",
    )


def test_a_group_count_that_cannot_divide_names_both():
    check(lambda: scheme("gn8").norm_act(12), ValueError, "8 groups do not divide 12 channels")


# -- models.create ---------------------------------------------------------------------------

WIDTH = "width (the width multiplier) must be a finite number in (0, 64]"


@pytest.mark.parametrize(
    ("width", "error"),
    [(math.inf, ValueError), (math.nan, ValueError), (0, ValueError), (-0.5, ValueError),
     (65, ValueError), (1e9, ValueError), ("1", ArgumentTypeError), (None, ArgumentTypeError),
     (True, ArgumentTypeError)],
    ids=ids,
)  # fmt: skip
@pytest.mark.parametrize("name", ["resnet20", "cnn10", "nf_resnet20", "resnet56_post"])
def test_width_is_bounded_and_named(name, width, error):
    """inf used to raise an OverflowError, 1e9 a terabyte allocation."""
    check(lambda: models.create(name, width=width), error, (WIDTH, repr(width)))


@pytest.mark.parametrize("width", [0.01, 0.25, np.float32(0.5), 1])
def test_width_edges_build(width):
    model = models.create("resnet20", width=width)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name", [3, None, "", "ResNet-20", "resnet"], ids=ids)
def test_an_unknown_model_lists_the_zoo(name):
    check(lambda: models.create(name), ValueError, ("unknown model", "resnet20, resnet32"))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
     ({"num_classes": 2.5}, "num_classes must be a positive integer, got 2.5"),
     ({"in_channels": -1}, "in_channels must be a positive integer, got -1"),
     ({"dropout": 1.0}, "dropout must be a finite number in [0, 1), got 1.0"),
     ({"dropout": math.nan}, "dropout must be a finite number in [0, 1), got nan"),
     ({"drop_path_rate": -0.1}, "drop_path_rate must be a finite number in [0, 1)"),
     ({"norm": "gn3"}, "3 groups do not divide 4 channels"),
     ({"norm": 7}, "a scheme spec must be a string"),
     ({"act": "bogus"}, "unknown activation 'bogus'")],
    ids=ids,
)  # fmt: skip
def test_bad_model_keywords_name_the_keyword(kwargs, words):
    check(lambda: models.create("resnet20", width=0.25, **kwargs), (ValueError, TypeError), words)


# -- a model's input -------------------------------------------------------------------------

ZOO = {
    "resnet20": ("ResNetV2", {"width": 0.25}),
    "resnet18": ("ResNetV2", {"width": 0.25}),
    "efficientnet_b0": ("EfficientNet", {"width": 0.25}),
    "cnn10": ("PlainCNN", {"width": 0.25}),
    "resnet56_post": ("ResNetPost", {"width": 0.25}),
    "nf_resnet20": ("NFResNet", {"width": 0.25}),
    "random_net": ("RandomNet", {"width": 4, "depth": 2}),
}
_built: dict[str, nn.Module] = {}


def zoo(name: str) -> nn.Module:
    if name not in _built:
        torch.manual_seed(0)
        _built[name] = models.create(name, **ZOO[name][1]).eval()
    return _built[name]


BAD_INPUTS = {
    "1-channel": (lambda: torch.randn(2, 1, 16, 16), ValueError,
                  "was built for 3 input channels but got images with 1"),
    "unbatched": (lambda: torch.randn(3, 16, 16), ValueError,
                  "looks like one image without its batch dim: add it with x.unsqueeze(0)"),
    "5-d": (lambda: torch.randn(1, 2, 3, 16, 16), ValueError,
            "expects images of shape (N, C, H, W) with C = 3, got a 5-d tensor"),
    "2-d": (lambda: torch.randn(2, 3), ValueError, "got a 2-d tensor of shape (2, 3)"),
    "uint8": (lambda: torch.zeros(2, 3, 16, 16, dtype=torch.uint8), TypeError,
              "supports floating-point inputs"),
    "float64": (lambda: torch.randn(2, 3, 16, 16, dtype=torch.float64), TypeError,
                "holds float32 parameters but got a float64 input"),
    "bfloat16": (lambda: torch.randn(2, 3, 16, 16, dtype=torch.bfloat16), TypeError,
                 "holds float32 parameters but got a bfloat16 input"),
    "list": (lambda: [[0.0]], TypeError, "expects a torch.Tensor of images (N, C, H, W)"),
    "meta": (lambda: torch.randn(2, 3, 16, 16, device="meta"), ValueError,
             "holds its parameters on cpu but got an input on meta"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ZOO))
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_a_models_wrong_input_is_named_at_its_entry(name, case):
    """The first plain torch layer used to answer with torch's words (or, for one unbatched
    image, run and let the normalizations read it as a batch of C inputs)."""
    make, error, words = BAD_INPUTS[case]
    model = zoo(name)
    check(lambda: model(make()), error, (ZOO[name][0], words))


@pytest.mark.parametrize("name", list(ZOO))
def test_a_models_valid_input_gives_finite_outputs_of_the_right_shape(name):
    model = zoo(name)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape[0] == 2
    assert bool(torch.isfinite(out).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast decides the dtypes
        assert model(torch.randn(2, 3, 16, 16)).shape == out.shape


# -- convert and fold ------------------------------------------------------------------------


def plain_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"norm": "bogus"}, ValueError, "unknown scheme 'bogus'"),
     ({"norm": 3}, TypeError, "a scheme spec must be a string"),
     ({"act": "bogus"}, ValueError, "unknown activation 'bogus'"),
     ({"norm": "gn3"}, ValueError, "3 groups do not divide 4 channels"),
     ({"sync_batchnorm": True}, ValueError, "sync_batchnorm=True converts to"),
     ({"example_inputs": 3}, TypeError, "example_inputs must be a tensor or a tuple")],
    ids=ids,
)  # fmt: skip
def test_bad_convert_arguments(kwargs, error, words):
    check(lambda: convert(plain_net(), **kwargs), error, words)


@pytest.mark.parametrize("model", [None, "resnet20", torch.randn(2), nn.Module], ids=ids)
def test_convert_and_fold_want_a_module(model):
    check(lambda: convert(model), TypeError, "convert expects an nn.Module")
    check(lambda: fold(model), TypeError, "fold expects an nn.Module")


@pytest.mark.parametrize("spec", ["gn2+pn", "ln+pn", "bn", "frn", "vn+pn"])
def test_a_converted_then_folded_model_computes_the_converted_ones_function(spec):
    converted = convert(plain_net(), norm=spec).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    folded = fold(converted)
    torch.testing.assert_close(folded(x), converted(x), atol=1e-5, rtol=1e-5)


def test_fold_of_a_zoo_model_traces_through_the_entry_check():
    model = zoo("resnet20")
    x = torch.randn(2, 3, 8, 8)
    folded = fold(model)
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(
    channels=st.integers(1, 4),
    side=st.integers(1, 9),
    batch=st.integers(1, 3),
)
def test_random_net_runs_on_any_image_size_or_says_what_it_needs(channels, side, batch):
    model = models.create("random_net", depth=2, width=4, in_channels=channels, kernel_size=3)
    x = torch.randn(batch, channels, side, side)
    if batch * side * side < 2:  # BatchNorm needs more than one value per channel
        with clear_error(ValueError, "more than one value"):
            model.train()(x)
    else:
        out = model.train()(x)
        assert out.shape == (batch, 4, side, side)
        assert bool(torch.isfinite(out).all())
