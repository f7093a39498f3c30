"""JSMA, the Jacobian-based saliency map attack (an L0 attack on pixel pairs).

Papernot, McDaniel, Jha, Fredrikson, Celik & Swami, 2016, "The Limitations of
Deep Learning in Adversarial Settings", IEEE EuroS&P 2016: Algorithms 2-3 and
Eqs. 8-10 (saliency maps over pairs of features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn  # noqa: F401  (nn: doctests)

from .._validation import check_int
from ..threats import L0Pixels
from .base import Attack, criterion

__all__ = ["JSMA", "pair_saliency"]


def pair_saliency(alpha: Tensor, beta: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The best pair of features of the pair saliency map, per example (Papernot et al. 2016, Alg. 3).

    For every pair ``p ≠ q`` of features in the search domain,
    ``A = α_p + α_q`` and ``B = β_p + β_q``; the pair is admissible when
    ``A > 0`` and ``B < 0`` and its saliency is ``A · |B|``.

    Args:
        alpha: ``(N, d)`` the (sign-adjusted) derivative of the reference logit.
        beta: ``(N, d)`` the (sign-adjusted) derivative of the sum of the other logits.
        domain: ``(N, d)`` bool, the features that may still change.

    Returns:
        ``(p, q, found)``: the two feature indices ``(N,)`` int64 of the most
        salient admissible pair and ``(N,)`` bool whether one exists (where it
        does not, ``p = q = 0``). Ties go to the smallest flattened index
        ``p·d + q`` (deterministic).
    """
    d = alpha.shape[1]
    a = alpha[:, :, None] + alpha[:, None, :]
    b = beta[:, :, None] + beta[:, None, :]
    ok = (a > 0) & (b < 0) & domain[:, :, None] & domain[:, None, :]
    ok &= ~torch.eye(d, dtype=torch.bool, device=alpha.device)
    score = torch.where(ok, a * (-b), torch.full_like(a, float("-inf")))
    best = score.flatten(1).argmax(1)
    found = ok.flatten(1).any(1)
    p, q = best // d, best % d
    zero = torch.zeros_like(p)
    return torch.where(found, p, zero), torch.where(found, q, zero), found


