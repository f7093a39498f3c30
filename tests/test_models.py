"""Model registry, training objectives, ModelSpec / model_key and the ``load_or_train`` cache."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from torch import nn

from spatialadv.attacks.base import input_grad
from spatialadv.data import DataSpec, load_dataset
from spatialadv.models import (
    MODELS,
    CorruptCheckpointError,
    STNClassifier,
    build_model,
    cache_dir,
    load_checkpoint,
    save_checkpoint,
    state_checksum,
)
from spatialadv.training import OBJECTIVES, ModelSpec, Objective, TrainConfig, accuracy, load_or_train, model_key, train_model

TINY = TrainConfig(epochs=2, batch_size=128, lr=1e-2, shift=0)
DIGITS = DataSpec("digits")


@pytest.fixture(scope="module")
def digits():
    return DIGITS.train(), DIGITS.test()


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


@pytest.mark.parametrize("name", ["fc-200", "fc-500", "stn-fc-500"])
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
    for field, bad in (("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("shift", -1), ("weight_decay", -1.0)):
        with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
            TrainConfig(**{field: bad})
    for field, bad in (("epochs", 1.5), ("seed", "0"), ("lr", float("nan"))):
        with pytest.raises(TypeError, match=f"TrainConfig.{field}"):
            TrainConfig(**{field: bad})


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
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.safetensors"):
        load_checkpoint(a, tmp_path / "absent.safetensors")
    save_checkpoint(a, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="another model"):  # another model's checkpoint
        load_checkpoint(build_model("fc-200", image_size=8), tmp_path / "a.safetensors")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPATIALADV_CACHE")
    assert cache_dir().parts[-2:] == (".cache", "spatialadv")


def test_stn_starts_as_identity_transform():
    torch.manual_seed(0)
    stn = build_model("stn-fc-500", image_size=8).eval()
    assert isinstance(stn, STNClassifier)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():  # θ = identity at initialisation: the STN is its classifier (up to resampling at pixel centres)
        assert torch.allclose(stn(x), stn.classifier(x), atol=1e-5)


def test_train_model_learns_and_returns_eval_mode(digits, one_thread):
    train, test = digits
    torch.manual_seed(0)
    model = build_model("fc-200", image_size=8)
    before = accuracy(model, test.x, test.y)
    notes = train_model(model, train, TINY, progress=False)
    assert notes == {} and not model.training
    after = accuracy(model, test.x, test.y)
    assert after > 0.85 and after > before + 0.5
    with pytest.raises(TypeError, match="Objective"):
        train_model(model, train, TINY, objective="standard", progress=False)


# ---------------------------------------------------------------------------------- Objective
def test_objective_defaults_equality_and_json():
    assert set(OBJECTIVES) >= {"standard", "fgsm-at", "pgd-at", "ll-at", "random", "hinge", "frobenius", "spectral", "sdp", "stadv-at",
                               "smoothing"}
    defaults = {"smoothing": {"sigma": 0.25, "rotation": 30.0, "translation": 3.0, "aug_weight": 1.0},
                "standard": {}, "fgsm-at": {"eps": 0.3, "adv_weight": 0.5}, "ll-at": {"eps": 0.3, "adv_weight": 0.5},
                "pgd-at": {"eps": 0.3, "steps": 40, "step_size": 0.01, "adv_weight": 1.0, "warmup": 5, "bf16": 0}, "random": {}, "hinge": {}, "frobenius": {"lam": 0.08},
                "spectral": {"lam": 0.09}, "sdp": {"eps_train": 0.02},
                "stadv-at": {"lam_r": 0.3, "tau": 0.05, "refresh": 3, "pool_size": 1000}}
    for name, opts in defaults.items():
        o = Objective(name)
        assert o.name == name and o.options == opts
        assert Objective(name, **opts) == o and hash(Objective(name, **opts)) == hash(o)
        assert json.loads(json.dumps(o.to_dict())) == {"name": name, "options": opts}
        assert Objective.from_dict(o.to_dict()) == o
    assert Objective("fgsm-at", eps=1) == Objective("fgsm-at", eps=1.0)  # ints accepted for floats, stored as float
    assert isinstance(Objective("fgsm-at", eps=1).options["eps"], float)
    assert Objective("fgsm-at", eps=0.1) != Objective("fgsm-at")
    o = Objective("sdp")
    with pytest.raises(AttributeError, match="Objective is immutable"):
        o.name = "standard"
    o.options["eps_train"] = 5.0  # a copy: the objective is unchanged
    assert o.options["eps_train"] == 0.02
    assert repr(Objective("fgsm-at", eps=0.1)) == "Objective('fgsm-at', adv_weight=0.5, eps=0.1)"


def test_objective_errors_name_the_option():
    with pytest.raises(ValueError, match="unknown objective 'madry'"):
        Objective("madry")
    with pytest.raises(ValueError, match="objective 'standard' has no option 'eps'; its options are: none"):
        Objective("standard", eps=0.3)
    with pytest.raises(ValueError, match="objective 'fgsm-at' has no option 'epsilon'; its options are: adv_weight, eps"):
        Objective("fgsm-at", epsilon=0.3)
    bad = [("fgsm-at", "eps", 0.0, r"\(0, 1\]"), ("fgsm-at", "eps", 1.5, r"\(0, 1\]"), ("fgsm-at", "adv_weight", -0.1, r"\[0, 1\]"),
           ("frobenius", "lam", -1.0, "≥|\\[0"), ("sdp", "eps_train", 0.0, "\\(0"), ("stadv-at", "refresh", 0, "an int"),
           ("stadv-at", "pool_size", 10.0, "an int"), ("stadv-at", "tau", "big", "a float"), ("spectral", "lam", float("inf"), "a float"),
           ("fgsm-at", "eps", True, "a float")]
    for name, option, value, range_ in bad:
        with pytest.raises(ValueError, match=f"objective '{name}': option '{option}' must be") as e:
            Objective(name, **{option: value})
        assert e.match(range_), str(e.value)


# ---------------------------------------------------------------------------------- ModelSpec / model_key
def test_model_spec_validation_and_round_trip():
    spec = ModelSpec("c4", DataSpec("mnist", max_train=100), TINY, Objective("fgsm-at", eps=0.1))
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"architecture", "data", "train", "objective"} and d["train"]["seed"] == 0
    assert ModelSpec.from_dict(d) == spec and hash(ModelSpec.from_dict(d)) == hash(spec)
    assert ModelSpec("c4", DIGITS).objective == Objective("standard") and ModelSpec("c4", DIGITS).train == TrainConfig()
    with pytest.raises(ValueError, match="ModelSpec.architecture must be one of"):
        ModelSpec("resnet-1000", DIGITS)
    with pytest.raises(TypeError, match="ModelSpec.data must be a DataSpec"):
        ModelSpec("c4", "mnist")
    with pytest.raises(TypeError, match="ModelSpec.train must be a TrainConfig"):
        ModelSpec("c4", DIGITS, {"epochs": 1})
    with pytest.raises(TypeError, match="ModelSpec.objective must be an? Objective"):
        ModelSpec("c4", DIGITS, TINY, "fgsm-at")
    with pytest.raises(TypeError, match="ModelSpec"):
        model_key({"architecture": "c4"})


def test_model_key_changes_with_every_field_and_only_then():
    base = ModelSpec("c4", DataSpec("mnist"), TrainConfig(), Objective("fgsm-at"))
    key = model_key(base)
    assert key.startswith("c4-fgsm-at-mnist-seed0-") and len(key.rsplit("-", 1)[1]) == 10
    # equal specs built independently (defaults spelled out or not) share the key
    same = ModelSpec("c4", DataSpec("mnist", seed=0, max_train=None), TrainConfig(epochs=12, lr=1e-3, seed=0),
                     Objective("fgsm-at", eps=0.3, adv_weight=0.5))
    assert model_key(same) == key
    variants = [
        replace(base, architecture="mnist-b"),
        replace(base, data=DataSpec("fashion-mnist")),
        replace(base, data=DataSpec("mnist", seed=1)),
        replace(base, data=DataSpec("mnist", max_train=1000)),
        replace(base, objective=Objective("standard")),
        replace(base, objective=Objective("fgsm-at", eps=0.1)),
        replace(base, objective=Objective("fgsm-at", adv_weight=1.0)),
    ] + [replace(base, train=replace(base.train, **{f: v})) for f, v in
         (("epochs", 3), ("batch_size", 32), ("lr", 1e-2), ("weight_decay", 1e-4), ("shift", 2), ("seed", 1))]
    keys = [model_key(s) for s in variants]
    assert len(set(keys)) == len(keys) and key not in keys
    assert model_key(replace(base, train=replace(base.train, seed=4))).startswith("c4-fgsm-at-mnist-seed4-")


# ---------------------------------------------------------------------------------- load_or_train
def test_load_or_train_uses_cache_and_freezes(cache, one_thread):
    _, test = DIGITS.train(), DIGITS.test()
    spec = ModelSpec("fc-200", DIGITS, replace(TINY, seed=3))
    rng = torch.get_rng_state()
    m1, info1 = load_or_train(spec, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    assert set(info1) == {"key", "path", "cached", "test_accuracy", "train_seconds", "notes", "spec"}
    assert info1["cached"] is False and info1["key"] == model_key(spec) and info1["key"].startswith("fc-200-standard-digits-seed3-")
    assert info1["path"] == str(cache / "models" / f"{info1['key']}.safetensors")
    assert isinstance(info1["train_seconds"], float) and info1["train_seconds"] > 0
    assert info1["notes"] == {} and info1["spec"] == spec.to_dict()
    assert info1["test_accuracy"] == pytest.approx(accuracy(m1, test.x, test.y)) and info1["test_accuracy"] > 0.85
    # frozen, eval mode; input gradients still flow (attacks work)
    assert not m1.training and all(not m.training for m in m1.modules())
    assert all(not p.requires_grad and p.grad is None for p in m1.parameters())
    g, _ = input_grad(m1, test.x[:4], lambda z: z[:, 0])
    assert g.shape == (4, 1, 8, 8) and float(g.abs().sum()) > 0
    meta = load_checkpoint(build_model("fc-200", image_size=8), info1["path"])
    assert meta["spec"] == spec.to_dict() and meta["key"] == info1["key"] and meta["test_accuracy"] == info1["test_accuracy"]
    mtime = os.stat(info1["path"]).st_mtime_ns

    m2, info2 = load_or_train(spec, progress=False)
    assert info2["cached"] is True and info2["train_seconds"] == info1["train_seconds"]
    assert {k: info2[k] for k in ("key", "path", "test_accuracy", "notes", "spec")} == \
        {k: info1[k] for k in ("key", "path", "test_accuracy", "notes", "spec")}
    assert _same_weights(m1, m2)
    assert not m2.training and all(not p.requires_grad for p in m2.parameters())
    assert os.stat(info1["path"]).st_mtime_ns == mtime  # not rewritten


def test_load_or_train_key_covers_spec(cache, one_thread):
    small = DataSpec("digits", max_train=200)
    one = replace(TINY, epochs=1)
    specs = [ModelSpec("fc-500", small, one), ModelSpec("fc-500", small, replace(one, seed=1)),
             ModelSpec("fc-500", DataSpec("digits", max_train=300), one), ModelSpec("fc-500", small, one, Objective("hinge"))]
    infos = [load_or_train(s, progress=False)[1] for s in specs]
    assert len({i["key"] for i in infos}) == 4 and not any(i["cached"] for i in infos)
    assert len(list((cache / "models").glob("*.safetensors"))) == 4


def test_load_or_train_deterministic_across_caches(tmp_path, one_thread):
    spec = ModelSpec("fc-200", DataSpec("digits", max_train=300), replace(TINY, seed=5))
    a, ia = load_or_train(spec, progress=False, directory=tmp_path / "a")
    b, ib = load_or_train(spec, progress=False, directory=tmp_path / "b")
    assert not ia["cached"] and not ib["cached"] and ia["key"] == ib["key"]
    assert ia["path"].startswith(str(tmp_path / "a"))
    assert _same_weights(a, b)


def test_load_or_train_errors(tmp_path, one_thread):
    train = load_dataset("digits", "train")
    with pytest.raises(TypeError, match="load_or_train takes a ModelSpec"):
        load_or_train("fc-200", progress=False, directory=tmp_path)
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 positional arguments"):  # the old (name, train, test, ...) signature is gone
        load_or_train("fc-200", train, progress=False, directory=tmp_path)
    with pytest.raises(ValueError, match="8×8"):  # architecture too large for the data
        load_or_train(ModelSpec("c4", DIGITS, TINY), progress=False, directory=tmp_path)
    with pytest.raises(TypeError, match="one hidden layer"):  # certificate objective on another architecture
        load_or_train(ModelSpec("fc-200", DIGITS, TINY, Objective("sdp")), progress=False, directory=tmp_path)
    assert not list(tmp_path.glob("*.safetensors"))


def _test_accuracy(model, data) -> float:
    """Top-1 accuracy of ``model`` on ``data``'s whole test split, recomputed here (the figure ``load_or_train`` reports)."""
    test = data.test()
    with torch.no_grad():
        correct = sum(int((model(test.x[i : i + 500]).argmax(1) == test.y[i : i + 500]).sum()) for i in range(0, len(test), 500))
    return correct / len(test)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_trains_a_tiny_model(name, tmp_path, one_thread, monkeypatch):
    options = {"pool_size": 16, "refresh": 1} if name == "stadv-at" else {}
    if name == "ens-at":  # its static models (mnist-c takes 8×8 images) go to the cache directory
        monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "static"))
        options = {"static_epochs": 1}
    spec = ModelSpec("fc-500", DataSpec("digits", max_train=128), TrainConfig(epochs=1, batch_size=64, lr=1e-2),
                     Objective(name, **options))
    model, info = load_or_train(spec, progress=False, directory=tmp_path)
    assert not info["cached"] and info["test_accuracy"] == _test_accuracy(model, spec.data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    torch.manual_seed(spec.train.seed)
    init = build_model("fc-500", image_size=8)
    assert _same_weights(model, init) == (name == "random")  # "random" is the seeded initialisation, untrained
    if name == "stadv-at":
        rates = info["notes"]["pool_success_rates"]
        # one refresh of a pool of 16 stAdv examples: a count out of 16, most of them adversarial (stAdv, Xiao et
        # al. ICLR 2018, succeeds on nearly every image of an undefended model; this one saw one epoch)
        assert len(rates) == 1 and (16 * rates[0]).is_integer() and rates[0] > 0.5
    elif name == "adv-critic":
        assert set(info["notes"]) == {"critic_loss", "train_attack_success"}
    else:
        assert info["notes"] == {}
    again, info2 = load_or_train(spec, progress=False, directory=tmp_path)
    assert info2["cached"] and info2["notes"] == info["notes"] and _same_weights(model, again)


# ------------------------------------------------------------------------ corrupt checkpoints
def _write_bad_checkpoint(kind: str, path, good: nn.Module) -> None:
    """Write one kind of bad checkpoint for ``good`` (an fc-200 on 8×8) at ``path``."""
    from safetensors.torch import save_file

    save_checkpoint(good, path, {"note": 1})
    blob = path.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "header-only":
        path.write_bytes(blob[:8])
    elif kind == "pickle":
        torch.save(good.state_dict(), path)
    elif kind == "other-shapes":  # another model's weights: same keys, other shapes
        save_checkpoint(build_model("fc-200", image_size=28), path)
    elif kind == "other-keys":
        save_checkpoint(nn.Linear(3, 2), path)
    elif kind in ("nan", "inf"):
        bad = build_model("fc-200", image_size=8)
        bad.load_state_dict(good.state_dict())
        with torch.no_grad():
            next(bad.parameters())[0, 0] = float(kind)
        save_checkpoint(bad, path)
    elif kind == "flipped-byte":  # a byte of the tensor data changed after saving
        data = bytearray(blob)
        data[-3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "metadata-not-json":
        state = {k: v.contiguous() for k, v in good.state_dict().items()}
        save_file(state, str(path), metadata={"note": "{not json"})
    else:
        raise AssertionError(kind)


BAD_FILES = {"empty": "empty", "truncated": "not a readable safetensors", "garbage": "not a readable safetensors",
             "header-only": "not a readable safetensors", "pickle": "not a readable safetensors",
             "other-shapes": "has shape", "other-keys": "other weights", "nan": "non-finite",
             "inf": "non-finite", "flipped-byte": "checksum mismatch", "metadata-not-json": "not JSON"}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_load_checkpoint_rejects_bad_files(kind, tmp_path):
    torch.manual_seed(0)
    good = build_model("fc-200", image_size=8)
    path = tmp_path / "m.safetensors"
    _write_bad_checkpoint(kind, path, good)
    torch.manual_seed(1)
    target = build_model("fc-200", image_size=8)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=BAD_FILES[kind]) as info:
        load_checkpoint(target, path)
    assert isinstance(info.value, CorruptCheckpointError) and str(path) in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched on failure


def test_checkpoint_checksum_recorded_and_legacy_files_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(0)
    a = build_model("fc-200", image_size=8)
    save_checkpoint(a, tmp_path / "a.safetensors", {"x": 1})
    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as f:
        assert f.metadata()["__spatialadv_sha256__"] == state_checksum(a.state_dict())
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(a, tmp_path / "b.safetensors", {"__spatialadv_sha256__": "x"})
    # a checkpoint written before checksums existed still loads (other checks pass)
    save_file({k: v.contiguous() for k, v in a.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"x": "1"})
    b = build_model("fc-200", image_size=8)
    assert load_checkpoint(b, tmp_path / "old.safetensors") == {"x": 1} and _same_weights(a, b)


CACHE_SPEC = ModelSpec("fc-200", DataSpec("digits", max_train=256), TrainConfig(epochs=1, batch_size=64, lr=1e-2))


@pytest.fixture(scope="module")
def fresh_cached(tmp_path_factory):
    d = tmp_path_factory.mktemp("fresh")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests that retrain and compare weights bit for bit (one_thread)
    try:
        model, info = load_or_train(CACHE_SPEC, progress=False, directory=d)
    finally:
        torch.set_num_threads(threads)
    return model, info


@pytest.mark.parametrize("kind", sorted(BAD_FILES) + ["wrong-key", "wrong-format"])
def test_load_or_train_moves_corrupt_checkpoint_aside_and_retrains(kind, tmp_path, fresh_cached, one_thread):
    ref, ref_info = fresh_cached
    path = tmp_path / f"{model_key(CACHE_SPEC)}.safetensors"
    if kind in ("wrong-key", "wrong-format"):
        meta = load_checkpoint(build_model("fc-200", image_size=8), ref_info["path"])
        meta["key" if kind == "wrong-key" else "format"] = "other" if kind == "wrong-key" else 1
        save_checkpoint(ref, path, meta)
        reason = "metadata key" if kind == "wrong-key" else "metadata format"
    else:
        _write_bad_checkpoint(kind, path, ref)
        reason = BAD_FILES[kind]
    path.with_name(path.name + ".corrupt-1").write_bytes(b"an older corrupt file")
    with pytest.warns(UserWarning, match=reason) as rec:
        model, info = load_or_train(CACHE_SPEC, progress=False, directory=tmp_path)
    assert any(str(path) in str(w.message) and ".corrupt-2" in str(w.message) for w in rec)
    assert not info["cached"] and _same_weights(model, ref)  # retrained from the spec: the same weights
    assert path.with_name(path.name + ".corrupt-2").is_file()  # moved aside, not deleted
    assert path.with_name(path.name + ".corrupt-1").read_bytes() == b"an older corrupt file"
    again, info2 = load_or_train(CACHE_SPEC, progress=False, directory=tmp_path)  # the new file is good
    assert info2["cached"] and _same_weights(again, ref)


# --------------------------------------------------------------------------------- safe names
BAD_NAMES = ["../evil", "a/b", "a\\b", "..", "a b", "", "é", "x;rm"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_names_building_cache_paths_are_checked(bad, monkeypatch):
    from spatialadv.data import DATASETS
    from spatialadv.training import OBJECTIVES as OBJ
    from spatialadv.training import register_objective

    # even a registered name is refused when it is not a safe file-name part
    monkeypatch.setitem(DATASETS, bad, DATASETS["digits"])
    monkeypatch.setitem(MODELS, bad, MODELS["fc-200"])
    monkeypatch.setitem(OBJ, bad, OBJ["standard"])
    with pytest.raises(ValueError, match="DataSpec.name"):
        DataSpec(bad)
    with pytest.raises(ValueError, match="ModelSpec.architecture"):
        ModelSpec(bad, DIGITS)
    with pytest.raises(ValueError, match="Objective.name"):
        Objective(bad)
    monkeypatch.delitem(OBJ, bad)
    with pytest.raises(ValueError, match="objective name"):
        register_objective(bad, OBJ["standard"].build)
    assert bad not in OBJ
    spec = ModelSpec("fc-200", DIGITS)  # a spec smuggled past __post_init__ still cannot build a key
    object.__setattr__(spec, "architecture", bad)
    with pytest.raises(ValueError, match="ModelSpec.architecture"):
        model_key(spec)


def test_name_type_errors():
    for make in (lambda: DataSpec(3), lambda: ModelSpec(None, DIGITS), lambda: Objective(b"standard")):
        with pytest.raises(TypeError, match="must be a str"):
            make()


def test_checkpoint_path_stays_in_cache_directory(tmp_path, monkeypatch):
    import spatialadv.training.specs as specs_mod

    monkeypatch.setattr(specs_mod, "model_key", lambda spec: "../escaped")
    with pytest.raises(ValueError, match="artifact name must be a non-empty name .* got '../escaped'"):
        load_or_train(CACHE_SPEC, progress=False, directory=tmp_path / "models")
    assert not list(tmp_path.rglob("*.safetensors"))
