"""Benchmark: ``spatialadv.attacks.StAdv`` vs advertorch 0.2.3 ``SpatialTransformAttack``.

What is measured
----------------
Ours is ``StAdv()`` with its defaults (the paper's τ = 0.05 on normalised
flows, κ = 0); options override τ, the step cap and restarts. Both attacks
run in one process on the same model (``mnist-a`` from
``spatialadv.training.load_or_train``), the same first ``--n`` correctly
classified MNIST test images and the same random targets
(``spatialadv.eval.make_pairs(..., "random", seed=--seed)``). Ours runs first.
For each attack the script reports

* success rate, recomputed from the model on the returned images
  (``argmax f(x_adv) == target``), not taken from the attack's own bookkeeping;
* wall time (``time.perf_counter`` around the attack call only) and ms / image;
* mean L_flow (stAdv Eq. 4 on flows in normalised grid units, the unit of the
  paper's τ), mean flow TV (App. C Eq. 5, pixels, ``spatialadv.ops.flow_tv``),
  mean flow L2 (Eq. 6) and the mean per-image TV / L2 over the successful
  images, and L_flow, TV and TV / L2 over the images both attacks broke (the
  like-for-like comparison);
* the speed ratio ``advertorch time / StAdv time``.

The table is printed and the numbers are written as JSON to ``--out``.

advertorch's flow in pixels
---------------------------
advertorch does not return a flow: it optimises a *normalised sampling grid*
``grid`` (N, H, W, 2), last axis (x, y) in [-1, 1], starting from the identity
grid ``F.affine_grid(identity theta, x.size())`` and warps with
``F.grid_sample(x, grid)``; both calls leave ``align_corners`` at its default,
which is ``False`` since torch 1.3 (so also under torch 2.13). With
``align_corners=False`` the normalised coordinate g maps to the pixel
coordinate ``((g + 1) * W - 1) / 2`` and the identity grid sits exactly on the
pixel centres, ``g = (2 i + 1) / W - 1``. Hence the per-pixel displacement in
pixels is::

    flow_x = (grid[..., 0] - identity[..., 0]) * W / 2     # along W (our channel 0, Δu)
    flow_y = (grid[..., 1] - identity[..., 1]) * H / 2     # along H (our channel 1, Δv)

This is the same convention as ``spatialadv.ops.flow_warp`` (output pixel
samples the input at its position + flow, pixel centres at integer coordinates,
zeros outside), so ``flow_warp(x, flow)`` reproduces advertorch's image; the
script checks this (``conversion_max_abs_err`` in the JSON). The final grid is
captured by temporarily wrapping ``scipy.optimize.fmin_l_bfgs_b`` (advertorch
imports it inside ``perturb``), which also yields scipy's iteration counts.

Things to know about advertorch's ``SpatialTransformAttack`` (read from
``advertorch/attacks/spatial.py``, 0.2.3): it runs *one* ``fmin_l_bfgs_b``
problem on the whole flattened batch (loss summed over images, a single
stopping rule, grid bounded to [-1, 1], ``maxls=100``); its flow loss is
``initial_const * (||∂_x grid||_2 + ||∂_y grid||_2)`` in normalised units
(a global L2 norm of the grid differences, not the per-pixel sum of Eq. 4);
it keeps only the final iterate; and for images that fail it returns an
**all-zero image**, not the original (the script counts those).

Both attacks see the model with its parameters frozen (``requires_grad_(False)``)
so advertorch's ``loss.backward()`` does not also compute weight gradients;
ours differentiates w.r.t. the flow only either way.

How to run
----------
::

    pip install -e ".[bench]"        # advertorch==0.2.3 and scipy
    # if pip wants to replace your torch build: pip install --no-deps advertorch==0.2.3
    python benchmarks/stadv_vs_advertorch.py                   # full run (minutes)
    python benchmarks/stadv_vs_advertorch.py --skip-advertorch --n 20   # quick check

The model is trained on first use (about 90 s on CPU) and cached afterwards.
advertorch 0.2.3 predates torch 2.x; :func:`install_advertorch_shims` patches
the two import-time incompatibilities (see its docstring) before importing it.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from spatialadv.attacks import StAdv
from spatialadv.data import DataSpec, load_dataset
from spatialadv.eval import first_correct, make_pairs
from spatialadv.eval.runner import attack_config
from spatialadv.ops import flow_l2, flow_tv, flow_tv_loss, flow_warp, to_normalized
from spatialadv.training import ModelSpec, load_or_train

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stadv_vs_advertorch.json"


# --------------------------------------------------------------------------- advertorch


def install_advertorch_shims() -> list[str]:
    """Make ``import advertorch`` (0.2.3) work under torch 2.x without torchvision.

    1. ``advertorch.attacks.fast_adaptive_boundary`` does
       ``from torch.autograd.gradcheck import zero_gradients``, removed in
       torch 1.9. We add an equivalent (zero the ``.grad`` of a tensor or of an
       iterable of tensors, in place); it is used only by FAB, not here.
    2. ``advertorch.functional`` (imported via ``advertorch.defenses``) does
       ``from torchvision import transforms`` and instantiates
       ``transforms.ToPILImage()`` / ``transforms.ToTensor()`` at import time.
       If torchvision is not installed we register a stub ``torchvision`` with
       a ``transforms`` submodule holding those two classes; calling them
       raises (only advertorch's JPEG defence would, never this benchmark).

    Returns the list of shims applied (empty when none was needed).
    """
    applied = []
    # importlib, not `import torch.autograd.gradcheck as m`: that resolves to the
    # function torch.autograd.gradcheck, which shadows the submodule attribute.
    gradcheck = importlib.import_module("torch.autograd.gradcheck")

    if not hasattr(gradcheck, "zero_gradients"):
        def zero_gradients(x):
            if isinstance(x, torch.Tensor):
                if x.grad is not None:
                    x.grad.detach_()
                    x.grad.zero_()
            elif isinstance(x, collections.abc.Iterable):
                for elem in x:
                    zero_gradients(elem)

        gradcheck.zero_gradients = zero_gradients
        applied.append("torch.autograd.gradcheck.zero_gradients")

    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        class _Unavailable:
            def __call__(self, *args, **kwargs):
                raise NotImplementedError("stub torchvision (benchmarks/stadv_vs_advertorch.py): not available")

        transforms = types.ModuleType("torchvision.transforms")
        transforms.ToPILImage = type("ToPILImage", (_Unavailable,), {})
        transforms.ToTensor = type("ToTensor", (_Unavailable,), {})
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = transforms
        sys.modules["torchvision"] = torchvision
        sys.modules["torchvision.transforms"] = transforms
        applied.append("stub torchvision.transforms (ToPILImage, ToTensor)")
    return applied


@contextlib.contextmanager
def _capture_lbfgs_b(record: list):
    """Temporarily wrap ``scipy.optimize.fmin_l_bfgs_b`` to record its results."""
    import scipy.optimize

    original = scipy.optimize.fmin_l_bfgs_b

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        record.append(out)
        return out

    scipy.optimize.fmin_l_bfgs_b = wrapper
    try:
        yield
    finally:
        scipy.optimize.fmin_l_bfgs_b = original


def identity_grid(x: torch.Tensor) -> torch.Tensor:
    """The identity sampling grid exactly as advertorch builds it (align_corners=False)."""
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=x.device).repeat(x.shape[0], 1, 1)
    return F.affine_grid(theta, list(x.size()), align_corners=False)


def grid_to_flow(grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Normalised grid ``(N, H, W, 2)`` (align_corners=False) -> flow ``(N, 2, H, W)`` in pixels."""
    h, w = x.shape[2], x.shape[3]
    scale = torch.tensor([w / 2.0, h / 2.0], dtype=grid.dtype, device=grid.device)
    return ((grid - identity_grid(x).to(grid.dtype)) * scale).permute(0, 3, 1, 2).contiguous()


def run_advertorch(model, x, t, *, initial_const: float, max_iterations: int) -> dict:
    from advertorch.attacks import SpatialTransformAttack

    attack = SpatialTransformAttack(
        predict=model, num_classes=10, initial_const=initial_const,
        max_iterations=max_iterations, targeted=True,
    )
    record: list = []
    with warnings.catch_warnings(), _capture_lbfgs_b(record):
        # advertorch calls affine_grid/grid_sample without align_corners (-> UserWarning
        # on every loss evaluation) and scipy warns that iprint is deprecated.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        t0 = time.perf_counter()
        x_adv = attack.perturb(x, t)
        wall = time.perf_counter() - t0
    grid_flat, f_final, info = record[-1]
    grid = torch.from_numpy(grid_flat.reshape(x.shape[0], x.shape[2], x.shape[3], 2)).float()
    flow = grid_to_flow(grid, x)
    return {
        "x_adv": x_adv, "flow": flow, "wall_s": wall,
        "scipy": {"nit": int(info["nit"]), "funcalls": int(info["funcalls"]),
                  "warnflag": int(info["warnflag"]), "task": str(info["task"]), "final_loss": float(f_final)},
    }


# --------------------------------------------------------------------------- reporting


def summarize(name, model, x, t, x_adv, flow, wall_s) -> dict:
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    success = pred == t
    tv, l2 = flow_tv(flow), flow_l2(flow)
    l_flow = flow_tv_loss(to_normalized(flow), eps=0.0)  # stAdv Eq. 4 on normalised flows (the paper's τ unit)
    ratio = tv / l2.clamp_min(1e-12)
    s = success
    return {
        "name": name,
        "success": success.tolist(),
        "success_rate": float(s.float().mean()),
        "wall_s": wall_s,
        "ms_per_image": 1000.0 * wall_s / len(x),
        "flow_tv_px": tv.tolist(),
        "mean_flow_tv_px": float(tv[s].mean()) if s.any() else float("nan"),
        "mean_flow_l2_px": float(l2[s].mean()) if s.any() else float("nan"),
        "l_flow_normalized": l_flow.tolist(),
        "mean_l_flow_normalized": float(l_flow[s].mean()) if s.any() else float("nan"),
        "mean_tv_over_l2": float(ratio[s].mean()) if s.any() else float("nan"),
    }


def print_table(rows: list[dict], ratio: float | None, n: int, common: int | None) -> None:
    head = (f"{'attack':<30} {'success':>8} {'time (s)':>9} {'ms/img':>8} {'L_flow':>8} {'TV (px)':>8} {'L2 (px)':>8} "
            f"{'TV/L2':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<30} {100 * r['success_rate']:>7.1f}% {r['wall_s']:>9.1f} {r['ms_per_image']:>8.1f} "
              f"{r['mean_l_flow_normalized']:>8.3f} {r['mean_flow_tv_px']:>8.4f} {r['mean_flow_l2_px']:>8.4f} "
              f"{r['mean_tv_over_l2']:>6.3f}")
    print(f"(n = {n} images; means over each attack's successful images: L_flow = stAdv Eq. 4 on normalised flows, "
          "TV and L2 = App. C Eqs. 5-6 in pixels, TV/L2 = mean per-image ratio)")
    if common is not None:
        print(f"on the {common} images both attacks broke: "
              + ", ".join(f"{r['name'].split()[0]} L_flow {r['common_mean_l_flow']:.3f}, TV {r['common_mean_flow_tv_px']:.4f} px, "
                          f"TV/L2 {r['common_mean_tv_over_l2']:.3f}" for r in rows))
    if ratio is not None:
        print(f"speed ratio (advertorch time / StAdv time): {ratio:.1f}x")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100, help="number of correctly classified test images (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random targets (default 0)")
    p.add_argument("--model", default="mnist-a", help="registry model (default mnist-a)")
    p.add_argument("--tau", type=float, default=None, help="StAdv tau (normalised flow units; default: StAdv's, the paper's 0.05)")
    p.add_argument("--steps", type=int, default=None, help="StAdv L-BFGS steps per run (default: StAdv's)")
    p.add_argument("--restart-offsets", type=float, nargs="*", default=[], metavar="PX",
                   help="StAdv constant starting flows (pixels) for restarts of still-failing images (default: none)")
    p.add_argument("--adv-initial-const", type=float, default=0.05, help="advertorch initial_const (default 0.05)")
    p.add_argument("--adv-max-iterations", type=int, default=1000, help="advertorch max_iterations (default 1000)")
    p.add_argument("--skip-advertorch", action="store_true", help="run only StAdv (quick check)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    shims = [] if args.skip_advertorch else install_advertorch_shims()
    if not args.skip_advertorch:
        import advertorch  # fail early, before the slow part

    load_start = os.getloadavg()
    test = load_dataset("mnist", "test")
    model, info = load_or_train(ModelSpec(args.model, DataSpec("mnist")), progress=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        idx = first_correct(model, test.x, test.y, args.n)
    pairs = make_pairs(idx, test.y, 10, "random", seed=args.seed)
    x = test.x[idx]
    y = test.y[idx]
    t = torch.tensor([tgt for _, tgt in pairs], dtype=torch.long)
    print(f"model {args.model} (test acc {info.get('test_accuracy')}), {len(x)} images, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {load_start[0]:.2f}", flush=True)

    # ---- ours
    overrides = {k: v for k, v in (("tau", args.tau), ("steps", args.steps)) if v is not None}
    if args.restart_offsets:
        overrides["restart_offsets"] = tuple(args.restart_offsets)
    attack = StAdv(**overrides)
    t0 = time.perf_counter()
    res = attack(model, x, y, target=t)
    ours_wall = time.perf_counter() - t0
    ours = summarize("spatialadv StAdv()" if not overrides else "spatialadv StAdv(...)", model, x, t, res.x_adv, res.flow,
                     ours_wall)
    ours["config"] = attack_config(attack)
    ours["mean_iterations"] = float(res.grad_evals.float().mean())
    ours["reported_success_agrees"] = bool(torch.equal(res.success, torch.tensor(ours["success"])))
    print(f"StAdv done in {ours_wall:.1f} s", flush=True)
    rows = [ours]

    ratio = common = None
    theirs = None
    if not args.skip_advertorch:
        print(f"advertorch SpatialTransformAttack (max_iterations={args.adv_max_iterations}) running ...", flush=True)
        out = run_advertorch(model, x, t, initial_const=args.adv_initial_const, max_iterations=args.adv_max_iterations)
        theirs = summarize(f"advertorch 0.2.3 c={args.adv_initial_const}", model, x, t,
                           out["x_adv"], out["flow"], out["wall_s"])
        zero = out["x_adv"].flatten(1).abs().amax(1) == 0
        s = torch.tensor(theirs["success"])
        with torch.no_grad():
            rewarped = flow_warp(x, out["flow"])
        theirs["config"] = {"initial_const": args.adv_initial_const, "max_iterations": args.adv_max_iterations,
                            "num_classes": 10, "targeted": True}
        theirs["scipy"] = out["scipy"]
        theirs["all_zero_returned"] = int(zero.sum())
        theirs["success_on_all_zero"] = int((s & zero).sum())
        theirs["conversion_max_abs_err"] = float((rewarped - out["x_adv"])[~zero].abs().max()) if (~zero).any() else None
        rows.append(theirs)
        both = torch.tensor(ours["success"]) & s & ~zero
        common = int(both.sum())
        for r in rows:
            tv = torch.tensor(r["flow_tv_px"])
            r["common_mean_flow_tv_px"] = float(tv[both].mean()) if common else float("nan")
            r["common_mean_l_flow"] = float(torch.tensor(r["l_flow_normalized"])[both].mean()) if common else float("nan")
        with torch.no_grad():
            for r, fl in ((ours, res.flow), (theirs, out["flow"])):
                rr = flow_tv(fl) / flow_l2(fl).clamp_min(1e-12)
                r["common_mean_tv_over_l2"] = float(rr[both].mean()) if common else float("nan")
        ratio = theirs["wall_s"] / ours_wall

    print()
    print_table(rows, ratio, len(x), common)
    if theirs is not None:
        sc = theirs["scipy"]
        print(f"advertorch: scipy L-BFGS-B nit={sc['nit']} funcalls={sc['funcalls']} task={sc['task']!r}; "
              f"{theirs['all_zero_returned']} all-zero images returned (failures), "
              f"{theirs['success_on_all_zero']} of them classified as the target; "
              f"grid->flow conversion max |flow_warp - advertorch| = {theirs['conversion_max_abs_err']:.2e}")
    load_end = os.getloadavg()
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f} on {os.cpu_count()} CPUs")

    result = {
        "benchmark": "stadv_vs_advertorch",
        "dataset": "mnist", "model": args.model, "model_test_accuracy": info.get("test_accuracy"),
        "n": len(x), "seed": args.seed, "image_indices": idx.tolist(), "targets": t.tolist(),
        "environment": {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "advertorch": None if args.skip_advertorch else advertorch.__version__,
            "advertorch_shims": shims, "loadavg_start": list(load_start), "loadavg_end": list(load_end),
        },
        "stadv": ours, "advertorch": theirs, "speed_ratio_advertorch_over_stadv": ratio,
        "both_success": common,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
