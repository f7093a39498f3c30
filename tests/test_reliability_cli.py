"""Reliability of the CLI on bad user input: every option checked before any work, no traceback for user errors.

Each user error ends in exit status 2 and one line on stderr naming what the user gave (the option as typed,
the file), with nothing created (``--out``, the model cache) and nothing lost (stores are left as they were).
The bad-option checks are parametrized over the experiment registry and the audit's Config, so a new
experiment or option is covered without editing this file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sqlite3
import textwrap
import typing

import numpy as np
import pytest
import torch

from spatialadv._config import INT_MAX, MAX_THREADS, _shape, option_name, validate_config
from spatialadv.audit import AuditConfig
from spatialadv.cli import build_parser, main
from spatialadv.eval.store import ResultStore
from spatialadv.experiments import experiments


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _one_line_error(capsys, rc) -> str:
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert rc == 2, (rc, cap.err)
    assert "Traceback" not in cap.err + cap.out
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def _names(err: str, opt: str) -> bool:
    """Whether ``err`` names the option ``opt`` exactly (``--n`` is not named by ``--n-eval``)."""
    return re.search(re.escape(opt) + r"(?![\w-])", err) is not None


# ------------------------------------------------------------------------------------------------
# item 3: every option's declared domain, checked before any work
# ------------------------------------------------------------------------------------------------
def _bad_values(cfg) -> list[tuple[str, list[str]]]:
    """``(option, tokens)``: one out-of-domain value per declared bound of each number field of ``cfg``."""
    hints = typing.get_type_hints(type(cfg))
    out = []
    for f in dataclasses.fields(cfg):
        m = f.metadata
        if "help" not in m or m.get("parse") is not None or m.get("sep"):
            continue  # a custom parser refuses bad tokens itself (argparse); split lists are checked by the Config
        shape, kind = _shape(hints[f.name])
        if kind not in (int, float):
            continue
        default = getattr(cfg, f.name)
        rest = [str(v) for v in default[1:]] if shape == "pair" else []
        bad = []
        if m.get("minimum") is not None:
            bad.append(m["minimum"] - 1)
        if m.get("above") is not None:
            bad.append(m["above"])
        if m.get("maximum") is not None:
            bad.append(m["maximum"] + 1 if kind is int else m["maximum"] * 2 + 1)
        elif m.get("below") is not None:
            bad.append(m["below"])
        elif kind is int:
            bad.append(INT_MAX + 1)
        if kind is float:
            bad.append(math.nan)
            if m.get("finite", True):
                bad.append(math.inf)
        for b in bad:
            tok = str(int(b)) if kind is int else repr(float(b))
            out.append((option_name(f.name), [tok, *rest]))
    return out


_CASES = [(name, opt, toks) for name, exp in experiments().items() for opt, toks in _bad_values(exp.config)]


def test_every_experiment_has_bounded_options():
    assert {name for name, _, _ in _CASES} == set(experiments())
    for name, exp in experiments().items():  # every default lies inside its own domain
        validate_config(exp.config)


@pytest.mark.parametrize("name, opt, tokens", _CASES, ids=[f"{n}{o}={t[0]}" for n, o, t in _CASES])
def test_reproduce_bad_value_refused_before_any_work(cache, capsys, monkeypatch, name, opt, tokens):
    import spatialadv.experiments as package

    def never(*a, **k):  # a bad value that slipped through would start the experiment: fail instead
        raise AssertionError(f"{opt} {tokens} was accepted")

    monkeypatch.setattr(package, "run_experiment", never)
    out = cache / "out"
    rc = main(["reproduce", name, opt, *tokens, "--out", str(out), "--quiet"])
    err = _one_line_error(capsys, rc)
    assert _names(err, opt), err
    assert not out.exists() and not (cache / "cache").exists()


_AUDIT_CASES = _bad_values(AuditConfig())


@pytest.mark.parametrize("opt, tokens", _AUDIT_CASES, ids=[f"{o}={t[0]}" for o, t in _AUDIT_CASES])
def test_audit_bad_value_refused_before_any_work(cache, capsys, opt, tokens):
    out = cache / "out"
    rc = main(["audit", "--model", str(cache / "missing.py") + ":make", "--data", "digits", opt, *tokens,
               "--out", str(out), "--quiet"])
    err = _one_line_error(capsys, rc)
    assert _names(err, opt), err
    assert not out.exists()


@pytest.mark.parametrize("argv, opt, needle", [
    (["reproduce", "certify-smoothing", "--alpha", "2"], "--alpha", "(0, 1)"),
    (["reproduce", "certify-smoothing", "--refine", "1"], "--refine", ">= 2"),
    (["reproduce", "certify-smoothing", "--max-angle", "1e9"], "--max-angle", "180"),
    (["reproduce", "smooth-mnist", "--max-train", "100000000"], "--max-train", "must be"),
    (["reproduce", "smooth-mnist", "--max-train", "5000"], "--max-train", "4000"),
    (["reproduce", "smooth-fashion", "--max-train", "60001"], "--max-train", "60000"),
    (["reproduce", "sdpadv-mnist", "--gen-train", "4001"], "--gen-train", "4000"),
    (["reproduce", "stadv-mnist", "--seed", "99999999999999999999"], "--seed", "2**63-1"),
    (["reproduce", "stadv-mnist", "--epochs", "0"], "--epochs", ">= 1"),
    (["reproduce", "stadv-defenses", "--filter-size", "4"], "--filter-size", "odd"),
    (["reproduce", "stadv-mnist", "--threads", str(MAX_THREADS + 1)], "--threads", str(MAX_THREADS)),
    (["train", "--data", "digits", "--epochs", "0"], "--epochs", ""),
    (["train", "--data", "digits", "--seed", "99999999999999999999"], "--seed", "2**63-1"),
    (["attack", "--data", "digits", "--n", "99999999999999999999"], "--n", ""),
    (["audit", "--model", "m.py:make", "--data", "digits", "--linf-eps", "inf"], "--linf-eps", "finite"),
])
def test_known_failures_name_the_option(cache, capsys, monkeypatch, argv, opt, needle):
    import spatialadv.experiments as package

    monkeypatch.setattr(package, "run_experiment", lambda *a, **k: pytest.fail("started"))
    out = cache / "out"
    err = _one_line_error(capsys, main(argv + ["--out", str(out), "--quiet"] if argv[0] in ("reproduce", "audit")
                                       else argv + ["--quiet"]))
    assert _names(err, opt) and needle in err and "TrainConfig" not in err, err
    assert not out.exists() and not (cache / "cache").exists()


def test_train_sizes_match_the_data():
    from spatialadv.data import TRAIN_SIZES, load_dataset

    for name in ("mnist", "digits"):
        assert TRAIN_SIZES[name] == len(load_dataset(name, "train"))


def test_validate_config_domains():
    from spatialadv._config import option

    @dataclasses.dataclass(frozen=True)
    class D:
        p: float = option(0.5, "probability", above=0.0, below=1.0)
        k: int = option(0, "0 or >= 2", minimum=0, check=lambda v: None if v != 1 else "0 or >= 2")
        budget: float = option(1.0, "budget", above=0.0, finite=False)
        xs: tuple[float, ...] = option((1.0, 2.0), "values", minimum=0.0, maximum=10.0)
        opt: int | None = option(None, "optional", minimum=1)

    validate_config(D())
    validate_config(D(budget=math.inf, opt=5))
    for bad, needle in [(dict(p=1.0), "--p must be a finite number in (0, 1)"), (dict(p=math.nan), "--p"),
                        (dict(k=1), "--k must be 0 or >= 2"), (dict(k=True), "--k"), (dict(budget=math.nan), "--budget"),
                        (dict(xs=(1.0, 11.0)), "--xs must be a finite number in [0, 10]"), (dict(opt=0), "--opt"),
                        (dict(opt=2**63), "2**63-1"), (dict(opt=0), "--opt must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            validate_config(D(**bad))


# ------------------------------------------------------------------------------------------------
# item 4: stores, paths and checkpoints
# ------------------------------------------------------------------------------------------------
def _store_with_record(path, params: bytes | None = None):
    with ResultStore(path) as s:
        s.register_run("k1", "m", "a", {"eps": 0.1})
        s.add([{"run_key": "k1", "idx": 0, "target": -1, "label": 3, "clean_pred": 3, "success": 1, "pred": 5,
                "l2": 0.5, "linf": 0.1, "time_s": 0.01, "grad_evals": 1, "forward_evals": 1, "params": params}])


def _sql(path, statement):
    with sqlite3.connect(str(path)) as c:
        c.execute(statement)


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("corrupt", [
    "UPDATE meta SET value = '{\"truncated' WHERE key = 'schema_version'",
    "UPDATE runs SET config = '{not json'",
    "UPDATE records SET params = X'0102030405'",
    "UPDATE records SET params = X'504B0304DEADBEEF'",
])
def test_evaluate_corrupt_store_one_line(cache, capsys, corrupt):
    path = cache / "s.sqlite"
    _store_with_record(path)
    _sql(path, corrupt)
    before = _digest(path)
    err = _one_line_error(capsys, main(["evaluate", "--store", str(path)]))
    assert "corrupt" in err and str(path) in err and "allow_pickle" not in err, err
    assert _digest(path) == before  # nothing lost or rewritten


@pytest.mark.parametrize("meta", [
    {"config": {"threats": ["linf"], "n": 2}},  # truncated: no model, data, examples
    {"config": {"threats": ["linf"]}, "model": {"spec": "x"}, "data": {}, "data_key": "d", "classes": [],
     "examples": [0], "labels": [0]},  # no model key
    {"config": {"nope": 1}, "model": {"key": "k"}, "data": {}, "data_key": "d", "classes": ["0"], "examples": [0],
     "labels": [0]},  # an unknown configuration field
    {"config": {"n": -3}, "model": {"key": "k"}, "data": {}, "data_key": "d", "classes": ["0"], "examples": [0],
     "labels": [0]},  # a configuration out of its domain
])
def test_report_truncated_audit_meta_one_line(cache, capsys, meta):
    out = cache / "aud"
    out.mkdir()
    with ResultStore(out / "results.sqlite") as s:
        s.set_meta("audit", meta)
    before = _digest(out / "results.sqlite")
    err = _one_line_error(capsys, main(["report", str(out)]))
    assert "audit" in err and "KeyError" not in err, err
    assert _digest(out / "results.sqlite") == before and not (out / "report.md").exists()


def test_report_of_reproduce_folder_with_corrupt_config(cache, capsys):
    out = cache / "rep"
    out.mkdir()
    with ResultStore(out / "results.sqlite") as s:
        s.set_meta("config", {"experiment": "stadv-mnist", "values": {}})
    _sql(out / "results.sqlite", "UPDATE meta SET value = '{\"experiment\": \"stadv-' WHERE key = 'config'")
    err = _one_line_error(capsys, main(["report", str(out)]))
    assert "corrupt" in err


def test_out_and_cache_under_a_file(cache, capsys, monkeypatch):
    f = cache / "notes.txt"
    f.write_text("x")
    err = _one_line_error(capsys, main(["reproduce", "stadv-mnist", "--out", str(f / "run"), "--quiet"]))
    assert "--out" in err and "notes.txt" in err
    err = _one_line_error(capsys, main(["audit", "--model", "m.py:make", "--data", "digits", "--out", str(f / "a")]))
    assert "--out" in err
    monkeypatch.setenv("SPATIALADV_CACHE", str(f / "cache"))
    for argv in (["train", "--model", "fc-200", "--data", "digits", "--epochs", "1", "--quiet"],
                 ["reproduce", "stadv-mnist", "--out", str(cache / "r"), "--quiet"]):
        err = _one_line_error(capsys, main(argv))
        assert "SPATIALADV_CACHE" in err and "notes.txt" in err, err
    assert not (cache / "r").exists()


def test_checkpoint_path_that_is_a_folder_refused_before_training(cache, capsys):
    from spatialadv.cli import _spec
    from spatialadv.models import artifact_path
    from spatialadv.training import model_key

    argv = ["train", "--model", "fc-200", "--data", "digits", "--epochs", "1", "--quiet"]
    path = artifact_path(model_key(_spec(build_parser().parse_args(argv))), kind="models")
    path.mkdir(parents=True)
    err = _one_line_error(capsys, main(argv))
    assert str(path) in err and "folder" in err
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no .tmp file: nothing was trained


# ------------------------------------------------------------------------------------------------
# item 4: audits
# ------------------------------------------------------------------------------------------------
NETS = textwrap.dedent('''
    import torch
    from torch import nn


    def _linear():
        g = torch.Generator().manual_seed(0)
        lin = nn.Linear(64, 10)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(10, 64, generator=g))
            lin.bias.zero_()
        return lin


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = _linear()

        def forward(self, x):
            return self.lin(x.flatten(1))


    class Breaks(Net):
        """Raises once the audit's attacks call it (after the checks' first few calls)."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 8:
                raise RuntimeError("custom layer exploded\\non line two")
            return super().forward(x)


    class InfOnPerturbed(Net):
        """Infinite logits on any image off the 1/255 grid of the clean uint8 images (i.e. perturbed ones)."""

        def forward(self, x):
            out = super().forward(x)
            off = ((x * 255 - (x * 255).round()).abs().flatten(1).amax(1) > 1e-3)[:, None]
            return torch.where(off, torch.full_like(out, float("inf")), out)


    def make():
        return Net()


    def make_other():
        net = Net()
        with torch.no_grad():
            net.lin.bias.add_(0.01)
        return net


    def make_breaks():
        return Breaks()


    def make_inf():
        return InfOnPerturbed()
