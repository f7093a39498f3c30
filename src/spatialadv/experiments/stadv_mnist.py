"""``spatialadv reproduce stadv-mnist``: stAdv Tables 1 and 6, Figs. 2, 4, 5 (see :mod:`spatialadv.eval.reproduce`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import Experiment


def _add_arguments(sp: argparse.ArgumentParser) -> None:
    from ..models import MODELS

    sp.add_argument("--n", type=int, default=30, help="correctly classified test images attacked by stAdv (x 9 targets)")
    sp.add_argument("--n-baselines", type=int, default=10, help="of those, images also attacked by the L_p baselines")
    sp.add_argument("--models", nargs="+", default=["mnist-a", "mnist-b", "mnist-c"], choices=sorted(MODELS))
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--epochs", type=int, default=12)


def _run(args: argparse.Namespace) -> dict:
    from ..eval.reproduce import reproduce_stadv_mnist
    from ..models import TrainConfig

    return reproduce_stadv_mnist(args.out, n=args.n, n_baselines=args.n_baselines, models=tuple(args.models),
                                 seed=args.seed, train_config=TrainConfig(epochs=args.epochs, seed=args.seed),
                                 progress=not args.quiet)


def _rebuild(out: Path) -> dict:
    from ..eval.reproduce import build_stadv_report

    return build_stadv_report(out)


EXPERIMENTS = [Experiment("stadv-mnist", "stAdv on MNIST models A/B/C with L_p baselines (Xiao et al. 2018, Tables 1, 6)",
                          _add_arguments, _run, _rebuild)]
