"""CLI smoke tests on tiny subsets (real MNIST / digits, tiny models trained in the test)."""

import argparse
import dataclasses
import json

import pytest

from spatialadv._config import config_from_args, config_to_dict, validate_config
from spatialadv.audit import AuditConfig
from spatialadv.cli import build_parser, main
from spatialadv.data import DATASETS
from spatialadv.eval.store import ResultStore
from spatialadv.experiments import experiments


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_reproduce_stadv_mnist_tiny(cache, capsys, one_thread):
    out = cache / "rep"
    rc = main(["reproduce", "stadv-mnist", "--out", str(out), "--models", "fc-200", "--n", "2", "--n-baselines", "1",
               "--epochs", "1", "--quiet"])
    assert rc == 0
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "Table 6" in md and "N = 2" in md
    rep = json.loads((out / "report.json").read_text())
    by = {(r["model"], r["attack"]): r for r in rep["results"]}
    assert by[("fc-200", "stAdv")]["pairs"] == 18  # 2 images × 9 targets
    assert by[("fc-200", "C&W-L2")]["pairs"] == 9
    st = by[("fc-200", "stAdv")]  # stAdv Table 1: 99.95-100 % targeted success on MNIST models
    assert st["successes"] == 18 and st["P_suc"] == 1.0
    for f in rep["figures"]:
        assert (out / f).stat().st_size > 1000
    assert {"fig2_grid_fc-200.png", "fig4_compare.png"} <= set(rep["figures"])
    # the report command rebuilds from the store alone
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == md
    # running again resumes: nothing new is attacked, the results are identical
    assert main(["reproduce", "stadv-mnist", "--out", str(out), "--models", "fc-200", "--n", "2", "--n-baselines", "1",
                 "--epochs", "1", "--quiet"]) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert [(r["model"], r["attack"], r["successes"], r["D_bar"]) for r in rep2["results"]] == \
        [(r["model"], r["attack"], r["successes"], r["D_bar"]) for r in rep["results"]]


def test_reproduce_smooth_mnist_tiny(cache, capsys, one_thread):
    out = cache / "smooth"
    args = ["reproduce", "smooth-mnist", "--out", str(out), "--n", "3", "--n-budget", "2", "--epochs", "1",
            "--max-train", "500", "--steps", "5", "--binary-search-steps", "1", "--budgets", "1x3", "2x3", "--quiet"]
    assert main(args) == 0
    md = (out / "report.md").read_text()
    assert "Table 1" in md and "sC&W vs C&W" in md and "iteration budgets" in md
    rep = json.loads((out / "report.json").read_text())
    assert [r["attack"] for r in rep["results"]] == ["FGSM", "I-FGSM", "PGD2", "C&W", "sPGD2", "sC&W"]
    by = {r["attack"]: r for r in rep["results"]}
    for r in rep["results"]:
        assert r["N"] == 3 and r["P_suc"] == r["N_suc"] / 3
    assert by["PGD2"]["P_suc"] == by["sPGD2"]["P_suc"] == 1.0
    # Zhang et al. (smooth adversarial examples): the smooth perturbation keeps off the flat background, where
    # PGD2's spreads (share of the perturbation's energy on flat pixels: 0.02 against 0.19 here)
    assert by["sPGD2"]["flat_energy"] < 0.5 * by["PGD2"]["flat_energy"]
    assert [b["schedule"] for b in rep["budget"]] == ["1×5", "1×3", "2×3"]
    assert all(b["C&W"]["N"] == 2 for b in rep["budget"])
    for f in rep["figures"]:
        assert (out / f).stat().st_size > 1000
    assert "fig2_operating_characteristic.png" in rep["figures"]
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == md
    # resume: nothing new to attack, same numbers
    assert main(args) == 0
    rep2 = json.loads((out / "report.json").read_text())
    assert rep2["results"] == rep["results"]


