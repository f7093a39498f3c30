"""stAdv: spatially transformed adversarial examples (Xiao et al., ICLR 2018)."""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_int, check_positive
from ..ops.flow import FLOW_UNITS, flow_tv_loss, neumann_smoother, to_normalized
from ..ops.warp import flow_warp
from ..optim import lbfgs_per_example
from ..threats import PixelFlow
from .base import Attack, deprecated_keyword, margin

__all__ = ["StAdv"]


@dataclass(frozen=True, kw_only=True)
class StAdv(Attack):
    """Per-pixel flow attack (stAdv, Eqs. 1-4), solved per example with L-BFGS.

    Xiao, Zhu, Li, He, Liu & Song, *Spatially Transformed Adversarial
    Examples*, ICLR 2018. Minimises, for each image independently,
    ``L_adv(x, f) + τ · L_flow(f)`` (Eq. 2) over the flow ``f`` ``(2, H, W)``,
    where ``L_adv`` is the margin loss of Eq. 3 (targeted) or its untargeted
    form, and ``L_flow`` the 4-neighbour smoothness of Eq. 4
    (:func:`spatialadv.ops.flow_tv_loss`). The image is warped with
    :func:`spatialadv.ops.flow_warp` (bilinear, Eq. 1). The defaults are the
    paper's (τ = 0.05, κ = 0, L-BFGS) and reach ≥ 99 % targeted success on
    MNIST models A, B and C (stAdv Table 1: 99.95 / 99.98 / 100 %).

    Convention:
        **τ is the paper's τ: L_flow is taken on flows in normalised grid
        coordinates** (−1 … 1 from the first to the last pixel centre, so one
        pixel is 2/27 on MNIST; :func:`spatialadv.ops.to_normalized`). The paper
        does not state its flow unit; the evidence is its own numbers:
        τ = 0.05 on pixel flows leaves about half of MNIST's targeted attacks
        unbroken (the paper: 99.95 % success), while τ = 0.05 on normalised
        flows breaks them all; and Table 6's MNIST flows (TV 8.26e-3, L2
        5.18e-2) are 0.11 and 0.70 pixels in normalised units, implausibly
        small as pixels. ``flow_units="pixels"`` takes L_flow on pixel flows
        instead (τ_pixels = τ_normalised · 2/(W−1) for square images). The
        returned flow is always in pixels.

    Solver: the paper's L-BFGS with backtracking line search, run as N
    independent problems (:func:`spatialadv.optim.lbfgs_per_example`): each
    image has its own history, line search and stopping rule, so its result
    does not depend on its batch-mates. L-BFGS is seeded with the inverse
    Hessian ``H₀ = γ (I + λ L)⁻¹`` (``λ = precondition`` in ``flow_units``²,
    L the grid Laplacian; :func:`spatialadv.ops.neumann_smoother`) instead of
    ``γ I``; the default λ = 1.6 normalised² is 292 px² on MNIST, a smoothing
    length of about 60 % of the image:
    plain gradient steps move single pixels (the gradient of L_adv lives on
    stroke edges and L_flow's gradient spreads a displacement by one pixel per
    step), so a run stops at rough, pixel-scale flows; the preconditioned
    steps move whole regions and reach flows with a lower L_flow at the same
    success (measured in ``spatialadv reproduce stadv-mnist``). The objective
    is unchanged; ``precondition=0`` is plain L-BFGS.

    Stopping: the returned flow is the successful iterate with the smallest
    ``L_flow`` seen during the run. An image that has succeeded stops once its
    ``L_flow`` has not improved by more than ``rel_improvement`` for
    ``patience`` steps; an image that has not succeeded continues while its
    objective decreases (L-BFGS's own convergence test) up to ``steps``
    steps, or, with ``abandon_after=k``, stops after ``k`` steps without a
    ``rel_improvement`` decrease of its objective. ``params["steps"]`` counts
    the L-BFGS steps each image used, to compare against ``steps``.

    τ search (optional, App. C): with ``tau_search=(τ₁ > τ₂ > …)``, images
    are first attacked with τ₁; those still failing are attacked again with
    τ₂, warm-started from their last τ₁ iterate, and so on. Each image keeps
    the first (largest, so smoothest) τ that succeeds; the paper grid-searches
    τ in [0.0005, 0.05].

    Args:
        tau: τ ≥ 0, weight of the flow loss (paper: 0.05), in ``flow_units``.
        kappa: κ ≥ 0, margin confidence of Eq. 3 (paper: 0).
        steps: L-BFGS steps per image (and per τ of the search and restart).
        max_iter: deprecated alias of ``steps`` (a ``DeprecationWarning``;
            kept because committed reports and earlier command lines use it).
        history: L-BFGS memory.
        patience: steps without flow improvement after success before stopping.
        rel_improvement: relative decrease that counts as improvement.
        polish_ls: line-search trials per step once an image has succeeded
            (10 before). After success the iterate sits on the decision
            boundary, where L_adv has a kink: most trial steps cross it and are
            halved again and again, so polishing L_flow costs ~4 evaluations
            per step. Measured on MNIST model A (100 images, random targets):
            10 trials give mean L_flow 13.9 (normalised) with 78 gradient
            evaluations per image, 5 give 15.9 with 42, 3 give 16.9 with 29,
            all at 100 % success (plain L-BFGS, ``precondition=0``: 26.3 with
            30 evaluations at 3 trials, 21.7 with 74 at 10).
        abandon_after: steps without objective improvement after which an
            image that has not succeeded is abandoned; None (default) never.
        tau_search: optional decreasing τ values tried on still-failing images
            (overrides ``tau``).
        padding_mode: border handling of the warp (``"zeros"`` or ``"border"``).
        flow_units: ``"normalized"`` (default, the paper's τ) or ``"pixels"``:
            the unit of the flow inside ``L_flow``, so of ``tau``, ``tv_smoothing`` and
            ``flow_hinge``.
        tv_smoothing: constant inside the square root of ``L_flow``
            (:func:`spatialadv.ops.flow_tv_loss`'s ``eps``), in ``flow_units``²;
            the default 1e-6 is (0.0135 px)² on MNIST and keeps the objective
            smooth enough for L-BFGS.
        max_step: largest displacement change (pixels, ∞-norm) of one L-BFGS
            step: the bilinear warp is only piecewise smooth in the flow, so
            unbounded quasi-Newton steps can jump far across pixel cells.
        precondition: λ ≥ 0 (``flow_units``²) of the L-BFGS seed
            ``(I + λ L)⁻¹``; 0 for plain L-BFGS. Chosen by measurement on
            MNIST (10 images × 9 targets per model, ``polish_ls=10``): λ = 100, 300 and 1000
            px² (0.55, 1.65 and 5.5 normalised²) gave mean L_flow 14.5, 14.4
            and 10.1 on model A against 20.0 for plain L-BFGS (normalised
            units), with 100, 100 and 97.8 % targeted success; on models B
            and C 300 px² also gave a lower L_flow than 100 px² (12.0 vs
            15.4 and 13.4 vs 14.7), both at 100 %.
        init_offset: starting flow, the same displacement (pixels) for every
            pixel in both directions; 0 starts at the identity, which is a kink
            of the bilinear warp in every coordinate.
        restart_offsets: images still failing after the τ search are attacked
            again (whole τ search) from each of these constant starting flows
            in turn, in pixels. The objective is non-convex and its gradient
            vanishes where the image is flat, so another start often succeeds.
        flow_hinge: optional h ≥ 0: penalise ``max(L_flow − h, 0)`` instead of
            ``L_flow`` (flows up to L_flow = h are free), in ``flow_units``.

    Result: ``AttackResult`` with ``flow`` ``(N, 2, H, W)`` in pixels (zero for
    failures), ``unit = "flow_tv"`` and ``size`` = TV of Eq. 5 in pixels
    (:class:`~spatialadv.threats.PixelFlow`); ``params["tau"]`` ``(N,)`` the
    τ of the run that produced the returned flow (0 where failed) and
    ``params["steps"]`` ``(N,)`` the L-BFGS steps used over all τ values and
    restarts (failed examples included) and ``params["start"]`` ``(N,)`` which
    start produced the returned flow (0: ``init_offset``, k: the k-th
    ``restart_offsets`` entry, −1: none succeeded); ``grad_evals`` the objective evaluations (forward+backward,
    line-search trials included); ``forward_evals`` 0.

    Raises:
        ValueError, TypeError: invalid hyper-parameters (on construction) or
            inputs (on call; see :class:`Attack`).

    Example:
        >>> attack = StAdv()                                   # doctest: +SKIP
        >>> res = attack(model, x, y, target=t)                # doctest: +SKIP
        >>> res.flow.shape, res.success.float().mean()         # doctest: +SKIP
    """

    solver_params: ClassVar[tuple[str, ...]] = ("steps", "start")

    tau: float = 0.05
    kappa: float = 0.0
    steps: int = 200
    history: int = 10
    patience: int = 5
    rel_improvement: float = 1e-2
    polish_ls: int = 3
    abandon_after: int | None = None
    tau_search: tuple[float, ...] | None = None
    padding_mode: str = "zeros"
    flow_units: str = "normalized"
    tv_smoothing: float = 1e-6
    max_step: float = 1.0
    precondition: float = 1.6
    init_offset: float = 1e-3
    restart_offsets: tuple[float, ...] = ()
    flow_hinge: float | None = None
    max_iter: InitVar[int | None] = None

    def __post_init__(self, max_iter: int | None = None) -> None:
        deprecated_keyword(self, "max_iter", "steps", max_iter, 200)
        check_positive(self.tau, "tau", allow_zero=True)
        check_positive(self.kappa, "kappa", allow_zero=True)
        check_int(self.steps, "steps")
        check_int(self.history, "history")
        check_int(self.patience, "patience")
        check_int(self.polish_ls, "polish_ls")
        if self.abandon_after is not None:
            check_int(self.abandon_after, "abandon_after")
        check_positive(self.rel_improvement, "rel_improvement", allow_zero=True)
        check_positive(self.tv_smoothing, "tv_smoothing")
        check_positive(self.max_step, "max_step")
        check_positive(self.precondition, "precondition", allow_zero=True)
        if self.flow_units not in FLOW_UNITS:
            raise ValueError(f"flow_units must be one of {FLOW_UNITS}, got {self.flow_units!r}")
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
        grad_evals = torch.zeros(n, dtype=torch.long, device=x.device)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        start_used = torch.full((n,), -1, dtype=torch.long, device=x.device)
        # Start from a tiny constant flow: it has zero L_flow and moves every
        # sampling position off the integer grid, where the bilinear warp has a
        # kink in every pixel (one-sided gradients would not give a descent direction).
        for k, offset in enumerate((self.init_offset, *self.restart_offsets)):
            start = torch.full_like(best_flow, offset)
            for tau in self.tau_search or (self.tau,):
                todo = (~found).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                flow, ok, it, st, last = self._solve(model, x[todo], y[todo], None if target is None else target[todo], tau, start[todo])
                best_flow[todo] = flow
                found[todo] = ok
                tau_used[todo[ok]] = float(tau)
                start_used[todo[ok]] = k
                start[todo] = last  # warm start of the next, smaller τ
                grad_evals[todo] += it
                steps[todo] += st
        x_adv = flow_warp(x, best_flow, padding_mode=self.padding_mode).clamp(0, 1)
        return {"x_adv": x_adv, "flow": best_flow, "grad_evals": grad_evals,
                "params": {"tau": tau_used, "steps": steps, "start": start_used}}

    def _solve(self, model, x, y, target, tau, start):
        n, _, h, w = x.shape
        d = 2 * h * w
        best_flow = torch.zeros(n, d, device=x.device, dtype=x.dtype)
        best_lflow = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        stale = torch.zeros(n, dtype=torch.long, device=x.device)
        best_loss = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        stalled = torch.zeros(n, dtype=torch.long, device=x.device)
        max_ls = torch.full((n,), 10, dtype=torch.long, device=x.device)
        kappa, pm, smoothing = self.kappa, self.padding_mode, self.tv_smoothing
        normalized = self.flow_units == "normalized"

        def fun(z: Tensor, idx: Tensor):
            with torch.enable_grad():
                f = z.detach().view(-1, 2, h, w).requires_grad_(True)
                logits = model(flow_warp(x[idx], f, padding_mode=pm))
                l_adv = margin(logits, y[idx], None if target is None else target[idx], kappa)
                l_flow = flow_tv_loss(to_normalized(f) if normalized else f, eps=smoothing)
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
            max_ls[idx[found_now]] = self.polish_ls
            stale[idx] = torch.where(improved | ~found_now, torch.zeros_like(stale[idx]), stale[idx] + 1)
            # an example that has not succeeded stops when its objective plateaus
            progress = loss < best_loss[idx] - self.rel_improvement * best_loss[idx].abs().clamp_min(1.0)
            best_loss[idx] = torch.minimum(best_loss[idx], loss)
            stalled[idx] = torch.where(progress, torch.zeros_like(stalled[idx]), stalled[idx] + 1)
            done = found_now & (stale[idx] >= self.patience)
            if self.abandon_after is not None:
                done |= ~found_now & (stalled[idx] >= self.abandon_after)
            return done

        pre = None
        if self.precondition > 0:
            spacing = (2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)) if normalized else (1.0, 1.0)
            pre = neumann_smoother(h, w, float(self.precondition), spacing=spacing, device=x.device, dtype=x.dtype)
        last, steps, evals = lbfgs_per_example(
            fun, start.reshape(n, d).clone(), max_iter=self.steps,
            history=self.history, max_step=self.max_step, callback=callback, precondition=pre, max_ls=max_ls,
        )
        return best_flow.view(n, 2, h, w), torch.isfinite(best_lflow), evals, steps, last.view(n, 2, h, w)
