"""The diagnostics through training measure with batch statistics, on a copy of the model."""

import pytest
import torch

from normlab.diagnostics import power_profile
from normlab.models import create
from normlab.training.diagnostics import batch_statistics_copy, snapshot


def _probe() -> torch.Tensor:
    return torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 3 + 2


def test_batchnorm_at_init_is_measured_normalized_and_left_untouched():
    torch.manual_seed(0)
    model = create("resnet20", norm="bn", num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = snapshot(model, _probe(), 0)
    # Batch statistics: BN's output has channel means 0, so no collapsed power (P1) at any depth;
    # evaluation mode at init (running statistics (0, 1)) would leave the input's offset in it.
    assert max(record["power"]["fractions"]["p1"]) < 1e-6
    eval_mode = power_profile(model, _probe(), mode="eval")
    assert max(d.fractions()["p1"] for _, d in eval_mode) > 0.1
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # running statistics not updated


def test_no_dropout_or_stochastic_depth_in_the_probe():
    torch.manual_seed(0)
    model = create("resnet20", norm="gn8", num_classes=10, dropout=0.5, drop_path_rate=0.5)
    copy = batch_statistics_copy(model.train())
    assert not copy.head.training
    assert not any(
        m.training for m in copy.modules() if type(m).__name__ in ("Dropout", "DropPath")
    )
    assert all(m.training for m in copy.modules() if type(m).__name__ == "GroupNorm")
    first, second = snapshot(model, _probe(), 0), snapshot(model, _probe(), 0)
    assert first == second


def test_a_model_without_normalization_steps_has_no_power_but_its_other_diagnostics():
    torch.manual_seed(0)
    model = create("cnn10", norm="none+wn", width=0.25, num_classes=10)
    record = snapshot(model, _probe(), 0)
    assert record["power"] is None
    assert 0 < record["features"]["stable_rank"] <= 32


def test_feature_similarity_of_the_pooled_features_and_of_the_last_feature_map():
    from normlab.diagnostics import cosine_similarity

    torch.manual_seed(0)
    model = create("cnn10", norm="in", width=0.25, num_classes=10)
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    features = snapshot(model, x, 0)["features"]
    copy = batch_statistics_copy(model)
    with torch.no_grad():
        feature_map = copy.features(x)  # the head's input: the last layer's feature map
        pooled = feature_map.mean((2, 3))
    assert features["feature_map_cosine_similarity"] == cosine_similarity(
        feature_map.flatten(1).double()
    )
    assert features["cosine_similarity"] == pytest.approx(cosine_similarity(pooled.double()))
    # After IN every channel's spatial mean is nearly fixed: pooled features are near-identical
    assert features["cosine_similarity"] > features["feature_map_cosine_similarity"] + 0.1
