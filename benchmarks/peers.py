"""Benchmark: our attacks against the peer libraries, side by side in one run, and each attack's overhead.

Same model (``mnist-a`` of stAdv Table 4 from ``spatialadv.training.load_or_train``:
trained once, then cached), same images (the first ``--n`` correctly
classified MNIST-5k test images), same process, ``torch.set_num_threads(--threads)``.
Success is recomputed from the model on the returned images for every row.
Each timing is the median of ``--repeats`` runs of the attack call alone
(one run for our default C&W and for the overhead rows).

Rows
----
* **PGD L∞** (ε = 0.3, α = 0.01, 40 steps, random start; Madry et al. 2018):
  ours (``PGD()``, no early stop) vs torchattacks 3.5.1 ``PGD`` — same
  settings, same number of model gradient evaluations (target: ours ≤ 1.05×
  theirs at equal success); and ours with per-example early stop.
* **C&W L2** (Carlini & Wagner 2017) at equal settings: one constant
  c = ``--cw-c``, ``--cw-steps`` Adam steps, lr 0.01, κ = 0 — ours
  (``binary_search_steps=1``, both with and without per-example abort)
  vs torchattacks ``CW`` (target: ours ≤ theirs); and our default
  (``CarliniWagnerL2()``: 6-step binary search on c), its success and time
  per image.
* **STM** on Engstrom et al.'s grid (±30° in 31 steps × ±3 px in 5 × 5):
  our default ``RotationTranslation()`` (early stop) and the exhaustive scan
  (``early_stop=False``) vs foolbox 3.3.4 ``SpatialAttack`` on the same grid
  (target: ours ≥ 3× faster at equal success).
* **Overhead**: every gradient attack's time ÷ its model cost, where the
  model cost is (mean gradient evaluations per image) × (one forward +
  backward of the model on the whole batch) + (mean forward-only evaluations)
  × (one forward on the batch); 1.0 means the attack costs nothing beyond the
  model (target ≤ 1.3). Attacks that drop finished examples from the batch
  run the model on smaller batches, which costs more per image on a CPU;
  that shows up here as overhead.

stAdv against advertorch has its own script (``stadv_vs_advertorch.py``;
advertorch takes minutes).

torchattacks 3.5.1 declares torchvision and ``requests~=2.25`` as
dependencies but imports neither; install it with
``pip install --no-deps torchattacks==3.5.1`` (there is no working
torchvision for this torch build).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spatialadv.attacks import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2, RotationTranslation, SmoothPGDL2, StAdv  # noqa: E402
from spatialadv.data import DataSpec, load_dataset  # noqa: E402
from spatialadv.eval import first_correct  # noqa: E402
from spatialadv.training import ModelSpec, TrainConfig, load_or_train  # noqa: E402

GROUPS = ["PGD", "C&W", "C&W-default", "STM", "overhead"]


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _success(model, xa, y) -> float:
    with torch.no_grad():
        return float((model(xa).argmax(1) != y).float().mean())


def _l2(xa, x) -> float:
    return float((xa - x).flatten(1).norm(dim=1).mean())


def _model_cost(model, x, y, repeats: int) -> tuple[float, float]:
    """Seconds of one forward + backward (input gradient) and of one forward of ``model`` on the batch."""
    def fb():
        xi = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xi), y, reduction="sum")
        torch.autograd.grad(loss, xi)

    def f():
        with torch.no_grad():
            model(x)

    for fn in (fb, f):  # warm-up
        fn()
    t_fb = statistics.median(_timed(fb, 5 * repeats)[1])
    t_f = statistics.median(_timed(f, 5 * repeats)[1])
    return t_fb, t_f


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="correctly classified MNIST test images")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--cw-c", type=float, default=10.0, help="C&W constant c at equal settings")
    p.add_argument("--cw-steps", type=int, default=100, help="C&W Adam steps at equal settings")
    p.add_argument("--skip-peers", action="store_true", help="only our attacks (no torchattacks / foolbox)")
    p.add_argument("--groups", nargs="+", default=GROUPS, choices=GROUPS,
                   help="which rows to run (C&W-default: our default binary search, ~2 min; overhead: every attack once)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/peers.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    test = load_dataset("mnist", "test")
    model, info = load_or_train(ModelSpec("mnist-a", DataSpec("mnist"), TrainConfig()), progress=False)
    idx = first_correct(model, test.x, test.y, args.n)
    x, y = test.x[idx], test.y[idx]
    n = len(x)
    res = {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
           "threads": args.threads, "n_images": n, "repeats": args.repeats, "model": "mnist-a",
           "clean_accuracy": info["test_accuracy"], "load_avg_start": load0, "rows": {}, "overhead": {}}
    rows = res["rows"]

    def row(group: str, name: str, fn, *, note: str = "", repeats: int | None = None) -> dict:
        med, times, xa = _timed(fn, args.repeats if repeats is None else repeats)
        r = {"seconds": med, "ms_per_image": 1000 * med / n, "times_s": times, "success": _success(model, xa, y),
             "l2_mean": _l2(xa, x), "note": note}
        rows.setdefault(group, {})[name] = r
        print(f"{group:6s} {name:46s} {med:8.3f} s  {r['ms_per_image']:8.2f} ms/img  success {100 * r['success']:6.2f} %  "
              f"L2 {r['l2_mean']:.3f}", flush=True)
        return r

    if not args.skip_peers:
        import foolbox as fb
        import torchattacks

    groups = set(args.groups)
    # --- PGD L∞ -----------------------------------------------------------------------------
    if "PGD" in groups:
        _pgd_rows(row, model, x, y, args, torchattacks if not args.skip_peers else None)
    if "C&W" in groups:
        _cw_rows(row, model, x, y, args, torchattacks if not args.skip_peers else None)
    if "C&W-default" in groups:
        row("C&W", "ours CarliniWagnerL2() (binary search, default)", lambda: CarliniWagnerL2()(model, x, y).x_adv, repeats=1)
    if "STM" in groups:
        _stm_rows(row, model, x, y, args, fb if not args.skip_peers else None)
    if "overhead" in groups:
        _overhead(res, model, x, y, args)
    _ratios(res, rows, args)
    res["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return 0


def _pgd_rows(row, model, x, y, args, torchattacks) -> None:
    row("PGD", "ours PGD(), 40 steps, no early stop", lambda: PGD()(model, x, y).x_adv)
    row("PGD", "ours PGD(early_stop=True)", lambda: PGD(early_stop=True)(model, x, y).x_adv)
    if torchattacks is not None:
        ta_pgd = torchattacks.PGD(model, eps=0.3, alpha=0.01, steps=40, random_start=True)
        row("PGD", "torchattacks 3.5.1 PGD, 40 steps", lambda: ta_pgd(x, y))


def _cw_rows(row, model, x, y, args, torchattacks) -> None:
    c, steps = args.cw_c, args.cw_steps
    row("C&W", f"ours c={c:g}, {steps} steps, no abort",
        lambda: CarliniWagnerL2(initial_const=c, binary_search_steps=1, steps=steps, lr=0.01, early_stop=False)(model, x, y).x_adv)
    row("C&W", f"ours c={c:g}, {steps} steps, per-example abort",
        lambda: CarliniWagnerL2(initial_const=c, binary_search_steps=1, steps=steps, lr=0.01)(model, x, y).x_adv)
    if torchattacks is not None:
        ta_cw = torchattacks.CW(model, c=c, kappa=0, steps=steps, lr=0.01)
        row("C&W", f"torchattacks 3.5.1 CW c={c:g}, {steps} steps", lambda: ta_cw(x, y))


def _stm_rows(row, model, x, y, args, fb) -> None:
    row("STM", "ours RotationTranslation() (default: early stop)", lambda: RotationTranslation()(model, x, y).x_adv)
    row("STM", "ours RotationTranslation(early_stop=False)", lambda: RotationTranslation(early_stop=False)(model, x, y).x_adv)
    if fb is not None:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        fb_stm = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=5, num_rotations=31,
                                          grid_search=True)
        row("STM", "foolbox 3.3.4 SpatialAttack (same grid)", lambda: fb_stm(fmodel, x, y)[0])


def _overhead(res, model, x, y, args) -> None:
    n = len(x)
    t_fb, t_f = _model_cost(model, x, y, args.repeats)
    res["model_seconds"] = {"forward_backward": t_fb, "forward": t_f}
    print(f"model on the batch of {n}: forward+backward {1000 * t_fb:.2f} ms, forward {1000 * t_f:.2f} ms")
    for name, atk in (("FGSM", FGSM()), ("I-FGSM", IFGSM()), ("MIM", MIM()), ("PGD", PGD()),
                      ("PGD (early stop)", PGD(early_stop=True)), ("C&W L2", CarliniWagnerL2()),
                      ("sPGD2", SmoothPGDL2()), ("stAdv", StAdv())):
        med, times, r = _timed(lambda a=atk: a(model, x, y), 1)
        grads = float(r.grad_evals.float().mean())
        fwd = float(r.forward_evals.float().mean()) if r.forward_evals is not None else 0.0
        cost = grads * t_fb + fwd * t_f
        ratio = med / cost if cost > 0 else float("nan")
        res["overhead"][name] = {"seconds": med, "gradient_evals": grads, "forward_evals": fwd, "model_seconds": cost,
                                 "ratio": ratio, "success": _success(model, r.x_adv, y)}
        print(f"overhead {name:18s} {med:8.3f} s  {grads:7.1f} grad + {fwd:6.1f} fwd evals/img  model {cost:7.3f} s  "
              f"ratio {ratio:5.2f}", flush=True)


def _ratios(res, rows, args) -> None:
    c, steps = args.cw_c, args.cw_steps
    pairs = [("pgd_time_ratio_ours_over_torchattacks", "PGD", "ours PGD(), 40 steps, no early stop",
              "torchattacks 3.5.1 PGD, 40 steps", "target <= 1.05"),
             ("cw_time_ratio_ours_over_torchattacks", "C&W", f"ours c={c:g}, {steps} steps, no abort",
              f"torchattacks 3.5.1 CW c={c:g}, {steps} steps", "target <= 1"),
             ("stm_time_ratio_ours_over_foolbox", "STM", "ours RotationTranslation() (default: early stop)",
              "foolbox 3.3.4 SpatialAttack (same grid)", "target <= 1/3")]
    for key, group, ours, theirs, target in pairs:
        g = rows.get(group, {})
        if ours in g and theirs in g:
            res[key] = g[ours]["seconds"] / g[theirs]["seconds"]
            print(f"{key} {res[key]:.3f} ({target}; success {100 * g[ours]['success']:.0f} % vs "
                  f"{100 * g[theirs]['success']:.0f} %)")


if __name__ == "__main__":
    raise SystemExit(main())