''')

CHEAP = ["--threats", "linf", "--pgd-steps", "2", "--random-tries", "2", "--n", "6", "--quiet"]


@pytest.fixture()
def user(tmp_path, one_thread):
    """A model file and an 8×8 ``.npz`` whose labels are the model's own predictions (every image is attacked)."""
    (tmp_path / "nets.py").write_text(NETS)
    import importlib.util

    spec = importlib.util.spec_from_file_location("relcli_nets", tmp_path / "nets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = np.random.default_rng(0).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    with torch.no_grad():
        y = mod.make()(torch.from_numpy(x).float()[:, None] / 255).argmax(1).numpy()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return tmp_path


def _audit(user, factory, out, *extra, data=None):
    return main(["audit", "--model", f"{user / 'nets.py'}:{factory}", "--data", str(data or user / "d.npz"),
                 "--out", str(out), *CHEAP, *extra])


def test_audit_bad_npz_files_one_line_nothing_written(user, capsys):
    out = user / "out"
    good = (user / "d.npz").read_bytes()
    (user / "trunc.npz").write_bytes(good[: len(good) // 2])
    (user / "garbage.npz").write_bytes(b"\x80\x04garbage" * 50)
    (user / "zero.npz").write_bytes(b"")
    np.savez(user / "empty.npz", x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    for name, needle in [("trunc", "truncated or corrupt"), ("garbage", "not a .npz archive"), ("zero", "empty"),
                         ("empty", "no images")]:
        err = _one_line_error(capsys, _audit(user, "make", out, data=user / f"{name}.npz"))
        assert needle in err and f"{name}.npz" in err and "allow_pickle" not in err, err
        assert not out.exists()


def test_audit_model_that_raises_one_line(user, capsys):
    err = _one_line_error(capsys, _audit(user, "make_breaks", user / "out"))
    assert "custom layer exploded on line two" in err and "--model" in err and "RuntimeError" in err, err


def test_audit_infinite_logits_on_perturbed_images(user, capsys):
    err = _one_line_error(capsys, _audit(user, "make_inf", user / "out", "--threats", "stadv", "--stadv-steps", "2"))
    assert "non-finite logits" in err and "flow contains" not in err, err


def test_audit_into_another_models_folder_needs_replace(user, capsys):
    out = user / "out"
    assert _audit(user, "make", out) == 0
    capsys.readouterr()
    assert _audit(user, "make", out) == 0  # the same audit again: resumes
    capsys.readouterr()
    report = (out / "report.json").read_text()
    err = _one_line_error(capsys, _audit(user, "make_other", out))
    assert "--replace" in err and "another model" in err, err
    assert json.loads((out / "report.json").read_text()) == json.loads(report)  # its report is untouched
    assert _audit(user, "make_other", out, "--replace") == 0
    capsys.readouterr()
    assert json.loads((out / "report.json").read_text())["model"] != json.loads(report)["model"]


def test_replace_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert "--replace" in capsys.readouterr().out
