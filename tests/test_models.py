"""Model registry, safetensors checkpoints and the ``load_or_train`` cache."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from torch import nn

from spatialadv.data import load_dataset
from spatialadv.models import (MODELS, TrainConfig, accuracy, build_model, cache_dir, load_checkpoint, load_or_train,
                               save_checkpoint, train_model)

TINY = TrainConfig(epochs=2, batch_size=128, lr=1e-2, shift=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SPATIALADV_CACHE", str(d))
    return d


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_models_map_images_to_logits(name, one_thread):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 28, 28))
    assert out.shape == (2, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # in_channels / num_classes are honoured
    m3 = build_model(name, in_channels=3, num_classes=4).eval()
    with torch.no_grad():
        assert m3(torch.rand(2, 3, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize("name", ["fc-200", "fc-500"])
def test_fc_models_on_8x8(name):
    model = build_model(name, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet-1000")
    for name in ("mnist-a", "mnist-b", "c4"):  # unpadded conv stacks need ≥ 28 px (mnist-a ≥ 9)
        with pytest.raises(ValueError, match="8×8"):
            build_model(name, image_size=8)


def test_train_config_validation():
    for bad in (dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(shift=-1), dict(weight_decay=-1.0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    a = build_model("fc-500", image_size=8)
    path = tmp_path / "sub" / "m.safetensors"
    meta = {"model": "fc-500", "test_accuracy": 0.93, "config": {"epochs": 3, "shift": 0}, "seed": 7}
    save_checkpoint(a, path, meta)
    assert path.is_file() and not path.with_suffix(".tmp").exists()
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON (no pickle)
    torch.manual_seed(1)
    b = build_model("fc-500", image_size=8)
    assert not _same_weights(a, b)
    got = load_checkpoint(b, path)
    assert got == meta
    assert _same_weights(a, b)
    # no metadata
    save_checkpoint(a, tmp_path / "plain.safetensors")
    assert load_checkpoint(b, tmp_path / "plain.safetensors") == {}


def test_load_checkpoint_errors(tmp_path):
    a = build_model("fc-500", image_size=8)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(a, tmp_path / "absent.safetensors")
    save_checkpoint(a, tmp_path / "a.safetensors")
    with pytest.raises(RuntimeError):
        load_checkpoint(build_model("fc-200", image_size=8), tmp_path / "a.safetensors")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPATIALADV_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "spatialadv")


def test_train_model_learns_and_returns_eval_mode(digits, one_thread):
    train, test = digits
    torch.manual_seed(0)
    model = build_model("fc-200", image_size=8)
    before = accuracy(model, test.x, test.y)
    out = train_model(model, train, TINY, progress=False)
    assert out is model and not model.training
    after = accuracy(model, test.x, test.y)
    assert after > 0.85 and after > before + 0.5


def test_load_or_train_uses_cache(digits, cache, one_thread):
    train, test = digits
    m1, info1 = load_or_train("fc-200", train, test, config=TINY, seed=3, progress=False)
    assert info1["cached"] is False
    assert info1["path"].startswith(str(cache / "models")) and info1["path"].endswith(".safetensors")
    assert info1["key"].startswith("fc-200-digits-seed3-")
    assert not m1.training
    assert info1["test_accuracy"] == pytest.approx(accuracy(m1, test.x, test.y))
    assert info1["test_accuracy"] > 0.85
    mtime = os.stat(info1["path"]).st_mtime_ns

    m2, info2 = load_or_train("fc-200", train, test, config=TINY, seed=3, progress=False)
    assert info2["cached"] is True and info2["path"] == info1["path"] and info2["key"] == info1["key"]
    assert not m2.training
    assert _same_weights(m1, m2)
    assert info2["test_accuracy"] == info1["test_accuracy"]
    assert os.stat(info1["path"]).st_mtime_ns == mtime  # not rewritten


def test_load_or_train_key_covers_config_seed_and_data(digits, cache, one_thread):
    train, test = digits
    _, base = load_or_train("fc-500", train, config=TINY, seed=0, progress=False)
    assert base["cached"] is False and base["test_accuracy"] is None
    _, other_seed = load_or_train("fc-500", train, config=TINY, seed=1, progress=False)
    _, other_cfg = load_or_train("fc-500", train, config=replace(TINY, epochs=1), seed=0, progress=False)
    _, other_data = load_or_train("fc-500", test, config=TINY, seed=0, progress=False)
    keys = {base["key"], other_seed["key"], other_cfg["key"], other_data["key"]}
    assert len(keys) == 4
    assert not (other_seed["cached"] or other_cfg["cached"] or other_data["cached"])
    assert len(list((cache / "models").glob("*.safetensors"))) == 4


def test_load_or_train_deterministic_across_caches(digits, tmp_path, one_thread):
    train, _ = digits
    a, ia = load_or_train("fc-200", train, config=TINY, seed=5, progress=False, directory=tmp_path / "a")
    b, ib = load_or_train("fc-200", train, config=TINY, seed=5, progress=False, directory=tmp_path / "b")
    assert not ia["cached"] and not ib["cached"] and ia["key"] == ib["key"]
    assert ia["path"].startswith(str(tmp_path / "a"))
    assert _same_weights(a, b)
