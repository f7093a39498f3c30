"""The experiment framework: Config-generated CLI options, resumable task runs, reports of interrupted runs."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

import pytest

from spatialadv.eval.store import ResultStore, StoreError
from spatialadv.experiments import experiments
from spatialadv.experiments.framework import (
    Experiment,
    Report,
    Table,
    TaskRun,
    add_config_arguments,
    config_from_args,
    config_from_dict,
    config_to_dict,
    option,
    rebuild,
    run_experiment,
    validate_config,
)


@dataclass(frozen=True)
class ToyConfig:
    n: int = option(4, "items", minimum=1)
    scale: float = option(2.0, "multiplier")
    names: tuple[str, ...] = option(("a", "b"), "labels", choices=("a", "b", "c"))
    limit: int | None = option(None, "optional limit", minimum=10)
    pair: tuple[int, int] = option((1, 0), "a pair")
    flag: bool = option(False, "a switch")


CALLS: list[list[str]] = []


def _toy_plan(cfg, ctx):
    def compute(items):
        CALLS.append(list(items))
        if ctx.get_meta("fail_at") in items:
            raise KeyboardInterrupt("killed by the test")  # a kill in the middle of the run
        return {i: {"value": cfg.scale * int(i)} for i in items}

    yield TaskRun("toy", "double", {"scale": cfg.scale}, "model-key", [str(i) for i in range(cfg.n)], compute,
                  tags={"kind": "toy"}, batch_size=2)


def _toy_report(cfg, results):
    run = results.get("toy", "double")
    vals = run.items() if run else {}
    return Report("Toy", [Table(["item", "value"], [[k, v["value"]] for k, v in vals.items()], "caption")],
                  {"values": vals})


TOY = Experiment("toy", "a toy experiment", ToyConfig(), _toy_plan, _toy_report, papers=("stadv",))


def test_cli_options_come_from_the_config():
    p = argparse.ArgumentParser()
    add_config_arguments(p, ToyConfig(scale=3.0))
    help_text = p.format_help()
    assert "--n" in help_text and "(default: 3.0)" in help_text and "--no-flag" in help_text
    cfg = config_from_args(ToyConfig(scale=3.0), p.parse_args([]))
    assert cfg == ToyConfig(scale=3.0)  # untouched options keep the variant's defaults
    cfg = config_from_args(ToyConfig(), p.parse_args(["--n", "7", "--names", "c", "a", "--limit", "none", "--pair", "2", "3",
                                                      "--flag"]))
    assert cfg == ToyConfig(n=7, names=("c", "a"), limit=None, pair=(2, 3), flag=True)
    # "none" resets an optional field whose variant default is not None
    assert config_from_args(ToyConfig(limit=50), p.parse_args(["--limit", "none"])).limit is None
    assert config_from_args(ToyConfig(limit=50), p.parse_args([])).limit == 50
    with pytest.raises(SystemExit, match="^2$"):
        p.parse_args(["--names", "z"])
    with pytest.raises(ValueError, match="--n must be an integer >= 1"):
        validate_config(ToyConfig(n=0))
    with pytest.raises(ValueError, match="--limit"):
        validate_config(ToyConfig(limit=3))
    assert config_from_dict(ToyConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg


@dataclass(frozen=True)
class SharedConfig:
    rate: float = option(0.5, "a 50 % share")
    names: tuple[str, ...] = option(("a", "b"), "labels", sep=",")
    threads: int = option(2, "torch threads")


def test_generated_options_escape_percent_split_on_sep_and_keep_shared_options():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=argparse.SUPPRESS, help="shared")  # a CLI-wide option, defined once
    add_config_arguments(p, SharedConfig())
    help_text = " ".join(p.format_help().split())
    assert "a 50 % share (default: 0.5)" in help_text and "labels (default: a,b)" in help_text
    assert "torch threads" not in help_text  # the parser's own --threads stays; it fills the field
    assert config_from_args(SharedConfig(), p.parse_args(["--names", "c, a", "--threads", "3"])) == \
        SharedConfig(names=("c", "a"), threads=3)
    assert config_from_args(SharedConfig(), p.parse_args([])) == SharedConfig()


def test_every_experiment_config_round_trips_and_validates():
    for name, exp in experiments().items():
        validate_config(exp.config)
        assert config_from_dict(type(exp.config), json.loads(json.dumps(config_to_dict(exp.config)))) == exp.config, name
        p = argparse.ArgumentParser()
        add_config_arguments(p, exp.config)
        assert config_from_args(exp.config, p.parse_args([])) == exp.config, name
        for f in dataclasses.fields(exp.config):
            assert f.metadata.get("help"), f"{name}: option {f.name} has no help"


def test_task_run_resumes_after_a_kill_without_recomputing(tmp_path):
    out = tmp_path / "toy"
    CALLS.clear()
    out.mkdir()
    with ResultStore(out / "results.sqlite") as store:
        store.set_meta("fail_at", "3")
    with pytest.raises(KeyboardInterrupt, match="killed by the test"):
        run_experiment(TOY, ToyConfig(), out, progress=False)
    assert CALLS == [["0", "1"], ["2", "3"]]
    # the interrupted folder's report says so and lists what is there
    rep = rebuild(out, TOY)
    assert rep["complete"] is False and set(rep["values"]) == {"0", "1"}
    assert "Incomplete run" in (out / "report.md").read_text()
    with ResultStore(out / "results.sqlite") as store:
        store.set_meta("fail_at", None)
    rep = run_experiment(TOY, ToyConfig(), out, progress=False)
    assert CALLS[2:] == [["2", "3"]]  # finished items are not recomputed
    assert rep["complete"] is True and rep["values"] == {str(i): {"value": 2.0 * i} for i in range(4)}
    md = (out / "report.md").read_text()
    assert "Incomplete" not in md and "## References" in md and "Spatially Transformed Adversarial Examples" in md
    # another config value that changes the records gets another run key: nothing mixed
    rep = run_experiment(TOY, ToyConfig(scale=3.0), out, progress=False)
    assert rep["values"]["3"] == {"value": 9.0}
    assert rep["config"]["scale"] == 3.0


def test_store_refuses_unusable_files(tmp_path):
    with pytest.raises(StoreError, match="directory"):
        ResultStore(tmp_path)
    bad = tmp_path / "garbage.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot use"):
        ResultStore(bad)


def test_readme_experiment_is_one_file(tmp_path, monkeypatch):
    """The user guide's 'How to add an experiment' module, dropped into the package folder, is a new command."""
    import re
    from pathlib import Path

    import spatialadv.experiments as pkg
    from spatialadv.cli import build_parser

    guide = (Path(__file__).parents[1] / "docs" / "guide" / "architecture.md").read_text()
    section = guide.split("### How to add an experiment", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "pgd_c4_example.py").write_text(code)
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(tmp_path)])
    exps = experiments()
    assert "pgd-c4" in exps and "stadv-mnist" in exps
    args = build_parser().parse_args(["reproduce", "pgd-c4", "--n", "7", "--eps", "0.1"])
    cfg = config_from_args(exps["pgd-c4"].config, args)
    assert (cfg.n, cfg.eps) == (7, 0.1)


