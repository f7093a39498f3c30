"""Target-distortion sweep: the smallest successful distortion over several runs (Zhang et al. 2020, §5.1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..threats import L2Ball
from .base import Attack

__all__ = ["MinDistortionSweep"]


@dataclass(frozen=True, kw_only=True)
class MinDistortionSweep(Attack):
    """Run several attacks and keep, per example, the successful result with the smallest L2 distortion.

    Typically the attacks are one attack at a set of target ε.

    This is how the protocol of *Smooth Adversarial Examples* (§5.1) compares
    attacks that target a distortion (FGSM, I-FGSM, PGD2, sPGD2) with attacks
    that target optimality (C&W): "the attack succeeds on image x_o if it
    succeeds on any of the runs; D(x_o) is the minimum distortion over all runs".
    Every run sees every example (no run is skipped because an earlier one
    succeeded), so the result of an example does not depend on the order.

    Args:
        attacks: non-empty tuple of attacks, e.g.
            ``tuple(FGSM(eps=e) for e in (0.05, 0.1, 0.2, 0.3))``.

    Call: ``attack(model, x, y, *, target=None, index=None) -> AttackResult``
    with ``size = ‖x_adv − x‖₂`` ([0, 1] pixel units), ``delta = x_adv − x``,
    and ``grad_evals`` and ``forward_evals`` summed over the runs (as for any
    call, each run's own class-count probe and success check are not counted). ``index``
    is passed on to every run, so their random draws follow the examples'
    identities.

    Raises:
        TypeError: ``attacks`` is not a tuple of :class:`Attack`.
        ValueError: ``attacks`` is empty.
    """

    attacks: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.attacks, tuple) or not all(isinstance(a, Attack) for a in self.attacks):
            raise TypeError("attacks must be a tuple of Attack objects")
        if not self.attacks:
            raise ValueError("attacks must hold at least one attack")

    @property
    def threat(self) -> L2Ball:
        """An unbounded :class:`~spatialadv.threats.L2Ball`: the sweep keeps the smallest L2 distortion."""
        return L2Ball(eps=float("inf"))

    def _run(self, model, x, y, target, index):
        n = x.shape[0]
        best = x.clone()
        best_d = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        grad_evals = torch.zeros(n, dtype=torch.long, device=x.device)
        forward_evals = torch.zeros(n, dtype=torch.long, device=x.device)
        l2 = self.threat
        for attack in self.attacks:
            res = attack(model, x, y, target=target, index=index)
            d = l2.size(res.x_adv - x)
            better = res.success & (d < best_d)
            best[better] = res.x_adv[better]
            best_d[better] = d[better]
            grad_evals += res.grad_evals
            forward_evals += res.forward_evals
        return {"x_adv": best, "grad_evals": grad_evals, "forward_evals": forward_evals}