@dataclass(frozen=True, kw_only=True)
class JSMA(Attack):
    """Jacobian-based saliency map attack, JSMA (L0), targeted and untargeted.

    Papernot et al., 2016, "The Limitations of Deep Learning in Adversarial
    Settings", IEEE EuroS&P 2016, Algorithms 2-3, Eq. 10.

    Per example, until the criterion holds: compute the forward derivative of
    the logits, choose the most salient admissible pair of features
    ``(p, q)`` in the search domain (:func:`pair_saliency`), and change both by
    ``theta`` (clipped to [0, 1]). A feature leaves the search domain when it
    reaches 0 or 1 (Alg. 3); the example stops, unsuccessful, when no
    admissible pair is left or when changing the pair would make more than
    ``⌊gamma · C·H·W⌋`` features differ from ``x`` (the paper's maximum
    distortion Υ).

    Args:
        theta: change per selected feature in [0, 1] pixel units, in
            [-1, 1] and ≠ 0; > 0 increases intensities (the paper's MNIST
            setting θ = +1), < 0 decreases them.
        gamma: maximum fraction of changed features, in (0, 1] (the paper's
            Υ = 14.5 % on MNIST).
        batch_chunk: examples whose ``(d, d)`` pair maps are built at once
            (memory only; results do not depend on it), int ≥ 1. Memory is
            about ``16 · batch_chunk · d²`` bytes in float32 (``d = C·H·W``):
            ~160 MB at 28×28 and the default 16; lower it for larger images.

    Call: ``attack(model, x, y, *, target=None) -> AttackResult``;
    ``size`` is the number of changed features ``‖x_adv − x‖₀`` (``unit
    "l0"``; pixels for one-channel images); ``grad_evals`` the saliency steps
    (each one forward pass and the two backward passes of ``∂Z_ref/∂x`` and
    ``∂ΣZ/∂x``), the step that finds the example successful included;
    ``delta = x_adv − x``.

    Convention:
        * The derivative is that of the **logits** Z, not the softmax: the
          paper notes the softmax saturates, and its public implementation
          and the peers (cleverhans, advertorch) differentiate the logits.
        * Targeted (the paper): ``α = ∂Z_t/∂x``, ``β = Σ_{j≠t} ∂Z_j/∂x``.
          Untargeted (not in the paper; the "non-targeted JSMA" reading):
          ``α = −∂Z_y/∂x``, ``β = −Σ_{j≠y} ∂Z_j/∂x`` — the pair that lowers
          the true class and raises the others.
          For ``theta < 0`` both signs flip (Eq. 9's decreasing map).
        * Features are the ``C·H·W`` values; the search domain starts as the
          features that can move in ``theta``'s direction (``x < 1`` for
          ``theta > 0``, ``x > 0`` for ``theta < 0``).
        * Deterministic: ``index`` is ignored; an example's result does not
          depend on its batch-mates (up to floating-point ties).

    Raises:
        TypeError: a hyper-parameter has the wrong type.
        ValueError: ``theta`` not in [-1, 1] or 0; ``gamma`` not in (0, 1].

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
        >>> x = torch.rand(2, 1, 4, 4) * 0.5
        >>> res = JSMA(theta=1.0, gamma=0.5)(model, x, model(x).argmax(1))
        >>> bool((res.size <= 8).all())
        True
    """

    theta: float = 1.0
    gamma: float = 0.145
    batch_chunk: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.theta, bool) or not isinstance(self.theta, (int, float)):
            raise TypeError(f"theta must be a number in [-1, 1], ≠ 0, got {type(self.theta).__name__}")
        if not (-1.0 <= float(self.theta) <= 1.0) or float(self.theta) == 0.0:
            raise ValueError(f"theta must be in [-1, 1] and ≠ 0, got {self.theta}")
        L0Pixels(gamma=self.gamma)  # validates gamma
        check_int(self.batch_chunk, "batch_chunk", minimum=1)

    @property
    def threat(self) -> L0Pixels:
        """:class:`~spatialadv.threats.L0Pixels` with fraction ``gamma``."""
        return L0Pixels(gamma=self.gamma)

    def _run(self, model, x, y, target, index):
        n = x.shape[0]
        d = x[0].numel()
        theta = float(self.theta)
        budget = self.threat.budget(x)
        sign = 1.0 if theta > 0 else -1.0
        x_adv = x.clone().flatten(1)
        x0 = x.flatten(1)
        domain = x_adv < 1 if theta > 0 else x_adv > 0
        ref = target if target is not None else y
        ref_sign = 1.0 if target is not None else -1.0
        grad_evals = torch.zeros(n, dtype=torch.long, device=x.device)
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        while bool(active.any()):
            idx = active.nonzero().squeeze(1)
            xs = x_adv[idx].view(-1, *x.shape[1:]).requires_grad_(True)
            with torch.enable_grad():
                logits = model(xs)
                r = ref[idx]
                z_ref = logits.gather(1, r[:, None]).sum()
                (g_ref,) = torch.autograd.grad(z_ref, xs, retain_graph=True)
                (g_all,) = torch.autograd.grad(logits.sum(), xs)
            grad_evals[idx] += 1
            done = criterion(logits.detach().argmax(1), y[idx], None if target is None else target[idx])
            g_ref, g_all = g_ref.flatten(1), g_all.flatten(1)
            alpha = (ref_sign * sign) * g_ref
            beta = (ref_sign * sign) * (g_all - g_ref)
            dom = domain[idx] & ~done[:, None]
            parts = [pair_saliency(alpha[i:i + self.batch_chunk], beta[i:i + self.batch_chunk],
                                   dom[i:i + self.batch_chunk]) for i in range(0, len(idx), self.batch_chunk)]
            p = torch.cat([t[0] for t in parts])
            q = torch.cat([t[1] for t in parts])
            found = torch.cat([t[2] for t in parts]) & ~done
            rows = torch.arange(len(idx), device=x.device)
            changed = x_adv[idx] != x0[idx]
            new_changed = changed.clone()
            new_changed[rows, p] = True
            new_changed[rows, q] = True
            go = found & (new_changed.sum(1) <= budget)
            active[idx[~go]] = False
            g = idx[go]
            if g.numel() == 0:
                continue
            pg, qg = p[go], q[go]
            for f in (pg, qg):
                v = (x_adv[g, f] + theta).clamp(0.0, 1.0)
                x_adv[g, f] = v
                at_bound = (v >= 1.0) if theta > 0 else (v <= 0.0)
                domain[g, f] = domain[g, f] & ~at_bound
            if d < 2:  # pragma: no cover - a pair needs two features
                active[:] = False
        return {"x_adv": x_adv.view_as(x), "grad_evals": grad_evals}
