"""Seconds to certify one MNIST image with Cohen et al.'s CERTIFY at N = 10 000 estimation samples.

Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019): n0 = 100 selection samples + N = 10 000 estimation samples through the base classifier ``cnn-small``
(the default base model of ``spatialadv reproduce certify-smoothing``) and, for scale, ``fc-500`` and the CNN ``c4``; the
weights do not change the time, so seeded untrained nets are used and nothing is trained or downloaded. Target: ≤ 1 s on 2 CPU cores.

Run: ``PYTHONPATH=src python benchmarks/smoothing_certify.py [--threads 2] [--repeats 5] [--device cpu|cuda]``.
Prints one line: the median over ``repeats`` images.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spatialadv.certify import SmoothedClassifier
from spatialadv.data import load_dataset
from spatialadv.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--forward-batch", type=int, nargs="+", default=[0],
                    help="samples per forward call (0: the library default, 1 024 on the CPU); several values compare them")
    ap.add_argument("--models", nargs="+", default=["cnn-small", "fc-500", "c4"],
                    help="base classifiers (cnn-small: certify-smoothing's default; fc-500; c4: a larger CNN)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = load_dataset("mnist", "test").x[: args.repeats + 1].to(args.device)
    for arch in args.models:
        torch.manual_seed(0)
        net = build_model(arch).eval().to(args.device)
        for fb in args.forward_batch:
            g = SmoothedClassifier(net, sigma=0.25, num_classes=10, batch_size=10_000, forward_batch=fb or None)
            g.certify(x[:1], n0=100, n=args.samples)  # warm-up
            times = []
            for i in range(1, args.repeats + 1):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                g.certify(x[i : i + 1], n0=100, n=args.samples, index=torch.tensor([i]))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            print(f"certify one MNIST image, {arch}, n0=100 + N={args.samples} samples, forward batch {fb or 'default'}, "
                  f"{args.threads} threads, {args.device}: {statistics.median(times):.3f} s (median of {args.repeats}; "
                  "target ≤ 1 s on 2 cores)", flush=True)

if __name__ == "__main__":
    main()
