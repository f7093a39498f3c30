"""The shared loop of the gradient-sign / normalised-gradient attacks, and its helpers.

Used by FGSM, I-FGSM, MIM, PGD and sPGD2.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import criterion, input_grad, take_check_forward

__all__ = ["ce_loss", "normalize", "iterate"]


def ce_loss(y: Tensor, target: Tensor | None) -> Callable[[Tensor], Tensor]:
    """Per-example loss to *ascend*, ``(N,)``, as a function of the logits ``(N, K)``.

    ``CE(y)`` (untargeted) or ``−CE(target)`` (targeted).
    """
    if target is None:
        return lambda logits: F.cross_entropy(logits, y, reduction="none")
    return lambda logits: -F.cross_entropy(logits, target, reduction="none")


def normalize(g: Tensor, p: int) -> Tensor:
    """``g / ‖g‖_p`` per example for ``g`` ``(N, …)`` (0 where the gradient is exactly 0)."""
    n = g.flatten(1).norm(p=p, dim=1).clamp_min(torch.finfo(g.dtype).tiny)
    return g / n.view(-1, *([1] * (g.dim() - 1)))


def iterate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor | None,
    x_start: Tensor,
    steps: int,
    early_stop: bool,
    step: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor],
) -> dict:
    """Run ``steps`` gradient steps per example from ``x_start``.

    Args:
        model: classifier; evaluated with :func:`~spatialadv.attacks.base.input_grad`
            (no parameter gradients).
        x: original images ``(N, C, H, W)`` in [0, 1].
        y: true labels ``(N,)`` int64.
        target: target classes ``(N,)`` int64 (targeted), or None (untargeted).
        x_start: first iterate ``(N, C, H, W)`` (already projected).
        steps: number of gradient evaluations per example, ≥ 1.
        early_stop: an example leaves the loop at the first iterate whose
            prediction meets the criterion (decided per example).
        step: ``step(idx, x_adv_sub, x_sub, grad_sub)`` returns the projected
            next iterate of the examples ``idx``; ``grad_sub`` is the gradient
            of the loss to ascend (:func:`ce_loss`).

    Returns:
        ``{"x_adv", "grad_evals"}``: the last (or first successful) iterates and
        the gradient evaluations per example ``(N,)`` int64.
    """
    n = x.shape[0]
    x_adv = x_start.clone()
    # the first gradient at x itself reuses the input check's forward (Attack.reuses_check_forward)
    first = take_check_forward(x) if x_start is x else None

    def grad_at(xs: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
        nonlocal first
        if first is None:
            return input_grad(model, xs, loss_fn)
        xg, logits = first
        first = None
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(logits).sum(), xg)
        return g, logits.detach()

    if not early_stop:
        # every example takes every step: whole-batch tensors, no index bookkeeping and no host
        # synchronisation inside the loop (on a GPU the steps are queued back to back)
        every = torch.arange(n, device=x.device)
        loss = ce_loss(y, target)
        for _ in range(steps):
            grad, _ = grad_at(x_adv, loss)
            x_adv = step(every, x_adv, x, grad).detach()
        return {"x_adv": x_adv, "grad_evals": torch.full((n,), steps, dtype=torch.long, device=x.device)}
    grad_evals = torch.zeros(n, dtype=torch.long, device=x.device)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for _ in range(steps):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        y_s = y[idx]
        t_s = None if target is None else target[idx]
        x_s = x_adv[idx]
        grad, logits = grad_at(x_s, ce_loss(y_s, t_s))  # the first step takes every example: x_s equals x
        grad_evals[idx] += 1
        if early_stop:
            done = criterion(logits.argmax(1), y_s, t_s)
            active[idx[done]] = False
            keep = ~done
            idx, x_s, grad = idx[keep], x_s[keep], grad[keep]
            if idx.numel() == 0:
                break
        x_adv[idx] = step(idx, x_s, x[idx], grad).detach()
    return {"x_adv": x_adv, "grad_evals": grad_evals}
