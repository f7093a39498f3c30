"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_int, check_positive
from ..ops.flow import flow_tv_loss
from ..ops.warp import flow_warp
from ..optim import lbfgs_per_example
from ..threats import PixelFlow
from .base import Attack, margin

__all__ = ["StAdv"]


@dataclass(frozen=True, kw_only=True)
class StAdv(Attack):
    """Per-pixel flow attack (stAdv, Eqs. 1-4), solved per example with L-BFGS.

    Minimises, for each image independently,
    ``L_adv(x, f) + τ · L_flow(f)`` (Eq. 2) over the flow ``f`` ``(2, H, W)``
    in pixels, where ``L_adv`` is the margin loss of Eq. 3 (targeted) or its
    untargeted form, and ``L_flow`` the 4-neighbour smoothness of Eq. 4
    (:func:`spatialadv.ops.flow_tv_loss`). The image is warped with
    :func:`spatialadv.ops.flow_warp` (bilinear, Eq. 1).

    Solver: the paper's L-BFGS with backtracking line search, run as N
    independent problems (:func:`spatialadv.optim.lbfgs_per_example`): each
    image has its own history, line search and stopping rule, so its result
    does not depend on its batch-mates. The returned flow is the successful
    iterate with the smallest ``L_flow`` seen during the run. An image stops
    once it has succeeded and its ``L_flow`` has not improved by more than
    ``rel_improvement`` for ``patience`` steps, or after ``max_iter`` steps.

    τ search (optional, App. C): with ``tau_search=(τ₁ > τ₂ > …)``, images
    are first attacked with τ₁; those still failing are attacked again with
    τ₂, warm-started from their last τ₁ iterate, and so on. Each image keeps
    the first (largest, so smoothest) τ that succeeds; the paper grid-searches
    τ in [0.0005, 0.05].

    Units of τ: flows here are in pixels and ``L_flow`` sums over directed
    4-neighbour pairs, so τ = 0.05 is a strict budget (on our MNIST models it
    leaves many targeted examples unbroken; the paper does not state its flow
    units). ``tau_search=(0.005, 0.0005)`` reaches ≥ 99 % targeted success
    on MNIST models A-C and is what ``spatialadv reproduce stadv-mnist`` uses.

    Args:
        tau: τ ≥ 0, weight of the flow loss (paper: 0.05).
        kappa: κ ≥ 0, margin confidence of Eq. 3 (paper: 0).
        max_iter: L-BFGS steps per image (and per τ of the search).
        history: L-BFGS memory.
        patience: steps without flow improvement after success before stopping.
        rel_improvement: relative ``L_flow`` decrease that counts as improvement.
        tau_search: optional decreasing τ values tried on still-failing images
            (overrides ``tau``).
        padding_mode: border handling of the warp (``"zeros"`` or ``"border"``).
        eps: smoothing inside the square root of ``L_flow`` (pixels²); 1e-4
            (0.01 px) keeps the objective smooth enough for L-BFGS.
        max_step: largest displacement change (pixels, ∞-norm) of one L-BFGS
            step: the bilinear warp is only piecewise smooth in the flow, so
            unbounded quasi-Newton steps can jump far across pixel cells.
        init_offset: starting flow, the same displacement (pixels) for every
            pixel in both directions; 0 starts at the identity, which is a kink
            of the bilinear warp in every coordinate.
        restart_offsets: images still failing after the τ search are attacked
            again (whole τ search) from each of these constant starting flows
            in turn, in pixels. The objective is non-convex and its gradient
            vanishes where the image is flat, so another start often succeeds.

    Result: ``AttackResult`` with ``flow`` ``(N, 2, H, W)`` in pixels (zero for
    failures), ``norm = "flow_tv"`` and ``size`` = TV of Eq. 5 in pixels
    (:class:`~spatialadv.threats.PixelFlow`); ``params["tau"]`` ``(N,)`` the
    τ of the run that produced the returned flow (0 where failed);
    ``iterations`` the objective evaluations (forward+backward, line-search
    trials included) over all τ values and restarts; ``forward_evals`` 0.

    Raises:
        ValueError, TypeError: invalid hyper-parameters (on construction) or
            inputs (on call; see :class:`Attack`).

    Example:
        >>> attack = StAdv(tau=0.05)                           # doctest: +SKIP
        >>> res = attack(model, x, y, target=t)                # doctest: +SKIP
        >>> res.flow.shape, res.success.float().mean()         # doctest: +SKIP
    """

    norm: ClassVar[str] = "flow_tv"

    tau: float = 0.05
    kappa: float = 0.0
    max_iter: int = 200
    history: int = 10
    patience: int = 5
    rel_improvement: float = 1e-2
    tau_search: tuple[float, ...] | None = None
    padding_mode: str = "zeros"
    eps: float = 1e-4
    max_step: float = 1.0
    init_offset: float = 1e-3
    restart_offsets: tuple[float, ...] = ()
    flow_hinge: float | None = None

    def __post_init__(self) -> None:
        check_positive(self.tau, "tau", allow_zero=True)
        check_positive(self.kappa, "kappa", allow_zero=True)
        check_int(self.max_iter, "max_iter")
        check_int(self.history, "history")
        check_int(self.patience, "patience")
        check_positive(self.rel_improvement, "rel_improvement", allow_zero=True)
        check_positive(self.eps, "eps")
        check_positive(self.max_step, "max_step")
        if not isinstance(self.restart_offsets, tuple):
            raise TypeError("restart_offsets must be a tuple of floats, e.g. (0.01, -0.01)")
        for o in (self.init_offset, *self.restart_offsets):
            if isinstance(o, bool) or not isinstance(o, (int, float)) or not abs(o) < 0.5:
                raise ValueError(f"init_offset and restart_offsets must be numbers in (-0.5, 0.5) pixel, got {o!r}")
        if self.flow_hinge is not None:
            check_positive(self.flow_hinge, "flow_hinge", allow_zero=True)
        if self.padding_mode not in ("zeros", "border"):
            raise ValueError(f"padding_mode must be 'zeros' or 'border', got {self.padding_mode!r}")
        if self.tau_search is not None:
            if not isinstance(self.tau_search, tuple) or len(self.tau_search) == 0:
                raise TypeError("tau_search must be a non-empty tuple of floats, e.g. (0.05, 0.005, 0.0005)")
            for t in self.tau_search:
                check_positive(t, "tau_search entries", allow_zero=True)
            if list(self.tau_search) != sorted(self.tau_search, reverse=True):
                raise ValueError(f"tau_search must be in decreasing order, got {self.tau_search}")

    @property
    def threat(self) -> PixelFlow:
        """:class:`~spatialadv.threats.PixelFlow` without a budget (τ penalises the flow)."""
        return PixelFlow()

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, index: Tensor) -> dict:
        n, _, h, w = x.shape
        best_flow = torch.zeros(n, 2, h, w, device=x.device, dtype=x.dtype)
        tau_used = torch.zeros(n, device=x.device, dtype=x.dtype)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        iterations = torch.zeros(n, dtype=torch.long, device=x.device)
        # Start from a tiny constant flow: it has zero L_flow and moves every
        # sampling position off the integer grid, where the bilinear warp has a
        # kink in every pixel (one-sided gradients would not give a descent direction).
        for offset in (self.init_offset, *self.restart_offsets):
            start = torch.full_like(best_flow, offset)
            for tau in self.tau_search or (self.tau,):
                todo = (~found).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                flow, ok, it, last = self._solve(model, x[todo], y[todo], None if target is None else target[todo], tau, start[todo])
                best_flow[todo] = flow
                found[todo] = ok
                tau_used[todo[ok]] = float(tau)
                start[todo] = last  # warm start of the next, smaller τ
                iterations[todo] += it
        x_adv = flow_warp(x, best_flow, padding_mode=self.padding_mode).clamp(0, 1)
        return {"x_adv": x_adv, "flow": best_flow, "iterations": iterations, "params": {"tau": tau_used}}

    def _solve(self, model, x, y, target, tau, start):
        n, _, h, w = x.shape
        d = 2 * h * w
        best_flow = torch.zeros(n, d, device=x.device, dtype=x.dtype)
        best_lflow = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        stale = torch.zeros(n, dtype=torch.long, device=x.device)
        best_loss = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        stalled = torch.zeros(n, dtype=torch.long, device=x.device)
        kappa, pm, eps = self.kappa, self.padding_mode, self.eps

        def fun(z: Tensor, idx: Tensor):
            with torch.enable_grad():
                f = z.detach().view(-1, 2, h, w).requires_grad_(True)
                logits = model(flow_warp(x[idx], f, padding_mode=pm))
                l_adv = margin(logits, y[idx], None if target is None else target[idx], kappa)
                l_flow = flow_tv_loss(f, eps=eps)
                penal = l_flow if self.flow_hinge is None else (l_flow - self.flow_hinge).clamp_min(0)
                loss = l_adv + (tau[idx] if isinstance(tau, Tensor) else tau) * penal
                (g,) = torch.autograd.grad(loss.sum(), f)
            pred = logits.detach().argmax(1)
            ok = pred == target[idx] if target is not None else pred != y[idx]
            return loss.detach(), g.view(len(idx), d), (ok, l_flow.detach())

        def callback(idx, z, loss, aux):
            ok, l_flow = aux
            better = ok & (l_flow < best_lflow[idx])
            improved = better & (l_flow < best_lflow[idx] * (1 - self.rel_improvement))
            bi = idx[better]
            best_flow[bi] = z[better]
            best_lflow[bi] = l_flow[better]
            found_now = torch.isfinite(best_lflow[idx])
            stale[idx] = torch.where(improved | ~found_now, torch.zeros_like(stale[idx]), stale[idx] + 1)
            # an example that has not succeeded stops when its objective plateaus
            progress = loss < best_loss[idx] - self.rel_improvement * best_loss[idx].abs().clamp_min(1.0)
            best_loss[idx] = torch.minimum(best_loss[idx], loss)
            stalled[idx] = torch.where(progress, torch.zeros_like(stalled[idx]), stalled[idx] + 1)
            return (found_now & (stale[idx] >= self.patience)) | (~found_now & (stalled[idx] >= 2 * self.patience))

        last, _, evals = lbfgs_per_example(
            fun, start.reshape(n, d).clone(), max_iter=self.max_iter,
            history=self.history, max_step=self.max_step, callback=callback,
        )
        return best_flow.view(n, 2, h, w), torch.isfinite(best_lflow), evals, last.view(n, 2, h, w)
