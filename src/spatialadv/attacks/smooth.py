"""Smooth adversarial examples: sPGD2 and sC&W.

The attacks of Zhang, Avrithis, Furon & Amsaleg, *Smooth Adversarial Examples*,
EURASIP Journal on Information Security, 2020, §4. Both attacks shape their additive perturbation with the normalised smoothing
``ŝ_α`` guided by the original image ``x_o`` (:mod:`spatialadv.ops.smoothing`,
Eqs. 8-9): the perturbation is smooth where ``x_o`` is flat and may change
sharply across ``x_o``'s edges.

Smoothing hyper-parameters shared by both (see
:class:`~spatialadv.ops.smoothing.GuidedSmoothing`): ``alpha`` (α ∈ [0, 1),
paper MNIST 0.95), ``sigma`` (feature-kernel bandwidth on the [0, 1] scale),
``kernel`` (``"laplacian"`` as in the paper, or ``"gaussian"``), ``solver``
(``"auto"``, ``"direct"``, ``"cg"``), ``cg_tol`` and ``cg_max_iter`` (the CG
solver's tolerance and iteration cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._validation import check_bool, check_int, check_positive
from ..ops.smoothing import GuidedSmoothing
from ..threats import L2Ball, SmoothingParams, SmoothLikeX
from .base import Attack
from .baselines import CarliniWagnerL2
from .iterative import iterate, normalize

__all__ = ["SmoothPGDL2", "SmoothCarliniWagnerL2"]


@dataclass(frozen=True, kw_only=True)
class SmoothPGDL2(Attack, SmoothingParams):
    """sPGD2: L2 PGD whose gradient is smoothed like the image before normalisation (Eq. 12).

    ``x_{k+1} = Π(x_k + step_size · n(ŝ_α(g_k)))`` where ``g_k`` is the input
    gradient of ``CE(y)`` (untargeted; ``−CE(target)`` targeted), ``ŝ_α`` is
    guided by the original ``x``, ``n(v) = v/‖v‖₂`` per example, and ``Π``
    projects onto the L2 ball of radius ``eps`` around ``x`` and clips to [0, 1].
    The paper's "quick and dirty" integration: a projected gradient method on
    perturbations smooth like ``x``. No random start (as the paper's PGD2).

    Args:
        eps: L2 budget in [0, 1] pixel units (paper MNIST 5), > 0.
        step_size: L2 step length (paper MNIST 3), > 0.
        steps: iterations, ≥ 1.
        early_stop: freeze each example at its first successful iterate.
        alpha, sigma, kernel, solver, cg_tol, cg_max_iter: smoothing, see the module.

    Call: ``attack(model, x, y, *, target=None) -> AttackResult`` with
    ``size = ‖x_adv − x‖₂`` and ``delta = x_adv − x``.

    Raises:
        TypeError, ValueError: bad hyper-parameters (named in the message).
    """

    reuses_check_forward: ClassVar[bool] = True
    eps: float = 5.0
    step_size: float = 3.0
    steps: int = 20
    early_stop: bool = True

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        check_positive(self.step_size, "step_size")
        check_int(self.steps, "steps", minimum=1)
        check_bool(self.early_stop, "early_stop")
        self.check_params()

    @property
    def threat(self) -> SmoothLikeX:
        """The threat model, :class:`~spatialadv.threats.SmoothLikeX`.

        The L2 ball of radius ``eps`` of perturbations smoothed like ``x``.
        """
        return SmoothLikeX(eps=self.eps, **self.smoothing_kwargs())

    def _run(self, model, x, y, target, index):
        ball = self.threat
        smoother = ball.smoother(x)
        a = float(self.step_size)

        def step(idx, xa, xs, g):
            return ball.project(xa + a * normalize(smoother(g, idx), 2), xs)

        return iterate(model, x, y, target, x, self.steps, self.early_stop, step)


@dataclass(frozen=True, kw_only=True)
class SmoothCarliniWagnerL2(CarliniWagnerL2, SmoothingParams):
    """sC&W: C&W L2 on a latent variable whose smoothing is the perturbation (Eqs. 16-18).

    Minimise per example ``‖r‖₂² + c · ℓ(f(clip(x + r)))`` with ``r = ŝ_α(z)``
    over the latent ``z`` (started at 0), ``ŝ_α`` guided by the original ``x``,
    and ℓ the margin loss (Eq. 3; :func:`~spatialadv.attacks.base.margin` with
    κ = m). ``c = 1/λ`` of Eq. 18. Optimiser, per-example binary search on
    ``c``, ``early_stop`` and best-iterate bookkeeping are those of
    :class:`~spatialadv.attacks.CarliniWagnerL2`; the kept distortion is that of
    the clipped image, ``‖clip(x + r) − x‖₂``. The gradient w.r.t. ``z`` is the
    gradient w.r.t. ``r`` smoothed once more (Eq. 19), computed by autograd
    through the direct operator or by the CG solver's custom backward.

    Defaults are the paper's MNIST settings: κ = m = 1, lr = 0.1, c = 15.

    Args:
        kappa, initial_const, binary_search_steps, steps, lr, early_stop: as
            :class:`~spatialadv.attacks.CarliniWagnerL2` (``lr`` in ``z`` units,
            i.e. [0, 1] pixel units).
        alpha, sigma, kernel, solver, cg_tol, cg_max_iter: smoothing, see the module.

    Raises:
        TypeError, ValueError: bad hyper-parameters (named in the message).
    """

    kappa: float = 1.0
    initial_const: float = 15.0
    binary_search_steps: int = 5
    steps: int = 100
    lr: float = 0.1

    def __post_init__(self, abort_early: bool | None = None) -> None:
        super().__post_init__(abort_early)
        if self.linf is not None:
            raise ValueError("linf is an option of CarliniWagnerL2's tanh box; sC&W optimises a smoothed latent "
                             "(its perturbation is not boxed), so linf must be None")
        self.check_params()

    @property
    def threat(self) -> L2Ball:
        """The threat model, an unbounded :class:`~spatialadv.threats.L2Ball`.

        sC&W minimises ‖x_adv − x‖₂; its perturbations are smooth like ``x``
        by construction.
        """
        return L2Ball(eps=float("inf"))

    def _prepare(self, x: Tensor) -> GuidedSmoothing:
        return self.smoother(x)

    def _latent_init(self, x: Tensor, ctx: GuidedSmoothing) -> Tensor:
        return torch.zeros_like(x)

    def _image(self, w: Tensor, x: Tensor, idx: Tensor, ctx: GuidedSmoothing) -> tuple[Tensor, Tensor]:
        r = ctx(w, None if idx.numel() == ctx.shape[0] else idx)
        return (x + r).clamp(0.0, 1.0), r.flatten(1).pow(2).sum(1)
