"""How much an example's float32 result depends on its batch-mates, per attack (measured, not asserted).

Each attack runs on the first ``--n`` correctly classified MNIST-5k test images of
model A twice: all images in one batch, and each image alone (same ``index`` rows,
so random starts are identical). In float64 the two agree to rounding; in float32
matrix products over a batch round differently from a single image, and iterative
solvers can amplify that. The script prints, per attack, the fraction of examples
whose success differs, the largest |Δ size| and |Δ x_adv| among examples successful
in both runs, and writes ``benchmarks/results/batch_independence.json``.

Usage: ``python benchmarks/batch_independence.py [--n 30] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from spatialadv.attacks import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2, RotationTranslation
from spatialadv.data import DataSpec, load_dataset
from spatialadv.eval.runner import example_index, first_correct
from spatialadv.experiments import stadv as stadv_experiment
from spatialadv.training import ModelSpec, TrainConfig, load_or_train


def attacks() -> dict:
    return {
        "FGSM": FGSM(eps=0.3),
        "I-FGSM": IFGSM(eps=0.3, step_size=0.01, steps=40, early_stop=True),
        "PGD-Linf (random start)": PGD(norm="linf", eps=0.3, step_size=0.01, steps=40, random_start=True, early_stop=True),
        "MIM": MIM(eps=0.3, step_size=0.01, steps=40, early_stop=True),
        "C&W-L2": CarliniWagnerL2(initial_const=1.0, binary_search_steps=3, steps=100, lr=0.05),
        "stAdv (main job)": stadv_experiment.attacks()["stAdv"],
        "STM (grid)": RotationTranslation(early_stop=True),
    }


def compare(attack, model, x, y, target) -> dict:
    idx = example_index([(i, int(t)) for i, t in enumerate(target.tolist())])
    t0 = time.perf_counter()
    batch = attack(model, x, y, target=target, index=idx)
    t_batch = time.perf_counter() - t0
    solo = [attack(model, x[i : i + 1], y[i : i + 1], target=target[i : i + 1], index=idx[i : i + 1]) for i in range(len(x))]
    s_succ = torch.cat([r.success for r in solo])
    s_size = torch.cat([r.size for r in solo])
    s_x = torch.cat([r.x_adv for r in solo])
    both = batch.success & s_succ
    return {
        "n": len(x),
        "success_batch": int(batch.success.sum()),
        "success_solo": int(s_succ.sum()),
        "success_differs": int((batch.success != s_succ).sum()),
        "max_abs_size_diff": float((batch.size - s_size)[both].abs().max()) if bool(both.any()) else 0.0,
        "max_rel_size_diff": float(((batch.size - s_size).abs() / s_size.abs().clamp_min(1e-12))[both].max())
        if bool(both.any()) else 0.0,
        "max_abs_x_adv_diff": float((batch.x_adv - s_x)[both].abs().max()) if bool(both.any()) else 0.0,
        "batch_seconds": t_batch,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_independence.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist", "test")
    model, _ = load_or_train(ModelSpec("mnist-a", DataSpec("mnist"), TrainConfig(epochs=12)), progress=False)
    idx = first_correct(model, test.x, test.y, args.n)
    x, y = test.x[idx], test.y[idx]
    target = (y + 1) % 10
    rows = {}
    for dtype in (torch.float32, torch.float64):
        m = model.to(dtype)
        for name, atk in attacks().items():
            r = compare(atk, m, x.to(dtype), y, target)
            rows[f"{name} {str(dtype).split('.')[-1]}"] = r
            print(f"{name:<26} {str(dtype).split('.')[-1]:<8} success batch/solo {r['success_batch']}/{r['success_solo']} "
                  f"differs {r['success_differs']}/{r['n']}  max|Δsize| {r['max_abs_size_diff']:.2e} "
                  f"(rel {r['max_rel_size_diff']:.2e})  max|Δx_adv| {r['max_abs_x_adv_diff']:.2e}", flush=True)
    model.float()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                                          "python": platform.python_version()},
                                          "n": args.n, "targets": "(y + 1) mod 10", "results": rows}, indent=2))


if __name__ == "__main__":
    main()
