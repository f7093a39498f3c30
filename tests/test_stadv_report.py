"""``spatialadv reproduce stadv-mnist``'s report: comparison tables recomputed from the store, rebuilt byte for byte."""

from __future__ import annotations

import json

import pytest

from conftest import reproduce_tiny
from spatialadv.eval.compare import Cell, PaperValue, mean, rate
from spatialadv.eval.store import ResultStore
from spatialadv.experiments import stadv
from spatialadv.experiments.framework import STORE_NAME, rebuild


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return reproduce_tiny(tmp_path_factory, "stadv-mnist", ["--models", "fc-200", "--n", "2", "--n-baselines", "1", "--n-ablation", "1",
                          "--epochs", "1"])


def _records(out, attack: str) -> list[dict]:
    with ResultStore(out / STORE_NAME) as store:
        plan = store.get_meta("plan")
        entry = next(e for e in plan if e["attack"] == attack)
        wanted = {tuple(p) for p in entry["pairs"]}
        return [r for r in store.records(entry["run_key"]) if (r["idx"], r["target"]) in wanted]


def _cell(table: dict, model: str, metric: str) -> dict:
    row = next(r for r in table["rows"] if r["model"] == model)
    return row[metric]


def test_table1_and_table6_are_comparisons_recomputed_from_the_store(run):
    rep = json.loads((run / "report.json").read_text())
    t1, t6 = rep["comparisons"][:2]
    recs = _records(run, "stAdv")
    clean = [r for r in recs if r["clean_pred"] == r["label"]]
    ids = [r["idx"] for r in clean]
    assert _cell(t1, "fc-200", "stAdv success (%)")["ours"] == \
        rate([bool(r["success"]) for r in clean], clusters=ids).to_json()
    acc = rep["models"]["fc-200"]["test_accuracy"]
    assert _cell(t1, "fc-200", "clean accuracy (%)")["ours"] == rate(round(acc * 1000), 1000).to_json()
    assert _cell(t1, "fc-200", "clean accuracy (%)")["paper"] is None  # fc-200 is not a paper model
    unit = 2 / 27
    succ = sorted((r for r in clean if r["success"]), key=lambda r: (r["idx"], r["target"]))
    tv = _cell(t6, "fc-200", "TV mean (Eq. 5, normalised)")
    assert tv["ours"] == mean([r["flow_tv"] * unit for r in succ], clusters=[r["idx"] for r in succ]).to_json()
    assert tv["paper"] == {"value": 8.26e-3, "source": "Xiao et al. 2018, Table 6 (MNIST)"}
    lo, hi = tv["ours"]["ci95"]
    assert tv["paper_in_ci"] == (lo <= 8.26e-3 <= hi)
    md = (run / "report.md").read_text()
    assert "| fc-200 | " + f"{len(succ)} | " + f"{tv['ours']['value']:.4f} [{lo:.4f}, {hi:.4f}] | 0.00826 | " in md
    assert "paper (Xiao et al. 2018, Table 6 (MNIST))" in md


def test_paper_in_ci_flag_follows_the_interval(run, monkeypatch):
    rep = json.loads((run / "report.json").read_text())
    ours = _cell(rep["comparisons"][0], "fc-200", "clean accuracy (%)")["ours"]
    inside, outside = ours["value"], ours["ci95"][1] + 0.01
    for value, flag in ((inside, True), (outside, False)):
        monkeypatch.setitem(stadv.PAPER["clean_accuracy"], "fc-200", 100 * value)
        new = rebuild(run)
        cell = _cell(new["comparisons"][0], "fc-200", "clean accuracy (%)")
        assert cell["paper"]["source"] == "Xiao et al. 2018, Table 1" and cell["paper_in_ci"] is flag
        assert Cell(None, PaperValue(value, "stadv", "Table 1")).inside is None
    monkeypatch.undo()
    rebuild(run)


def test_fidelity_opens_the_report_and_its_verdicts_follow_the_intervals(run, monkeypatch):
    """The Fidelity section comes before Table 1; each verdict is read from the 95 % intervals of the tables below it."""
    rep = json.loads((run / "report.json").read_text())
    t1, t6 = rep["comparisons"][:2]
    succ = _cell(t1, "fc-200", "stAdv success (%)")["ours"]
    tv = _cell(t6, "fc-200", "TV mean (Eq. 5, normalised)")["ours"]["value"]
    l2 = _cell(t6, "fc-200", "L2 mean (Eq. 6, normalised)")["ours"]["value"]
    md = (run / "report.md").read_text()
    assert md.index("## Fidelity") < md.index("## Table 1")
    assert "stAdv breaks almost every targeted pair" not in md  # fc-200 has no paper number: no verdict
    monkeypatch.setitem(stadv.PAPER["stadv_success"], "fc-200", 100 * succ["value"])
    monkeypatch.setitem(stadv.PAPER, "flow_tv", (tv, 0.005))
    monkeypatch.setitem(stadv.PAPER, "flow_l2", (l2, 0.05))
    rebuild(run)
    md = (run / "report.md").read_text()
    assert "- **holds** — stAdv breaks almost every targeted pair" in md
    assert "- **holds** — the flows of successful examples are as small as Table 6's: mean TV 1.00× the paper's" in md
    monkeypatch.setitem(stadv.PAPER, "flow_tv", (tv / 3, 0.005))
    rebuild(run)
    md = (run / "report.md").read_text()
    assert "- **does not hold** — the flows of successful examples are as small as Table 6's: mean TV 3.00×" in md
    assert "App. C's τ search with τ in pixel units" in md
    monkeypatch.undo()
    rebuild(run)
