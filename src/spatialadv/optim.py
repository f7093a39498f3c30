"""Batched, per-example L-BFGS: N independent problems solved in lock-step.

Each example keeps its own curvature history, its own Armijo backtracking
line search and its own stopping decision, so an example's iterates never
depend on the other examples in the batch (unlike one L-BFGS problem over the
flattened batch, where one image's line search steers all of them). Only the
examples still running are evaluated, so the batch shrinks as they converge.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["lbfgs_per_example"]

# fun(z, idx) -> (loss (M,), grad (M, D), aux) evaluated for the rows idx of the batch
Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, object]]


def lbfgs_per_example(
    fun: Objective,
    z0: Tensor,
    *,
    max_iter: int = 100,
    history: int = 10,
    max_ls: int | Tensor = 10,
    c1: float = 1e-4,
    init_step: float = 0.1,
    ftol: float = 1e-6,
    gtol: float = 1e-7,
    max_step: float | None = None,
    callback: Callable[[Tensor, Tensor, Tensor, object], Tensor | None] | None = None,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise N independent objectives with L-BFGS and backtracking line search.

    Args:
        fun: ``fun(z, idx) -> (loss, grad, aux)`` for the rows ``idx`` (int64
            ``(M,)``) of the batch at points ``z`` ``(M, D)``; ``loss`` ``(M,)``,
            ``grad`` ``(M, D)``; ``aux`` is passed to ``callback``.
        z0: starting points ``(N, D)``.
        max_iter: iterations (accepted steps) per example.
        history: number of curvature pairs kept per example.
        max_ls: backtracking trials before an example's line search fails;
            an int, or an int64 tensor ``(N,)`` of per-example limits that the
            caller may change between iterations (e.g. from ``callback``).
        c1: Armijo sufficient-decrease constant.
        init_step: length (∞-norm, in the units of z) of the first step and of
            steps after a history reset.
        ftol: stop an example when its relative decrease is below ``ftol``.
        gtol: stop an example when its gradient ∞-norm is below ``gtol``.
        max_step: if given, the first trial step of each line search is
            shortened so its ∞-norm is at most ``max_step`` (a trust-region
            cap for piecewise-smooth objectives such as bilinear warps).
        callback: ``callback(idx, z, loss, aux)`` after every accepted step
            (and at the start); may return a bool ``(M,)`` mask of examples
            to stop now.
        precondition: optional symmetric positive-definite operator ``K``
            mapping ``(M, D)`` rows to ``(M, D)``, used as the initial
            inverse-Hessian approximation ``H₀ = γ K`` (``γ = sᵀy / yᵀK y``)
            and for the steepest-descent steps (``−K g``). The objective and
            its minimisers are unchanged; only the path differs (e.g. a
            smoothing ``K`` makes the iterates of an image-shaped problem smooth).

    Returns:
        ``(z, iterations, evaluations)``: final points ``(N, D)`` and per-example
        counts ``(N,)`` of accepted steps and objective evaluations.
    """
    n, d = z0.shape
    dev, dt = z0.device, z0.dtype
    z = z0.detach().clone()
    all_idx = torch.arange(n, device=dev)
    loss, grad, aux = fun(z, all_idx)
    loss, grad = loss.detach(), grad.detach()
    iters = torch.zeros(n, dtype=torch.long, device=dev)
    evals = torch.ones(n, dtype=torch.long, device=dev)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    if callback is not None:
        stop = callback(all_idx, z, loss, aux)
        if stop is not None:
            active &= ~stop
    # Curvature history of the examples still running, compacted to their rows (``cur``): re-indexed once
    # when an example stops, not at every use. Every operation sees the same rows as with global
    # indexing, so the iterates are the same bit for bit; it saves 4·history row gathers per step.
    S = torch.zeros(history, n, d, device=dev, dtype=dt)
    Y = torch.zeros(history, n, d, device=dev, dtype=dt)
    rho = torch.zeros(history, n, device=dev, dtype=dt)
    gamma = torch.zeros(n, device=dev, dtype=dt)  # 0 = no history yet
    cur = all_idx
    slot = 0
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        if idx.numel() != cur.numel():  # examples stopped: drop their history rows
            rows = torch.searchsorted(cur, idx)
            S, Y, rho, gamma, cur = S[:, rows], Y[:, rows], rho[:, rows], gamma[rows], idx
        g = grad[idx]
        # two-loop recursion, per example; slots with rho == 0 are empty
        q = g.clone()
        alphas = []
        order = [(slot - 1 - i) % history for i in range(history)]
        for j in order:
            a = rho[j] * (S[j] * q).sum(1)
            q -= a[:, None] * Y[j]
            alphas.append(a)
        gam = gamma
        has_hist = gam > 0
        r = (q if precondition is None else precondition(q)) * torch.where(has_hist, gam, torch.zeros_like(gam))[:, None]
        for j, a in zip(reversed(order), reversed(alphas)):
            b = rho[j] * (Y[j] * r).sum(1)
            r += S[j] * (a - b)[:, None]
        steepest_cache: list[Tensor] = []

        def steepest_step() -> Tensor:  # −K g scaled to init_step (∞-norm); only built where some example needs it
            if not steepest_cache:
                g_dir = g if precondition is None else precondition(g)
                gmax = g_dir.abs().amax(1).clamp_min(torch.finfo(dt).tiny)
                steepest_cache.append(-g_dir * (init_step / gmax)[:, None])
            return steepest_cache[0]

        direction = -r if bool(has_hist.all()) else torch.where(has_hist[:, None], -r, steepest_step())
        slope = (g * direction).sum(1)
        bad = slope >= 0  # not a descent direction: reset this example's history
        if bool(bad.any()):
            direction[bad] = steepest_step()[bad]
            slope = (g * direction).sum(1)
            rho[:, bad] = 0
            gamma[bad] = 0
        # per-example Armijo backtracking
        t = torch.ones(idx.numel(), device=dev, dtype=dt)
        if max_step is not None:
            t = torch.minimum(t, max_step / direction.abs().amax(1).clamp_min(torch.finfo(dt).tiny))
        f0 = loss[idx]
        searching = torch.ones(idx.numel(), dtype=torch.bool, device=dev)
        new_loss = f0.clone()
        new_grad = g.clone()
        new_aux_rows: list[tuple[Tensor, Any]] = []
        limit = max_ls[idx] if isinstance(max_ls, Tensor) else torch.full((idx.numel(),), max_ls, dtype=torch.long, device=dev)
        for _ls in range(int(limit.max()) if idx.numel() else 0):
            sidx = (searching & (limit > _ls)).nonzero().squeeze(1)
            if sidx.numel() == 0:
                break
            zt = z[idx[sidx]] + t[sidx, None] * direction[sidx]
            lt, gt, at = fun(zt, idx[sidx])
            lt, gt = lt.detach(), gt.detach()
            evals[idx[sidx]] += 1
            ok = torch.isfinite(lt) & (lt <= f0[sidx] + c1 * t[sidx] * slope[sidx])
            acc = sidx[ok]
            new_loss[acc] = lt[ok]
            new_grad[acc] = gt[ok]
            if bool(ok.any()):
                new_aux_rows.append((acc, _rows(at, ok)))
            searching[acc] = False
            t[sidx[~ok]] *= 0.5
        # line search found no decrease: with history, drop it and retry steepest
        # descent next round; without history, the example has converged (or is stuck)
        failed = searching & ~has_hist
        retry = searching & has_hist
        if bool(retry.any()):
            rho[:, retry] = 0
            gamma[retry] = 0
        accepted = ~searching
        aidx = idx[accepted]
        if aidx.numel():
            s = t[accepted, None] * direction[accepted]
            yv = new_grad[accepted] - g[accepted]
            z[aidx] = z[aidx] + s
            sy = (s * yv).sum(1)
            yy = (yv * yv).sum(1)
            good = sy > 1e-10 * yy.clamp_min(1e-30).sqrt() * s.norm(dim=1)
            S[slot, accepted] = s
            Y[slot, accepted] = yv
            rho[slot, accepted] = torch.where(good, 1.0 / sy.where(good, torch.ones_like(sy)), torch.zeros_like(sy))
            if precondition is not None:
                yy = (yv * precondition(yv)).sum(1)
            gamma[accepted] = torch.where(good, sy / yy.clamp_min(1e-30), gamma[accepted])
            rel = (f0[accepted] - new_loss[accepted]).abs() / f0[accepted].abs().clamp_min(1.0)
            loss[aidx] = new_loss[accepted]
            grad[aidx] = new_grad[accepted]
            iters[aidx] += 1
            done = (rel < ftol) | (new_grad[accepted].abs().amax(1) < gtol)
            active[aidx[done]] = False
            if callback is not None:
                for rows_, a in new_aux_rows:
                    stop = callback(idx[rows_], z[idx[rows_]], loss[idx[rows_]], a)
                    if stop is not None:
                        active[idx[rows_][stop]] = False
        # rows of the history slot not written this round are cleared
        rho[slot, ~accepted] = 0
        active[idx[failed]] = False
        slot = (slot + 1) % history
    return z, iters, evals


def _rows(aux: object, mask: Tensor) -> object:
    """Select rows of an aux object (a tensor, or a tuple/dict of tensors)."""
    if isinstance(aux, Tensor):
        return aux[mask]
    if isinstance(aux, tuple):
        return tuple(_rows(a, mask) for a in aux)
    if isinstance(aux, dict):
        return {k: _rows(v, mask) for k, v in aux.items()}
    return aux
