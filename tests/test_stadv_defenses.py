"""``spatialadv reproduce stadv-defenses`` end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from spatialadv.cli import main
from spatialadv.eval.compare import rate
from spatialadv.eval.store import ResultStore
from spatialadv.experiments.framework import STORE_NAME
from spatialadv.experiments.stadv_defenses import ALL_IMAGES, CONTROL, DEFENSES, PAPER, TRANSFERRED, Config, attacks


def test_stadv_defenses_tiny_end_to_end(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "std"
    args = ["reproduce", "stadv-defenses", "--out", str(out), "--n", "3", "--models", "mnist-b", "--epochs", "1",
            "--at-epochs", "2", "--max-train", "200", "--holdout", "20", "--patience", "1", "--pgd-steps", "1",
            "--pgd-warmup", "1", "--pgd-bf16", "on", "--quiet"]  # bf16 on: the float32 control runs on every machine
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n"] == {"mnist-b": 3}
    for d in DEFENSES:
        cells = rep["table3"][f"mnist-b/{d}"]
        assert set(cells) == set(TRANSFERRED)
        for a, cell in cells.items():
            for r in (cell["transfer"], cell["white_box"]):  # a count out of the N = 3 attacked images
                assert 3 * r == pytest.approx(round(3 * r))
            if a != "FGSM" and d != "PGD":  # unbounded C&W and stAdv crafted on the defended model break every image
                assert cell["white_box"] == 1.0, (d, a)  # (not asserted for the tiny PGD net: C&W's schedule stalls)
            assert cell["paper"] == PAPER["table3"][("mnist-b", d)][TRANSFERRED.index(a)]
    t5 = rep["table5"]["mnist-b"]
    assert t5["paper"] == 64.22 and t5["adaptive_success"] == 1.0  # stAdv Table 5: the adaptive attack succeeds on nearly all
    models = rep["models"]
    assert {f"mnist-b/{k}" for k in ("plain", *DEFENSES, CONTROL)} == set(models)
    assert all(m["train_seconds"] > 0 for m in models.values())
    for k in (*DEFENSES, CONTROL):  # the held-out learning curve of every adversarially trained model
        m = models[f"mnist-b/{k}"]
        assert 1 <= m["epochs_run"] <= 2 and m["stopped"] in ("plateau", "max_epochs") and len(m["curve"]) == m["epochs_run"]
        assert all(0 <= p["clean"] <= 1 and 0 <= p["adversarial"] <= 1 for p in m["curve"])
    assert models["mnist-b/plain"]["curve"] == []
    assert set(rep["pgd_accuracy"]) == {f"mnist-b/{k}" for k in (*DEFENSES, CONTROL)}
    with ResultStore(out / STORE_NAME) as store:  # PGD accuracy over the first N test images, clean mistakes counted
        entry = next(e for e in store.get_meta("plan") if e["model"] == "mnist-b/PGD" and e["attack"] == ALL_IMAGES)
        wanted = {tuple(p) for p in entry["pairs"]}
        recs = [r for r in store.records(entry["run_key"]) if (r["idx"], r["target"]) in wanted]
    assert sorted(r["idx"] for r in recs) == [0, 1, 2]
    want = rate([r["pred"] == r["label"] == r["clean_pred"] for r in recs]).to_json()
    assert rep["pgd_accuracy"]["mnist-b/PGD"] == want
    md = (out / "report.md").read_text()
    assert "Table 3" in md and "Table 5" in md and "Convention:" in md and "## Fidelity" in md
    assert md.index("## Fidelity") < md.index("## Table 3")
    assert {c["verdict"] for c in rep["claims"]} <= {"holds", "does not hold", "holds in part", "does not hold in part",
                                                 "undecided", "not measured"}
    assert (out / "learning_curves.png").exists() and "learning_curves.png" in rep["figures"]
    # the comparisons: our rates recomputed from the stored transfer items and runs, the paper's beside them
    _, t3, t5 = rep["comparisons"]
    with ResultStore(out / STORE_NAME) as store:
        plan = store.get_meta("plan")
        items = store.items(next(e["run_key"] for e in plan if e["attack"] == "transfer"))
        adaptive = store.records(next(e["run_key"] for e in plan if e["model"] == "mnist-b/mean"))
    for row in t3["rows"]:
        d = row["defense"]
        for k, a in enumerate(TRANSFERRED):
            cell = row[f"{a} transfer success (%)"]
            assert cell["ours"] == rate([bool(v[a][d]) for v in items.values()]).to_json()
            paper = PAPER["table3"][("mnist-b", d)][k] / 100
            assert cell["paper"] == {"value": paper, "source": "Xiao et al. 2018, Table 3 (MNIST)"}
            lo, hi = cell["ours"]["ci95"]
            assert cell["paper_in_ci"] == (lo - 1e-12 <= paper <= hi + 1e-12)
    assert "| B | Adv. | " in md and " | 50.17 | " in md  # B / Adv. stAdv: the paper's 50.17 % beside ours
    row = t5["rows"][0]
    for a in TRANSFERRED:  # the mean filter on every attack's examples that fool the plain model
        fooled = [v[a] for v in items.values() if v[a]["source"]]
        recovered = row[f"{a} examples restored (%)"]
        assert recovered["ours"] == rate([not v["mean"] for v in fooled]).to_json()
        if a == "stAdv":
            assert recovered["paper"] == {"value": 0.6422, "source": "Xiao et al. 2018, Table 5 (MNIST)"}
    assert row["adaptive stAdv success (%)"]["ours"] == rate([bool(r["success"]) for r in adaptive]).to_json()
    # the report command rebuilds the same report from the store
    js = (out / "report.json").read_text()
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == md and (out / "report.json").read_text() == js
    assert main(args) == 0 and json.loads((out / "report.json").read_text())["table3"] == rep["table3"]  # resumed


def test_attacks_and_config_checks():
    atk = attacks(0.3)
    assert set(TRANSFERRED) < set(atk) and atk["FGSM"].eps == 0.3 and atk["stAdv"].tau == 0.05
    with pytest.raises(ValueError, match="filter-size"):
        Config(filter_size=4)
    with pytest.raises(ValueError, match="eps"):
        Config(eps=1.5)


def test_bf16_auto_resolves_on_this_machine_and_decides_the_control(monkeypatch):
    """``--pgd-bf16 auto`` is resolved when the Config is made: bf16 PGD steps (and model B's float32 control) only where
    the CPU computes bfloat16 in hardware; a stored bool of an earlier version reads as on/off."""
    import spatialadv.experiments.stadv_defenses as sd
    from spatialadv.defenses import bf16_is_native

    assert bf16_is_native("meta") is False
    assert Config().pgd_bf16 == ("on" if bf16_is_native() else "off")
    for native, want in ((True, "on"), (False, "off")):
        monkeypatch.setattr(sd, "bf16_is_native", lambda device="cpu", v=native: v)
        cfg = Config(pgd_bf16="auto")
        assert cfg.pgd_bf16 == want
        assert (sd._control(cfg, sd.CONTROL_ARCH) is not None) is native
        assert sd._specs(cfg, sd.CONTROL_ARCH)["PGD"].objective.options["bf16"] == int(native)
    assert Config(pgd_bf16="on").pgd_bf16 == "on" and Config(pgd_bf16="off").pgd_bf16 == "off"
    assert Config(pgd_bf16=True).pgd_bf16 == "on" and Config(pgd_bf16=False).pgd_bf16 == "off"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pgd_bf16|--pgd-bf16"):
        Config(pgd_bf16="maybe")
