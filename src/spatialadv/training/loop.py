"""The training loop: :func:`train_model` (Adam, seeded mini-batches, data-parallel under ``torchrun``) and :func:`accuracy`.

An objective (:mod:`spatialadv.training.objectives`) says *what* is
minimised; this loop owns *how*.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import distributed
from ..data import Dataset
from .config import TrainConfig
from .objectives import OBJECTIVES, Objective

__all__ = ["train_model", "accuracy"]


def _random_shift(x: Tensor, shift: int, gen: torch.Generator) -> Tensor:
    if shift == 0:
        return x
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    h, w = x.shape[2:]
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on images ``x (N, C, H, W)`` with labels ``y (N,)``, in [0, 1].

    The model's mode is not changed; an empty set gives 0.
    """
    correct = 0
    dev = next(iter(model.parameters()), x).device
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size].to(dev)).argmax(1)
        correct += int((pred == y[i : i + batch_size].to(dev)).sum())
    return correct / max(len(x), 1)


def train_model(model: nn.Module, data: Dataset, config: TrainConfig = TrainConfig(), *,
                objective: Objective = Objective("standard"), progress: bool = True) -> dict:
    """Train ``model`` in place with Adam on ``objective``; leaves it in eval mode.

    Deterministic for a given ``config.seed`` on one machine, given the global
    RNG state (dropout draws from it; seeded initialisation is the caller's
    job: :func:`spatialadv.training.load_or_train` seeds before building).

    Under ``torchrun`` (:mod:`spatialadv.distributed`) the loop is
    data-parallel: every process draws the same permutation and shifts, takes
    rows ``rank, rank + world, ...`` of each global batch of
    ``config.batch_size``, and :class:`~torch.nn.parallel.DistributedDataParallel`
    averages the gradients (the objective's extra parameters are averaged
    explicitly), so each step uses the same global batch as one process; the
    weights match a single-process run up to floating-point reduction order
    and per-process dropout draws.

    Args:
        model: maps ``(B, C, H, W)`` images in [0, 1] to logits ``(B, K)``.
        data: the training set.
        config: epochs, batch size, learning rate, augmentation, seed.
        objective: what is minimised (:class:`~spatialadv.training.Objective`; :mod:`spatialadv.training.builtin` lists them).
        progress: show a tqdm bar over epochs.

    Returns:
        The objective's notes, a JSON-able dict (``{}`` for most objectives;
        ``{"pool_success_rates": [...]}`` for ``stadv-at``).

    Raises:
        TypeError: ``objective`` is not an :class:`Objective`, or the objective
            needs an architecture the model does not have (e.g. ``sdp`` on a
            convolutional net).
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective, got {type(objective).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    parts = OBJECTIVES[objective.name].build(model, data, config, objective.options)
    if parts.trains:
        # data-parallel under torchrun: every rank draws the same permutation and shifts, takes the
        # rows r, r + w, ... of each global batch, and DistributedDataParallel averages the gradients
        rank, world = distributed.rank(), distributed.world_size()
        dev = next(iter(model.parameters()), data.x).device  # batches follow the model (CPU or CUDA)
        net = model
        if world > 1:
            net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.Adam([*model.parameters(), *parts.extra_parameters], lr=config.lr, weight_decay=config.weight_decay)
        n = len(data)
        model.train()
        bar = tqdm(range(config.epochs), desc=f"train {data.name} {objective.name}", disable=not progress or rank > 0,
                   unit="epoch")
        for epoch in bar:
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                xb, yb = _random_shift(data.x[idx], config.shift, gen).to(dev), data.y[idx].to(dev)
                if world > 1:
                    if len(idx) < world:  # a last batch too small to split: skipped by every rank alike
                        continue
                    xb, yb = xb[rank::world], yb[rank::world]
                logits = net(xb)
                loss = parts.criterion(logits, yb)
                if parts.adversary is not None:
                    xa = parts.adversary(model, xb, yb).detach()
                    loss = (1 - parts.adv_weight) * loss + parts.adv_weight * parts.criterion(net(xa), yb)
                if parts.penalty is not None:
                    loss = loss + parts.penalty(model, xb, yb, logits, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.all_reduce_mean([p.grad for p in parts.extra_parameters if p.grad is not None])
                opt.step()
                total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / n:.4f}")
    model.eval()
    return parts.notes() if parts.notes is not None else {}