def test_train_attack_evaluate(cache, capsys):
    assert main(["train", "--model", "fc-200", "--data", "digits", "--epochs", "3", "--quiet"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    store = cache / "a.sqlite"
    rc = main(["attack", "--model", "fc-200", "--data", "digits", "--epochs", "3", "--attack", "pgd", "--param", "eps=0.3",
               "--n", "5", "--mode", "untargeted", "--store", str(store), "--quiet"])
    assert rc == 0
    assert "attacked 5 new of 5" in capsys.readouterr().out
    assert main(["evaluate", "--store", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["pairs"] == 5 and rows[0]["attack"] == "pgd"


def test_cli_errors(cache, capsys):
    assert main(["evaluate", "--store", str(cache / "missing.sqlite")]) == 2
    assert main(["report", str(cache / "nothing")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert main(["attack", "--model", "fc-200", "--data", "digits", "--attack", "pgd", "--param", "eps=-1", "--quiet"]) == 2
    assert "eps" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="^2$"):
        main(["attack", "--attack", "nope"])


@pytest.mark.parametrize("argv, needle", [
    (["attack", "--data", "digits", "--n", "-5"], "--n"),
    (["attack", "--data", "digits", "--n", "0"], "--n"),
    (["attack", "--data", "digits", "--batch-size", "-1"], "--batch-size"),
    (["attack", "--data", "digits", "--seed", "-1"], "--seed"),
    (["attack", "--data", "digits", "--epochs", "0"], "epochs"),
    (["reproduce", "stadv-mnist", "--n", "0"], "--n"),
    (["reproduce", "stadv-mnist", "--n", "3", "--n-baselines", "5"], "--n-baselines"),
    (["reproduce", "smooth-mnist", "--max-train", "3"], "--max-train"),
    (["reproduce", "certify-bounds", "--pair", "1", "1"], "--pair"),
    (["reproduce", "sdpadv-mnist", "--val-fraction", "0"], "--val-fraction"),
    (["reproduce", "stadv-mnist", "--out", "README.md"], "--out"),
])
def test_bad_options_fail_fast_with_one_line(cache, capsys, argv, needle):
    """Each user error: exit 2 and one line naming the option, before any training or attack."""
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (cache / "cache").exists()  # nothing was trained


def test_unusable_stores_and_data_files(cache, capsys, monkeypatch):
    folder = cache / "folder.sqlite"
    folder.mkdir()
    garbage = cache / "garbage.sqlite"
    garbage.write_bytes(b"garbage" * 1000)
    for store in (folder, garbage):
        assert main(["attack", "--data", "digits", "--n", "2", "--store", str(store), "--quiet"]) == 2
        assert "results store" in capsys.readouterr().err
        assert main(["evaluate", "--store", str(garbage)]) == 2
        capsys.readouterr()
    assert not (cache / "cache").exists()  # the store is checked before the model is trained
    # a report folder that is not a reproduce folder
    assert main(["report", str(cache)]) == 2
    # a truncated Fashion-MNIST file: one line naming the file
    fake = cache / "fashion"
    fake.mkdir()
    import gzip

    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (fake / name).write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 400)[:-10])
    monkeypatch.setenv("SPATIALADV_FASHION_MNIST_DIR", str(fake))
    assert main(["train", "--data", "fashion-mnist", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and "images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_pgd_adversarial_training_from_the_cli_resists_pgd(cache, capsys):
    def robust(objective: list[str]) -> float:
        store = cache / f"{'-'.join(objective) or 'plain'}.sqlite"
        assert main(["attack", "--model", "fc-200", "--data", "digits", "--epochs", "8", *objective, "--attack", "pgd",
                     "--param", "eps=0.15", "--param", "step_size=0.02", "--param", "steps=20", "--n", "100",
                     "--mode", "untargeted", "--store", str(store), "--quiet"]) == 0
        capsys.readouterr()
        assert main(["evaluate", "--store", str(store), "--json"]) == 0
        return json.loads(capsys.readouterr().out)[0]["robust_accuracy"]

    plain = robust([])
    trained = robust(["--objective", "pgd-at", "--param", "objective.eps=0.15", "--param", "objective.steps=5",
                      "--param", "objective.step_size=0.05"])
    assert trained > plain + 0.2, (plain, trained)
    assert trained > 0.5 > plain, (plain, trained)
    assert main(["train", "--objective", "pgd-at", "--param", "epsilon=0.1", "--quiet"]) == 2
    assert "no option 'epsilon'" in capsys.readouterr().err


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit, match="^0$"):
        main([*argv, "--help"])
    return capsys.readouterr().out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


#: The shared options each command takes (the table in the user guide, docs/guide/cli.md, and in spatialadv.cli's docstring).
SHARED = {"train": {"--quiet", "--threads", "--device"}, "attack": {"--quiet", "--threads", "--device"},
          "audit": {"--quiet", "--threads", "--device", "--out"}, "reproduce": {"--quiet", "--threads", "--out"},
          "evaluate": set(), "report": set()}


def test_every_help_runs_and_names_its_options(capsys):
    """``--help`` of spatialadv, of every command and of every ``reproduce NAME``: exit 0, every option named.

    Argparse %-formats help strings: a ``%`` in an option's help (certify-smoothing's) crashed ``--help``.
    """
    parser = build_parser()
    top = _help([], capsys)
    commands = _subparsers(parser)
    assert set(commands) == set(SHARED)
    runs = {name: (name,) for name in commands if name != "reproduce"}
    runs.update({f"reproduce {name}": ("reproduce", name) for name in _subparsers(commands["reproduce"])})
    assert set(experiments()) == set(_subparsers(commands["reproduce"]))
    for name in commands:
        assert name in top
    assert all(name in _help(["reproduce"], capsys) for name in experiments())
    for name, argv in runs.items():
        sp = commands[argv[0]] if len(argv) == 1 else _subparsers(commands["reproduce"])[argv[1]]
        text = _help(list(argv), capsys)
        options = {o for a in sp._actions for o in a.option_strings if o.startswith("--")}
        assert options and all(o in text for o in options), (name, sorted(o for o in options if o not in text))
        assert options & {"--quiet", "--threads", "--device", "--out"} == SHARED[argv[0]], name
    assert "--objective-param" in _help(["train"], capsys)  # the deprecated alias still parses
    audit = _help(["audit"], capsys)
    for f in dataclasses.fields(AuditConfig):  # audit options come from AuditConfig's fields
        assert "--" + f.name.replace("_", "-") in audit, f.name
    for name, exp in experiments().items():  # every field of the experiment's Config is an option
        text = _help(["reproduce", name], capsys)
        for opt in ["--" + f.name.replace("_", "-") for f in dataclasses.fields(exp.config)]:
            assert opt in text, (name, opt)


def test_param_spelling_and_deprecated_alias(capsys):
    from spatialadv.cli import _params

    p = build_parser()
    args = p.parse_args(["attack", "--param", "eps=0.1", "--param", "objective.steps=3", "--objective-param", "eps=0.2"])
    assert _params(args, "attack") == {"attack": {"eps": 0.1}, "objective": {"steps": 3, "eps": 0.2}}
    assert "--objective-param is deprecated" in capsys.readouterr().err
    args = p.parse_args(["train", "--param", "eps=0.1", "--param", "objective.step-size=0.05"])
    assert _params(args, "objective") == {"attack": {}, "objective": {"eps": 0.1, "step_size": 0.05}}
    assert main(["train", "--param", "attack.eps=0.1", "--quiet"]) == 2
    assert "--param attack.eps: the prefix must be 'objective.'" in capsys.readouterr().err
    assert main(["train", "--threads", "0", "--quiet"]) == 2
    assert "--threads must be an integer in [1, 1024], got 0" in capsys.readouterr().err


def test_data_free_paths_on_a_machine_without_data_sets(tmp_path, monkeypatch, capsys):
    """A fresh machine: Fashion-MNIST's folder is empty (and no data set may load at all). ``--help``, config
    parsing and ``report`` of an empty folder of every experiment still work."""
    empty = tmp_path / "fashion"
    empty.mkdir()
    monkeypatch.setenv("SPATIALADV_FASHION_MNIST_DIR", str(empty))

    def no_data(split, seed):
        raise AssertionError("a data set was loaded")

    for name in DATASETS:
        monkeypatch.setitem(DATASETS, name, no_data)
    _help([], capsys)
    for name, exp in experiments().items():
        _help(["reproduce", name], capsys)
        args = build_parser().parse_args(["reproduce", name, "--out", str(tmp_path / name), "--threads", "3"])
        cfg = config_from_args(exp.config, args)
        validate_config(cfg)
        if hasattr(exp.config, "threads"):
            assert cfg.threads == 3
        out = tmp_path / name
        out.mkdir()
        with ResultStore(out / "results.sqlite") as st:  # killed before its first run
            st.set_metas({"config": {"experiment": name, "values": config_to_dict(exp.config)}, "plan": [], "complete": False})
        assert main(["report", str(out)]) == 0, name
        md = (out / "report.md").read_text()
        assert "No runs stored yet" in md and "Incomplete run" in md and f"spatialadv reproduce {name}" in md
        assert json.loads((out / "report.json").read_text())["experiment"] == name


def test_audit_device_wrapper_keeps_values_and_gradients(one_thread):
    """``audit --device``: the model computes behind a wrapper that takes and returns the caller's tensors."""
    import torch

    from spatialadv.cli import _on_device

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    wrapped = _on_device(net, torch.device("cpu"))
    assert not wrapped.training
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    out = wrapped(x)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    (g,) = torch.autograd.grad(out[:, 1].sum(), x)
    torch.testing.assert_close(g, net[1].weight[1].reshape(1, 1, 4, 4).expand(2, 1, 4, 4), rtol=0, atol=0)
