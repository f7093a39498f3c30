"""Save a tiny model with safetensors and audit it (``spatialadv audit``'s Python API).

    python examples/audit_safetensors.py --out runs/example-audit [--quick]

Writes into ``--out``: ``mynet.py`` (a factory returning the untrained network, as a user would),
``model.safetensors`` (its trained weights), and the audit's ``report.md`` / ``report.json`` /
``results.sqlite``. The same audit from the command line::

    spatialadv audit --model OUT/mynet.py:make --weights OUT/model.safetensors --data mnist --n 10 --out OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import torch
from safetensors.torch import save_file

from spatialadv.audit import AuditConfig, load_user_data, load_user_model, run_audit
from spatialadv.data import load_dataset
from spatialadv.training import TrainConfig, train_model

FACTORY = '''import torch.nn as nn


def make():
    """A small MLP for 28x28 greyscale images, 10 classes (untrained)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
'''


def main(argv: list[str] | None = None) -> int:
    """Run the example; returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--quick", action="store_true", help="fewer examples, threats and steps (a smoke run)")
    p.add_argument("--n", type=int, default=20, help="test examples audited")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    # 1. the user's side: a factory file and trained weights in safetensors
    (out / "mynet.py").write_text(FACTORY)
    spec = importlib.util.spec_from_file_location("mynet", out / "mynet.py")
    assert spec is not None and spec.loader is not None
    mynet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mynet)
    net = mynet.make()
    train = load_dataset("mnist", "train")
    if args.quick:  # 1 500 of the 4 000 training images, one epoch
        train = dataclasses.replace(train, x=train.x[:1500], y=train.y[:1500])
    train_model(net, train, TrainConfig(epochs=1 if args.quick else 2), progress=False)
    save_file(net.state_dict(), str(out / "model.safetensors"))

    # 2. the audit: load as `spatialadv audit --model mynet.py:make --weights model.safetensors` does
    model, info = load_user_model(f"{out / 'mynet.py'}:make", weights=str(out / "model.safetensors"))
    data = load_user_data("mnist")
    if args.quick:
        cfg = AuditConfig(threats=("stadv", "linf"), n=3, pgd_steps=5, random_tries=2, stadv_steps=20)
    else:
        cfg = AuditConfig(threats=("stadv", "stm", "linf", "l2"), n=args.n, pgd_steps=20, random_tries=5,
                          stm_rotations=7, stm_translations=3)
    entry = run_audit(model, info, data, cfg, out, progress=False)
    print({k: entry[k] for k in entry if k.endswith("_acc")})
    print(f"wrote {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
