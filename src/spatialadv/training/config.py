"""The optimiser settings of a training run: :class:`TrainConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`~spatialadv.training.train_model` (Adam).

    Attributes:
        epochs: passes over the training set, ≥ 1.
        batch_size: images per Adam step, ≥ 1.
        lr: Adam learning rate, > 0.
        weight_decay: Adam's L2 weight decay, ≥ 0.
        shift: > 0 adds random integer translations of up to ``shift`` pixels
            (zero fill) as data augmentation. Off by default: the papers' models
            are trained without it, and translation augmentation makes a model
            markedly more robust to flow attacks (on MNIST-5k model B, ±2 px
            shifts left clean accuracy at 97.3 % but cut targeted stAdv success
            from 99.6 % to 97.4 %).
        seed: seed of the initialisation (see :func:`spatialadv.training.load_or_train`),
            the mini-batch order, the augmentation and dropout.
        holdout: > 0 holds this many training images out (a seeded draw; they are
            never trained on) and records a learning curve on them after every
            epoch: clean accuracy and, for an objective with an adversary,
            accuracy under its full-strength adversary (the model in eval mode).
            0 (default): no curve.
        patience: with ``holdout`` > 0, stop when the curve's monitored accuracy
            (adversarial when the objective has an adversary, else clean) has not
            improved on its best for this many epochs — the curve has plateaued —
            and keep the weights of its best epoch; ``epochs`` is then the
            maximum. 0 (default): train all ``epochs`` and keep the last weights.

    ``holdout`` and ``patience`` enter a model's cache key only when set (> 0),
    so the keys of models trained without them are unchanged.

    Raises:
        ValueError: a field out of its range (the message names it).
        TypeError: an int field given as a non-int.
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    shift: int = 0
    seed: int = 0
    holdout: int = 0
    patience: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shift", "seed", "holdout", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TrainConfig.{name} must be an int, got {v!r}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"TrainConfig.{name} must be a finite float, got {v!r}")
        for name, ok, rng in (("epochs", self.epochs >= 1, "≥ 1"), ("batch_size", self.batch_size >= 1, "≥ 1"),
                              ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, "≥ 0"),
                              ("shift", self.shift >= 0, "≥ 0"), ("holdout", self.holdout >= 0, "≥ 0"),
                              ("patience", self.patience >= 0, "≥ 0")):
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {rng}, got {getattr(self, name)!r}")
        if self.patience > 0 and self.holdout == 0:
            raise ValueError("TrainConfig.patience needs a held-out curve: set holdout > 0 (e.g. 500)")

    def to_dict(self) -> dict:
        """JSON-able fields; ``holdout`` and ``patience`` only when > 0 (cache keys of older specs stay valid)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("holdout", "patience"):
            if d[name] == 0:
                del d[name]
        return d
