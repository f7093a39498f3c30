"""Fuzzing the command line (hypothesis): random options and corrupt files never give a traceback.

* ``reproduce``: any experiment, any subset of its options, each with a token drawn from numbers at and beyond
  the usual domains (0, negatives, huge, NaN, ±inf, fractions, words). Either the command refuses in one
  ``error:`` line (exit 2, nothing created) or the Config it would run with passes its own validation —
  the experiment itself is replaced by a stub, so no work starts.
* ``report`` / ``evaluate``: a results store replaced by random bytes or a truncated copy of a real store.
* ``audit``: the data file replaced by random bytes or a truncated ``.npz``.

Bounded (a few dozen examples per test, no training) so the file runs in well under a minute.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spatialadv.experiments as package
from spatialadv._config import validate_config
from spatialadv.cli import main
from spatialadv.eval.store import ResultStore
from spatialadv.experiments import experiments

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

TOKENS = ["0", "1", "-1", "2", "0.5", "1e-12", "1e9", "99999999999999999999", "-99999999999999999999", "nan",
          "inf", "-inf", "abc", "", "none", "3,5", "0x10", "1_000", "7.0"]


class Reached(Exception):
    """The stub experiment was reached: the command accepted its options."""


def _options(name: str) -> list[str]:
    cfg = experiments()[name].config
    return ["--" + f.name.replace("_", "-") for f in dataclasses.fields(cfg) if "help" in f.metadata]


NAMES = sorted(experiments())


@st.composite
def reproduce_argv(draw):
    name = draw(st.sampled_from(NAMES))
    opts = draw(st.lists(st.sampled_from(_options(name) + ["--seed", "--threads"]), min_size=1, max_size=4,
                         unique=True))
    argv = ["reproduce", name]
    for o in opts:
        argv += [o, draw(st.sampled_from(TOKENS))]
    return name, argv


def _finite_numbers(cfg) -> bool:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        for u in v if isinstance(v, tuple) else (v,):
            if isinstance(u, float) and not math.isfinite(u):
                return False
    return True


@FUZZ
@given(case=reproduce_argv())
def test_reproduce_options_refused_in_one_line_or_valid(case, tmp_path_factory, monkeypatch, capsys):
    name, argv = case
    tmp = tmp_path_factory.mktemp("fuzz")
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp / "cache"))
    seen = {}

    def stub(exp, cfg, out, **kw):
        seen["cfg"] = cfg
        raise Reached

    monkeypatch.setattr(package, "run_experiment", stub)
    out = tmp / "out"
    try:
        rc = main([*argv, "--out", str(out), "--quiet"])
    except SystemExit as e:  # argparse: a token its type refuses (usage line + one error line)
        rc = e.code
        cap = capsys.readouterr()
        assert rc == 2 and "Traceback" not in cap.err and "error:" in cap.err, cap.err
        assert not out.exists()
        return
    except Reached:
        cfg = seen["cfg"]
        validate_config(cfg)  # what reached the experiment is in its declared domain
        assert _finite_numbers(cfg), cfg
        return
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert rc == 2, (argv, rc, cap.err)
    assert "Traceback" not in cap.err and err.startswith("error: ") and "\n" not in err, err
    assert not out.exists() and not (tmp / "cache").exists()


def _real_store(path):
    with ResultStore(path) as s:
        s.set_meta("note", {"fuzz": True})
    return path.read_bytes()


@FUZZ
@given(kind=st.sampled_from(["random", "truncated", "flipped"]), seed=st.integers(0, 2**16), cut=st.floats(0, 1))
def test_corrupt_stores_give_one_line(kind, seed, cut, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("store")
    good = _real_store(tmp / "good.sqlite")
    rng = np.random.default_rng(seed)
    if kind == "random":
        blob = rng.integers(0, 256, int(50 + cut * 8000), dtype=np.uint8).tobytes()
    elif kind == "truncated":
        blob = good[: int(cut * len(good))]
    else:
        b = bytearray(good)
        for i in rng.integers(0, len(b), 12):
            b[i] ^= 0xFF
        blob = bytes(b)
    folder = tmp / "run"
    folder.mkdir()
    (folder / "results.sqlite").write_bytes(blob)
    for argv in (["report", str(folder)], ["evaluate", "--store", str(folder / "results.sqlite")]):
        before = (folder / "results.sqlite").read_bytes()
        rc = main(argv)
        cap = capsys.readouterr()
        assert "Traceback" not in cap.err + cap.out
        assert rc in (0, 2), (argv, rc, cap.err)
        if rc == 2:
            err = cap.err.strip()
            assert err.startswith("error: ") and "\n" not in err, err
        assert (folder / "results.sqlite").read_bytes() == before, "a corrupt store must not be modified"


NET = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
'''


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(["random", "truncated", "no_y", "wrong_shape", "nan", "labels_float", "empty"]),
       seed=st.integers(0, 2**16), cut=st.floats(0.01, 0.99))
def test_corrupt_audit_data_gives_one_line(kind, seed, cut, tmp_path_factory, capsys, one_thread):
    tmp = tmp_path_factory.mktemp("audit")
    (tmp / "net.py").write_text(NET)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    y = np.arange(6) % 10
    path = tmp / "d.npz"
    if kind == "random":
        path.write_bytes(rng.integers(0, 256, int(10 + cut * 3000), dtype=np.uint8).tobytes())
    elif kind == "truncated":
        np.savez(tmp / "full.npz", x=x, y=y)
        full = (tmp / "full.npz").read_bytes()
        path.write_bytes(full[: int(cut * len(full))])
    elif kind == "no_y":
        np.savez(path, x=x)
    elif kind == "wrong_shape":
        np.savez(path, x=x.reshape(6, 64), y=y[:5])
    elif kind == "nan":
        xf = x.astype("float32") / 255
        xf[0, 0, 0] = np.nan
        np.savez(path, x=xf, y=y)
    elif kind == "labels_float":
        np.savez(path, x=x, y=y + 0.5)
    else:
        np.savez(path, x=x[:0], y=y[:0])
    out = tmp / "out"
    rc = main(["audit", "--model", f"{tmp / 'net.py'}:make", "--data", str(path), "--out", str(out),
               "--threats", "linf", "--pgd-steps", "2", "--random-tries", "2", "--n", "4", "--quiet"])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err + cap.out
    assert rc == 2, (kind, rc, cap.err)
    err = cap.err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert not out.exists()
