"""Time of the exact SDP (cvxpy) and of the dual bound for the 784-500-10 network.

The SDP is Eq. 9 of *Provable Defenses against Spatially Transformed
Adversarial Inputs: Impossibility and Possibility Results* (ICLR 2019
submission).

Run: ``PYTHONPATH=src python benchmarks/certify.py [--exact-timeout 600] [--solver SCS]``.
Writes ``benchmarks/results/certify.json``.

The bound of a class pair does not depend on the image, so "per example"
means certifying one image (its 9 pairs (y, j), given the net) and "per
batch" the whole test split (all 45 pairs once, then one forward pass).
The exact SDP is solved for one class pair only, in a subprocess with a
wall-clock limit: with D = 500 + 784 = 1284 the PSD variable has ~824k
entries.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
from pathlib import Path

import torch


def _exact_worker(bmat, solver, scs_eps, q):
    from spatialadv.certify import sdp_exact

    t0 = time.perf_counter()
    try:
        kwargs = {"verbose": False}
        if solver == "SCS":
            kwargs.update(eps=scs_eps)
        val = sdp_exact(bmat, solver=solver, **kwargs)
        q.put({"value": val, "time_s": time.perf_counter() - t0, "status": "ok"})
    except Exception as e:  # reported, not hidden: the JSON records the failure and its message
        q.put({"value": None, "time_s": time.perf_counter() - t0, "status": f"error: {type(e).__name__}: {e}"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exact-timeout", type=float, default=600.0)
    ap.add_argument("--solver", default="SCS", choices=["SCS", "CLARABEL"])
    ap.add_argument("--scs-eps", type=float, default=1e-4, help="SCS tolerance of the exact SDP")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/certify.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from spatialadv.certify import certify, optimize_dual, pair_bounds, sdp_dual_bound
    from spatialadv.certify.bounds import initial_dual
    from spatialadv.certify.penalties import SDPPenalty
    from spatialadv.data import DataSpec, load_dataset
    from spatialadv.ops.flow_smoothness import box_half_widths
    from spatialadv.training import TrainConfig, certify_spec, load_or_train

    test = load_dataset("mnist", "test")
    model, info = load_or_train(certify_spec("normal", DataSpec("mnist"), TrainConfig(epochs=10)), progress=False)
    model.requires_grad_(True)  # the SDP-penalty timing below differentiates w.r.t. the weights, as in training
    W = model[1].weight.detach().double()
    V = model[3].weight.detach().double()
    lam = torch.as_tensor(box_half_widths(28, 28), dtype=torch.float64)
    res: dict = {"network": "fc-500 (784-500-10), variant normal, MNIST-5k", "test_accuracy": info["test_accuracy"],
                 "environment": {"torch": torch.__version__, "python": platform.python_version(), "threads": args.threads,
                                 "note": "2 CPU cores shared with other jobs: timings are inflated by contention"}}

    pair = (1, 0)
    dv1 = (V[pair[0]] - V[pair[1]])[None]
    bmat = dv1[:, :, None] * W[None] * lam[None, None, :]

    # dual bound, one pair
    t0 = time.perf_counter()
    c0 = initial_dual(bmat)
    val0 = sdp_dual_bound(bmat, c0)
    res["dual_one_pair_feasible_start"] = {"value": float(val0[0]), "time_s": time.perf_counter() - t0}
    for steps in (100, 300):
        t0 = time.perf_counter()
        val, _ = optimize_dual(W, dv1, lam, steps=steps)
        res[f"dual_one_pair_steps{steps}"] = {"value": float(val[0]), "time_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    sdp_dual_bound(bmat, c0)
    res["dual_eval_exact_eigvalsh_one_pair_s"] = time.perf_counter() - t0

    # per example: the 9 pairs (y, j); per batch: all 45 pairs + forward pass of the whole test split
    y0 = int(test.y[0])
    others = [j for j in range(10) if j != y0]
    dv9 = torch.stack([V[j] - V[y0] for j in others])
    t0 = time.perf_counter()
    optimize_dual(W, dv9, lam, steps=100)
    res["per_example_9_pairs_dual100_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    q = pair_bounds(model, (1, 28, 28), method="sdp", dual_steps=100)
    t_q = time.perf_counter() - t0
    t0 = time.perf_counter()
    cert = certify(model, test.x, test.y, 0.001, q=q)
    t_c = time.perf_counter() - t0
    res["per_batch_1000_dual100"] = {"pair_bounds_45_pairs_s": t_q, "certify_forward_s": t_c, "total_s": t_q + t_c,
                                     "certified_at_eps_0.001": float(cert.certified.float().mean())}

    # training penalty step (Ritz + differentiable dual objective for 45 pairs)
    pen = SDPPenalty(model, (1, 28, 28))
    pen.q_matrix(model)
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        qq = pen.q_matrix(model)
        qq.sum().backward()
        ts.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    res["training_penalty_step_45_pairs_s"] = sorted(ts)[len(ts) // 2]

    # exact SDP, one pair, in a subprocess with a time limit
    ctx = mp.get_context("spawn")
    qd = ctx.Queue()
    p = ctx.Process(target=_exact_worker, args=(bmat[0].numpy(), args.solver, args.scs_eps, qd))
    t0 = time.perf_counter()
    p.start()
    p.join(args.exact_timeout)
    if p.is_alive():
        p.terminate()
        p.join()
        res["exact_one_pair"] = {"solver": args.solver, "scs_eps": args.scs_eps, "status": f"timeout after {args.exact_timeout:.0f} s", "value": None,
                                 "time_s": time.perf_counter() - t0}
    else:
        res["exact_one_pair"] = {"solver": args.solver, "scs_eps": args.scs_eps, **qd.get()}
    if res["exact_one_pair"]["value"] is not None:
        ex = res["exact_one_pair"]["value"]
        res["dual_over_exact_one_pair"] = {k: res[k]["value"] / ex for k in ("dual_one_pair_steps100", "dual_one_pair_steps300",
                                                                             "dual_one_pair_feasible_start")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
