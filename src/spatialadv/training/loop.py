"""The training loop: :func:`train_model` (Adam, seeded mini-batches, data-parallel under ``torchrun``) and :func:`accuracy`.

An objective (:mod:`spatialadv.training.objectives`) says *what* is
minimised; this loop owns *how*.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .. import distributed
from ..data import Dataset
from .config import TrainConfig
from .objectives import OBJECTIVES, Objective

__all__ = ["train_model", "accuracy", "TrainingCollapsed", "COLLAPSE_MARGIN", "COLLAPSE_SHARE", "COLLAPSE_MIN_STEPS",
           "RESUME_FORMAT"]

log = logging.getLogger(__name__)

#: Version of the resume-checkpoint layout written by :func:`train_model` (``checkpoint=``); a file of another
#: version is not used (training starts from epoch 1).
RESUME_FORMAT = 1


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


class TrainingCollapsed(RuntimeError):
    """Training ended in a collapsed model (clean accuracy at the rate of always predicting one class); nothing is cached.

    Attributes:
        accuracy: the clean accuracy on the training images checked, in [0, 1].
        chance: the rate of the most frequent class among them (what a constant prediction gets).
        curve: the learning curve so far (list of dicts, empty without ``TrainConfig.holdout``).
    """

    def __init__(self, message: str, accuracy: float, chance: float, curve: list) -> None:
        super().__init__(message)
        self.accuracy, self.chance, self.curve = accuracy, chance, curve


#: A trained model has collapsed when its clean training accuracy is at most the majority-class rate plus
#: COLLAPSE_MARGIN and at least COLLAPSE_SHARE of the images get the same predicted class (a constant classifier).
#: Runs of fewer Adam steps are not checked: so short a run can leave any model near its initialisation, which is
#: often a near-constant classifier (the check is for runs long enough to have learned; the collapsed PGD runs it
#: exists for had over 1 000 steps).
COLLAPSE_MARGIN = 0.05
COLLAPSE_SHARE = 0.8
COLLAPSE_MIN_STEPS = 100


def _holdout_split(n: int, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(train, held)`` of a seeded draw of ``k`` of ``n`` images (its own generator: batch order unaffected)."""
    if k >= n:
        raise ValueError(f"TrainConfig.holdout = {k} leaves no training image of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(10_007 + seed))
    return perm[k:].sort().values, perm[:k].sort().values


def _curve_point(model: nn.Module, parts, x: Tensor, y: Tensor, seed: int, batch: int = 250) -> dict:
    """Clean and (with an adversary) adversarial accuracy of ``model`` in eval mode on held-out ``(x, y)``."""
    was = model.training
    model.eval()
    adversary = parts.evaluator or parts.adversary
    clean = accuracy(model, x, y)
    adv = None
    if adversary is not None:
        with torch.random.fork_rng():  # the curve's random starts do not move the training run's RNG
            torch.manual_seed(seed)
            correct = 0
            for i in range(0, len(x), batch):
                xa = adversary(model, x[i : i + batch], y[i : i + batch]).detach()
                with torch.no_grad():
                    correct += int((model(xa).argmax(1) == y[i : i + batch]).sum())
        adv = correct / len(x)
    model.train(was)
    return {"clean": clean, "adversarial": adv}


def _save_resume(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file renamed over it): a crash mid-write keeps the last one."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_resume(path: Path, fingerprint: dict) -> dict | None:
    """The resume state at ``path`` when it exists, is readable and was written for ``fingerprint``; else None (warned)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers, lists and dicts only
        problem = None if isinstance(state, dict) and state.get("fingerprint") == fingerprint else \
            "it was written for another run (format, config, objective or process count)"
    except Exception as exc:  # noqa: BLE001 - any unreadable file is ignored the same way
        state, problem = None, f"it cannot be read ({type(exc).__name__}: {exc})"
    if problem is not None:
        warnings.warn(f"training resume file {path} is not used: {problem}; training starts from epoch 1", stacklevel=3)
        log.warning("training resume file %s is not used: %s", path, problem)
        return None
    return state


def train_model(model: nn.Module, data: Dataset, config: TrainConfig = TrainConfig(), *,
                objective: Objective = Objective("standard"), progress: bool = True,
                check_collapse: bool = True, checkpoint: str | os.PathLike | None = None) -> dict:
    """Train ``model`` in place with Adam on ``objective``; leaves it in eval mode.

    Deterministic for a given ``config.seed`` on one machine, given the global
    RNG state (dropout draws from it; seeded initialisation is the caller's
    job: :func:`spatialadv.training.load_or_train` seeds before building).

    With ``config.holdout`` > 0 a seeded draw of that many training images is
    held out of the batches and, after every epoch, the model (in eval mode)
    is scored on it: clean accuracy and, when the objective has an adversary,
    accuracy under its full-strength version (e.g. PGD at the final ε during
    an ε warm-up). With ``config.patience`` > 0 training stops once the
    monitored accuracy (adversarial if any, else clean) has not exceeded its
    best for ``patience`` epochs, and the best epoch's weights are kept
    (early stopping on a plateaued held-out curve). The objective's builder
    sees the whole training set.

    After training (``check_collapse``, runs of at least :data:`COLLAPSE_MIN_STEPS`
    Adam steps), (up to 2 000 of) the training images are classified: a clean accuracy of at most the most frequent class's rate
    + :data:`COLLAPSE_MARGIN` with at least :data:`COLLAPSE_SHARE` of the images
    given one class means the model has collapsed to a constant classifier, as
    PGD adversarial training from scratch can at a large ε, and
    :class:`TrainingCollapsed` is raised, so nothing is cached.

    With ``checkpoint`` (a file path) the run is resumable: after every epoch
    the model and optimiser state, the RNG states (the batch order's and
    torch's global one), the learning curve, the best epoch's weights and the
    objective's own state are written there (atomically). A later call with
    the same model, data, config and objective finds the file and continues
    after its last completed epoch; the result is the same as an uninterrupted
    run on one machine (same weights, same curve). The file is left in place
    (:func:`~spatialadv.training.load_or_train` deletes it once the trained model
    is saved). A file written for another run, or unreadable, is ignored with a
    warning. Objectives whose state cannot be saved
    (:attr:`~spatialadv.training.TrainingParts.resumable` False) ignore ``checkpoint``.

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
        config: epochs, batch size, learning rate, augmentation, seed, held-out curve and patience.
        objective: what is minimised (:class:`~spatialadv.training.Objective`; :mod:`spatialadv.training.builtin` lists them).
        progress: show a tqdm bar over epochs.
        check_collapse: raise :class:`TrainingCollapsed` for a collapsed model (the model stays
            trained in place either way); False for deliberately short runs (timing, smoke tests).
        checkpoint: optional path of the per-epoch resume file (see above).

    Returns:
        The objective's notes, a JSON-able dict (``{}`` for most objectives;
        ``{"pool_success_rates": [...]}`` for ``stadv-at``), plus, with
        ``config.holdout`` > 0, ``"curve"`` (per epoch: ``epoch`` from 1, mean
        training ``loss``, held-out ``clean`` and ``adversarial`` accuracy
        (None without an adversary), and the objective's schedule values, e.g.
        ``eps``), ``"holdout"`` (its size), ``"best_epoch"``, ``"epochs_run"``
        and ``"stopped"`` (``"plateau"`` or ``"max_epochs"``). A resumed run adds
        ``"resumed_after"`` (the completed epochs found at each resume) and
        ``"seconds_before_resume"`` (the training time of the earlier processes).

    Raises:
        TypeError: ``objective`` is not an :class:`Objective`, or the objective
            needs an architecture the model does not have (e.g. ``sdp`` on a
            convolutional net).
        ValueError: ``config.holdout`` leaves no training image.
        TrainingCollapsed: the trained model predicts (nearly) one class.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective, got {type(objective).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    parts = OBJECTIVES[objective.name].build(model, data, config, objective.options)
    notes: dict = {}
    if parts.trains:
        # data-parallel under torchrun: every rank draws the same permutation and shifts, takes the
        # rows r, r + w, ... of each global batch, and DistributedDataParallel averages the gradients
        rank, world = distributed.rank(), distributed.world_size()
        dev = next(iter(model.parameters()), data.x).device  # batches follow the model (CPU or CUDA)
        x_all, y_all = data.x, data.y
        held = None
        if config.holdout > 0:
            tr, ho = _holdout_split(len(data), config.holdout, config.seed)
            held = (data.x[ho].to(dev), data.y[ho].to(dev))
            x_all, y_all = data.x[tr], data.y[tr]
        net = model
        if world > 1:
            net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.Adam([*model.parameters(), *parts.extra_parameters], lr=config.lr, weight_decay=config.weight_decay)
        n = len(x_all)
        clean_term = parts.adversary is None or parts.adv_weight < 1 or parts.penalty is not None
        curve: list[dict] = []
        steps, first = 0, 0
        best, best_epoch, best_state, stopped = -1.0, 0, None, "max_epochs"
        resumed: list[int] = []
        seconds_before, t0 = 0.0, time.perf_counter()
        path = Path(checkpoint) if checkpoint is not None and parts.resumable else None
        fingerprint = {"format": RESUME_FORMAT, "config": config.to_dict(), "objective": objective.name,
                       "options": objective.options, "world": world, "n": n,
                       "parameters": [list(p.shape) for p in model.parameters()]}
        state = _load_resume(path, fingerprint) if path is not None else None
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            with torch.no_grad():
                for p, v in zip(parts.extra_parameters, state["extra"]):
                    p.copy_(v)
            if parts.load_state is not None:
                parts.load_state(state["objective_state"])
            gen.set_state(state["gen"])
            torch.set_rng_state(state["rng"])
            if torch.cuda.is_available() and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            first, steps, curve = state["epoch"], state["steps"], state["curve"]
            best, best_epoch, best_state, stopped = state["best"], state["best_epoch"], state["best_state"], state["stopped"]
            resumed, seconds_before = [*state["resumed"], first], state["seconds"]
            log.info("resuming training after epoch %d from %s", first, path)
            if stopped == "plateau":
                first = config.epochs  # the saved run had already stopped: nothing left to train
        model.train()
        bar = tqdm(range(first, config.epochs), desc=f"train {data.name} {objective.name}",
                   disable=not progress or rank > 0, unit="epoch", initial=first, total=config.epochs)
        for epoch in bar:
            sched = parts.schedule(epoch) if parts.schedule is not None else None
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                xb, yb = _random_shift(x_all[idx], config.shift, gen).to(dev), y_all[idx].to(dev)
                if world > 1:
                    if len(idx) < world:  # a last batch too small to split: skipped by every rank alike
                        continue
                    xb, yb = xb[rank::world], yb[rank::world]
                # the clean forward is skipped when its loss has weight 0 and no penalty needs its logits
                logits = net(xb) if clean_term else None
                loss = parts.criterion(logits, yb) if logits is not None else None
                if parts.adversary is not None:
                    xa = parts.adversary(model, xb, yb).detach()
                    adv_loss = parts.criterion(net(xa), yb)
                    loss = adv_loss if loss is None else (1 - parts.adv_weight) * loss + parts.adv_weight * adv_loss
                if parts.penalty is not None:
                    assert loss is not None and logits is not None  # a penalty keeps the clean term (clean_term)
                    loss = loss + parts.penalty(model, xb, yb, logits, epoch)
                assert loss is not None  # without an adversary the clean term is always there
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.all_reduce_mean([p.grad for p in parts.extra_parameters if p.grad is not None])
                opt.step()
                steps += 1
                total += loss.item() * len(idx)
            post = {"loss": f"{total / n:.4f}"}
            if held is not None:
                point = {"epoch": epoch + 1, "loss": total / n, **_curve_point(model, parts, *held, config.seed + epoch),
                         **(sched or {})}
                curve.append(point)
                monitored = point["adversarial"] if point["adversarial"] is not None else point["clean"]
                post["held-out"] = f"{monitored:.3f}"
                if monitored > best:
                    best, best_epoch = monitored, epoch + 1
                    if config.patience > 0:
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif config.patience > 0 and epoch + 1 - best_epoch >= config.patience:
                    stopped = "plateau"
            bar.set_postfix(post)
            if path is not None and rank == 0:
                _save_resume(path, {
                    "fingerprint": fingerprint, "epoch": epoch + 1, "steps": steps, "model": model.state_dict(),
                    "opt": opt.state_dict(), "extra": [p.detach().clone() for p in parts.extra_parameters],
                    "objective_state": parts.state() if parts.state is not None else None,
                    "gen": gen.get_state(), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "curve": curve, "best": best, "best_epoch": best_epoch, "best_state": best_state,
                    "stopped": stopped, "resumed": resumed,
                    "seconds": seconds_before + time.perf_counter() - t0})
            if stopped == "plateau":
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        if held is not None:
            notes = {"curve": curve, "holdout": config.holdout, "best_epoch": best_epoch, "epochs_run": len(curve),
                     "stopped": stopped}
        if resumed:
            notes.update(resumed_after=resumed, seconds_before_resume=seconds_before)
        model.eval()
        if check_collapse and steps >= COLLAPSE_MIN_STEPS:
            _check_collapse(model, x_all[:2000], y_all[:2000], data.num_classes, curve)
    model.eval()
    return {**(parts.notes() if parts.notes is not None else {}), **notes}


def _check_collapse(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, curve: list) -> None:
    """Raise :class:`TrainingCollapsed` when ``model`` is (nearly) a constant classifier on ``(x, y)``."""
    if not len(y):
        return
    dev = next(iter(model.parameters()), x).device
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 500].to(dev)).argmax(1).cpu() for i in range(0, len(x), 500)])
    acc = float((pred == y).float().mean())
    chance = float(torch.bincount(y, minlength=num_classes).max()) / len(y)
    share = float(torch.bincount(pred, minlength=num_classes).max()) / len(y)
    if acc <= chance + COLLAPSE_MARGIN and share >= COLLAPSE_SHARE:
        raise TrainingCollapsed(
            f"training collapsed: clean accuracy {acc:.3f} on {len(y)} training images (always predicting the most "
            f"frequent class gets {chance:.3f}), and {100 * share:.0f} % of them are given one class; the model is not "
            "cached. For adversarial training from scratch, ramp ε up (e.g. the pgd-at option warmup=5), lower the "
            "learning rate (Madry et al.: Adam 1e-4) or fine-tune a plainly trained model", acc, chance, curve)
