"""Parameter counts against the published ones (BatchNorm, 1000 classes for ImageNet models, 10
for CIFAR), and multiply-accumulates counted by hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normlab.models import count_macs, count_params, create

# Published counts: He et al. 2016a/b (ResNets), Xie et al. 2017 (ResNeXt), Tan & Le 2019
# (EfficientNet), written out here independently of the registry.
PUBLISHED = {
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet44": 0.66e6,
    "resnet56": 0.85e6,
    "resnet110": 1.7e6,
    "resnet56_post": 0.85e6,
    "resnet18": 11.7e6,
    "resnet34": 21.8e6,
    "resnet50": 25.5e6,
    "resnet101": 44.5e6,
    "resnet152": 60.2e6,
    "resnext50_32x4d": 25.0e6,
    "resnext101_32x4d": 44.2e6,
    "efficientnet_b0": 5.3e6,
    "efficientnet_b1": 7.8e6,
    "efficientnet_b2": 9.1e6,
}


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED.items()))
def test_parameter_count_within_2_percent_of_published(name, published):
    count = count_params(create(name))
    assert abs(count / published - 1) < 0.02, f"{name}: {count:,} vs {published:,.0f}"


def test_efficientnet_b0_count_is_exact():
    """5,288,548: the count of the reference EfficientNet-B0 (1000 classes)."""
    assert count_params(create("efficientnet_b0")) == 5_288_548


def test_cifar_option_a_resnet_counts():
    """With the zero-padding shortcut, the pre-activation ResNet-56 has the parameters of He et
    al.'s option-A ResNet-56 minus nothing but the stem BN moved to the end: 853,018."""
    assert count_params(create("resnet56", shortcut="pad")) == 853_018
    assert count_params(create("resnet56_post", shortcut="pad")) == 853_018


def test_the_registry_lists_the_published_counts():
    from normlab.models import info

    for name, published in PUBLISHED.items():
        registered = info(name).published_params
        assert registered is not None
        assert abs(registered / published - 1) < 0.01


def test_macs_of_a_hand_computed_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 8·8 positions · 4 outputs · 27 MACs = 6912
        nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),  # 4·4 · 8 · (2·9) = 2304
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),  # 40
    )
    assert count_macs(model, 8) == 6912 + 2304 + 40


@pytest.mark.parametrize(
    ("name", "published"),
    [("resnet20", 40.8e6), ("resnet56", 125.5e6), ("efficientnet_b0", 0.39e9)],
)
def test_macs_match_the_papers(name, published):
    model = create(name)
    macs = count_macs(model, 224 if name.startswith("eff") else 32)
    assert abs(macs / published - 1) < 0.02
    assert model.training  # restored


def test_count_macs_takes_the_input_channels():
    model = create("cnn10", in_channels=1, width=0.25)
    assert count_macs(model, 32, in_channels=1) > 0
    with pytest.raises(ValueError, match="PlainCNN was built for 1 input channels"):
        count_macs(model, 32, in_channels=3)
    assert torch.is_grad_enabled()
