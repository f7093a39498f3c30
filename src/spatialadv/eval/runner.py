"""Resumable attack runner and the evaluation metrics."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields, is_dataclass

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed
from ..attacks.base import Attack
from ..ops.flow import flow_l2, flow_tv
from .store import ResultStore, encode_array, encode_arrays

__all__ = ["attack_config", "run_key", "make_pairs", "example_index", "run_attack", "summarize", "first_correct"]


def attack_config(attack: Attack) -> dict:
    """JSON-able description of an attack: its class name and hyper-parameters.

    Attacks nested in a hyper-parameter (e.g. a sweep's) are described the same
    way; attacks holding trained networks (e.g. SdpAdv) describe themselves
    with ``hyperparameters()``.
    """

    def value(v):
        if isinstance(v, Attack):
            return attack_config(v)
        if isinstance(v, (tuple, list)):
            return [value(u) for u in v]
        return v

    if hasattr(attack, "hyperparameters"):
        params = attack.hyperparameters()
    else:
        params = {f.name: getattr(attack, f.name) for f in fields(attack)} if is_dataclass(attack) else {}
    return {"attack": type(attack).__name__, **{k: value(v) for k, v in params.items()}}


def run_key(model_key: str, attack: Attack, data_key: str, mode: str) -> str:
    """Stable key of one (model, attack config, data, targeting mode) run."""
    blob = json.dumps({"model": model_key, "attack": attack_config(attack), "data": data_key, "mode": mode}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@torch.no_grad()
def first_correct(model: nn.Module, x: Tensor, y: Tensor, n: int, *, batch_size: int = 500) -> Tensor:
    """Indices (int64) of the first ``n`` images that ``model`` classifies correctly."""
    out = []
    for i in range(0, len(x), batch_size):
        ok = (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).nonzero().squeeze(1) + i
        out.append(ok)
        if sum(len(o) for o in out) >= n:
            break
    return torch.cat(out)[:n] if out else torch.zeros(0, dtype=torch.long)


def make_pairs(idx: Tensor, y: Tensor, num_classes: int, mode: str, *, seed: int = 0) -> list[tuple[int, int]]:
    """The ``(image index, target)`` pairs to attack.

    Args:
        idx: dataset indices ``(M,)``.
        y: labels of the whole dataset ``(N,)``.
        num_classes: number of classes K; targets lie in [0, K).
        mode: ``"untargeted"`` (target −1), ``"all"`` (every class ≠ y: K−1
            pairs per image, stAdv Table 1) or ``"random"`` (one uniformly
            drawn class ≠ y per image, from ``numpy.random.default_rng(seed)``).
        seed: seed of the target draws (``mode="random"`` only).

    Returns:
        ``(image index, target)`` pairs, image-major; target −1 means untargeted.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode == "untargeted":
        return [(int(i), -1) for i in idx]
    if mode == "all":
        return [(int(i), t) for i in idx for t in range(num_classes) if t != int(y[i])]
    if mode == "random":
        rng = np.random.default_rng(seed)
        pairs = []
        for i in idx:
            t = int(rng.integers(num_classes - 1))
            pairs.append((int(i), t + (t >= int(y[i]))))
        return pairs
    raise ValueError(f"mode must be 'untargeted', 'all' or 'random', got {mode!r}")


def example_index(pairs: list[tuple[int, int]]) -> Tensor:
    """The identity rows ``(M, 2)`` int64 of ``(image index, target)`` pairs: ``[idx, target + 1]``.

    Attacks seed their per-example randomness from these rows (``index`` of
    :meth:`~spatialadv.attacks.Attack.__call__`), so a pair's result does not
    depend on which batch, or which position in it, the runner gives it.
    """
    return torch.tensor([[i, t + 1] for i, t in pairs], dtype=torch.long).reshape(-1, 2)


def run_attack(store: ResultStore, key: str, model: nn.Module, attack: Attack, x: Tensor, y: Tensor,
               pairs: list[tuple[int, int]], *, batch_size: int = 256, progress: bool = True, desc: str = "") -> int:
    """Attack the pairs not yet in ``store`` under ``key``, committing each batch.

    Args:
        store: the results store; the run must be registered by the caller.
        key: run key (:func:`run_key`).
        model: the attacked classifier (eval mode, frozen).
        attack: the attack.
        x: the whole dataset's images ``(N, C, H, W)`` in [0, 1]; ``pairs`` index into it.
        y: the whole dataset's labels ``(N,)``.
        pairs: ``(idx, target)`` with target −1 for untargeted.
        batch_size: pairs per attack call (≥ 1).
        progress: show a progress bar.
        desc: the progress bar's label.

    Returns:
        Number of pairs attacked now by this process (0 when everything was
        already stored). Each pair is attacked with its identity row
        (:func:`example_index`), so the stored results do not depend on where a
        previous run was interrupted or on the batch size.

    Under ``torchrun`` (:mod:`spatialadv.distributed`) this is collective:
    every process calls it with the same arguments, attacks its share of the
    batches (:func:`spatialadv.distributed.shard`: batch ``b`` to rank ``b mod
    world``), commits each batch to the shared store, and returns once every
    process has finished, so the store then holds every pair.

    Raises:
        ValueError: ``batch_size`` < 1, or pairs mixing targeted and untargeted entries.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pairs and any((t >= 0) != (pairs[0][1] >= 0) for _, t in pairs):
        raise ValueError("pairs mix targeted (target >= 0) and untargeted (target -1) entries; run them under separate keys")
    try:
        return _attack_pairs(store, key, model, attack, x, y, distributed.shard(pairs, batch_size), batch_size,
                             progress and distributed.rank() == 0, desc)
    finally:
        distributed.barrier()


def _attack_pairs(store, key, model, attack, x, y, pairs, batch_size, progress, desc) -> int:
    done = store.done(key)
    todo = [p for p in pairs if p not in done]
    if not todo:
        return 0
    targeted = todo[0][1] >= 0
    bar = tqdm(total=len(todo), desc=desc or type(attack).__name__, disable=not progress, unit="ex")
    for s in range(0, len(todo), batch_size):
        chunk = todo[s : s + batch_size]
        ii = torch.tensor([p[0] for p in chunk], dtype=torch.long)
        xb, yb = x[ii], y[ii]
        tb = torch.tensor([p[1] for p in chunk], dtype=torch.long) if targeted else None
        with torch.no_grad():
            clean = model(xb).argmax(1)
        res = attack(model, xb, yb, target=tb, index=example_index(chunk))
        d = (res.x_adv - xb).flatten(1)
        l2, linf = d.norm(dim=1), d.abs().amax(1)
        ftv = flow_tv(res.flow) if res.flow is not None else None
        fl2 = flow_l2(res.flow) if res.flow is not None else None
        params = getattr(res, "params", None) or {}
        fwd = getattr(res, "forward_evals", None)
        per = res.time_s / len(chunk)
        rows = []
        for j, (i, t) in enumerate(chunk):
            rows.append(dict(
                run_key=key, idx=i, target=t, label=int(yb[j]), clean_pred=int(clean[j]), success=int(res.success[j]),
                pred=int(res.pred[j]), l2=float(l2[j]), linf=float(linf[j]), size=float(res.size[j]),
                flow_tv=None if ftv is None else float(ftv[j]), flow_l2=None if fl2 is None else float(fl2[j]),
                grad_evals=int(res.grad_evals[j]), forward_evals=None if fwd is None else int(fwd[j]), time_s=per,
                params=encode_arrays({k: v[j].detach().cpu().numpy() for k, v in params.items()}),
                x_adv=encode_array(res.x_adv[j].cpu().numpy().astype(np.float32)),
                flow=None if res.flow is None else encode_array(res.flow[j].cpu().numpy().astype(np.float32)),
            ))
        store.add(rows)
        bar.update(len(chunk))
    bar.close()
    return len(todo)


def _mean_std(v: list[float]) -> tuple[float, float]:
    if not v:
        return math.nan, math.nan
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(records: list[dict]) -> dict:
    """Metrics of one run from its records; each metric has one meaning in every report.

    Denominators:
        * ``P_suc``: successes over the pairs whose clean image the model
          classifies correctly (``clean_pairs``); an already misclassified image
          is not an attack success.
        * ``robust_accuracy``: over **all** evaluated pairs: the model's
          prediction on the attacked image is the true label *and* its clean
          prediction was correct (a clean error counts as an error). For
          untargeted attacks on correctly classified images,
          ``P_suc + robust_accuracy = 1``.
        * ``D_bar`` (D̄, Zhang et al. 2020 Eq. 20), ``linf_mean``,
          ``size_mean`` and the flow metrics: over successes on correctly
          classified images only.

    Returns:
        A dict with ``pairs``, ``images`` (distinct), ``clean_pairs``,
        ``successes``, ``P_suc``, ``robust_accuracy``, ``clean_accuracy``
        (over pairs), ``D_bar`` (pixels in [0, 1]), ``linf_mean``,
        ``size_mean`` (the threat model's units), ``flow_tv_mean/std`` and
        ``flow_l2_mean/std`` (flow attacks; stAdv Eqs. 5-6, pixels),
        ``time_s``, ``ms_per_example``, ``grad_evals_mean`` (model gradient
        evaluations per pair) and ``forward_evals_mean`` when recorded.
        Rates are NaN when their denominator is 0.
    """
    n = len(records)
    clean_ok = [r for r in records if r["clean_pred"] == r["label"]]
    succ = [r for r in clean_ok if r["success"]]
    m = len(clean_ok)
    out = {
        "pairs": n,
        "images": len({r["idx"] for r in records}),
        "clean_pairs": m,
        "successes": len(succ),
        "P_suc": len(succ) / m if m else math.nan,
        "robust_accuracy": sum(r["pred"] == r["label"] and r["clean_pred"] == r["label"] for r in records) / n if n else math.nan,
        "clean_accuracy": m / n if n else math.nan,
        "D_bar": _mean_std([r["l2"] for r in succ])[0],
        "linf_mean": _mean_std([r["linf"] for r in succ])[0],
        "size_mean": _mean_std([r["size"] for r in succ])[0],
        "time_s": float(sum(r["time_s"] for r in records)),
        "ms_per_example": 1000.0 * sum(r["time_s"] for r in records) / n if n else math.nan,
        "grad_evals_mean": float(np.mean([r["grad_evals"] for r in records])) if n else math.nan,
    }
    if n and all(r.get("forward_evals") is not None for r in records):
        out["forward_evals_mean"] = float(np.mean([r["forward_evals"] for r in records]))
    if any(r["flow_tv"] is not None for r in records):
        out["flow_tv_mean"], out["flow_tv_std"] = _mean_std([r["flow_tv"] for r in succ])
        out["flow_l2_mean"], out["flow_l2_std"] = _mean_std([r["flow_l2"] for r in succ])
    return out
