"""Benchmark: wall time of the ±30° rotation certificate on MNIST-5k test images with the job's base model.

The certificate of ``spatialadv reproduce certify-smoothing`` (randomized smoothing, Cohen, Rosenfeld &
Kolter, ICML 2019, with the interpolation-error bound of TSS, Li et al., ACM CCS 2021): a grid of
angle cells over ±``--max-angle``, CERTIFY per cell with the job's defaults (n0 = 64, 250 estimation
samples per cell, α = 0.001 per image, refinement of failed cells into 4 sub-cells with 1 000 samples
each), on the job's base model (``cnn-small`` trained with Gaussian noise, rotations and shifts as the
job trains it; loaded from the model cache, trained once otherwise). Images: the first ``--n`` of the
MNIST-5k test split, in batches of 10 as the job runs them.

Prints the training time (0 when cached), the certificate's wall time, seconds per image, and the
certified accuracy at the full budget; target: 500 images within 30 minutes on 2 cores. JSON to
``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import run_info, write_results  # noqa: E402
from spatialadv.certify import SmoothedClassifier, certify_rotation  # noqa: E402
from spatialadv.data import load_dataset  # noqa: E402
from spatialadv.experiments.certify_smoothing import Config, _spec  # noqa: E402
from spatialadv.training import load_or_train  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="MNIST-5k test images (the first N)")
    p.add_argument("--max-angle", type=float, default=30.0, help="rotation budget in degrees")
    p.add_argument("--batch", type=int, default=10, help="images per certify_rotation call (the job's: 10)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rotation_certificate.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config(max_angle=args.max_angle)
    t0 = time.perf_counter()
    model, info = load_or_train(_spec(cfg, "mnist"), progress=False)
    train_s = time.perf_counter() - t0
    model.eval()
    test = load_dataset("mnist", "test")
    n = min(args.n, len(test.x))
    g = SmoothedClassifier(model, sigma=cfg.sigma, num_classes=10)
    load0 = os.getloadavg()
    certified, refined, cells = 0, 0, 0
    t0 = time.perf_counter()
    for s in range(0, n, args.batch):
        idx = torch.arange(s, min(s + args.batch, n))
        c = certify_rotation(g, test.x[idx], max_angle=cfg.max_angle, n0=cfg.n0, n=cfg.samples, alpha=cfg.alpha,
                             seed=cfg.seed, index=idx, bound_fraction=cfg.bound_fraction, refine=cfg.refine,
                             refine_samples=cfg.refine_samples)
        ok = (c.prediction == test.y[idx]) & (c.certified_below > cfg.max_angle)
        certified += int(ok.sum())
        refined += int(c.refined.sum())
        cells += int(c.cells.sum())
        done = int(idx[-1]) + 1
        if done % 50 == 0 or done == n:
            print(f"  {done} images: {time.perf_counter() - t0:.0f} s", flush=True)
    sec = time.perf_counter() - t0
    res = {**run_info(args.threads), "images": n, "max_angle": cfg.max_angle, "model_key": info["key"],
           "train_seconds": train_s, "certificate_seconds": sec, "seconds_per_image": sec / n,
           "certified_accuracy_at_max_angle": certified / n, "cells_per_image": cells / n,
           "refined_cells_per_image": refined / n, "load_avg_start": load0}
    print(f"±{cfg.max_angle:g}° rotation certificate, {n} MNIST-5k test images, cnn-small ({args.threads} threads): "
          f"{sec:.0f} s ({sec / 60:.1f} min, {sec / n:.2f} s / image; target ≤ 30 min for 500), certified accuracy "
          f"at ±{cfg.max_angle:g}°: {certified / n:.3f}; {cells / n:.0f} cells and {refined / n:.1f} refined per image; "
          f"model trained in {train_s:.0f} s (0 if cached)")
    return write_results(res, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
