"""Adaptive attacks on detectors: attack the classifier and the detector at once.

Carlini & Wagner, 2017, "Adversarial Examples Are Not Easily Detected:
Bypassing Ten Detection Methods", AISec 2017. Moved here from
``spatialadv.defenses.lan``: the detector is passed in as a module, so the
attack does not depend on the defense's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_bool, check_int, check_positive
from ..threats import LinfBall
from .base import Attack

__all__ = ["LANAdaptivePGD"]


@dataclass(frozen=True, kw_only=True)
class LANAdaptivePGD(Attack):
    """Adaptive L∞ PGD against the LAN detector (Carlini & Wagner, AISec 2017, §"perfect-knowledge" attacks).

    Attacks ``f1`` (the model it is called with) to the target while keeping
    the detector's mask class on the target too, so the input is not
    flagged: from ``x``, ``steps`` signed-gradient steps of size ``step_size``
    descending ``CE(f1(x'), t) + CE(f2(g(x')), t)``, projected onto the
    ε-ball and [0, 1]; an example stops at its first iterate where both
    ``argmax f1 = t`` and ``argmax f2(g) = t``. Targeted only.

    Args:
        detector: the detector's classifier branch, an ``nn.Module`` mapping
            images ``(N, C, H, W)`` to logits ``(N, K)`` over the same
            classes: for the LAN detector, the
            :class:`~spatialadv.defenses.LANDetector` itself (its ``forward``
            is ``f2(g(x))``). Frozen, in eval mode, like the model.
        eps: L∞ budget in [0, 1] pixel units. step_size: per step. steps: iterations.
        early_stop: stop an example once it both fools ``f1`` and evades the detector.

    ``success`` is the contract's (``f1`` predicts the target); whether the
    detector is evaded is read off ``detector.predict(x_adv)``.

    Raises:
        TypeError, ValueError: invalid hyper-parameters; untargeted call.
    """

    detector: nn.Module
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 100
    early_stop: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.detector, nn.Module):
            raise TypeError(f"detector must be an nn.Module returning logits (e.g. a LANDetector), got "
                            f"{type(self.detector).__name__}")
        check_positive(self.eps, "eps")
        check_positive(self.step_size, "step_size")
        check_int(self.steps, "steps")
        check_bool(self.early_stop, "early_stop")

    @property
    def threat(self) -> LinfBall:
        """:class:`~spatialadv.threats.LinfBall` of radius ``eps``."""
        return LinfBall(eps=self.eps)

    def _run(self, model, x, y, target, index):
        if target is None:
            raise ValueError("LANAdaptivePGD is targeted: pass target")
        ball, a = self.threat, float(self.step_size)
        x_adv = x.clone()
        grad_evals = torch.zeros(len(x), dtype=torch.long, device=x.device)
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs = x_adv[idx].requires_grad_(True)
            t = target[idx]
            with torch.enable_grad():
                z1, z2 = model(xs), self.detector(xs)
                loss = F.cross_entropy(z1, t, reduction="sum") + F.cross_entropy(z2, t, reduction="sum")
                (grad,) = torch.autograd.grad(loss, xs)
            grad_evals[idx] += 1
            if self.early_stop:
                done = (z1.argmax(1) == t) & (z2.argmax(1) == t)
                active[idx[done]] = False
                keep = ~done
                idx, grad = idx[keep], grad[keep]
                if idx.numel() == 0:
                    break
            x_adv[idx] = ball.project(x_adv[idx] - a * grad.sign(), x[idx]).detach()
        return {"x_adv": x_adv, "grad_evals": grad_evals}
