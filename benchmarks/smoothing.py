"""Benchmark: cost of the image-guided smoothing ŝ_α and of sC&W relative to C&W.

What is measured (one process, one run)
---------------------------------------
1. ``ŝ_α`` (``spatialadv.ops.smoothing.GuidedSmoothing``, α = 0.95 and 0.997,
   Laplacian kernel σ = 0.1) on a batch of real MNIST test images (28×28×1) and
   of 224×224×3 images:

   * ``direct``: the one-off set-up (graph + Cholesky + dense inverse) and the
     per-call cost of one forward and of one forward + backward;
   * ``cg``: the set-up (graph + the normaliser s_α(1), one CG solve) and the
     per-call cost of one forward and one forward + backward (the backward is
     one more CG solve), with the CG iteration count and the relative error
     against the direct solve where that exists.

   At 224×224×3 the dense inverse would need N·3·(224²)²·4 bytes (30 GB per
   image): it is reported as not feasible, not run.

2. Cost per iteration of sC&W vs C&W (``SmoothCarliniWagnerL2`` vs
   ``CarliniWagnerL2``, same settings, ``binary_search_steps=1``,
   ``early_stop=False``, so every example takes exactly ``steps`` Adam steps):
   at 28×28 on C4 trained on MNIST (the paper's network; cached checkpoint or
   trained here), at 224×224×3 on a randomly initialised 5-layer CNN (no
   ImageNet weights are available offline; the ratio depends on the network's
   cost, so the network is printed). Target from the issue: sC&W ≤ 1.5× C&W
   per iteration at 28×28.

Timings are the median of ``--repeats`` runs after one warm-up, with
``time.perf_counter``; the torch thread count is printed. Results go to
``benchmarks/results/smoothing.json``.

Usage::

    python benchmarks/smoothing.py            # defaults: MNIST batch 100, 224² batch 2
    python benchmarks/smoothing.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from spatialadv.attacks import CarliniWagnerL2, SmoothCarliniWagnerL2
from spatialadv.data import DataSpec, load_dataset
from spatialadv.ops.smoothing import GuidedSmoothing
from spatialadv.training import ModelSpec, TrainConfig, load_or_train


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_smoothing(x: torch.Tensor, alpha: float, repeats: int, direct: bool) -> dict:
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    row = {"shape": list(x.shape), "alpha": alpha}

    def fwd_bwd(sm):
        zz = z.clone().requires_grad_(True)
        (gz,) = torch.autograd.grad(sm(zz), zz, g)
        return gz

    t0 = time.perf_counter()
    cg = GuidedSmoothing(x, alpha=alpha, solver="cg", tol=1e-5)
    row["cg_setup_s"] = time.perf_counter() - t0
    row["cg_forward_s"] = _median_time(lambda: cg(z), repeats)
    row["cg_iterations_forward"] = cg.cg_iterations
    row["cg_forward_backward_s"] = _median_time(lambda: fwd_bwd(cg), repeats)
    if direct:
        t0 = time.perf_counter()
        dense = GuidedSmoothing(x, alpha=alpha, solver="direct")
        row["direct_setup_s"] = time.perf_counter() - t0
        row["direct_forward_s"] = _median_time(lambda: dense(z), repeats)
        row["direct_forward_backward_s"] = _median_time(lambda: fwd_bwd(dense), repeats)
        ref = dense(z)
        row["cg_rel_error_vs_direct"] = float((cg(z) - ref).norm() / ref.norm())
    else:
        n, c, h, w = x.shape
        row["direct"] = f"not feasible: dense L_α⁻¹ needs {n * c * (h * w) ** 2 * 4 / 1e9:.0f} GB"
    return row


def big_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Conv2d(128, 256, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10)).eval()


def bench_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, repeats: int) -> dict:
    for p in model.parameters():
        p.requires_grad_(False)
    common = dict(kappa=1.0, lr=0.1, initial_const=15.0, binary_search_steps=1, steps=steps, early_stop=False)
    cw = CarliniWagnerL2(**common)
    scw = SmoothCarliniWagnerL2(**common, alpha=0.95, sigma=0.1)
    t_cw = _median_time(lambda: cw(model, x, y), repeats)
    t_scw = _median_time(lambda: scw(model, x, y), repeats)
    with torch.no_grad():
        t_model = _median_time(lambda: model(x), repeats)
    return {"shape": list(x.shape), "steps": steps, "cw_s": t_cw, "scw_s": t_scw,
            "cw_ms_per_iteration": 1000 * t_cw / steps, "scw_ms_per_iteration": 1000 * t_scw / steps,
            "ratio_scw_over_cw": t_scw / t_cw, "model_forward_s": t_model}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="MNIST batch size")
    ap.add_argument("--n-large", type=int, default=2, help="224×224×3 batch size")
    ap.add_argument("--steps", type=int, default=20, help="Adam steps per attack timing")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "smoothing.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    test = load_dataset("mnist", "test")
    x_small = test.x[: args.n]
    gen = torch.Generator().manual_seed(0)
    # a smooth random "natural-like" 224×224×3 image: upsampled noise, so the graph has flat parts and edges
    base = torch.rand(args.n_large, 3, 28, 28, generator=gen)
    x_large = torch.nn.functional.interpolate(base, size=(224, 224), mode="nearest")

    res = {"environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                           "machine": platform.machine()}, "smoothing": [], "attacks": {}}
    for alpha in (0.95, 0.997):
        res["smoothing"].append(bench_smoothing(x_small, alpha, args.repeats, direct=True))
        res["smoothing"].append(bench_smoothing(x_large, alpha, args.repeats, direct=False))

    c4, info = load_or_train(ModelSpec("c4", DataSpec("mnist"), TrainConfig()), progress=False)
    with torch.no_grad():
        y_pred = c4(x_small).argmax(1)
    res["attacks"]["28x28_c4"] = {**bench_attacks(c4, x_small, y_pred, args.steps, args.repeats),
                                  "model": "C4 (MNIST)", "clean_accuracy": info["test_accuracy"]}
    big = big_cnn()
    with torch.no_grad():
        y_big = big(x_large).argmax(1)
    res["attacks"]["224x224x3_cnn"] = {**bench_attacks(big, x_large, y_big, max(args.steps // 4, 3), args.repeats),
                                       "model": "random 5-layer CNN (conv 32-64-128-256, stride 2, avg-pool, FC)"}

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'input':<18} {'alpha':>6} {'direct setup':>12} {'direct f+b':>11} {'cg setup':>9} {'cg fwd':>8} {'cg f+b':>8} {'cg it':>6} {'cg err':>9}")
    for r in res["smoothing"]:
        print(f"{'x'.join(map(str, r['shape'])):<18} {r['alpha']:>6} {r.get('direct_setup_s', float('nan')):>12.4f} "
              f"{r.get('direct_forward_backward_s', float('nan')):>11.4f} {r['cg_setup_s']:>9.4f} {r['cg_forward_s']:>8.4f} "
              f"{r['cg_forward_backward_s']:>8.4f} {r['cg_iterations_forward']:>6} {r.get('cg_rel_error_vs_direct', float('nan')):>9.2e}")
    for k, r in res["attacks"].items():
        print(f"{k}: C&W {r['cw_ms_per_iteration']:.1f} ms/it, sC&W {r['scw_ms_per_iteration']:.1f} ms/it, "
              f"ratio {r['ratio_scw_over_cw']:.2f} (batch {r['shape'][0]}, {r['steps']} steps)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