def test_reports_of_an_empty_folder_do_not_crash(tmp_path):
    """A folder killed before its first run (e.g. during training) still gets a report for every experiment."""
    for name, exp in experiments().items():
        out = tmp_path / name
        out.mkdir()
        with ResultStore(out / "results.sqlite") as st:
            st.set_metas({"config": {"experiment": name, "values": config_to_dict(exp.config)}, "plan": [], "complete": False})
        rep = rebuild(out)
        assert rep["complete"] is False and "Incomplete run" in (out / "report.md").read_text(), name


def test_table_shows_estimates_with_their_digits_and_names_the_interval():
    from spatialadv.eval.compare import interval_note, rate
    from spatialadv.experiments.framework import Shown

    e = rate(7, 10)
    t = Table(["what", "rate (%)"], [["x", Shown(e, 1, pct=True)]], "Seven of ten.")
    md = t.markdown()
    assert f"| x | {100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}] |" in md
    assert md.endswith("Seven of ten. " + interval_note(["clopper-pearson"]))


def test_mean_over_one_cluster_has_no_interval():
    import math

    from spatialadv.eval.compare import mean

    one = mean([1.0, 2.0, 4.0], clusters=[7, 7, 7])  # three pairs of one image: one draw of an image
    assert one.value == 7 / 3 and math.isnan(one.low) and math.isnan(one.high) and one.n == 3
    two = mean([1.0, 2.0, 4.0, 5.0], clusters=[7, 7, 8, 8])
    assert two.low < two.value < two.high


def test_the_wall_time_counts_a_killed_invocation_up_to_its_last_stored_record(tmp_path):
    """SIGKILL runs no `finally`: the clock is stored with every batch, so the time of a killed invocation is kept,
    and the report says how many invocations its wall time adds up."""
    import multiprocessing
    import os
    import signal
    import time

    out = tmp_path / "run"

    def child():
        def plan(cfg, ctx):
            def compute(items):
                if "4" in items:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(0.2)
                return {i: {"value": cfg.scale * int(i)} for i in items}

            yield TaskRun("toy", "double", {"scale": cfg.scale}, "model-key", [str(i) for i in range(cfg.n)], compute,
                          tags={"kind": "toy"}, batch_size=2)

        run_experiment(Experiment("toy", "a toy experiment", ToyConfig(), plan, _toy_report), ToyConfig(n=6), out,
                       progress=False)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    with ResultStore(out / "results.sqlite") as st:
        assert st.get_meta("invocations") == 1 and not st.get_meta("complete")
        killed = st.get_meta("elapsed_s")
    assert killed >= 0.4  # the two batches stored before the kill, 0.2 s each
    run_experiment(TOY, ToyConfig(n=6), out, progress=False)
    with ResultStore(out / "results.sqlite") as st:
        assert st.get_meta("invocations") == 2 and st.get_meta("elapsed_s") > killed
    md = (out / "report.md").read_text()
    assert "(training included; 2 invocations, each counted up to its last stored record)" in md
    one = tmp_path / "one"
    run_experiment(TOY, ToyConfig(n=6), one, progress=False)
    assert "(training included): " in (one / "report.md").read_text()
