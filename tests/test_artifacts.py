"""The one cached-artifact helper (:func:`spatialadv.models.load_or_build`) and its one gate for names, over every caller."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from spatialadv.data import DataSpec
from spatialadv.defenses import LANConfig, load_or_train_lan
from spatialadv.defenses.defense_gan import GANConfig, load_or_train_generator
from spatialadv.models import artifact_path, load_or_build
from spatialadv.training import ModelSpec, TrainConfig, load_or_train

BAD_NAMES = ["", "..", "../x", "../../x/lan", "a/b", "a\\b", "/etc/passwd", "x/../../y", "a b", "é"]
GATE = "artifact name must be a non-empty name of letters, digits"


def _linear(seed: int = 0, size: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, 10))


def _no_files(root) -> list:
    return [p for p in root.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------ the gate
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_the_gate_refuses_unsafe_names(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=GATE):
        artifact_path(bad, kind="models")
    with pytest.raises(ValueError, match="artifact kind must be a non-empty name"):
        artifact_path("fine", kind=bad)
    built = []
    with pytest.raises(ValueError, match=GATE):
        load_or_build(bad, _linear, lambda: built.append(1) or (_linear(), {}), kind="models", directory=tmp_path / "d")
    assert not built and not _no_files(tmp_path)


def test_the_gate_accepts_keys_and_stays_in_its_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    assert artifact_path("c4-fgsm-at-mnist-seed0-0123456789", kind="models") == \
        tmp_path / "cache" / "models" / "c4-fgsm-at-mnist-seed0-0123456789.safetensors"
    assert artifact_path("x", kind="generators", directory=tmp_path / "g") == tmp_path / "g" / "x.safetensors"
    with pytest.raises(TypeError, match="artifact name must be a str"):
        artifact_path(None, kind="models")


@pytest.mark.parametrize("bad", ["../../x/lan", "a/b", "/abs", "..", "a\\b"])
def test_lan_refuses_an_unsafe_classifier_key(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    train = SimpleNamespace(x=torch.rand(8, 1, 8, 8), y=torch.arange(8) % 10, num_classes=10)
    with pytest.raises(ValueError, match=GATE):
        load_or_train_lan(_linear(), bad, train, LANConfig(hidden=8, lan_epochs=1, f2_epochs=1))
    assert not _no_files(tmp_path)


@pytest.mark.parametrize("bad", ["../evil", "a/b"])
def test_defense_gan_refuses_an_unsafe_data_name(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    fake = SimpleNamespace(name=bad, to_dict=lambda: {"name": bad}, train=lambda: SimpleNamespace(x=torch.rand(4, 1, 8, 8)))
    with pytest.raises(ValueError, match=GATE):
        load_or_train_generator(fake, GANConfig(z_dim=4, hidden=(8,), iterations=1, n_critic=1), progress=False)
    assert not _no_files(tmp_path)


@pytest.mark.parametrize("bad", ["../clf", "a/b", "/abs"])
def test_sdpadv_generators_refuse_an_unsafe_classifier_key(bad, tmp_path, monkeypatch):
    from spatialadv.attacks import SdpAdv
    from spatialadv.experiments.sdpadv import fit_or_load_generator, generator_path

    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    proto = SdpAdv(eps=0.1, epochs=1)
    with pytest.raises(ValueError, match=GATE):
        generator_path(bad, "data", proto)
    with pytest.raises(ValueError, match=GATE):  # a hand-made path is gated too
        fit_or_load_generator(_linear(), proto, tmp_path / "a b.safetensors", (torch.rand(4, 1, 8, 8), torch.zeros(4)))
    assert not _no_files(tmp_path)


def test_load_or_train_refuses_an_unsafe_key(tmp_path, monkeypatch):
    import spatialadv.training.specs as specs

    monkeypatch.setattr(specs, "model_key", lambda spec: "../../x/model")
    with pytest.raises(ValueError, match=GATE):
        load_or_train(ModelSpec("fc-200", DataSpec("digits", max_train=64), TrainConfig(epochs=1)), progress=False,
                      directory=tmp_path / "models")
    assert not _no_files(tmp_path)


# ------------------------------------------------------------------------------------------ build once, verify, rebuild
def test_built_once_then_loaded_and_a_corrupt_file_is_moved_aside_and_rebuilt(tmp_path):
    builds = []

    def build():
        builds.append(1)
        return _linear(seed=len(builds)), {"key": "k", "n": len(builds)}

    def check(meta):
        return None if meta.get("key") == "k" else f"metadata key {meta.get('key')!r} is not 'k'"

    first = load_or_build("k", _linear, build, kind="models", directory=tmp_path, check=check)
    assert not first.cached and first.path == tmp_path / "k.safetensors" and first.meta == {"key": "k", "n": 1}
    second = load_or_build("k", lambda: _linear(seed=99), build, kind="models", directory=tmp_path, check=check)
    assert second.cached and len(builds) == 1 and second.meta == {"key": "k", "n": 1}  # loaded, not built again
    for a, b in zip(first.module.parameters(), second.module.parameters()):
        assert torch.equal(a, b)

    first.path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=r"k\.safetensors is not a readable safetensors file.*moved it to k\.safetensors\.corrupt-1"):
        third = load_or_build("k", _linear, build, kind="models", directory=tmp_path, check=check)
    assert not third.cached and len(builds) == 2 and third.meta["n"] == 2
    assert (tmp_path / "k.safetensors.corrupt-1").read_bytes() == b"not a checkpoint"

    # a readable file of another artifact (the check names the problem) is moved aside too
    load_or_build("other", _linear, lambda: (_linear(), {"key": "other"}), kind="models", directory=tmp_path)
    (tmp_path / "other.safetensors").replace(tmp_path / "k.safetensors")
    with pytest.warns(UserWarning, match="metadata key 'other' is not 'k'.*corrupt-2"):
        fourth = load_or_build("k", _linear, build, kind="models", directory=tmp_path, check=check)
    assert not fourth.cached and len(builds) == 3
    assert load_or_build("k", _linear, build, kind="models", directory=tmp_path, check=check).cached and len(builds) == 3


def test_a_corrupt_lan_detector_is_rebuilt(tmp_path, one_thread):
    gen = torch.Generator().manual_seed(0)
    train = SimpleNamespace(x=torch.rand(64, 1, 12, 12, generator=gen), y=torch.arange(64) % 10, num_classes=10)
    f1 = _linear(size=12).eval().requires_grad_(False)
    cfg = LANConfig(hidden=16, lan_epochs=1, f2_epochs=1)
    det, info = load_or_train_lan(f1, "linear-digits", train, cfg, directory=tmp_path)
    path = tmp_path / f"{info['key']}.safetensors"
    assert not info["cached"] and path.is_file() and info["key"].startswith("lan-linear-digits-")
    det2, info2 = load_or_train_lan(f1, "linear-digits", train, cfg, directory=tmp_path)
    assert info2["cached"] and info2["lan_history"] == info["lan_history"]
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="moved it to .*corrupt-1 and rebuilding the LAN detector"):
        det3, info3 = load_or_train_lan(f1, "linear-digits", train, cfg, directory=tmp_path)
    assert not info3["cached"]
    x = train.x[:5]
    torch.testing.assert_close(det2.g(x), det.g(x))
    torch.testing.assert_close(det3.g(x), det.g(x))  # seeded: the same training


def test_a_corrupt_defense_gan_generator_is_rebuilt(tmp_path, one_thread):
    spec, cfg = DataSpec("digits", max_train=128), GANConfig(z_dim=4, hidden=(16,), iterations=2, n_critic=1, batch_size=32)
    g1, i1 = load_or_train_generator(spec, cfg, directory=tmp_path, progress=False)
    path = tmp_path / f"{i1['key']}.safetensors"
    assert not i1["cached"] and path.is_file()
    assert load_or_train_generator(spec, cfg, directory=tmp_path, progress=False)[1]["cached"]
    other = dataclasses.replace(cfg, seed=1)
    _, io = load_or_train_generator(spec, other, directory=tmp_path, progress=False)
    path.write_bytes((tmp_path / f"{io['key']}.safetensors").read_bytes())
    with pytest.warns(UserWarning, match="metadata key .* is not .*corrupt-1"):  # another generator's file
        g3, i3 = load_or_train_generator(spec, cfg, directory=tmp_path, progress=False)
    assert not i3["cached"]
    for a, b in zip(g1.parameters(), g3.parameters()):
        torch.testing.assert_close(a, b)
