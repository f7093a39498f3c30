"""``spatialadv reproduce smooth-mnist``'s report: Table 1 as a Comparison recomputed from the store, rebuilt byte for byte."""

from __future__ import annotations

import json

import pytest

from conftest import reproduce_tiny
from spatialadv.eval.compare import mean, rate
from spatialadv.eval.store import ResultStore
from spatialadv.experiments import smooth
from spatialadv.experiments.framework import STORE_NAME


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return reproduce_tiny(tmp_path_factory, "smooth-mnist", ["--n", "3", "--n-budget", "2", "--epochs", "1", "--max-train",
                                                             "300", "--steps", "2", "--binary-search-steps", "1",
                                                             "--budgets", "1x2"])


def _records(out, attack: str) -> list[dict]:
    with ResultStore(out / STORE_NAME) as store:
        entry = next(e for e in store.get_meta("plan") if e["attack"] == attack)
        wanted = {tuple(p) for p in entry["pairs"]}
        return [r for r in store.records(entry["run_key"]) if (r["idx"], r["target"]) in wanted]


def test_table1_cells_are_recomputed_from_the_store_beside_the_paper(run):
    rep = json.loads((run / "report.json").read_text())
    clean, t1, protocol = rep["comparisons"]
    acc = rep["models"]["c4"]["test_accuracy"]
    cell = clean["rows"][0]["clean accuracy (%)"]
    assert cell["ours"] == rate(round(acc * 1000), 1000).to_json()
    assert cell["paper"] == {"value": 0.99, "source": "Zhang et al. 2020, §5.2"}
    assert [r["attack"] for r in t1["rows"]] == ["FGSM", "I-FGSM", "PGD2", "C&W", "sPGD2", "sC&W"]
    for row in t1["rows"]:
        recs = _records(run, row["attack"])
        succ = [bool(r["success"]) for r in recs]
        p_suc, d_bar = row["P_suc (%)"], row["D̄"]
        assert p_suc["ours"] == rate(succ).to_json() and row["N_suc / N"] == f"{sum(succ)}/{len(succ)}"
        assert d_bar["ours"] == mean([r["l2"] for r in recs if r["success"]]).to_json()
        paper = smooth.PAPER["table1"][row["attack"]]
        assert p_suc["paper"] == {"value": paper[0], "source": "Zhang et al. 2020, Table 1"}
        assert d_bar["paper"]["value"] == paper[1]
        for c in (p_suc, d_bar):
            lo, hi = c["ours"]["ci95"]
            want = None if lo is None else lo - 1e-12 <= c["paper"]["value"] <= hi + 1e-12
            assert c["paper_in_ci"] == want
    # what changes D̄: the paper's single settings, on the first --n-budget images, beside our sweep on the same images
    whats = [r["run"] for r in protocol["rows"]]
    assert "FGSM ε=0.3 only" in whats and "sPGD2 ε=5, α=3 only" in whats and "sPGD2 sweep, σ=1" in whats
    for row in protocol["rows"]:
        if row["run"] == "FGSM ε=0.3 only":
            recs = _records(run, "FGSM ε=0.3 only")
            assert len(recs) == 2 and row["P_suc (%)"]["ours"] == rate([bool(r["success"]) for r in recs]).to_json()
            assert row["D̄"]["paper"]["value"] == smooth.PAPER["table1"]["FGSM"][1]
    claims = rep["claims"]
    assert {c["verdict"] for c in claims} <= {"holds", "does not hold", "holds in part", "undecided"} and len(claims) == 2
    md = (run / "report.md").read_text()
    assert md.index("## Fidelity") < md.index("## Table 1")
    fgsm = t1["rows"][0]["P_suc (%)"]["ours"]
    lo, hi = fgsm["ci95"]
    assert f"| FGSM | {t1['rows'][0]['N_suc / N']} | {100 * fgsm['value']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | 89.0 |" in md
