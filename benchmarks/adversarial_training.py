"""Benchmark: time per epoch of PGD-40 adversarial training (Madry et al.) of stAdv's models A, B and C.

Madry, Makelov, Schmidt, Tsipras & Vladu, *Towards Deep Learning Models Resistant to Adversarial
Attacks*, ICLR 2018: every training batch is replaced by its L∞ PGD adversarial examples (ε = 0.3,
40 steps of 0.01 from a random start) — the project's ``pgd-at`` objective
(:func:`spatialadv.defenses.pgd_adversary`) through :func:`spatialadv.training.train_model` (Adam,
batches of 64). An epoch is the 4 000 MNIST-5k training images; the script times ``--batches``
batches of one epoch (the first ``batches × 64`` images, after one warm-up batch) and scales the
time to 4 000 images — every batch costs the same 41 forward + backward passes, so the
extrapolation is linear. Each model is timed twice in the same run: float32 PGD steps (the
objective's default) and ``bf16=1`` (the steps' forward and backward under bfloat16 autocast, the
setting ``spatialadv reproduce stadv-defenses`` trains with). Prints seconds per batch and per
epoch per model and precision, and the speed-up; JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import run_info, write_results  # noqa: E402
from spatialadv.data import load_dataset  # noqa: E402
from spatialadv.models import build_model  # noqa: E402
from spatialadv.training import Objective, TrainConfig, train_model  # noqa: E402

MODELS = ("mnist-a", "mnist-b", "mnist-c")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batches", type=int, default=8, help="timed training batches of 64 per model")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/adversarial_training.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist", "train")
    cfg = TrainConfig(epochs=1, batch_size=64, seed=0)
    res: dict = {**run_info(args.threads), "train_images": len(train.x), "batch_size": cfg.batch_size,
                 "timed_batches": args.batches, "models": {}}
    for name in args.models:
        res["models"][name] = {}
        for precision in ("float32", "bf16"):
            # ε = 0.3, 40 steps of 0.01, random start; one epoch, so the ε warm-up is already at full ε
            objective = Objective("pgd-at", bf16=int(precision == "bf16"))
            torch.manual_seed(0)
            model = build_model(name)
            warm = replace(train, x=train.x[:cfg.batch_size], y=train.y[:cfg.batch_size])
            train_model(model, warm, cfg, objective=objective, progress=False, check_collapse=False)
            part = replace(train, x=train.x[:args.batches * cfg.batch_size], y=train.y[:args.batches * cfg.batch_size])
            t0 = time.perf_counter()
            train_model(model, part, cfg, objective=objective, progress=False, check_collapse=False)
            sec = time.perf_counter() - t0
            per_batch = sec / args.batches
            per_epoch = per_batch * len(train.x) / cfg.batch_size
            res["models"][name][precision] = {"seconds_per_batch": per_batch, "seconds_per_epoch": per_epoch}
            print(f"{name} ({precision} PGD steps): PGD-40 adversarial training {per_batch:.2f} s per batch of "
                  f"{cfg.batch_size}, {per_epoch:.0f} s per epoch of {len(train.x)} images ({per_epoch / 60:.1f} min; "
                  f"{args.threads} threads)", flush=True)
        m = res["models"][name]
        m["speedup_bf16"] = m["float32"]["seconds_per_epoch"] / m["bf16"]["seconds_per_epoch"]
        print(f"{name}: bf16 PGD steps {m['speedup_bf16']:.2f}× faster per epoch", flush=True)
    return write_results(res, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
