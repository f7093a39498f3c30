"""Resumable training: a run killed after an epoch continues from its resume file to the same weights and curve."""

from __future__ import annotations

import pytest
import torch

import spatialadv.training.loop as loop
from conftest import fc200_digits
from spatialadv.data import DataSpec
from spatialadv.defenses import ensemble_adversary
from spatialadv.models import build_model
from spatialadv.training import ModelSpec, Objective, TrainConfig, TrainingParts, load_or_train, model_key, train_model
from spatialadv.training.objectives import OBJECTIVES, register_objective

_net = fc200_digits


PGD = Objective("pgd-at", eps=0.2, steps=3, step_size=0.08, warmup=2)
CFG = TrainConfig(epochs=4, batch_size=128, holdout=100, seed=5)


def _interrupt_after(monkeypatch, epochs: int) -> None:
    """Make the next training run raise KeyboardInterrupt right after writing its resume file for ``epochs``."""
    real, calls = loop._save_resume, [0]

    def save(path, state):
        real(path, state)
        calls[0] += 1
        if calls[0] == epochs:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_resume", save)


def _same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_interrupted_run_resumes_to_the_same_weights(digits, one_thread, tmp_path, monkeypatch):
    torch.manual_seed(11)
    whole = _net()
    ref = train_model(whole, digits, CFG, objective=PGD, progress=False)

    path = tmp_path / "run.resume.pt"
    _interrupt_after(monkeypatch, 2)
    torch.manual_seed(11)
    with pytest.raises(KeyboardInterrupt):
        train_model(_net(), digits, CFG, objective=PGD, progress=False, checkpoint=path)
    monkeypatch.undo()
    assert path.exists()
    torch.manual_seed(999)  # the global RNG state comes from the file, not from the caller
    resumed = _net()
    notes = train_model(resumed, digits, CFG, objective=PGD, progress=False, checkpoint=path)
    assert _same_weights(whole, resumed)
    assert notes["curve"] == ref["curve"] and notes["best_epoch"] == ref["best_epoch"]
    assert notes["resumed_after"] == [2] and notes["seconds_before_resume"] > 0
    assert "resumed_after" not in ref

    # a finished run's file resumes to the end at once: nothing more is trained
    again = _net(3)
    notes2 = train_model(again, digits, CFG, objective=PGD, progress=False, checkpoint=path)
    assert _same_weights(whole, again) and notes2["resumed_after"] == [2, 4]


def test_plateau_stop_is_kept_on_resume(digits, one_thread, tmp_path):
    cfg = TrainConfig(epochs=30, batch_size=128, holdout=100, patience=1, seed=2)
    path = tmp_path / "r.pt"
    net = _net()
    notes = train_model(net, digits, cfg, objective=Objective("standard"), progress=False, checkpoint=path)
    assert notes["stopped"] == "plateau" and notes["epochs_run"] < 30
    again = _net()
    notes2 = train_model(again, digits, cfg, objective=Objective("standard"), progress=False, checkpoint=path)
    assert notes2["epochs_run"] == notes["epochs_run"] and notes2["stopped"] == "plateau" and _same_weights(net, again)


def test_foreign_or_corrupt_resume_file_is_ignored_with_a_warning(digits, one_thread, tmp_path):
    path = tmp_path / "r.pt"
    cfg = TrainConfig(epochs=2, batch_size=128, seed=1)
    train_model(_net(), digits, cfg, progress=False, checkpoint=path)
    other = TrainConfig(epochs=2, batch_size=128, seed=1, lr=5e-4)
    torch.manual_seed(0)
    fresh = _net()
    train_model(fresh, digits, other, progress=False)
    torch.manual_seed(0)
    net = _net()
    with pytest.warns(UserWarning, match="another run"):
        train_model(net, digits, other, progress=False, checkpoint=path)
    assert _same_weights(fresh, net)  # trained from epoch 1, then its own file replaced the foreign one

    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="cannot be read"):
        train_model(_net(), digits, cfg, progress=False, checkpoint=path)


def test_objective_without_saved_state_writes_no_resume_file(digits, one_thread, tmp_path):
    path = tmp_path / "r.pt"
    train_model(_net(), digits, TrainConfig(epochs=1, batch_size=256), objective=Objective("smoothing"), progress=False,
                checkpoint=path)
    assert not path.exists()


def test_objective_state_round_trips(digits, one_thread, tmp_path, monkeypatch):
    # an adversary with a turn counter (the ens-at one): its state goes into the file and comes back
    torch.manual_seed(4)
    static = build_model("fc-200", image_size=8).eval()
    made: list = []

    def build(model, data, config, options):
        adv = ensemble_adversary([static], 0.1)
        made.append(adv)
        return TrainingParts(adversary=adv, resumable=True, state=lambda: {"turn": adv.turn},
                             load_state=lambda st: setattr(adv, "turn", st["turn"]))

    register_objective("test-turns", build)
    try:
        cfg = TrainConfig(epochs=3, batch_size=500, seed=0)
        whole = _net()
        train_model(whole, digits, cfg, objective=Objective("test-turns"), progress=False)
        path = tmp_path / "r.pt"
        _interrupt_after(monkeypatch, 1)
        with pytest.raises(KeyboardInterrupt):
            train_model(_net(), digits, cfg, objective=Objective("test-turns"), progress=False, checkpoint=path)
        monkeypatch.undo()
        assert made[-1].turn == 3  # 1 437 images in batches of 500: three calls in epoch 1
        resumed = _net()
        train_model(resumed, digits, cfg, objective=Objective("test-turns"), progress=False, checkpoint=path)
        assert made[-1].turn == 9 and _same_weights(whole, resumed)
    finally:
        del OBJECTIVES["test-turns"]


def test_load_or_train_resumes_and_removes_the_file(one_thread, tmp_path, monkeypatch):
    spec = ModelSpec("fc-200", DataSpec("digits"), TrainConfig(epochs=3, batch_size=128, seed=1),
                     Objective("fgsm-at", eps=0.1))
    ref, _ = load_or_train(spec, progress=False, directory=tmp_path / "a")
    folder = tmp_path / "b"
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        load_or_train(spec, progress=False, directory=folder)
    monkeypatch.undo()
    resume = folder / f"{model_key(spec)}.resume.pt"
    assert resume.exists() and not (folder / f"{model_key(spec)}.safetensors").exists()
    model, info = load_or_train(spec, progress=False, directory=folder)
    assert not resume.exists() and not info["cached"] and _same_weights(ref, model)
    assert info["notes"]["resumed_after"] == [2] and info["train_seconds"] >= info["notes"]["seconds_before_resume"]
