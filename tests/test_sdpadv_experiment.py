"""The ``reproduce sdpadv-*`` job end to end at a tiny size (Model B only, real MNIST-5k):
report, JSON round trip, panels, resumption without refitting."""

from __future__ import annotations

import dataclasses
import json

import torch

from spatialadv.eval.store import ResultStore
from spatialadv.experiments import experiments, rebuild, run_experiment


def test_tiny_sdpadv_job(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    exp = experiments()["sdpadv-mnist"]
    assert "sdpadv-fashion" in experiments()
    cfg = dataclasses.replace(exp.config, n_eval=10, n_stadv=2, models=("fc-200",), gen_epochs=1, gen_train=300, clf_epochs=1)
    rep = run_experiment(exp, cfg, out, progress=False)
    res = rep["results"]
    # non-robust: STM, stAdv, SdAdv + (AdvGAN, SdpAdv, FGSM, PGD, MIM) × 3 ε; Adv-Train: 3 + 5 at ε = 0.3
    assert len(res) == (3 + 5 * 3) + (3 + 5)
    assert all(r["pairs"] == (2 if r["attack"] == "stAdv" else 10) for r in res)
    assert all(0 <= r["robust_accuracy"] <= 1 for r in res)
    # untargeted: robust accuracy = clean accuracy × (1 − success rate over the correctly classified)
    for r in res:
        assert abs(r["robust_accuracy"] - r["clean_accuracy"] * (1 - r["success_rate"])) < 1e-9
    assert len(rep["generators"]) == 7 + 3
    assert set(rep["not_built"]) == {"Adv-Critic", "Defense-GAN"}
    md = (out / "report.md").read_text()
    assert "Table 1 — Model B (fc-200)" in md and "not yet built" in md and "1 epochs each (paper: 100)" in md
    assert "seed 00" not in md and "Issue" not in md
    assert json.loads((out / "report.json").read_text())["results"] == json.loads(json.dumps(res, default=float))
    for f in rep["figures"]:
        assert (out / f).stat().st_size > 1000
    assert len(rep["figures"]) == 1 + (2 + 5 * 3)  # originals + every attack on 10 images (stAdv ran on 2)
    # resuming: generators are loaded, not refitted, and no pair is attacked twice
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "generators").iterdir()}
    with ResultStore(out / "results.sqlite") as store:
        n_before = len(store.runs())
    rep2 = run_experiment(exp, cfg, out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "generators").iterdir()} == mtimes
    assert [r["robust_accuracy"] for r in rep2["results"]] == [r["robust_accuracy"] for r in res]
    assert rebuild(out)["results"] == rep2["results"]
    with ResultStore(out / "results.sqlite") as store:
        assert len(store.runs()) == n_before
    assert torch.get_num_threads() == 1
