"""``spatialadv report DIR`` rebuilds every registered experiment's report and figures from its store alone.

For every experiment of :func:`spatialadv.experiments.experiments`: run a tiny
configuration, delete ``report.md``, ``report.json`` and every figure, rebuild,
and require ``report.md`` and ``report.json`` byte for byte and every figure
``report.json`` lists to exist again (and no figure that it does not list);
while rebuilding, any attack call or new record fails the test.
The checkpoint cache is shared by the whole module, so a model several
experiments use (same specification) is trained once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from spatialadv.attacks.base import Attack
from spatialadv.eval.store import ResultStore
from spatialadv.experiments import experiments, framework, rebuild, run_experiment

#: Per experiment: the overrides of its default Config that make it run in seconds (from the per-experiment tests).
TINY: dict[str, dict] = {
    "stadv-mnist": dict(models=("fc-200",), n=2, n_baselines=1, n_ablation=1, n_tau=1, epochs=1),
    "smooth-mnist": dict(n=3, n_budget=2, epochs=1, max_train=500, steps=5, binary_search_steps=1,
                         budgets=((1, 3), (2, 3))),
    "smooth-fashion": dict(n=3, n_budget=2, epochs=1, max_train=500, steps=5, binary_search_steps=1,
                           budgets=((1, 3), (2, 3))),
    "sdpadv-mnist": dict(n_eval=6, n_stadv=2, models=("fc-200",), defenses=("none",), gen_epochs=1, gen_warm_epochs=1,
                         gen_train=300, clf_epochs=1, dgan_n=2, dgan_steps=2, dgan_restarts=1, dgan_iterations=2,
                         bpda_steps=1),
    "sdpadv-fashion": dict(n_eval=6, n_stadv=2, models=("fc-200",), defenses=("none",), gen_epochs=1, gen_warm_epochs=1,
                           gen_train=300, clf_train=300, clf_epochs=1, dgan_n=2, dgan_steps=2, dgan_restarts=1,
                           dgan_iterations=2, bpda_steps=1),
    "certify-bounds": dict(variants=("normal",), epochs=1, n_attack=12, dual_steps=3, pgd_steps=2,
                           eps_upper=(0.0, 0.05), eps_lower=(0.1,)),
    "certify-stadv": dict(variants=("normal", "sdp"), epochs=1, n=6, n_thesis=6, taus=(0.0, 0.05), max_iter=3,
                          thesis_max_iter=3, search_steps=1, flow_budgets=(250.0,), gap_budgets=(400.0,),
                          gap_check_budgets=(250.0,), gap_iters=(2,), gap_train_sizes=(200,)),
    "certify-smoothing": dict(datasets=("mnist",), n=4, epochs=1, n0=16, samples=40, predict_samples=40, max_angle=4.0,
                              angle_budgets=(0.0, 2.0, 4.0), max_shift=1, flow_deltas=(0.0, 0.01), pgd_steps=2,
                              stadv_steps=3, flow_epochs=1, flow_samples=40, flow_radii=(0.0, 0.1), limit_samples=40,
                              limit_epochs=(2,), limit_n=2, flow_sigma_sweep=(1.0,)),
    "attention-maps": dict(datasets=("mnist",), n=2, figure_images=1, epochs=1, max_train=300, cw_steps=3),
    "lan-detection": dict(datasets=("mnist",), n=2, min_pairs=1, max_attacked=4, epochs=1, max_train=300, lan_epochs=1,
                          f2_epochs=1, cw_steps=3, adaptive_steps=3, why_betas=(10.0,)),
    "smooth-defenses": dict(n=3, epochs=1, max_train=300, steps=2, binary_search_steps=1, diag_at_eps=(0.1,),
                            diag_long_epochs=2),
    "stadv-defenses": dict(n=3, models=("mnist-b",), epochs=1, at_epochs=1, max_train=100, holdout=20, pgd_steps=1),
}

EXPERIMENTS = experiments()


def _fashion_missing() -> str | None:
    """Why Fashion-MNIST cannot be loaded here, or None when it can."""
    from spatialadv.data import load_dataset

    try:
        load_dataset("fashion-mnist", "test")
    except FileNotFoundError as e:
        return str(e)
    return None


def _uses_fashion(cfg) -> bool:
    values = [getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in ("data", "datasets")]
    return any(v == "fashion-mnist" or (isinstance(v, tuple) and "fashion-mnist" in v) for v in values)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Iterator[Path]:
    """One checkpoint cache for the module (models shared between experiments are trained once), one torch thread."""
    path = tmp_path_factory.mktemp("cache")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPATIALADV_CACHE", str(path))
        torch.set_num_threads(1)
        try:
            yield path
        finally:
            torch.set_num_threads(threads)


def test_every_experiment_has_a_tiny_configuration():
    assert set(EXPERIMENTS) <= set(TINY), f"add a tiny configuration for {sorted(set(EXPERIMENTS) - set(TINY))}"


def test_arrays_survive_a_task_item(tmp_path):
    """Figure arrays travel inside a task item's JSON value as text, exactly (dtype, shape, values)."""
    from spatialadv.eval.store import array_from_text, array_to_text

    a = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    with ResultStore(tmp_path / "s.sqlite") as st:
        st.add_items("k", {"0": {"map": array_to_text(a)}})
        b = array_from_text(st.items("k")["0"]["map"])
    assert b.dtype == np.float32 and b.shape == (3, 5) and np.array_equal(a, b)


