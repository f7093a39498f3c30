"""Projected gradient attack over spatially smooth flows (the smooth-flow certificate's threat model).

The threat model is that of *Provable Defenses against Spatially Transformed
Adversarial Inputs: Impossibility and Possibility Results* (ICLR 2019
submission; "the provable-defenses paper"), certified by
:mod:`spatialadv.certify.bounds`; the attack is its empirical counterpart
(moved here from ``spatialadv.certify.lower_bound``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_int, check_positive
from ..ops.warp import flow_warp
from ..threats import FlowSmoothnessBall
from .base import Attack, margin

__all__ = ["SmoothFlowPGD"]


@dataclass(frozen=True, kw_only=True)
class SmoothFlowPGD(Attack):
    """Projected gradient attack over flows with ``ℓ_diff(r) ≤ ε`` (the certificate's threat model).

    The flow is parametrised as ``r = ε (MᵀM)^{-1/2} s`` per channel with
    ``‖s‖₂ ≤ 1`` (both channels jointly), so the projection is onto the unit
    ball (:class:`~spatialadv.threats.FlowSmoothnessBall`). Ascent on the
    margin loss (stAdv Eq. 3 with the sign flipped) with normalised gradient
    steps of size ``step_size`` (in s units); the best iterate (largest
    margin towards the criterion) is kept per example and finally rescaled
    into the budget. The warp is :func:`spatialadv.ops.flow_warp` with zero
    padding.

    Random start: ``s₀`` is a Gaussian direction times a radius uniform in
    [0, 1], drawn per example from a generator seeded by ``(seed, *row)``,
    ``row`` the example's row of the call's ``index``
    (:meth:`~spatialadv.threats.FlowSmoothnessBall.random_latent`), so it does
    not depend on the batch.

    Args:
        eps: budget ε > 0 on ℓ_diff (pixels).
        steps: gradient steps. step_size: step in s units (unit ball radius 1).
        border, ridge: the smoothness operator.
        random_start: start from a random point of the ball (seeded by ``seed``).
        seed: int ≥ 0.

    Result: ``AttackResult`` with ``flow`` (pixels), ``unit = "flow_smoothness"``,
    ``size`` = ℓ_diff of the flow (pixels); ``grad_evals`` = ``steps + 1``
    gradient evaluations per example; ``forward_evals`` 0.

    Raises:
        TypeError, ValueError: invalid hyper-parameters (named in the message).
    """


    eps: float = 1.0
    steps: int = 100
    step_size: float = 0.1
    border: str = "zeros"
    ridge: float = 0.0
    random_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_int(self.steps, "steps")
        check_positive(self.step_size, "step_size")
        self.threat  # validates eps, border, ridge
        check_bool(self.random_start, "random_start")
        check_int(self.seed, "seed", minimum=0)

    @property
    def threat(self) -> FlowSmoothnessBall:
        """:class:`~spatialadv.threats.FlowSmoothnessBall` (``eps``, ``border``, ``ridge``)."""
        return FlowSmoothnessBall(eps=self.eps, border=self.border, ridge=self.ridge)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, index: Tensor) -> dict:
        n, _, h, w = x.shape
        ball = self.threat
        basis = ball.latent_basis(h, w, dtype=x.dtype, device=x.device)
        if self.random_start:
            s = ball.random_latent(x, self.seed, index)
        else:
            s = torch.zeros(n, 2, h * w, dtype=x.dtype, device=x.device)

        best_loss = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        best_flow = torch.zeros(n, 2, h, w, dtype=x.dtype, device=x.device)
        for _ in range(self.steps + 1):
            s = s.detach().requires_grad_(True)
            with torch.enable_grad():
                flow = ball.latent_to_flow(s, basis, h, w)
                loss = margin(model(flow_warp(x, flow)), y, target, kappa=float("inf"))
                (g,) = torch.autograd.grad(loss.sum(), s)
            better = loss.detach() < best_loss
            best_loss = torch.where(better, loss.detach(), best_loss)
            best_flow[better] = flow.detach()[better]
            with torch.no_grad():
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1)
                s = ball.project_latent(s - self.step_size * g)
        best_flow = ball.project(best_flow)
        return {"x_adv": flow_warp(x, best_flow).clamp(0, 1), "flow": best_flow,
                "grad_evals": torch.full((n,), self.steps + 1, dtype=torch.long, device=x.device)}
