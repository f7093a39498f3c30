"""``spatialadv reproduce smooth-mnist`` / ``smooth-fashion``: smooth adversarial examples
(Zhang, Avrithis, Furon, Amsaleg 2020, Table 1 MNIST column, Figs. 1, 2, 5).

C4 is trained on the dataset's train split (or loaded from the checkpoint
cache); the first N correctly classified test images are attacked, untargeted,
by FGSM, I-FGSM, PGD2, C&W, sPGD2 and sC&W with the paper's MNIST settings.
Attacks that target a distortion run at a set of target ε and keep, per image,
the smallest successful distortion (§5.1, :class:`~spatialadv.attacks.MinDistortionSweep`).
The report gives P_suc and D̄ (Eq. 20) beside the paper's, the operating
characteristics (Eq. 21), how each perturbation varies across image edges
versus within flat regions (:func:`~spatialadv.eval.edge_flat_energy`), and
the magnification (App. A) and perturbation figures. Everything is resumable
and rebuilt from ``results.sqlite``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..eval.report import fmt as _fmt
from . import Experiment

log = logging.getLogger(__name__)

__all__ = ["SMOOTH_MNIST_PAPER", "smooth_attacks", "reproduce_smooth", "build_smooth_report"]

#: Zhang et al. 2020, Table 1, MNIST / C4 column: attack → (P_suc, D̄).
SMOOTH_MNIST_PAPER = {
    "clean_accuracy": 0.99,
    "table1": {"FGSM": (0.89, 5.02), "I-FGSM": (1.00, 2.69), "PGD2": (1.00, 1.71), "C&W": (1.00, 2.49),
               "sPGD2": (0.97, 3.36), "sC&W": (1.00, 1.97)},
}

_DATA = {"smooth-mnist": "mnist", "smooth-fashion": "fashion-mnist"}
#: Target distortions of the sweeps: L∞ up to the paper's ε = 0.3, L2 over the paper's Fig. 2 range [1, 6].
LINF_EPS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
L2_EPS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0)


#: Extra C&W / sC&W schedules (binary-search steps, Adam steps) run on the first ``n_budget`` images.
BUDGETS = ((1, 100), (5, 100))


def smooth_attacks(*, sigma: float = 0.1, steps: int = 50, binary_search_steps: int = 5) -> dict:
    """The six attacks of Table 1 with the paper's MNIST settings (§5.2), by report label.

    * FGSM: ε ∈ :data:`LINF_EPS` (paper ε = 0.3).
    * I-FGSM: ε ∈ :data:`LINF_EPS`, step 0.08 at ε = 0.3 scaled with ε, 10 steps.
    * PGD2 / sPGD2: ε ∈ :data:`L2_EPS`, step 3 at ε = 5 scaled with ε (0.6 ε),
      10 steps, no random start; sPGD2 smooths the gradient (α = 0.95).
    * C&W / sC&W: margin m = κ = 1, Adam lr 0.1, initial c = 15,
      ``binary_search_steps`` × ``steps``; sC&W with α = 0.95, Laplacian
      kernel of bandwidth ``sigma``.

    The sweeps stop each run at an example's first success (``early_stop``)
    and keep the smallest successful distortion over the runs.
    """
    from ..attacks import FGSM, IFGSM, PGD, CarliniWagnerL2, MinDistortionSweep, SmoothCarliniWagnerL2, SmoothPGDL2

    cw = dict(kappa=1.0, lr=0.1, initial_const=15.0, binary_search_steps=binary_search_steps, steps=steps)
    return {
        "FGSM": MinDistortionSweep(attacks=tuple(FGSM(eps=e) for e in LINF_EPS)),
        "I-FGSM": MinDistortionSweep(attacks=tuple(IFGSM(eps=e, step_size=0.08 * e / 0.3, steps=10, early_stop=True)
                                                   for e in LINF_EPS)),
        "PGD2": MinDistortionSweep(attacks=tuple(PGD(norm="l2", eps=e, step_size=0.6 * e, steps=10, random_start=False,
                                                     early_stop=True) for e in L2_EPS)),
        "C&W": CarliniWagnerL2(**cw),
        "sPGD2": MinDistortionSweep(attacks=tuple(SmoothPGDL2(eps=e, step_size=0.6 * e, steps=10, alpha=0.95, sigma=sigma)
                                                  for e in L2_EPS)),
        "sC&W": SmoothCarliniWagnerL2(**cw, alpha=0.95, sigma=sigma),
    }


def budget_attacks(*, sigma: float = 0.1, budgets=BUDGETS) -> dict:
    """C&W and sC&W at other (binary-search steps × Adam steps) schedules, by report label."""
    from ..attacks import CarliniWagnerL2, SmoothCarliniWagnerL2

    out = {}
    for bs, st in budgets:
        cw = dict(kappa=1.0, lr=0.1, initial_const=15.0, binary_search_steps=bs, steps=st)
        out[f"C&W {bs}×{st}"] = CarliniWagnerL2(**cw)
        out[f"sC&W {bs}×{st}"] = SmoothCarliniWagnerL2(**cw, alpha=0.95, sigma=sigma)
    return out


def reproduce_smooth(out: str | Path, *, experiment: str = "smooth-mnist", n: int = 1000, n_budget: int = 200,
                     seed: int = 0, epochs: int = 12, max_train: int | None = None, sigma: float = 0.1, steps: int = 50,
                     binary_search_steps: int = 5, budgets=BUDGETS, batch_size: int = 100, progress: bool = True) -> dict:
    """Run the experiment into ``out`` and build its report; resumable.

    Args:
        out: output folder.
        experiment: ``"smooth-mnist"`` or ``"smooth-fashion"``.
        n: number of correctly classified test images attacked (untargeted).
        n_budget: the first ``n_budget`` of them are also attacked by C&W and sC&W
            at the other ``budgets`` schedules (0: none).
        seed: seed of the data split and of training.
        epochs: C4 training epochs when the model is not cached.
        max_train: use only the first ``max_train`` training images (None: all).
        sigma, steps, binary_search_steps: see :func:`smooth_attacks`.
        budgets: extra ``(binary_search_steps, steps)`` schedules, see :func:`budget_attacks`.

    Returns:
        The report dict (also written as ``report.json``).

    Raises:
        ValueError: unknown experiment or bad sizes; FileNotFoundError: data missing.
    """
    from ..data import load_dataset
    from ..eval import ResultStore, attack_config, first_correct, make_pairs, run_attack, run_key
    from ..models import TrainConfig, load_or_train

    if experiment not in _DATA:
        raise ValueError(f"experiment must be one of {sorted(_DATA)}, got {experiment!r}")
    if n < 1 or not 0 <= n_budget <= n:
        raise ValueError(f"need n >= 1 and 0 <= n_budget <= n, got n={n}, n_budget={n_budget}")
    if max_train is not None and max_train < 10:
        raise ValueError(f"max_train must be >= 10 or None, got {max_train}")
    data = _DATA[experiment]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(data, "train", seed=seed)
    if max_train is not None and max_train < len(train):
        train = _head(train, max_train)
    test = load_dataset(data, "test", seed=seed)
    attacks = smooth_attacks(sigma=sigma, steps=steps, binary_search_steps=binary_search_steps)
    t_start = time.perf_counter()
    with ResultStore(out / "results.sqlite") as store:
        config = {"experiment": experiment, "data": data, "n": n, "n_budget": n_budget,
                  "budgets": [list(b) for b in budgets], "seed": seed, "epochs": epochs, "max_train": max_train,
                  "train_images": len(train), "sigma": sigma, "steps": steps, "binary_search_steps": binary_search_steps,
                  "data_key": f"{data}-test-seed{seed}"}
        prev = store.get_meta("config")
        if prev is not None and prev != config:
            log.warning("output folder holds a run with another configuration; records are keyed by configuration, "
                        "so nothing is mixed, but the report describes the new one")
        store.set_meta("config", config)
        t0 = time.perf_counter()
        model, info = load_or_train("c4", train, test, config=TrainConfig(epochs=epochs, seed=seed), seed=seed,
                                    progress=progress)
        for p in model.parameters():
            p.requires_grad_(False)
        idx = first_correct(model, test.x, test.y, n)
        store.set_meta("model", {"name": "c4", "key": info["key"], "test_accuracy": info["test_accuracy"],
                                 "cached": info["cached"], "test_images": len(test), "attacked_images": int(len(idx)),
                                 "train_seconds": None if info["cached"] else time.perf_counter() - t0})
        pairs = make_pairs(idx, test.y, test.num_classes, "untargeted")
        runs = []
        for label, attack in attacks.items():
            key = run_key(info["key"], attack, config["data_key"], "untargeted")
            store.register_run(key, "c4", label, attack_config(attack))
            run_attack(store, key, model, attack, test.x, test.y, pairs, batch_size=batch_size, progress=progress,
                       desc=f"c4 {label}")
            runs.append({"attack": label, "run_key": key})
        if n_budget:
            bpairs = pairs[:n_budget]
            for label, attack in budget_attacks(sigma=sigma, budgets=budgets).items():
                key = run_key(info["key"], attack, config["data_key"], "untargeted")
                store.register_run(key, "c4", label, attack_config(attack))
                run_attack(store, key, model, attack, test.x, test.y, bpairs, batch_size=batch_size, progress=progress,
                           desc=f"c4 {label}")
                runs.append({"attack": label, "run_key": key, "budget": True})
        store.set_meta("runs", runs)
        store.set_meta("environment", {"torch": torch.__version__, "python": platform.python_version(),
                                       "threads": torch.get_num_threads(), "machine": platform.machine()})
        store.set_meta("elapsed_s", store.get_meta("elapsed_s", 0.0) + (time.perf_counter() - t_start))
    return build_smooth_report(out)


def _head(ds, k: int):
    from dataclasses import replace

    return replace(ds, x=ds.x[:k], y=ds.y[:k])




def build_smooth_report(out: str | Path) -> dict:
    """Build ``report.md``, ``report.json`` and the figures from ``out/results.sqlite``.

    Raises:
        FileNotFoundError: no results store in ``out``.
    """
    from ..data import load_dataset
    from ..eval import edge_flat_energy, operating_characteristic, protocol_summary, summarize
    from ..eval.report import open_results
    from ..ops.filters import magnify
    from ..viz import magnification_figure, operating_characteristic_plot, perturbation_panels

    out = Path(out)
    with open_results(out, "smooth-mnist") as store:
        config = store.get_meta("config")
        model = store.get_meta("model", {})
        runs = store.get_meta("runs", [])
        env = store.get_meta("environment", {})
        elapsed = store.get_meta("elapsed_s")
        recs = {r["attack"]: sorted(store.records(r["run_key"], arrays=True), key=lambda d: d["idx"])
                for r in runs if not r.get("budget")}
        brecs = {r["attack"]: sorted(store.records(r["run_key"]), key=lambda d: d["idx"]) for r in runs if r.get("budget")}
    test = load_dataset(config["data"], "test", seed=config["seed"])
    results, curves, energies = [], {}, {}
    for label, rr in recs.items():
        if not rr:
            continue
        succ = np.array([bool(r["success"]) for r in rr])
        dist = np.array([r["l2"] for r in rr])
        proto = protocol_summary(succ, dist)
        curves[label] = operating_characteristic(succ, dist)
        s = summarize(rr)
        ok = [r for r in rr if r["success"]]
        if ok:
            x0 = torch.stack([test.x[r["idx"]] for r in ok]).double()
            xa = torch.from_numpy(np.stack([r["x_adv"] for r in ok])).double()
            fe, ee = edge_flat_energy(xa - x0, x0)
            energies[label] = (float(fe.nanmean()), float(ee.nanmean()))
        else:
            energies[label] = (float("nan"), float("nan"))
        results.append({"attack": label, **proto, "ms_per_image": s["ms_per_example"], "iterations_mean": s["iterations_mean"],
                        "flat_energy": energies[label][0], "edge_energy": energies[label][1]})
    budget = _budget_rows(config, recs, brecs, protocol_summary, summarize)
    figures = _figures(out, config, test, recs, curves, magnify, magnification_figure, operating_characteristic_plot,
                       perturbation_panels)
    rep = {"experiment": config["experiment"], "config": config, "environment": env, "elapsed_s": elapsed, "model": model,
           "paper": SMOOTH_MNIST_PAPER, "results": results, "budget": budget, "figures": [p.name for p in figures]}
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=float))
    (out / "report.md").write_text(_markdown(rep))
    return rep


def _budget_rows(config, recs, brecs, protocol_summary, summarize) -> list[dict]:
    """C&W vs sC&W per schedule on the first ``n_budget`` images (main runs restricted to them)."""
    if not brecs:
        return []
    ids = sorted({r["idx"] for rr in brecs.values() for r in rr})
    keep = set(ids)
    table = {f"{config['binary_search_steps']}×{config['steps']}": {"C&W": recs.get("C&W", []), "sC&W": recs.get("sC&W", [])}}
    for label, rr in brecs.items():
        attack, sched = label.split(" ", 1)
        table.setdefault(sched, {})[attack] = rr
    rows = []
    for sched, d in table.items():
        row = {"schedule": sched}
        for attack in ("C&W", "sC&W"):
            rr = [r for r in d.get(attack, []) if r["idx"] in keep]
            if not rr:
                continue
            p = protocol_summary(np.array([bool(r["success"]) for r in rr]), np.array([r["l2"] for r in rr]))
            s = summarize(rr)
            row[attack] = {**p, "iterations_mean": s["iterations_mean"], "ms_per_image": s["ms_per_example"]}
        rows.append(row)
    return rows


def _figures(out, config, test, recs, curves, magnify, magnification_figure, oc_plot, panels) -> list[Path]:
    figs = []
    name = "MNIST" if config["data"] == "mnist" else "Fashion-MNIST"
    if curves:
        figs.append(oc_plot(curves, out / "fig2_operating_characteristic.png", d_max=6.0,
                            title=f"Operating characteristics, untargeted, C4 on {name} (N = {config['n']})"))
    by_idx = {a: {r["idx"]: r for r in rr} for a, rr in recs.items()}
    order = [a for a in ("FGSM", "I-FGSM", "PGD2", "C&W", "sPGD2", "sC&W") if a in by_idx]
    if not order:
        return figs
    common = sorted(set.intersection(*[{i for i, r in by_idx[a].items() if r["success"]} for a in order]))
    if common:
        i = common[0]
        x0 = test.x[i : i + 1]
        advs = torch.from_numpy(np.stack([by_idx[a][i]["x_adv"] for a in order]))
        mags = magnify(torch.cat([x0, advs]).double()).float().numpy()
        rows = [(a, advs[k].numpy(), mags[k + 1]) for k, a in enumerate(order)]
        figs.append(magnification_figure(x0[0].numpy(), mags[0], rows, out / "fig1_magnification.png",
                                         title=f"{name} test image {i}: adversarial images (top) and their magnification (bottom)"))
    # Fig. 5: a typical image and sC&W's worst case (largest distortion)
    picks = []
    if common:
        picks.append(("typical", common[len(common) // 2]))
    scw_ok = [r for r in by_idx.get("sC&W", {}).values() if r["success"]]
    if scw_ok:
        picks.append(("sC&W worst case", max(scw_ok, key=lambda r: r["l2"])["idx"]))
    for k, (what, i) in enumerate(picks, start=1):
        rows = []
        for a in order:
            r = by_idx[a].get(i)
            ok = r is not None and r["success"]
            rows.append((a, r["x_adv"] if ok else None, r["l2"] if ok else None))
        figs.append(panels(test.x[i].numpy(), rows, out / f"fig5_perturbations_{k}.png",
                           title=f"{what}: test image {i}; top adversarial, bottom perturbation scaled to [0, 1]"))
    return figs


def _markdown(rep: dict) -> str:
    cfg, model, paper = rep["config"], rep["model"], rep["paper"]
    name = "MNIST" if cfg["data"] == "mnist" else "Fashion-MNIST"
    L = [f"# Smooth adversarial examples on {name} — Zhang et al. (2020), Table 1 and Figs. 1, 2, 5", ""]
    L.append(f"Model: C4 (Conv 64 k8 s2 – Conv 128 k6 s2 – Conv 128 k5 s1 – FC) trained on {cfg['train_images']} {name} "
             f"training images for {cfg['epochs']} epochs (seed {cfg['seed']}); clean accuracy "
             f"**{100 * model.get('test_accuracy', float('nan')):.2f} %** on {model.get('test_images')} test images "
             f"(paper on MNIST: {100 * paper['clean_accuracy']:.0f} %).")
    L.append(f"Attacked: the first **N = {model.get('attacked_images')}** correctly classified test images, untargeted "
             "(loss Eq. 3 / cross-entropy), as in the paper. P_suc = N_suc / N; D̄ is the mean L2 distortion "
             "‖x_a − x_o‖ over successes only (Eq. 20), pixels in [0, 1].")
    env = rep.get("environment", {})
    if rep.get("elapsed_s"):
        L.append(f"Run: torch {env.get('torch')} on {env.get('threads')} CPU threads; wall time of all runs into this "
                 f"folder (training included): {rep['elapsed_s']:.0f} s.")
    L.append("")
    L.append("## Table 1 — success probability and conditional mean distortion")
    L.append("")
    col = "paper (MNIST)" if cfg["data"] == "mnist" else "paper (MNIST, for reference)"
    L.append(f"| attack | P_suc (ours) | D̄ (ours) | P_suc {col} | D̄ {col} | flat energy | edge energy | iterations | ms / image |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in rep["results"]:
        p = paper["table1"].get(r["attack"], (None, None))
        L.append(f"| {r['attack']} | {_fmt(r['P_suc'], 3)} ({r['N_suc']}/{r['N']}) | {_fmt(r['D_bar'], 2)} | {_fmt(p[0])} | {_fmt(p[1])} "
                 f"| {_fmt(r['flat_energy'], 3)} | {_fmt(r['edge_energy'], 3)} | {_fmt(r['iterations_mean'], 1)} | {_fmt(r['ms_per_image'], 1)} |")
    L.append("")
    res = {r["attack"]: r for r in rep["results"]}
    if "C&W" in res and "sC&W" in res:
        a, b = res["sC&W"], res["C&W"]
        verdict = "lower" if a["D_bar"] < b["D_bar"] else "not lower"
        L.append(f"**sC&W vs C&W** (same margin, learning rate, initial c and schedule): P_suc {a['P_suc']:.3f} vs "
                 f"{b['P_suc']:.3f}; D̄ {a['D_bar']:.3f} vs {b['D_bar']:.3f} — sC&W's distortion is **{verdict}** "
                 f"(paper: 1.97 vs 2.49).")
        L.append("")
    if rep.get("budget"):
        L.append(f"### C&W vs sC&W across iteration budgets (first {cfg['n_budget']} images)")
        L.append("")
        L.append("| schedule (binary-search × Adam steps) | C&W P_suc | C&W D̄ | C&W iterations | sC&W P_suc | sC&W D̄ | sC&W iterations |")
        L.append("|---|---|---|---|---|---|---|")
        for row in rep["budget"]:
            a, b = row.get("C&W", {}), row.get("sC&W", {})
            L.append(f"| {row['schedule']} | {_fmt(a.get('P_suc'), 3)} | {_fmt(a.get('D_bar'), 3)} | {_fmt(a.get('iterations_mean'), 1)} "
                     f"| {_fmt(b.get('P_suc'), 3)} | {_fmt(b.get('D_bar'), 3)} | {_fmt(b.get('iterations_mean'), 1)} |")
        L.append("")
        L.append("Both attacks stop an example's inner loop when its loss stalls (abort_early, checked every steps/10 "
                 "iterations), so 'iterations' is the mean number actually used. The paper does not state its schedule; "
                 "the table shows how the comparison depends on it.")
        L.append("")
    L.append("*Flat / edge energy* (mean over successes, `spatialadv.eval.edge_flat_energy`): Σ(r_i − r_j)² / Σ(r_i² + r_j²) "
             "over the 4-neighbour pixel pairs where the image is flat (|Δx| ≤ 0.05) / crosses a strong edge (|Δx| ≥ 0.5); "
             "0 for a perturbation constant across those pairs, ≈ 1 for white noise. A perturbation smooth like the image "
             "has a small flat energy.")
    L.append("")
    L.append("Settings (paper §5.2 where stated): FGSM and I-FGSM sweep ε ∈ {" + ", ".join(map(str, LINF_EPS)) +
             "} (I-FGSM step 0.08·ε/0.3, 10 steps); PGD2 and sPGD2 sweep ε ∈ {" + ", ".join(map(str, L2_EPS)) +
             "} (step 0.6·ε as the paper's 3 at ε = 5, 10 steps, no random start); each keeps per image the smallest "
             f"successful distortion over its runs (§5.1). C&W and sC&W: m = κ = 1, lr 0.1, c₀ = 15, "
             f"{cfg['binary_search_steps']} binary-search steps × {cfg['steps']} Adam steps (the paper does not give these two). "
             f"Smoothing: α = 0.95, Laplacian feature kernel with bandwidth σ = {cfg['sigma']} on the [0, 1] scale "
             "(not stated in the paper), one graph per channel, conjugate-gradient solver.")
    L.append("")
    L.append("## Figures")
    L.append("")
    for f in rep["figures"]:
        L.append(f"![{f}]({f})")
        L.append("")
    return "\n".join(L) + "\n"


def _schedule(s: str) -> tuple[int, int]:
    try:
        b, st = (int(v) for v in s.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BxS, e.g. 5x100, got {s!r}") from None
    if b < 1 or st < 1:
        raise argparse.ArgumentTypeError(f"binary-search steps and Adam steps must be >= 1, got {s!r}")
    return b, st


def _add_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--n", type=int, default=1000, help="correctly classified test images attacked, untargeted (on MNIST 1000 is the whole test split)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--epochs", type=int, default=None, help="C4 training epochs (default 12 on MNIST, 3 on Fashion-MNIST)")
    sp.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    sp.add_argument("--sigma", type=float, default=0.1, help="bandwidth of the Laplacian feature kernel, [0, 1] scale")
    sp.add_argument("--n-budget", type=int, default=200, help="of those, images also attacked by C&W / sC&W at other schedules")
    sp.add_argument("--budgets", nargs="*", type=_schedule, default=list(BUDGETS), metavar="BxS",
                    help="extra C&W / sC&W schedules, binary-search steps x Adam steps (default: 1x100 5x100)")
    sp.add_argument("--steps", type=int, default=50, help="C&W / sC&W Adam steps per binary-search step")
    sp.add_argument("--binary-search-steps", type=int, default=5)
    sp.add_argument("--batch-size", type=int, default=100)


def _runner(name: str):
    def run(args: argparse.Namespace) -> dict:
        epochs = args.epochs if args.epochs is not None else (12 if name == "smooth-mnist" else 3)
        return reproduce_smooth(args.out, experiment=name, n=args.n, n_budget=min(args.n_budget, args.n), seed=args.seed, epochs=epochs, max_train=args.max_train,
                                sigma=args.sigma, steps=args.steps, binary_search_steps=args.binary_search_steps,
                                budgets=tuple(args.budgets), batch_size=args.batch_size, progress=not args.quiet)

    return run


EXPERIMENTS = [
    Experiment("smooth-mnist", "sPGD2 / sC&W vs FGSM, I-FGSM, PGD2, C&W on MNIST C4 (Zhang et al. 2020, Table 1, Figs. 1, 2, 5)",
               _add_arguments, _runner("smooth-mnist"), build_smooth_report),
    Experiment("smooth-fashion", "the smooth-mnist experiment on Fashion-MNIST (Debian package dataset-fashion-mnist)",
               _add_arguments, _runner("smooth-fashion"), build_smooth_report),
]
