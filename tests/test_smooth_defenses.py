"""``spatialadv reproduce smooth-defenses`` end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from spatialadv.cli import main
from spatialadv.eval.compare import mean, rate
from spatialadv.eval.store import ResultStore
from spatialadv.experiments.framework import STORE_NAME
from spatialadv.experiments.smooth import PAPER as TABLE1
from spatialadv.experiments.smooth_defenses import ATTACKS, PAPER, Config, transfer_attacks


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_smooth_defenses_tiny_end_to_end(cache, one_thread):
    out = cache / "smd"
    args = ["reproduce", "smooth-defenses", "--out", str(out), "--n", "3", "--epochs", "1", "--max-train", "300",
            "--steps", "2", "--binary-search-steps", "1", "--diag-at-eps", "0.1", "--diag-long-epochs", "2", "--quiet"]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    wb = rep["white_box"]
    for model in ("c4", "c4/ll-at", "c4/bilateral"):
        assert {f"{model}/{a}" for a in ATTACKS} <= set(wb)
        assert all(wb[f"{model}/{a}"]["N"] == 3 for a in ATTACKS)
    assert set(rep["transfer"]) == set(ATTACKS)
    for a in ATTACKS:  # a transferred example can only fool a target model when it is not the clean image
        t = rep["transfer"][a]
        assert 0.0 <= t["bilateral"]["P_suc"] <= 1.0 and 0.0 <= t["ll-at"]["P_suc"] <= 1.0
    md = (out / "report.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "Adaptive" in md and "ImageNet" in md
    # the Fidelity section opens the report; the diagnostic attacks two further step l.l.-trained C4s
    assert md.index("## Fidelity") < md.index("## Table 2")
    assert "c4/ll-at ε=0.1/FGSM" in wb and "c4/ll-at 2 epochs/I-FGSM" in wb
    diag = rep["comparisons"][3]
    assert [r["step l.l.-trained C4"] for r in diag["rows"]] == ["c4/ll-at", "c4/ll-at ε=0.1", "c4/ll-at 2 epochs"]
    assert all(r["FGSM P_suc (%)"]["paper"]["value"] == PAPER["table2"]["FGSM"][0] for r in diag["rows"])
    # Table 2: our cells recomputed from the stored records, the paper's Table 1 / Table 2 beside them
    clean, t2, t3 = rep["comparisons"][:3]
    with ResultStore(out / STORE_NAME) as store:
        keys = {(e["model"], e["attack"]): e["run_key"] for e in store.get_meta("plan")}
        recs = {k: store.records(v) for k, v in keys.items()}
        n_test = store.get_meta("clean")["test_images"]
    for row in t2["rows"]:
        a = row["attack"]
        for model, prefix, paper, where in (("c4", "plain C4", TABLE1["table1"][a], "Table 1"),
                                            ("c4/ll-at", "step l.l.-trained C4", PAPER["table2"][a], "Table 2")):
            rr = recs[(model, a)]
            p_suc, d_bar = row[f"{prefix}, P_suc (%)"], row[f"{prefix}, D̄"]
            assert p_suc["ours"] == rate([bool(r["success"]) for r in rr]).to_json()
            assert d_bar["ours"] == mean([r["l2"] for r in rr if r["success"]]).to_json()
            assert p_suc["paper"] == {"value": paper[0], "source": f"Zhang et al. 2020, {where}"}
            assert d_bar["paper"]["value"] == paper[1]
            for c in (p_suc, d_bar):
                lo, hi = c["ours"]["ci95"]
                assert c["paper_in_ci"] == (None if lo is None else lo - 1e-12 <= c["paper"]["value"] <= hi + 1e-12)
    fgsm = t2["rows"][0]["step l.l.-trained C4, P_suc (%)"]["ours"]
    assert f"{100 * fgsm['value']:.1f} [{100 * fgsm['ci95'][0]:.1f}, {100 * fgsm['ci95'][1]:.1f}] | 15.0 |" in md
    acc = clean["rows"][1]["clean test accuracy (%)"]
    assert acc["ours"] == rate(round(rep["clean"]["ll-at"] * n_test), n_test).to_json()
    assert acc["paper"] == {"value": 0.99, "source": "Zhang et al. 2020, §5.3 (adversarially trained C4)"}
    assert t3["rows"][0]["→ bilateral ∘ C4, P_suc (%)"]["paper"]["source"].endswith("(ImageNet, InceptionV3 + bilateral filter)")
    # the report command rebuilds the same report from the store
    js = (out / "report.json").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == md and (out / "report.json").read_text() == js
    assert main(args) == 0 and json.loads((out / "report.json").read_text())["white_box"] == wb  # resumed: same numbers


def test_transfer_attacks_use_one_distortion_target_and_bad_config_raises():
    atk = transfer_attacks()
    assert set(atk) == set(ATTACKS) and set(PAPER["table2"]) == set(ATTACKS)
    assert atk["FGSM"].eps == 0.3 and atk["PGD2"].eps == 5.0 and atk["C&W"].binary_search_steps == 1
    with pytest.raises(ValueError, match="at-weight"):
        Config(at_weight=1.5)
