"""Benchmark: attack cost per image against image size (28-224 px), as a ratio to the model's own cost.

For each image size S, in one process with ``torch.set_num_threads(--threads)``:

* **Data**: MNIST-5k test images resized bilinearly to S × S and repeated to 3 channels (the same
  digits at every size; MNIST-5k is the data shipped with the install).
* **Model**: a small strided 3-channel CNN defined here, not taken from the project's registry: 3 × 3
  convolutions with stride 2 (16, 32, 64, 64, 64 channels) until the feature map is at most 7 px,
  then one linear layer; trained in this script with Adam (``--epochs`` over the resized MNIST-5k
  training split, seeded). It is cheap per pixel, so an attack's own machinery (warps, flow losses,
  solver bookkeeping) shows against it.
* **Images**: the first ``--n`` correctly classified test images at that size.
* **Floors**: one forward + backward (input gradient) and one forward of the model on the batch,
  medians of repeated timings.
* **Attacks**, with their defaults: stAdv (random targets, ``StAdv()``), STM
  (``RotationTranslation()``: early stop over the 775-transform grid), PGD L∞ (``PGD()``, 40 steps),
  FGSM (``FGSM()``) and sPGD2 (``SmoothPGDL2()``).

Per attack it prints the time per image, the model evaluations per image, and three ratios:

* ``÷ gradient floor`` = time ÷ (gradient evaluations × forward + backward): the issue's measure;
  for an attack with one or two gradient evaluations it cannot reach 1, since every attack call
  also runs two forwards of the batch: the input check on ``x`` (which finds a model that returns
  the wrong logits) and the recomputation of success on the images it returns (the library's
  contract).
* ``÷ model floor`` = time ÷ (gradient evaluations × forward + backward + (forward-only
  evaluations + 2) × forward): every model pass the attack call makes, those two included (one for
  the attacks that take their first gradient from the input check's forward:
  ``Attack.reuses_check_forward``); what remains is the attack's own work.
* ``÷ objective floor`` = time ÷ (gradient evaluations × one gradient of the attack's own objective
  + the contract's forwards): for stAdv the gradient w.r.t. the flow of ``margin(f(warp(x, flow))) +
  τ·L_flow`` (the warp, the model and the flow loss, forward and backward), for sPGD2 the model's
  gradient plus one smoothing of it (the guided-Laplacian solve of its Eq. 12), for the others the
  model's gradient. What remains is the solver's bookkeeping (L-BFGS's two-loop recursion, line
  search, preconditioner; sweeps, projections).

and the peak resident memory of the attack call above the process's resident memory before it
(``VmHWM`` after resetting it through ``/proc/self/clear_refs``; Linux only, else omitted).
JSON goes to ``--out``.
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
from spatialadv.attacks import FGSM, PGD, RotationTranslation, SmoothPGDL2, StAdv  # noqa: E402
from spatialadv.attacks.base import margin  # noqa: E402
from spatialadv.data import load_dataset  # noqa: E402
from spatialadv.ops import flow_tv_loss, flow_warp, to_normalized  # noqa: E402

ATTACKS = ("stadv", "stm", "pgd", "fgsm", "spgd2")


def small_strided_cnn(size: int, channels: int = 3, classes: int = 10) -> nn.Module:
    """3 × 3 stride-2 convolutions (16, 32, 64, 64, 64 channels) until ≤ 7 px, then one linear layer."""
    layers: list[nn.Module] = []
    c, s = channels, size
    for width in (16, 32, 64, 64, 64, 64):
        if s <= 7:
            break
        layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.ReLU()]
        c, s = width, (s + 1) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, classes))


def resized(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = load_dataset("mnist", split)
    x = d.x if size == d.x.shape[-1] else F.interpolate(d.x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous(), d.y


def train(size: int, epochs: int, seed: int) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    model = small_strided_cnn(size)
    x, y = resized("train", size)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    return model.eval(), time.perf_counter() - t0


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[28, 96, 224], help="image sizes in pixels")
    p.add_argument("--n", type=int, nargs="+", default=[64, 16, 8],
                   help="images per size (one value for all, or one per size)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    p.add_argument("--epochs", type=int, default=2, help="training epochs of the CNN at each size")
    p.add_argument("--repeats", type=int, default=10, help="timings of the model floors (median)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/scaling.json"))
    args = p.parse_args(argv)
    if len(args.n) not in (1, len(args.sizes)):
        p.error("--n takes one value or one per size")
    torch.set_num_threads(args.threads)
    res: dict = {**run_info(args.threads), "sizes": {}}
    print(f"{'size':>4} {'attack':6} {'ms/img':>9} {'grad/img':>8} {'fwd/img':>7} {'÷grad floor':>11} "
          f"{'÷model floor':>12} {'÷obj floor':>10} {'success':>7} {'peak MiB':>8}")
    for k, size in enumerate(args.sizes):
        n_want = args.n[0] if len(args.n) == 1 else args.n[k]
        model, train_s = train(size, args.epochs, args.seed)
        x_all, y_all = resized("test", size)
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(1) for b in x_all.split(256)])
        acc = float((pred == y_all).float().mean())
        idx = (pred == y_all).nonzero().squeeze(1)[:n_want]
        x, y = x_all[idx], y_all[idx]
        n = len(x)
        g = torch.Generator().manual_seed(args.seed)
        target = (y + torch.randint(1, 10, (n,), generator=g)) % 10

        def fb():
            xi = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)

        def fwd():
            with torch.no_grad():
                model(x)

        flow0 = torch.full((n, 2, size, size), 0.01)

        def stadv_objective():  # one gradient of stAdv's objective w.r.t. the flow (its defaults: τ 0.05, normalised)
            f = flow0.clone().requires_grad_(True)
            loss = margin(model(flow_warp(x, f)), y, target, 0.0) + 0.05 * flow_tv_loss(to_normalized(f), eps=1e-6)
            torch.autograd.grad(loss.sum(), f)

        spgd2_threat = SmoothPGDL2().threat
        smoother = spgd2_threat.smoother(x)

        def spgd2_step():  # the model's gradient plus one smoothing of it (sPGD2, Eq. 12)
            xi = x.clone().requires_grad_(True)
            (gi,) = torch.autograd.grad(F.cross_entropy(model(xi), y, reduction="sum"), xi)
            smoother(gi)

        t_fb, t_f = _median_time(fb, args.repeats), _median_time(fwd, args.repeats)
        t_obj = {"stadv": _median_time(stadv_objective, args.repeats),
                 "spgd2": _median_time(spgd2_step, max(3, args.repeats // 3))}
        # sPGD2 also solves once per call for its normaliser s_α(1) (building the smoother)
        t_setup = {"spgd2": _median_time(lambda: spgd2_threat.smoother(x), max(3, args.repeats // 3))}
        entry = {"images": n, "clean_accuracy": acc, "train_seconds": train_s,
                 "model_ms_per_image": {"forward_backward": 1000 * t_fb / n, "forward": 1000 * t_f / n},
                 "objective_ms_per_image": {k: 1000 * v / n for k, v in t_obj.items()}, "attacks": {}}
        res["sizes"][str(size)] = entry
        print(f"{size:>4} model: forward+backward {1000 * t_fb / n:.3f} ms/img, forward {1000 * t_f / n:.3f} ms/img "
              f"(batch {n}, clean accuracy {acc:.3f}, trained in {train_s:.0f} s)", flush=True)
        attacks = {"stadv": (StAdv(), target), "stm": (RotationTranslation(), None), "pgd": (PGD(), None),
                   "fgsm": (FGSM(), None), "spgd2": (SmoothPGDL2(), None)}
        for name in args.attacks:
            attack, tgt = attacks[name]
            attack(model, x[:2], y[:2], target=None if tgt is None else tgt[:2])  # warm-up
            base = _rss_kib("VmRSS")
            peak_ok = _reset_peak()
            t0 = time.perf_counter()
            r = attack(model, x, y, target=tgt)
            sec = time.perf_counter() - t0
            peak = _rss_kib("VmHWM") if peak_ok else None
            grads = float(r.grad_evals.float().mean())
            fwds = float(r.forward_evals.float().mean()) if r.forward_evals is not None else 0.0
            grad_floor = grads * t_fb
            extra = 1 if attack.reuses_check_forward else 2  # the input check and the success recomputation
            model_floor = grads * t_fb + (fwds + extra) * t_f
            objective_floor = grads * t_obj.get(name, t_fb) + t_setup.get(name, 0.0) + (fwds + extra) * t_f
            row = {"ms_per_image": 1000 * sec / n, "seconds": sec, "grad_evals": grads, "forward_evals": fwds,
                   "ratio_gradient_floor": sec / grad_floor if grad_floor > 0 else None,
                   "ratio_model_floor": sec / model_floor, "ratio_objective_floor": sec / objective_floor,
                   "success": float(r.success.float().mean()),
                   "peak_mib_above_start": None if peak is None or base is None else (peak - base) / 1024}
            entry["attacks"][name] = row
            rg = f"{row['ratio_gradient_floor']:.2f}" if row["ratio_gradient_floor"] is not None else "–"
            pk = f"{row['peak_mib_above_start']:.0f}" if row["peak_mib_above_start"] is not None else "–"
            print(f"{size:>4} {name:6} {row['ms_per_image']:9.2f} {grads:8.1f} {fwds:7.1f} {rg:>11} "
                  f"{row['ratio_model_floor']:12.2f} {row['ratio_objective_floor']:10.2f} {100 * row['success']:6.1f}% "
                  f"{pk:>8}", flush=True)
    return write_results(res, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
