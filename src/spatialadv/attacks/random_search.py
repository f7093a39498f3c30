"""A gradient-free random search in an L∞ or L2 ball: the black-box check against gradient masking.

AutoAttack (Croce & Hein, *Reliable Evaluation of Adversarial Robustness with
an Ensemble of Diverse Parameter-free Attacks*, ICML 2020) flags a defence
whose robustness under gradient attacks is not confirmed by a black-box
attack (its Square attack): if a search that never reads a gradient breaks
examples that the gradient attacks could not, the gradients are masked or
obfuscated and the gradient attacks' figure is not to be trusted. This is the
simplest such search: random points on the boundary of the ball.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._validation import check_int, check_positive
from ..threats import L2Ball, LinfBall, Threat, per_example_draws
from .base import Attack, criterion

__all__ = ["RandomSearch"]


@dataclass(frozen=True, kw_only=True)
class RandomSearch(Attack):
    """``tries`` random perturbations on the boundary of the ball per example; the first that succeeds is kept.

    L∞: ``δ = eps · s`` with ``s`` uniform in ``{−1, 1}^d`` (a random corner of
    the box). L2: ``δ = eps · u / ‖u‖₂`` with ``u`` Gaussian (a uniform point of
    the sphere). Then ``x_adv = clip_[0,1](x + δ)``, which stays in the ball.
    Every draw of an example comes from a generator seeded by ``(seed, *row)``
    (its row of ``index``; :func:`spatialadv.threats.per_example_draws`), so the
    result does not depend on the batch.

    Args:
        norm: ``"linf"`` or ``"l2"``; the threat model and the unit of ``size``.
        eps: budget in [0, 1] pixel units, > 0.
        tries: random points per example, int ≥ 1.
        seed: int ≥ 0.

    Result: ``grad_evals`` 0 (no gradient), ``forward_evals`` the points evaluated
    per example (it stops at the first success), ``delta = x_adv − x``.

    Raises:
        TypeError, ValueError: invalid hyper-parameters (named in the message).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> res = RandomSearch(eps=0.1, tries=5)(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]))
        >>> bool((res.size <= 0.1 + 1e-6).all()), res.grad_evals.tolist()
        (True, [0, 0])
    """

    norm: str = "linf"
    eps: float = 0.3
    tries: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        check_positive(self.eps, "eps")
        check_int(self.tries, "tries", minimum=1)
        check_int(self.seed, "seed", minimum=0)

    @property
    def threat(self) -> Threat:
        """:class:`~spatialadv.threats.LinfBall` or :class:`~spatialadv.threats.L2Ball` of radius ``eps``."""
        return LinfBall(eps=self.eps) if self.norm == "linf" else L2Ball(eps=self.eps)

    def _run(self, model, x, y, target, index):
        n, d = x.shape[0], x[0].numel()
        k, eps = self.tries, float(self.eps)

        def draw(g: torch.Generator) -> Tensor:
            if self.norm == "linf":
                return (torch.randint(0, 2, (k, d), generator=g).to(x.dtype) * 2 - 1) * eps
            u = torch.randn(k, d, generator=g, dtype=x.dtype)
            return u / u.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny) * eps

        deltas = per_example_draws(x, self.seed, index, draw)  # (N, k, d)
        x_adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        evals = torch.zeros(n, dtype=torch.long, device=x.device)
        with torch.no_grad():
            for t in range(k):
                todo = (~found).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                cand = (x[todo] + deltas[todo, t].view_as(x[todo])).clamp(0, 1)
                pred = model(cand).argmax(1)
                evals[todo] += 1
                ok = criterion(pred, y[todo], None if target is None else target[todo])
                x_adv[todo[ok]] = cand[ok]
                found[todo[ok]] = True
        return {"x_adv": x_adv, "grad_evals": torch.zeros(n, dtype=torch.long, device=x.device), "forward_evals": evals}
