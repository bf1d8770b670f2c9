"""The diagnostics at their edges: statistics of tensors that hold no usable values (complex,
meta, empty, NaN), profiles over bad data and arguments, the fits and the theorems' functions;
and, driven by hypothesis, results checked against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from normlab import models
from normlab._checks import ArgumentTypeError, NonFiniteError
from normlab.diagnostics import (
    ChannelMoments,
    PowerAccumulator,
    check_theorem1,
    check_theorem2,
    check_theorem3,
    cosine_similarity,
    fit_growth,
    gradient_profile,
    gram_matrix,
    linear_fit,
    moments_profile,
    power_decomposition,
    power_profile,
    similarity_profile,
    stable_rank,
    theorem1_bound,
)

from .probes import check, ids

STATISTICS = {
    "power_decomposition": (power_decomposition, "the power decomposition"),
    "PowerAccumulator": (lambda t: PowerAccumulator().update(t), "the power decomposition"),
    "ChannelMoments": (lambda t: ChannelMoments().update(t), "per-channel statistics"),
    "gram_matrix": (gram_matrix, "a Gram matrix"),
    "stable_rank": (stable_rank, "a Gram matrix"),
    "cosine_similarity": (cosine_similarity, "the cosine similarity"),
}
X = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
BAD_TENSORS = {
    "complex": (X.to(torch.complex64), TypeError, "needs real values", "complex64"),
    "bool": (X > 0, TypeError, "needs real values", "dtype bool"),
    "nan": (X.masked_fill(X > 1, math.nan), NonFiniteError, "non-finite values", "NaN or inf"),
    "inf": (X.masked_fill(X > 2, math.inf), NonFiniteError, "non-finite values", "of 288 values"),
    "meta": (X.to("meta"), ValueError, "needs values, got a meta tensor", "(8, 4, 3, 3)"),
    "empty": (X[:0], ValueError, "needs values, got an empty tensor", "(0, 4, 3, 3)"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(STATISTICS))
@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_statistics_of_unusable_tensors_are_refused(name, case):
    """Complex values lost their imaginary part silently, NaN gave NaN (or a LinAlgError), a
    meta tensor a raw error."""
    function, what = STATISTICS[name]
    t, error, first, second = BAD_TENSORS[case]
    check(lambda: function(t), error, (what, first, second))


@pytest.mark.parametrize("name", list(STATISTICS))
@pytest.mark.parametrize("value", [X.numpy(), None, [1.0, 2.0]], ids=lambda v: type(v).__name__)
def test_statistics_of_non_tensors_are_refused(name, value):
    function, what = STATISTICS[name]
    check(lambda: function(value), (TypeError, ValueError), what)


def test_integer_activations_are_exact():
    """Integers are real values: their statistics are those of the same floats."""
    ints = (X * 10).round().long()
    expected = power_decomposition(ints.double())
    torch.testing.assert_close(power_decomposition(ints).p3, expected.p3)
    assert stable_rank(ints) == pytest.approx(stable_rank(ints.double()))


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [(lambda: theorem1_bound(-0.1, 3), ValueError, "rho (ρ = γ²/(γ² + β²)) must be"),
     (lambda: theorem1_bound(math.nan, 3), ValueError, "got nan"),
     (lambda: theorem1_bound("0.5", 3), ArgumentTypeError, "got '0.5' (a str)"),
     (lambda: theorem1_bound(None, 3), ArgumentTypeError, "rho"),
     (lambda: theorem1_bound(0.5, -1), ValueError, "depth must be an integer in [0, 100000]"),
     (lambda: theorem1_bound(0.5, 2.5), ArgumentTypeError, "in [0, 100000], got 2.5"),
     (lambda: theorem1_bound(0.5, 10**9), ValueError, "got 1000000000"),
     (lambda: theorem1_bound(0.5, True), ArgumentTypeError, "got True (a bool)"),
     (lambda: check_theorem1([], 0.5), ValueError, "needs a non-empty power profile"),
     (lambda: check_theorem1([("a", power_decomposition(X))], 0.5, -1), ValueError, "tolerance"),
     (lambda: check_theorem2("nope"), TypeError, "check_theorem2 needs a PowerDecomposition"),
     (lambda: check_theorem2(power_decomposition(X), math.inf), ValueError, "tolerance must"),
     (lambda: check_theorem3(channels=0), ValueError, "channels must be a positive integer, got 0"),
     (lambda: check_theorem3(samples=1), ValueError, "samples must be an integer >= 2, got 1"),
     (lambda: check_theorem3(samples=10**12), ValueError, "samples × channels must be at most"),
     (lambda: check_theorem3(seed=1.5), ArgumentTypeError, "seed must be an integer, got 1.5"),
     (lambda: check_theorem3(dtype=torch.int64), ValueError, "dtype must be torch.float32 or"),
     (lambda: check_theorem3(device="meta"), ValueError, "device 'meta' is not available here"),
     (lambda: check_theorem3(device="gpu7"), ValueError, "unknown device 'gpu7'"),
     (lambda: check_theorem3(act="bogus", samples=100), ValueError, "unknown activation 'bogus'")],
    ids=[f"theory-{i}" for i in range(20)],
)  # fmt: skip
def test_the_theorems_functions_name_their_arguments(call, error, words):
    check(call, error, words)


def test_theorem1_bound_is_rho_to_the_layer_index():
    assert theorem1_bound(0.5, 4) == [1.0, 0.5, 0.25, 0.125]
    assert theorem1_bound(1, 2) == [1.0, 1.0]
    assert theorem1_bound(0.3, 0) == []


@pytest.mark.parametrize(
    ("x", "y", "error", "words"),
    [("ab", [1, 2], ArgumentTypeError, "x must be a sequence of numbers"),
     ([1, 2], None, ArgumentTypeError, "y must be a sequence of numbers"),
     ([1, "2"], [1, 2], ArgumentTypeError, "x must be a sequence of numbers, but it holds '2'"),
     ([1, 2], [1, True], ArgumentTypeError, "holds True (a bool)"),
     ([1, 2], [1], ValueError, "two 1-d sequences of equal length"),
     ([1], [1], ValueError, "at least 2 points, got 1"),
     ([1, 1], [2, 3], ValueError, "two distinct x values"),
     ([1, math.nan], [1, 2], ValueError, "non-finite point at index 1"),
     ([1, 2], [math.inf, 2], ValueError, "non-finite point at index 0")],
    ids=ids,
)  # fmt: skip
def test_linear_fit_refuses_what_it_cannot_fit(x, y, error, words):
    check(lambda: linear_fit(x, y), error, words)


@pytest.mark.parametrize(
    ("norms", "error", "words"),
    [(None, ArgumentTypeError, "norms must be a sequence of numbers"),
     ("abc", ArgumentTypeError, "norms must be a sequence of numbers"),
     ([1, 0, 2], ValueError, "positive finite norms, got 0.0 at index 1"),
     ([1, -2], ValueError, "got -2.0 at index 1"),
     ([1, math.nan], ValueError, "got nan at index 1"),
     ([3], ValueError, "at least 2 points")],
    ids=ids,
)  # fmt: skip
def test_fit_growth_refuses_what_it_cannot_fit(norms, error, words):
    check(lambda: fit_growth(norms), error, words)


@settings(max_examples=30, deadline=None)
@given(
    slope=st.floats(-1e3, 1e3),
    intercept=st.floats(-1e3, 1e3),
    xs=st.lists(st.floats(-100, 100), min_size=2, max_size=20, unique=True),
)
def test_linear_fit_recovers_an_exact_line(slope, intercept, xs):
    if max(xs) - min(xs) < 1e-3:
        return
    fit = linear_fit(xs, [slope * x + intercept for x in xs])
    assert fit.slope == pytest.approx(slope, rel=1e-6, abs=1e-6)
    assert fit.intercept == pytest.approx(intercept, rel=1e-6, abs=1e-4)
    assert fit.points == len(xs)


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(-3, 3), depth=st.integers(2, 30))
def test_fit_growth_recovers_an_exponential(rate, depth):
    fit = fit_growth(np.exp(rate * np.arange(depth)))
    assert fit.rate == pytest.approx(rate, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 6), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_power_terms_add_up_to_the_mean_square(shape, scale, seed):
    y = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = y * scale
    d = power_decomposition(y)
    torch.testing.assert_close(d.p, y.square().mean(dim=(0, 2, 3)), rtol=1e-9, atol=0)
    for term in (d.p1, d.p2, d.p3, d.p4):
        assert bool((term >= -1e-12 * scale**2).all())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 8), d=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_stable_rank_lies_between_1_and_the_rank(n, d, seed):
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    rank = stable_rank(f)
    assert 1 - 1e-9 <= rank <= min(n, d) + 1e-9
    assert -1 - 1e-9 <= cosine_similarity(f) <= 1 + 1e-9


# -- profiles over models ---------------------------------------------------------------------


def net():
    torch.manual_seed(0)
    return models.create("random_net", depth=2, width=4)


IMAGES = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3))
PROFILES = {
    "power_profile": power_profile,
    "similarity_profile": similarity_profile,
    "moments_profile": moments_profile,
    "gradient_profile": gradient_profile,
}
BAD_DATA = {
    "meta": (IMAGES.to("meta"), ValueError, "meta tensor"),
    "int": (IMAGES.long(), TypeError, "supports floating-point inputs"),
    "1-channel": (IMAGES[:, :1], ValueError, "was built for 3 input channels"),
    "unbatched": (IMAGES[0], ValueError, "one image without its batch dim"),
    "empty-list": ([], ValueError, "data yielded no batch"),
    "None": (None, TypeError, "data must be a tensor, an iterable of batches"),
    "strings": (["a"], TypeError, "batch 0 of data is a str"),
    "nan": (IMAGES.masked_fill(IMAGES > 0, math.nan), ValueError, "non-finite"),
}


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_profiles_over_bad_data_say_what_is_wrong(profile, case):
    """An unbatched image used to run (misread as a batch of C inputs), meta data to fail in a
    copy, integers deep in a conv."""
    data, error, words = BAD_DATA[case]
    check(lambda: PROFILES[profile](net(), data), error, words)


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [({"where": "bogus"}, ValueError, "unknown probe place 'where' 'bogus'; valid choices"),
     ({"mode": "bogus"}, ValueError, "unknown mode 'bogus'; valid choices: train, eval"),
     ({"select": 3}, TypeError, "select must be a module type"),
     ({"select": "nomatch*"}, ValueError, "matches 'nomatch*'")],
    ids=ids,
)  # fmt: skip
def test_profiles_name_bad_arguments(profile, kwargs, error, words):
    check(lambda: PROFILES[profile](net(), IMAGES, **kwargs), error, words)


@pytest.mark.parametrize(
    ("seed", "error"),
    [(1.5, ArgumentTypeError), ("a", ArgumentTypeError), (None, ArgumentTypeError)],
)
def test_gradient_profile_seed_is_an_integer(seed, error):
    """A float or string seed used to reach torch.manual_seed ("expected a long")."""
    check(lambda: gradient_profile(net(), IMAGES, seed=seed), error, "seed must be an integer")


def test_profiles_of_a_valid_batch_are_in_depth_order_and_finite():
    names = [name for name, _ in power_profile(net(), IMAGES)]
    assert names == sorted(names)
    profile = gradient_profile(net(), IMAGES)
    assert all(math.isfinite(v) and v > 0 for v in profile.norms)
