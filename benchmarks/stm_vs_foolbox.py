"""Benchmark: STM with its defaults against foolbox 3.3.4's ``SpatialAttack``, on project and outside models.

Same grid for both (Engstrom et al., *Exploring the Landscape of Spatial Robustness*, ICML 2019:
±30° in 31 steps × ±3 px in 5 × 5 steps, 775 transforms), same images (the first ``--n`` correctly
classified MNIST-5k test images of each model), same process, ``torch.set_num_threads(--threads)``;
each time is the median of ``--repeats`` calls, success recomputed from the model on the returned
images. Ours is ``RotationTranslation()`` as a user gets it (early stop); foolbox keeps, per image,
the first transform of its grid loop that fools the model and stops when every image is fooled.

Models:

* ``outside-a``: stAdv Table 4's model A (Conv 64 5×5, Conv 64 5×5, dropout, FC 128, dropout,
  FC 10) defined and trained here with a plain PyTorch loop (Adam, lr 1e-3, batch 64,
  ``--outside-epochs`` over the 4 000 MNIST-5k training images, seeded): not the project's registry
  or training code.
* ``outside-a-augmented``: the same, trained on images rotated by a uniform angle in ±30° and
  shifted by up to ±3 px (``torch.nn.functional.affine_grid`` / ``grid_sample``, new draws every
  batch): a model that resists most of the grid, so both attacks search far into it.
* ``mnist-a``, ``mnist-b``, ``mnist-c``: the project's models of stAdv Table 4
  (``spatialadv.training.load_or_train``, cached after the first run).

Printed per model: both times, both success rates, candidates evaluated per image by ours, and the
speed-up (foolbox time ÷ ours; target ≥ 3). JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import run_info, write_results  # noqa: E402
from spatialadv.attacks import RotationTranslation  # noqa: E402
from spatialadv.data import DataSpec, load_dataset  # noqa: E402
from spatialadv.training import ModelSpec, TrainConfig, load_or_train  # noqa: E402

MODELS = ("outside-a", "outside-a-augmented", "mnist-a", "mnist-b", "mnist-c")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (uniform ±30°) and shift (uniform ±3 px) of each image, zero border."""
    n, _, h, w = x.shape
    a = (torch.rand(n, generator=gen) * 2 - 1) * torch.pi / 6
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * 3 * 2 / (w - 1)
    theta = torch.stack([torch.stack([a.cos(), -a.sin(), t[:, 0]], 1), torch.stack([a.sin(), a.cos(), t[:, 1]], 1)], 1)
    return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=True), align_corners=True)


def outside_model_a(epochs: int, seed: int, augment: bool = False) -> nn.Module:
    """Model A of stAdv Table 4, trained with a plain loop (no project code but the data loader)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 64, 5), nn.ReLU(), nn.Conv2d(64, 64, 5), nn.ReLU(), nn.Dropout(0.25),
                        nn.Flatten(), nn.Linear(64 * 20 * 20, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    train = load_dataset("mnist", "train")
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train.x))
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            xb = _augment(train.x[b], gen) if augment else train.x[b]
            opt.zero_grad()
            F.cross_entropy(net(xb), train.y[b]).backward()
            opt.step()
    return net.eval()


def _timed(fn, repeats: int):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--n", type=int, default=100, help="correctly classified MNIST-5k test images per model")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per attack (median)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--outside-epochs", type=int, default=6, help="training epochs of the outside model A")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/stm_vs_foolbox.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import foolbox as fb  # the bench extra: pip install -e ".[bench]"

    test = load_dataset("mnist", "test")
    res: dict = {**run_info(args.threads), "foolbox": fb.__version__, "repeats": args.repeats, "models": {}}
    for name in args.models:
        if name.startswith("outside-a"):
            model = outside_model_a(args.outside_epochs, args.seed, augment=name == "outside-a-augmented")
        else:
            model, _ = load_or_train(ModelSpec(name, DataSpec("mnist"), TrainConfig()), progress=False)
            model.eval()
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(1) for b in test.x.split(500)])
        acc = float((pred == test.y).float().mean())
        idx = (pred == test.y).nonzero().squeeze(1)[:args.n]
        x, y = test.x[idx], test.y[idx]

        def success(xa) -> float:
            with torch.no_grad():
                return float((model(xa).argmax(1) != y).float().mean())

        ours = RotationTranslation()
        t_ours, times_ours, r = _timed(lambda: ours(model, x, y), args.repeats)
        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        theirs = fb.attacks.SpatialAttack(max_translation=3, max_rotation=30, num_translations=5, num_rotations=31,
                                          grid_search=True)
        t_fb, times_fb, xa_fb = _timed(lambda: theirs(fmodel, x, y)[0], args.repeats)
        row = {"clean_accuracy": acc, "images": len(x), "ours_seconds": t_ours, "ours_times": times_ours,
               "ours_success": success(r.x_adv), "ours_candidates_per_image": float(r.forward_evals.float().mean()),
               "foolbox_seconds": t_fb, "foolbox_times": times_fb, "foolbox_success": success(xa_fb),
               "speedup_foolbox_over_ours": t_fb / t_ours}
        res["models"][name] = row
        print(f"{name:10s} ours {t_ours:6.3f} s ({100 * row['ours_success']:.0f} %, "
              f"{row['ours_candidates_per_image']:.1f} candidates/img)  foolbox {t_fb:6.3f} s "
              f"({100 * row['foolbox_success']:.0f} %)  speed-up {row['speedup_foolbox_over_ours']:.2f}× (target ≥ 3)",
              flush=True)
    return write_results(res, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
