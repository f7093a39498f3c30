"""The training loop's held-out learning curve, early stop on its plateau, collapse refusal, and pgd-at's ε warm-up."""

from __future__ import annotations

import pytest
import torch

from conftest import fc200_digits
from spatialadv.cli import main
from spatialadv.data import DataSpec
from spatialadv.defenses import pgd_adversary
from spatialadv.training import (
    ModelSpec,
    Objective,
    TrainConfig,
    TrainingCollapsed,
    accuracy,
    load_or_train,
    model_key,
    train_model,
)
from spatialadv.training.loop import _holdout_split

_net = fc200_digits


def test_curve_patience_and_best_weights(digits, one_thread):
    cfg = TrainConfig(epochs=8, batch_size=64, holdout=200, patience=2, seed=3)
    net = _net()
    notes = train_model(net, digits, cfg, objective=Objective("fgsm-at", eps=0.1), progress=False)
    curve = notes["curve"]
    assert notes["holdout"] == 200 and len(curve) == notes["epochs_run"] <= 8
    assert [p["epoch"] for p in curve] == list(range(1, len(curve) + 1))
    assert all(0 <= p["clean"] <= 1 and 0 <= p["adversarial"] <= 1 and p["loss"] > 0 for p in curve)
    best = max(curve, key=lambda p: p["adversarial"])
    assert notes["best_epoch"] == best["epoch"]  # the first epoch reaching the maximum
    if notes["stopped"] == "plateau":
        assert len(curve) - notes["best_epoch"] == 2 and len(curve) < 8
    else:
        assert notes["stopped"] == "max_epochs" and len(curve) == 8
    # the kept weights are the best epoch's: its held-out clean accuracy, recomputed on the held-out images
    _, held = _holdout_split(len(digits), 200, 3)
    assert accuracy(net, digits.x[held], digits.y[held]) == best["clean"]


def test_holdout_images_are_not_trained_on(digits, one_thread):
    tr, held = _holdout_split(len(digits), 100, 0)
    assert len(set(tr.tolist()) & set(held.tolist())) == 0 and len(tr) + len(held) == len(digits)
    assert torch.equal(_holdout_split(len(digits), 100, 0)[1], held)  # seeded
    assert not torch.equal(_holdout_split(len(digits), 100, 1)[1], held)
    # training on the kept images only gives the same weights as training on the subset directly
    from dataclasses import replace

    a, b = _net(), _net()
    torch.manual_seed(5)
    train_model(a, digits, TrainConfig(epochs=1, holdout=100), progress=False, check_collapse=False)
    torch.manual_seed(5)
    train_model(b, replace(digits, x=digits.x[tr], y=digits.y[tr]), TrainConfig(epochs=1), progress=False,
                check_collapse=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_train_config_keys_and_checks():
    plain = TrainConfig(epochs=3)
    assert "holdout" not in plain.to_dict() and "patience" not in plain.to_dict()  # older cache keys stay valid
    spec = ModelSpec("fc-200", DataSpec("digits"), plain)
    curved = ModelSpec("fc-200", DataSpec("digits"), TrainConfig(epochs=3, holdout=50))
    assert model_key(spec) != model_key(curved) and ModelSpec.from_dict(curved.to_dict()) == curved
    with pytest.raises(ValueError, match="holdout"):
        TrainConfig(patience=3)
    with pytest.raises(ValueError, match="holdout"):
        TrainConfig(holdout=-1)
    with pytest.raises(ValueError, match="leaves no training image"):
        train_model(_net(), DataSpec("digits", max_train=20).train(), TrainConfig(holdout=20), progress=False)


def test_collapsed_training_is_refused_and_not_cached(tmp_path, one_thread):
    # Adam at lr 10³ drives the logits to NaN / one class: a collapsed model
    spec = ModelSpec("fc-200", DataSpec("digits"), TrainConfig(epochs=2, batch_size=16, lr=1e3))
    with pytest.raises(TrainingCollapsed, match="collapsed") as err:
        load_or_train(spec, directory=tmp_path, progress=False)
    assert err.value.accuracy <= err.value.chance + 0.05
    assert not list(tmp_path.glob("*.safetensors"))


def test_pgd_at_warmup_ramps_eps(digits, one_thread):
    obj = Objective("pgd-at", eps=0.3, steps=2, step_size=0.2, warmup=3)
    notes = train_model(_net(), digits, TrainConfig(epochs=4, batch_size=128, holdout=100), objective=obj, progress=False,
                        check_collapse=False)
    assert [round(p["eps"], 6) for p in notes["curve"]] == [0.1, 0.2, 0.3, 0.3]
    short = train_model(_net(), digits, TrainConfig(epochs=2, batch_size=128, holdout=100), objective=obj, progress=False,
                        check_collapse=False)
    assert [round(p["eps"], 6) for p in short["curve"]] == [0.15, 0.3]  # a run shorter than the warm-up ends at full ε


def test_bf16_pgd_adversary_stays_in_the_ball(digits, one_thread):
    net = _net().eval()
    x, y = digits.x[:32], digits.y[:32]
    torch.manual_seed(0)
    xa = pgd_adversary(0.2, 5, 0.05, bf16=True)(net, x, y)
    assert xa.dtype == torch.float32 and (xa - x).abs().max() <= 0.2 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with pytest.raises(TypeError, match="bf16"):
        pgd_adversary(0.2, 5, 0.05, bf16=1)


def test_cli_train_prints_the_curve(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path))
    args = ["train", "--model", "fc-200", "--data", "digits", "--epochs", "3", "--holdout", "100", "--patience", "1",
            "--quiet"]
    assert main(args) == 0
    assert "held-out curve: best epoch" in capsys.readouterr().out
    assert main([*args[:-1], "--lr", "-1", "--quiet"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(["train", "--model", "fc-200", "--data", "digits", "--patience", "2", "--quiet"]) == 2
    assert "holdout" in capsys.readouterr().err