def _refuse(*args, **kwargs):
    raise AssertionError("a report attacked or wrote records: it must be built from the store alone")


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_report_rebuilds_byte_for_byte(name, shared_cache, tmp_path, monkeypatch):
    exp = EXPERIMENTS[name]
    if name not in TINY:
        pytest.fail(f"no tiny configuration for {name!r} in TINY")
    overrides = dict(TINY[name])
    if any(f.name == "threads" for f in dataclasses.fields(exp.config)):
        overrides["threads"] = 1
    cfg = dataclasses.replace(exp.config, **overrides)
    if _uses_fashion(cfg):
        reason = _fashion_missing()
        if reason:
            pytest.skip(f"{name} needs Fashion-MNIST: {reason}")
    out = tmp_path / name
    doc = run_experiment(exp, cfg, out, progress=False)
    md, js = (out / "report.md").read_bytes(), (out / "report.json").read_bytes()
    figures = list(doc["figures"])
    assert figures == json.loads(js)["figures"]
    for f in figures:
        assert (out / f).is_file(), f"{name}: figure {f} listed but not written"
    drawn = sorted(p.name for p in out.glob("*.png"))
    assert drawn == sorted(figures), f"{name}: figures in the folder that the report does not list"
    for p in [out / "report.md", out / "report.json", *out.glob("*.png")]:
        p.unlink()

    with monkeypatch.context() as mp:  # rebuilding neither attacks nor stores new records
        mp.setattr(Attack, "__call__", _refuse)
        mp.setattr(ResultStore, "add", _refuse)
        mp.setattr(ResultStore, "add_items", _refuse)
        doc2 = rebuild(out)  # the experiment and its config come from the store

    assert (out / "report.md").read_bytes() == md
    assert (out / "report.json").read_bytes() == js
    assert doc2["figures"] == figures
    for f in figures:
        assert (out / f).is_file() and (out / f).stat().st_size > 1000, f"{name}: figure {f} not rebuilt"


@pytest.mark.parametrize("module", sorted(p.stem for p in Path(framework.__file__).parent.glob("*.py")
                                           if p.stem != "framework"))  # the one renderer
def test_no_experiment_module_builds_a_markdown_row_itself(module):
    """Tables are data (``Table`` / ``Comparison``), rendered by the framework: no ``"| ..."`` row in experiment code."""
    src = (Path(framework.__file__).parent / f"{module}.py").read_text()
    assert '"| ' not in src and "'| " not in src, f"experiments/{module}.py builds a Markdown table row as a string"

