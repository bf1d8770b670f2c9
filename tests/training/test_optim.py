"""Weight-decay groups and the learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import normlab
from normlab.layers import ProxyNormAct, ScaledWSConv2d
from normlab.training import param_groups
from normlab.training.optim import lr_multiplier, make_optimizer, make_scheduler


def _group(groups: list[dict], name: str) -> set[int]:
    return {id(p) for g in groups if g["name"] == name for p in g["params"]}


@pytest.mark.parametrize("spec", ["gn8+pn", "bn", "ln+pn+sws", "frn", "evo-s0", "nf"])
def test_param_groups_decay_weights_and_proxy_parameters_only(spec):
    model = normlab.models.create("resnet20", norm=spec, width=0.5)
    groups = param_groups(model, weight_decay=5e-4)
    decay, no_decay = _group(groups, "decay"), _group(groups, "no_decay")
    expected = set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            expected.add(id(module.weight))
        if isinstance(module, ProxyNormAct):
            expected |= {id(module.proxy_beta), id(module.proxy_gamma)}
    assert decay == expected
    assert decay.isdisjoint(no_decay)
    assert decay | no_decay == {id(p) for p in model.parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert names
    assert all(
        n.rsplit(".", 1)[-1] in {"gamma", "beta", "bias", "gain", "v", "tau", "weight"}
        for n in names
    )
    assert not any(n.endswith(("proxy_beta", "proxy_gamma")) for n in names)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]


def test_param_groups_leave_norm_affines_and_gains_undecayed():
    conv = ScaledWSConv2d(4, 8, 3, act="relu")
    norm = nn.GroupNorm(2, 8)
    model = nn.Sequential(conv, norm, nn.Flatten(), nn.Linear(8 * 4, 3))
    groups = param_groups(model, 1e-4)
    assert _group(groups, "decay") == {id(conv.weight), id(model[3].weight)}
    assert {id(conv.gain), id(conv.bias) if conv.bias is not None else 0} - {0} <= _group(
        groups, "no_decay"
    )
    assert {id(norm.weight), id(norm.bias), id(model[3].bias)} <= _group(groups, "no_decay")


def test_shared_parameters_count_once_and_frozen_ones_not_at_all():
    linear = nn.Linear(3, 3)
    frozen = nn.Linear(3, 3).requires_grad_(False)
    model = nn.Sequential(linear, linear, frozen)
    groups = param_groups(model, 1e-4)
    assert sum(len(g["params"]) for g in groups) == 2


def test_sgd_and_adamw_get_the_groups():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sgd = make_optimizer(model, "sgd", 0.1, 1e-4, 0.9, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["nesterov"]
    adamw = make_optimizer(model, "adamw", 1e-3, 1e-2, 0.9, False)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [1e-2, 0.0]


def test_step_schedule_decays_at_the_milestones_after_warmup():
    factor = lr_multiplier("step", total_steps=100, warmup_steps=10, milestones=(0.5, 0.75))
    assert [factor(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(49) == 1.0
    assert factor(50) == pytest.approx(0.1)
    assert factor(74) == pytest.approx(0.1)
    assert factor(75) == pytest.approx(0.01)


def test_cosine_schedule_goes_from_one_to_zero():
    factor = lr_multiplier("cosine", total_steps=101, warmup_steps=1)
    assert factor(1) == pytest.approx(1.0)
    assert factor(51) == pytest.approx(0.5)
    assert factor(101) == pytest.approx(0.0, abs=1e-12)
    values = [factor(t) for t in range(1, 102)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_scheduler_steps_the_optimizer_learning_rate():
    model = nn.Linear(2, 2)
    optimizer = make_optimizer(model, "sgd", 0.4, 0.0, 0.9, False)
    scheduler = make_scheduler(optimizer, "cosine", 10, 0, (0.5,), 0.1)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.4)
    assert rates[5] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
