"""The data and targets of the diagnostics: one (x, y) tuple is one batch, and cross-entropy reads
labels (N,), (N, 1), one-hot and probability targets as they are, or says what it expected."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlab.diagnostics import gradient_profile, iter_batches, power_profile, signal_propagation
from normlab.layers import Act

from .nets import random_like_net, white_noise

N, K = 8, 4


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), Act(6, "relu"), nn.Linear(6, K))


def inputs() -> torch.Tensor:
    return torch.randn(N, 3, 2, 2, generator=torch.Generator().manual_seed(1))


LABELS = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])


def profile(data, **kwargs) -> list[float]:
    kwargs = {"loss": "cross_entropy", "select": nn.Linear} | kwargs
    return gradient_profile(classifier(), data, **kwargs).norms


@pytest.mark.parametrize(
    "target",
    [
        LABELS,
        LABELS.int(),
        LABELS.unsqueeze(1),
        F.one_hot(LABELS, K),
        F.one_hot(LABELS, K).float(),
        F.one_hot(LABELS, K).double(),
        F.one_hot(LABELS, K).half(),
    ],
    ids=["labels", "int32", "N-1", "one-hot-int", "one-hot-float", "one-hot-double", "half"],
)
def test_every_target_form_gives_the_labels_gradient(target):
    expected = profile([(inputs(), LABELS)])
    assert profile([(inputs(), target)]) == pytest.approx(expected, rel=1e-6)
    random = profile(inputs(), seed=5)  # no labels: seeded random ones
    assert profile([(inputs(), target)]) != pytest.approx(random, rel=1e-3)


def test_probability_targets_are_soft_cross_entropy():
    probabilities = torch.softmax(torch.randn(N, K, generator=torch.Generator().manual_seed(2)), 1)
    seen = []

    def soft(out, y):
        seen.append(y)
        return -(y * out.log_softmax(1)).sum(1).mean()

    assert profile([(inputs(), probabilities)]) == pytest.approx(
        profile([(inputs(), probabilities)], loss=soft), rel=1e-6
    )
    assert torch.equal(seen[0], probabilities)


@pytest.mark.parametrize(
    ("target", "words"),
    [
        (LABELS.float(), "class indices must be integers, got targets of dtype float32"),
        (LABELS + 1, "class indices range over [1, 4], outside [0, 4)"),
        (LABELS - 1, "class indices range over [-1, 2], outside [0, 4)"),
        (LABELS[:5], "targets of shape (5,) for 8 inputs"),
        (F.one_hot(LABELS, K + 1).float(), "targets of shape (8, 5)"),
        (torch.rand(N, K), "some row is negative or does not sum to 1"),
        (-F.one_hot(LABELS, K).float(), "some row is negative or does not sum to 1"),
        (torch.zeros(N, K, dtype=torch.long), "some row is negative or does not sum to 1"),
        (LABELS.bool(), "targets of dtype bool"),
        (torch.zeros(N, 2, 2, dtype=torch.long), "targets of shape (8, 2, 2)"),
    ],
    ids=lambda v: str(v)[:20],
)
def test_bad_targets_say_what_was_expected(target, words):
    with pytest.raises(ValueError, match="loss='cross_entropy'") as info:
        profile([(inputs(), target)])
    message = str(info.value)
    assert words in message
    assert "expected class indices of shape (8,) or (8, 1) in [0, 4)" in message
    assert "one-hot or probability rows of shape (8, 4)" in message


def test_an_xy_tuple_is_one_batch():
    x = inputs()
    assert profile((x, LABELS)) == pytest.approx(profile([(x, LABELS)]), rel=1e-6)
    assert profile([x, LABELS.unsqueeze(1)]) == pytest.approx(profile([(x, LABELS)]), rel=1e-6)
    batches = list(iter_batches((x, F.one_hot(LABELS, K))))
    assert len(batches) == 1
    assert batches[0][0] is x


def test_iterables_of_batches_still_work():
    x1, x2 = white_noise(4, seed=1), white_noise(4, seed=2)
    assert [b[0] for b in iter_batches((x1, x2))] == [x1, x2]  # same shape: two input batches
    assert [b[0] for b in iter_batches([x1, x2])] == [x1, x2]
    assert len(list(iter_batches((x1, white_noise(3, seed=2))))) == 2  # other batch sizes
    y = torch.arange(4)
    assert [b[1] for b in iter_batches([(x1, y), (x2, y)])] == [y, y]
    model = random_like_net("ln", width=4, depth=1)
    one, alone = power_profile(model, (x1, y)), power_profile(model, x1)
    assert [name for name, _ in one] == [name for name, _ in alone]
    torch.testing.assert_close(one[0][1].p3, alone[0][1].p3)


def test_signal_propagation_wants_a_sequence_of_block_names():
    model = random_like_net("bn", width=4, depth=2)
    names = [n for n, _ in model.named_children()]
    with pytest.raises(TypeError, match="blocks must be a sequence of str") as info:
        signal_propagation(model, white_noise(4), blocks=names[0])
    assert f"blocks=[{names[0]!r}]" in str(info.value)
    assert "character by character" in str(info.value)
    with pytest.raises(TypeError, match=r"sequence of str .*, but it holds 3 \(an int\)"):
        signal_propagation(model, white_noise(4), blocks=[names[0], 3])
    with pytest.raises(TypeError, match="branches must be a sequence of str"):
        signal_propagation(model, white_noise(4), blocks=[names[0]], branches="conv")
