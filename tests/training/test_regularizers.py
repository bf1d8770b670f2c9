"""Each regularizer tested by what it must change (and leave alone)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import normlab
from normlab.models._common import DropPath
from normlab.training.regularizers import (
    adaptive_gradient_clip,
    classifier_parameters,
    ema_model,
    mix_batch,
    soft_cross_entropy,
    soft_targets,
)


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    return x, torch.arange(n) % 4


def test_label_smoothing_targets():
    targets = soft_targets(torch.tensor([0, 2]), 4, 0.1)
    torch.testing.assert_close(targets.sum(1), torch.ones(2))
    torch.testing.assert_close(targets[0], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    torch.testing.assert_close(soft_targets(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1, 0]]))


def test_soft_cross_entropy_of_one_hot_targets_is_cross_entropy():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 0])
    expected = nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(soft_cross_entropy(logits, soft_targets(labels, 4, 0.0)), expected)
    smoothed = nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(soft_cross_entropy(logits, soft_targets(labels, 4, 0.1)), smoothed)


def test_mixup_mixes_inputs_and_targets_with_one_lambda():
    x, y = _batch()
    targets = soft_targets(y, 4, 0.0)
    mixed, mixed_targets = mix_batch(
        x, targets, mixup=0.4, cutmix=0.0, rng=np.random.default_rng(3)
    )
    assert not torch.equal(mixed_targets, targets)  # mixup changes the targets
    torch.testing.assert_close(mixed_targets.sum(1), torch.ones(8))
    # the same draws, replayed: x̃ = λx + (1 − λ)x_π, ỹ = λy + (1 − λ)y_π
    rng = np.random.default_rng(3)
    lam = rng.beta(0.4, 0.4)
    perm = torch.from_numpy(rng.permutation(8))
    torch.testing.assert_close(mixed, x * lam + x[perm] * (1 - lam))
    torch.testing.assert_close(mixed_targets, targets * lam + targets[perm] * (1 - lam))


def test_cutmix_pastes_a_box_and_mixes_targets_by_its_area():
    x, y = _batch(seed=2)
    targets = soft_targets(y, 4, 0.0)
    for seed in range(5):
        mixed, mixed_targets = mix_batch(x, targets, 0.0, 1.0, np.random.default_rng(seed))
        changed = (mixed != x).any(dim=1)  # (N, H, W): pixels taken from another sample
        pasted = (mixed_targets * (1 - targets)).sum(1)  # weight of the other sample's label
        for i in range(8):
            if (mixed_targets[i] != targets[i]).any():
                area = float(changed[i].float().mean())
                assert area == pytest.approx(float(pasted[i]), abs=1e-6) or area == 0.0


def test_no_mixing_when_off():
    x, y = _batch()
    targets = soft_targets(y, 4, 0.1)
    mixed, same = mix_batch(x, targets, 0.0, 0.0, np.random.default_rng(0))
    assert mixed is x
    assert same is targets


def test_stochastic_depth_drops_branches_in_training_only():
    torch.manual_seed(0)
    model = normlab.models.create("resnet20", width=0.25, drop_path_rate=0.5)
    rates = [m.rate for m in model.modules() if isinstance(m, DropPath)]
    assert len(rates) == 9
    assert rates == pytest.approx([0.5 * (i + 1) / 9 for i in range(9)])
    plain = normlab.models.create("resnet20", width=0.25)
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)  # eval: no drop
    block = model.layer3[2]
    block.train()
    with torch.no_grad():
        out = block.drop_path(torch.ones(16, 1, 1, 1))
    kept = out.flatten()
    assert set(kept.unique().tolist()) <= {0.0, 1 / (1 - block.drop_path.rate)}
    assert 0 < int((kept == 0).sum()) < 16  # some samples' branches dropped, not all


@pytest.mark.parametrize("name", ["resnet56_post", "nf_resnet20", "resnet50"])
def test_every_residual_family_takes_drop_path(name):
    kwargs = {"width": 0.25, "drop_path_rate": 0.2, "dropout": 0.3}
    model = normlab.models.create(name, **kwargs)
    assert any(isinstance(m, DropPath) for m in model.modules())
    assert model.head.dropout.p == 0.3


def test_ema_follows_torchs_rule():
    model = nn.Linear(3, 2)
    ema = ema_model(model, decay=0.9)
    start = copy.deepcopy(model.weight.detach())
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    expected = 0.9 * (start + 1.0) + 0.1 * (start + 2.0)
    torch.testing.assert_close(ema.module.weight, expected)


def test_agc_clips_unitwise_above_the_limit_only():
    conv = nn.Conv2d(2, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]).view(3, 2, 1, 1))
    conv.weight.grad = torch.tensor([[0.1, 0.0], [0.0, 0.001], [30.0, 40.0]]).view(3, 2, 1, 1)
    adaptive_gradient_clip([conv.weight], clip=0.01)
    grad = conv.weight.grad.view(3, 2)
    # unit 0: ‖G‖ = 0.1 > 0.01·1 → scaled to 0.01; unit 1: 0.001 ≤ 0.02 → kept; unit 2: → 0.05
    torch.testing.assert_close(grad.norm(dim=1), torch.tensor([0.01, 0.001, 0.05]))
    torch.testing.assert_close(grad[2] / grad[2].norm(), torch.tensor([0.6, 0.8]))


def test_classifier_is_the_last_linear_layer():
    model = normlab.models.create("resnet20", width=0.25)
    assert classifier_parameters(model) == {id(p) for p in model.head.fc.parameters()}
