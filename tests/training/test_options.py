"""What each training option must change: accumulation, precision, memory format, compilation,
TensorBoard, and the diagnostics through training with their figures."""

from __future__ import annotations

import json

import pytest
import torch

from normlab.cli import main
from normlab.training import build_model, train
from normlab.training.checkpoint import load_checkpoint
from normlab.training.loop import Run, derived_seed

from .test_loop import tiny


def test_accumulating_two_half_batches_is_one_step_on_the_whole_batch(tmp_path):
    """gn8+pn is batch-independent and gaussian data is not augmented: two accumulated batches
    of 8 give the gradient of one batch of 16, so one step lands on the same weights."""
    common = {"norm": "gn8+pn", "epochs": 1, "limit": 16, "lr": 0.1, "weight_decay": 0.0}
    train(tiny(tmp_path / "a", batch_size=16, **common))
    train(tiny(tmp_path / "b", batch_size=8, accum_steps=2, **common))
    whole = load_checkpoint(tmp_path / "a" / "run" / "last.pt")["model"]
    halves = load_checkpoint(tmp_path / "b" / "run" / "last.pt")["model"]
    torch.manual_seed(derived_seed(0, "init"))  # the loop's initial weights
    initial = build_model(tiny(tmp_path, **common), 10, 3).state_dict()
    moved = [k for k in whole if not torch.equal(whole[k], initial[k])]
    assert moved  # the step changed the weights
    for key in whole:
        torch.testing.assert_close(halves[key], whole[key], rtol=1e-4, atol=1e-6)


def test_channels_last_and_bfloat16_autocast_train(tmp_path):
    config = tiny(tmp_path, norm="gn8+pn", channels_last=True, amp=True, epochs=1)
    run = Run(config.validate(), _single())
    run.prepare()
    conv = next(m for m in run.module.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    summary = run.fit()
    assert summary["status"] == "finished"
    # bfloat16 autocast changes the numbers: the loss is not float32's to the last bit
    reference = train(tiny(tmp_path / "fp32", norm="gn8+pn", channels_last=True, epochs=1))
    assert summary["final_train_loss"] != reference["final_train_loss"]
    assert summary["final_train_loss"] == pytest.approx(reference["final_train_loss"], rel=0.05)


def _single():
    from normlab.training import distributed

    return distributed.setup("cpu")


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path):
    eager = train(tiny(tmp_path / "eager", norm="gn8+pn", epochs=1))
    compiled = train(tiny(tmp_path / "compiled", norm="gn8+pn", epochs=1, compile=True))
    assert compiled["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-4)


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny(tmp_path, epochs=1, tensorboard=True))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_diagnostics_through_training_and_their_figures(tmp_path):
    train(tiny(tmp_path, norm="gn8+pn", diagnostics_every=1, test_limit=64))
    records = [json.loads(line) for line in (tmp_path / "run" / "diagnostics.jsonl").open()]
    assert [r["epochs_done"] for r in records] == [0, 1, 2]
    for record in records:
        fractions = record["power"]["fractions"]
        layers = len(record["power"]["layers"])
        assert layers == 19  # every normalization step of ResNet-20 v2
        for index in range(layers):
            assert sum(fractions[t][index] for t in ("p1", "p2", "p3", "p4")) == pytest.approx(1)
        assert record["signal"]["names"][0] == "stem"
        assert len(record["signal"]["variance"]) == 1 + 9
        assert 1 <= record["features"]["stable_rank"] <= 64
    assert records[0]["power"] != records[-1]["power"]  # training moved the statistics
    second = tmp_path / "second"
    train(tiny(second, norm="bn", diagnostics_every=2, test_limit=64))
    out = tmp_path / "plots"
    assert main(["plot", str(tmp_path / "run"), str(second / "run"), "--out", str(out)]) == 0
    for name in ("training_curves", "power_through_training", "power_by_depth"):
        assert (out / f"{name}.png").stat().st_size > 0
        assert (out / f"{name}.svg").exists()


def test_plot_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no training run" in capsys.readouterr().err
