"""``spatialadv reproduce certify-bounds`` and ``certify-stadv``: spatial certificates (seed 002 Figs. 2, 5, 6; seed 003 §4.2).

See :mod:`spatialadv.certify.experiments`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import Experiment


def _bounds_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--n-attack", type=int, default=500, help="test images attacked by the budget-restricted PGD (Fig. 5)")
    sp.add_argument("--epochs", type=int, default=10)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--dual-steps", type=int, default=100, help="Adam steps of the SDP dual search per network")
    sp.add_argument("--pgd-steps", type=int, default=50)
    sp.add_argument("--pair", type=int, nargs=2, default=[1, 0], help="class pair (i, j) of Fig. 2")
    sp.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def _bounds_run(args: argparse.Namespace) -> dict:
    from ..certify.experiments import run_certify_bounds

    return run_certify_bounds(args.out, n_attack=args.n_attack, epochs=args.epochs, seed=args.seed, pair=tuple(args.pair),
                              dual_steps=args.dual_steps, pgd_steps=args.pgd_steps, threads=args.threads, progress=not args.quiet)


def _stadv_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--n", type=int, default=200, help="test images per variant and τ (Fig. 6)")
    sp.add_argument("--n-thesis", type=int, default=1000, help="test images of the thesis experiment (1000 = whole test split)")
    sp.add_argument("--epochs", type=int, default=10)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--max-iter", type=int, default=100, help="L-BFGS steps per stAdv run")
    sp.add_argument("--thesis-max-iter", type=int, default=60, help="L-BFGS steps per run of the τ binary search")
    sp.add_argument("--search-steps", type=int, default=5, help="τ binary-search runs per image (thesis experiment)")
    sp.add_argument("--flow-budgets", type=float, nargs="+", default=[7.0, 94.5, 250.0],
                    help="hinge budgets on L_flow (thesis: 7.0, units unstated; 94.5 = 7.0 in normalised coordinates)")
    sp.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def _stadv_run(args: argparse.Namespace) -> dict:
    from ..certify.experiments import run_certify_stadv

    return run_certify_stadv(args.out, n=args.n, n_thesis=args.n_thesis, epochs=args.epochs, seed=args.seed,
                             max_iter=args.max_iter, thesis_max_iter=args.thesis_max_iter, search_steps=args.search_steps,
                             flow_budgets=tuple(args.flow_budgets), threads=args.threads,
                             progress=not args.quiet)


def _rebuild(out: Path) -> dict:
    from ..certify.experiments import build_report

    return build_report(out)


EXPERIMENTS = [
    Experiment("certify-bounds", "spatial certificate: lower bounds (Fig. 2) and upper bounds on the 0/1 loss (Fig. 5), seed 002",
               _bounds_args, _bounds_run, _rebuild),
    Experiment("certify-stadv", "stAdv vs training variants (seed 002 Fig. 6) and plain vs SDP-trained net (seed 003 §4.2)",
               _stadv_args, _stadv_run, _rebuild),
]
