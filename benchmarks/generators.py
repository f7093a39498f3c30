"""Benchmark: seconds per 100 images of SdpAdv's forward pass, FGSM and STM, and our STM vs foolbox's.

Our STM is ``spatialadv.attacks.RotationTranslation``, compared with foolbox
3.3.4's ``SpatialAttack`` on the same grid. SdpAdv is the generator of
*Perturbations Are Not Enough: Generating Adversarial Examples with Spatial
Distortions* (ICLR 2020 submission).

What is measured
----------------
On MNIST Model A (``c4``, ``spatialadv.training.load_or_train``, the cached
checkpoint of ``spatialadv reproduce sdpadv-mnist``) and the first ``--n``
(default 100) MNIST test images, in one process:

1. **seconds per 100 images** (median of ``--repeats`` calls, wall time of the
   attack call only) of
   * SdpAdv ε = 0.1 — one forward pass of a fitted generator (loaded from
     ``--generator``, by default the one ``reproduce sdpadv-mnist`` saved; if
     it is missing a generator is fitted for one epoch here — the forward cost
     does not depend on how well it was trained);
   * FGSM ε = 0.3;
   * STM, the reference grid ±30° (31 steps) × ±3 px (5 steps) × ±3 px (5 steps),
     775 transforms, full grid (worst transform over all 775 per image) and
     with per-example early stop;
2. **STM vs foolbox** ``SpatialAttack(max_translation=3, max_rotation=30,
   num_translations=5, num_rotations=31, grid_search=True)`` — the same 775
   grid values (``numpy.linspace``) on the same images, for the non-robust
   and the FGSM-Adv-Train Model A (the latter when its checkpoint is cached,
   else it is trained here). Success is recomputed from the model on the
   returned images (``argmax f(x_adv) ≠ y``) for both. Foolbox loops over the
   775 transforms one model call each (stopping when the whole batch is
   fooled); ours warps and classifies chunks of (image, transform) pairs.

Known differences of foolbox's transform (read from its source, not changed):
it converts a pixel translation to normalised units with ``/(W/2)`` while
sampling with ``align_corners=True`` (whose pixel pitch is ``2/(W−1)``), so
its "3 px" is 2.89 px on 28-pixel images; and it divides the x translation
by ``shape[2]`` (H). On square MNIST only the first matters.

Writes JSON to ``--out`` (default ``benchmarks/results/generators.json``) with
the load average at start and end: the machine is shared, timings vary.
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

from spatialadv.attacks import FGSM, RotationTranslation, SdpAdv  # noqa: E402
from spatialadv.data import DataSpec, load_dataset  # noqa: E402
from spatialadv.training import ModelSpec, Objective, TrainConfig, load_or_train  # noqa: E402


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _foolbox_stm(model, x, y):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    atk = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=5, num_rotations=31, grid_search=True)
    xp, _, _ = atk(fmodel, x, y)
    return xp


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared machine OpenMP spinning makes 2 much slower)")
    p.add_argument("--generator", default=str(ROOT / "docs/results/sdpadv-mnist/generators/c4-none-SdpAdv-eps0.1.safetensors"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/generators.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    cfg = TrainConfig(epochs=12, seed=0)  # the sdpadv-mnist job's classifier settings (cache hit)
    plain, _ = load_or_train(ModelSpec("c4", DataSpec("mnist"), cfg), progress=False)
    robust, _ = load_or_train(ModelSpec("c4", DataSpec("mnist"), cfg, Objective("fgsm-at", eps=0.3)), progress=False)
    for m in (plain, robust):
        for q in m.parameters():
            q.requires_grad_(False)
    x, y = test.x[: args.n], test.y[: args.n]
    scale = 100.0 / args.n

    gpath = Path(args.generator)
    if gpath.is_file():
        gen, gen_src = SdpAdv.load(gpath), str(gpath.relative_to(ROOT) if gpath.is_relative_to(ROOT) else gpath)
    else:
        gen = SdpAdv(eps=0.1, epochs=1, val_fraction=0.2).fit(plain, train, progress=False)
        gen_src = "fitted here for 1 epoch (no saved generator found)"

    res = {"machine": platform.machine(), "torch": torch.__version__, "threads": args.threads, "n_images": args.n,
           "repeats": args.repeats, "load_avg_start": load0, "generator": gen_src, "speed": {}, "stm_vs_foolbox": {}}
    attacks = {
        "SdpAdv eps=0.1 (forward)": lambda: gen(plain, x, y),
        "FGSM eps=0.3": lambda: FGSM(eps=0.3)(plain, x, y),
        "STM grid 775 (full)": lambda: RotationTranslation(early_stop=False)(plain, x, y),
        "STM grid 775 (early stop)": lambda: RotationTranslation(early_stop=True)(plain, x, y),
    }
    for name, fn in attacks.items():
        med, times, r = _timed(fn, args.repeats)
        res["speed"][name] = {"seconds_per_100": med * scale, "times_s": times, "accuracy_under_attack": 1 - r.success_rate}
        print(f"{name:28s} {med * scale:8.3f} s / 100 images   acc under attack {1 - r.success_rate:.3f}", flush=True)

    for label, model in (("c4 non-robust", plain), ("c4 Adv-Train", robust)):
        with torch.no_grad():
            clean = float((model(x).argmax(1) == y).float().mean())
        row = {"clean_accuracy": clean}
        for name, fn in (("ours (full grid)", lambda: RotationTranslation(early_stop=False)(model, x, y).x_adv),
                         ("ours (early stop)", lambda: RotationTranslation(early_stop=True)(model, x, y).x_adv),
                         ("foolbox 3.3.4 SpatialAttack", lambda: _foolbox_stm(model, x, y))):
            med, times, xa = _timed(fn, args.repeats)
            with torch.no_grad():
                acc = float((model(xa).argmax(1) == y).float().mean())
            row[name] = {"seconds_per_100": med * scale, "times_s": times, "accuracy_under_attack": acc}
            print(f"{label:14s} {name:28s} {med * scale:8.3f} s / 100   acc under attack {acc:.3f}", flush=True)
        row["speedup_full_vs_foolbox"] = row["foolbox 3.3.4 SpatialAttack"]["seconds_per_100"] / row["ours (full grid)"]["seconds_per_100"]
        row["speedup_early_vs_foolbox"] = row["foolbox 3.3.4 SpatialAttack"]["seconds_per_100"] / row["ours (early stop)"]["seconds_per_100"]
        res["stm_vs_foolbox"][label] = row
    res["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
