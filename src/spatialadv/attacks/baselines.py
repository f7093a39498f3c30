"""L_p baseline attacks: FGSM, I-FGSM (BIM), PGD (L∞ / L2), MIM and Carlini-Wagner L2.

All attacks work on images ``(N, C, H, W)`` with pixels in [0, 1]; budgets
(``eps``) and step sizes are in the same [0, 1] pixel units. Perturbations are
additive (``AttackResult.delta = x_adv − x``) and ``AttackResult.size`` is the
per-example L∞ or L2 norm of ``delta`` (``AttackResult.unit``, each attack's ``threat.unit``).

Conventions shared by every attack here:

* Losses are per example; input gradients come from
  :func:`~spatialadv.attacks.base.input_grad` (``torch.autograd.grad`` w.r.t.
  the input only), so model parameters never receive ``.grad``.
* Untargeted attacks ascend the cross-entropy of the true label ``y``;
  targeted attacks descend the cross-entropy of ``target``.
* Every iterate is projected onto the ε-ball around ``x`` and then clipped to
  [0, 1]. Clipping moves each coordinate towards ``x``, so the iterate stays
  inside the ball.
* ``early_stop`` freezes an example at the first iterate that meets the attack
  criterion (decided per example, never for the whole batch); frozen examples
  are no longer evaluated.
* ``grad_evals`` counts the gradient evaluations (forward+backward) spent on
  each example (with ``early_stop``, including the one that found the example
  successful); ``forward_evals`` the forward-only evaluations (0, except the
  evaluation of C&W's last iterate).
* Projections and random starts come from the threat models
  :class:`~spatialadv.threats.LinfBall` and :class:`~spatialadv.threats.L2Ball`
  (``attack.threat``).
* An example's result never depends on the other images in its batch. The
  random start of :class:`PGD` depends only on ``seed`` and the example's
  identity (its row of the call's ``index``; see :class:`PGD`).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn  # noqa: F401  (nn: doctests)

from .._validation import check_bool, check_int, check_positive
from ..threats import L2Ball, LinfBall, Threat
from .base import Attack, criterion, deprecated_keyword, margin
from .iterative import iterate, normalize

__all__ = ["FGSM", "IFGSM", "PGD", "MIM", "CarliniWagnerL2"]

_NORMS = ("linf", "l2")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _check_norm(value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"norm must be a str, one of {_NORMS}, got {type(value).__name__}")
    if value not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# gradient-sign attacks (L∞)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """Fast Gradient Sign Method, FGSM (L∞).

    Goodfellow et al., 2015, "Explaining and Harnessing Adversarial Examples",
    Eq. in Sec. 4.

    One step ``x_adv = clip_[0,1](x + eps · sign(∇_x CE(f(x), y)))`` (untargeted),
    or ``x − eps · sign(∇_x CE(f(x), target))`` (targeted).

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0.

    Call: ``attack(model, x, y, *, target=None) -> AttackResult`` with
    ``x (N, C, H, W)`` in [0, 1]; ``size`` is the L∞ norm of ``x_adv − x``;
    ``grad_evals`` is 1 for every example.

    Raises:
        TypeError: ``eps`` is not a number.
        ValueError: ``eps`` ≤ 0 or not finite.
    """

    reuses_check_forward: ClassVar[bool] = True
    eps: float = 0.3

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")

    @property
    def threat(self) -> LinfBall:
        """:class:`~spatialadv.threats.LinfBall` of radius ``eps``."""
        return LinfBall(eps=self.eps)

    def _run(self, model, x, y, target, index):
        eps, ball = float(self.eps), self.threat
        return iterate(
            model, x, y, target, x, 1, False,
            lambda idx, xa, x0, g: ball.project(xa + eps * g.sign(), x0),
        )


@dataclass(frozen=True, kw_only=True)
class IFGSM(Attack):
    """Iterative FGSM, a.k.a. Basic Iterative Method (L∞).

    Kurakin et al., 2017, "Adversarial Examples in the Physical World", Sec. 2.2.

    From ``x_0 = x`` (no random start):
    ``x_{t+1} = Clip_{x,eps}(x_t + step_size · sign(∇_x L(x_t)))`` with
    ``L = CE(y)`` (untargeted) or ``L = −CE(target)`` (targeted), clipped to
    the L∞ ball and to [0, 1]. Returns the last iterate (or, with
    ``early_stop``, the first successful one).

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0.
        step_size: per-step change in [0, 1] pixel units, > 0.
        steps: number of iterations, int ≥ 1.
        early_stop: freeze each example at its first successful iterate.

    Raises:
        TypeError: a hyper-parameter has the wrong type.
        ValueError: ``eps`` or ``step_size`` ≤ 0, ``steps`` < 1.
    """

    reuses_check_forward: ClassVar[bool] = True
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 40
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        check_positive(self.step_size, "step_size")
        check_int(self.steps, "steps", minimum=1)
        check_bool(self.early_stop, "early_stop")

    @property
    def threat(self) -> LinfBall:
        """:class:`~spatialadv.threats.LinfBall` of radius ``eps``."""
        return LinfBall(eps=self.eps)

    def _run(self, model, x, y, target, index):
        a, ball = float(self.step_size), self.threat
        return iterate(
            model, x, y, target, x, self.steps, self.early_stop,
            lambda idx, xa, x0, g: ball.project(xa + a * g.sign(), x0),
        )


@dataclass(frozen=True, kw_only=True)
class MIM(Attack):
    """Momentum Iterative Method, MI-FGSM (L∞).

    Dong et al., 2018, "Boosting Adversarial Attacks with Momentum",
    Algorithm 1, Eqs. 6-7.

    ``g_{t+1} = decay · g_t + ∇_x L(x_t) / ‖∇_x L(x_t)‖₁`` (per example),
    ``x_{t+1} = Clip_{x,eps}(x_t + step_size · sign(g_{t+1}))``, from ``x_0 = x``,
    ``g_0 = 0``; ``L`` as in :class:`IFGSM`.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0.
        step_size: per-step change in [0, 1] pixel units, > 0 (the paper uses
            ``eps / steps``).
        steps: number of iterations, int ≥ 1.
        decay: momentum decay factor μ ≥ 0 (``0`` gives I-FGSM).
        early_stop: freeze each example at its first successful iterate.

    Raises:
        TypeError: a hyper-parameter has the wrong type.
        ValueError: ``eps`` or ``step_size`` ≤ 0, ``decay`` < 0, ``steps`` < 1.
    """

    reuses_check_forward: ClassVar[bool] = True
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 40
    decay: float = 1.0
    early_stop: bool = False

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        check_positive(self.step_size, "step_size")
        check_int(self.steps, "steps", minimum=1)
        check_positive(self.decay, "decay", allow_zero=True)
        check_bool(self.early_stop, "early_stop")

    @property
    def threat(self) -> LinfBall:
        """:class:`~spatialadv.threats.LinfBall` of radius ``eps``."""
        return LinfBall(eps=self.eps)

    def _run(self, model, x, y, target, index):
        a, mu, ball = float(self.step_size), float(self.decay), self.threat
        momentum = torch.zeros_like(x)

        def step(idx, xa, x0, g):
            m = mu * momentum[idx] + normalize(g, 1)
            momentum[idx] = m
            return ball.project(xa + a * m.sign(), x0)

        return iterate(model, x, y, target, x, self.steps, self.early_stop, step)


# ---------------------------------------------------------------------------------------------
# PGD (L∞ or L2)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """Projected Gradient Descent, PGD (L∞ or L2).

    Madry et al., 2018, "Towards Deep Learning Models Resistant to Adversarial
    Attacks", Eq. 2.

    ``x_{t+1} = Π_{B(x, eps) ∩ [0,1]}(x_t + step_size · s_t)`` with
    ``s_t = sign(∇L)`` (``"linf"``) or ``s_t = ∇L / ‖∇L‖₂`` per example
    (``"l2"``); ``L = CE(y)`` (untargeted) or ``−CE(target)`` (targeted). The
    L2 projection rescales ``x_adv − x`` to norm ≤ eps per example. Returns
    the last iterate (or, with ``early_stop``, the first successful one).

    Random start: ``x_0 = clip_[0,1](x + δ_0)`` with ``δ_0`` uniform in the
    ball — ``U[−eps, eps]^d`` for L∞; for L2 a Gaussian direction normalised
    to unit length times radius ``eps · U^(1/d)`` (``d = C·H·W``).

    Reproducibility and batch independence: the noise of an example is drawn
    on the CPU from a ``torch.Generator`` seeded by
    ``numpy.random.SeedSequence([seed, *row])`` — ``row`` its row of the
    call's ``index`` (default ``[i]`` for position ``i``) — and then moved to
    ``x.device`` (:meth:`spatialadv.threats.LinfBall.random_start`). It
    therefore depends only on ``(seed, row)``, never on the other images of
    the batch: pass ``index=`` the dataset indices and an image gets the same
    start alone or at any position of any batch.

    Args:
        norm: the ball, ``"linf"`` or ``"l2"``: selects :attr:`threat`, whose
            ``unit`` (the same name) is ``AttackResult.unit``.
        eps: budget in [0, 1] pixel units (L∞ or L2 norm of ``x_adv − x``), > 0.
        step_size: step length in the same units, > 0.
        steps: number of iterations, int ≥ 1.
        random_start: start from a uniform random point in the ball.
        seed: int ≥ 0, seed of the random start.
        early_stop: freeze each example at its first successful iterate.

    Raises:
        TypeError: a hyper-parameter has the wrong type.
        ValueError: ``norm`` not in ``("linf", "l2")``, ``eps`` or
            ``step_size`` ≤ 0, ``steps`` < 1, ``seed`` < 0.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
        >>> x, y = torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])
        >>> res = PGD(norm="l2", eps=0.5, steps=10)(model, x, y)
        >>> res.unit, tuple(res.x_adv.shape), bool((res.size <= 0.5 + 1e-5).all())
        ('l2', (5, 1, 2, 2), True)
    """

    # a hyper-parameter: it selects the threat model (``threat``), whose ``unit`` is ``AttackResult.unit``
    norm: str = "linf"
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 40
    random_start: bool = True
    seed: int = 0
    early_stop: bool = False

    def __post_init__(self) -> None:
        _check_norm(self.norm)
        check_positive(self.eps, "eps")
        check_positive(self.step_size, "step_size")
        check_int(self.steps, "steps", minimum=1)
        check_bool(self.random_start, "random_start")
        check_int(self.seed, "seed", minimum=0)
        check_bool(self.early_stop, "early_stop")

    @property
    def threat(self) -> Threat:
        """:class:`~spatialadv.threats.LinfBall` or :class:`~spatialadv.threats.L2Ball` of radius ``eps``."""
        return LinfBall(eps=self.eps) if self.norm == "linf" else L2Ball(eps=self.eps)

    def _run(self, model, x, y, target, index):
        a, ball = float(self.step_size), self.threat
        x0 = ball.project(x + ball.random_start(x, self.seed, index), x) if self.random_start else x
        if self.norm == "linf":
            def step(idx, xa, xs, g):
                return ball.project(xa + a * g.sign(), xs)
        else:
            def step(idx, xa, xs, g):
                return ball.project(xa + a * normalize(g, 2), xs)

        return iterate(model, x, y, target, x0, self.steps, self.early_stop, step)


# ---------------------------------------------------------------------------------------------
# Carlini-Wagner L2
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CarliniWagnerL2(Attack):
    """Carlini-Wagner L2 attack.

    Carlini & Wagner, 2017, "Towards Evaluating the Robustness of Neural
    Networks", Sec. V-A; objective f6, Eq. in Sec. IV.

    Change of variables ``x_adv = (tanh(w) + 1) / 2`` (always in [0, 1]),
    minimise per example
    ``‖x_adv − x‖₂² + c · max(Z_y − max_{i≠y} Z_i, −κ)`` (untargeted) or
    ``… + c · max(max_{i≠t} Z_i − Z_t, −κ)`` (targeted) — see
    :func:`~spatialadv.attacks.base.margin` — with Adam on ``w`` (lr ``lr``,
    β = (0.9, 0.999), ε = 1e-8; per-coordinate, so per example). ``w`` starts
    at ``atanh((2x − 1)(1 − 1e-6))`` (pixels at exactly 0 or 1 are pulled in by
    1e-6 so ``atanh`` stays finite) at every binary-search step.

    Per-example binary search on ``c`` (Sec. V-A): after each search step, an
    example that succeeded sets ``upper = min(upper, c)``, one that failed sets
    ``lower = max(lower, c)``; then ``c = (lower + upper) / 2`` once an upper
    bound is known, else ``c = 10 c``. The smallest-L2 successful iterate of
    each example over all steps is returned (the input where none succeeded).
    An iterate counts as successful when the attack criterion holds and the
    margin is ≤ −κ.

    ``early_stop`` (C&W's ``abort_early``): every ``max(steps // 10, 1)`` iterations, an example whose
    loss has not decreased by at least 0.01 % since the last check stops for
    the rest of this binary-search step (decided per example).

    Args:
        kappa: confidence margin κ ≥ 0 in logit units.
        initial_const: initial trade-off constant ``c`` > 0.
        binary_search_steps: number of binary-search steps on ``c``, int ≥ 1.
        steps: Adam iterations per binary-search step, int ≥ 1.
        lr: Adam learning rate (in tanh space), > 0.
        early_stop: stop an example's inner loop when its loss stalls.
        abort_early: deprecated alias of ``early_stop`` (a
            ``DeprecationWarning``; kept because committed reports name it).
        linf: optional L∞ bound ε in (0, 1] ([0, 1] pixel units): the change of
            variables then maps into the box ``[max(x − ε, 0), min(x + ε, 1)]``,
            ``x_adv = lo + (hi − lo)(tanh(w) + 1)/2`` (Carlini & Wagner's
            box-constrained variable with the L∞ ball as the box), so every
            iterate is within ε of ``x`` in L∞ while the L2 size is minimised.
            Xiao et al. (ICLR 2018) bound C&W this way for their Fig. 4 (L∞ 0.3 on MNIST).
            None (default): the box is [0, 1].

    Call: ``attack(model, x, y, *, target=None) -> AttackResult``;
    ``size`` is ``‖x_adv − x‖₂`` in [0, 1] pixel units; ``grad_evals`` is the
    total number of gradient evaluations per example; ``forward_evals`` counts
    the forward-only evaluation of each binary-search step's last iterate
    (for examples still active at its end).

    Raises:
        TypeError: a hyper-parameter has the wrong type.
        ValueError: ``kappa`` < 0, ``initial_const`` or ``lr`` ≤ 0,
            ``binary_search_steps`` or ``steps`` < 1, ``linf`` outside (0, 1].
    """

    kappa: float = 0.0
    initial_const: float = 1.0
    binary_search_steps: int = 6
    steps: int = 200
    lr: float = 0.05
    early_stop: bool = True
    linf: float | None = None
    abort_early: InitVar[bool | None] = None

    _BETAS: ClassVar[tuple[float, float]] = (0.9, 0.999)
    _ADAM_EPS: ClassVar[float] = 1e-8
    _NO_UPPER: ClassVar[float] = 1e10

    def __post_init__(self, abort_early: bool | None = None) -> None:
        deprecated_keyword(self, "abort_early", "early_stop", abort_early, True)
        check_positive(self.kappa, "kappa", allow_zero=True)
        check_positive(self.initial_const, "initial_const")
        check_int(self.binary_search_steps, "binary_search_steps", minimum=1)
        check_int(self.steps, "steps", minimum=1)
        check_positive(self.lr, "lr")
        check_bool(self.early_stop, "early_stop")
        if self.linf is not None:
            check_positive(self.linf, "linf")
            if self.linf > 1:
                raise ValueError(f"linf must be in (0, 1] ([0, 1] pixel units), got {self.linf!r}")

    def _box(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The per-pixel box ``(lo, hi)`` of the change of variables with ``linf``; None for [0, 1]."""
        if self.linf is None:
            return None
        eps = float(self.linf)
        return (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)

    @classmethod
    def _search_update(cls, found: Tensor, c: Tensor, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One per-example binary-search update of ``c`` (Carlini & Wagner's reference code).

        Args:
            found: ``(N,)`` bool, whether the example succeeded with constant ``c``.
            c: ``(N,)`` the constant of the step just run, > 0.
            lower: ``(N,)`` the largest constant known to fail (starts at 0).
            upper: ``(N,)`` the smallest constant known to succeed (starts at
                1e10, meaning "no upper bound yet").

        Returns:
            ``(c, lower, upper)`` for the next binary-search step.
        """
        upper = torch.where(found, torch.minimum(upper, c), upper)
        lower = torch.where(found, lower, torch.maximum(lower, c))
        c = torch.where(upper < cls._NO_UPPER / 10, (lower + upper) / 2, c * 10)
        return c, lower, upper

    # -- parametrisation hooks (overridden by SmoothCarliniWagnerL2) ---------------------------
    def _prepare(self, x: Tensor) -> object:
        """Per-call context shared by the hooks below (none for plain C&W)."""
        return None

    def _latent_init(self, x: Tensor, ctx: Any) -> Tensor:
        """Starting value of the optimised variable: ``w = atanh(2x − 1)`` (pulled in by 1e-6); in the box with ``linf``."""
        shrink = 1.0 - max(1e-6, 4 * torch.finfo(x.dtype).eps)
        box = self._box(x)
        u = x if box is None else (x - box[0]) / (box[1] - box[0])
        return torch.atanh((u * 2 - 1) * shrink)

    def _image(self, w: Tensor, x: Tensor, idx: Tensor, ctx: Any) -> tuple[Tensor, Tensor]:
        """Map the variable of examples ``idx`` to ``(x_adv, penalty (M,))``.

        Here ``x_adv = (tanh(w) + 1)/2`` (``lo + (hi − lo)(tanh(w) + 1)/2`` with ``linf``) and the
        penalty is ``‖x_adv − x‖₂²``.
        """
        xa = (torch.tanh(w) + 1) / 2
        box = self._box(x)
        if box is not None:
            xa = box[0] + (box[1] - box[0]) * xa
        return xa, (xa - x).flatten(1).pow(2).sum(1)

    @property
    def threat(self) -> L2Ball:
        """An unbounded :class:`~spatialadv.threats.L2Ball` (C&W minimises the L2 size)."""
        return L2Ball(eps=float("inf"))

    def _run(self, model, x, y, target, index):
        n = x.shape[0]
        opts = {"dtype": x.dtype, "device": x.device}
        kappa, lr = float(self.kappa), float(self.lr)
        b1, b2 = self._BETAS
        ctx = self._prepare(x)
        w0 = self._latent_init(x, ctx)
        check_every = max(self.steps // 10, 1)

        c = torch.full((n,), float(self.initial_const), **opts)
        lower = torch.zeros(n, **opts)
        upper = torch.full((n,), self._NO_UPPER, **opts)
        best_l2 = torch.full((n,), float("inf"), **opts)
        best_x = x.clone()
        grad_evals = torch.zeros(n, dtype=torch.long, device=x.device)
        forward_evals = torch.zeros(n, dtype=torch.long, device=x.device)

        def record(idx: Tensor, xa: Tensor, logits: Tensor, found: Tensor) -> None:
            t_s = None if target is None else target[idx]
            l2 = (xa - x[idx]).flatten(1).pow(2).sum(1)
            ok = criterion(logits.argmax(1), y[idx], t_s) & (margin(logits, y[idx], t_s, kappa) <= -kappa)
            found[idx[ok]] = True
            better = ok & (l2 < best_l2[idx])
            best_l2[idx[better]] = l2[better]
            best_x[idx[better]] = xa[better]

        all_idx = torch.arange(n, device=x.device)
        for _ in range(self.binary_search_steps):
            w = w0.clone()
            m = torch.zeros_like(w)
            v = torch.zeros_like(w)
            active = torch.ones(n, dtype=torch.bool, device=x.device)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            prev = torch.zeros(n, **opts)
            for it in range(self.steps):
                full = bool(active.all())  # every example active: whole tensors, no gather / scatter copies
                idx = all_idx if full else active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                w_s = (w if full else w[idx]).detach().requires_grad_(True)
                with torch.enable_grad():
                    xa, penalty = self._image(w_s, x if full else x[idx], idx, ctx)
                    logits = model(xa)
                    loss = penalty + (c if full else c[idx]) * margin(
                        logits, y if full else y[idx], None if target is None else (target if full else target[idx]), kappa)
                    (grad,) = torch.autograd.grad(loss.sum(), w_s)
                grad_evals[idx] += 1
                with torch.no_grad():
                    record(idx, xa.detach(), logits.detach(), found)
                    loss = loss.detach()
                    if self.early_stop and it % check_every == 0:
                        if it > 0:
                            stalled = loss > prev[idx] - 1e-4 * prev[idx].abs()
                            if bool(stalled.any()):
                                full = False
                                active[idx[stalled]] = False
                                keep = ~stalled
                                idx, grad, loss = idx[keep], grad[keep], loss[keep]
                        prev[idx] = loss
                    # Adam (Kingma & Ba, 2015, Algorithm 1); every active example has taken
                    # exactly `it` previous steps in this binary-search step.
                    t = it + 1
                    if full:
                        m = b1 * m + (1 - b1) * grad
                        v = b2 * v + (1 - b2) * grad * grad
                        w = w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + self._ADAM_EPS)
                    else:
                        m[idx] = b1 * m[idx] + (1 - b1) * grad
                        v[idx] = b2 * v[idx] + (1 - b2) * grad * grad
                        m_hat = m[idx] / (1 - b1**t)
                        v_hat = v[idx] / (1 - b2**t)
                        w[idx] = w[idx] - lr * m_hat / (v_hat.sqrt() + self._ADAM_EPS)
            # the last update of the still-active examples has not been evaluated yet
            idx = active.nonzero().squeeze(1)
            forward_evals[idx] += 1
            if idx.numel() > 0:
                with torch.no_grad():
                    xa, _ = self._image(w[idx], x[idx], idx, ctx)
                    record(idx, xa, model(xa), found)

            c, lower, upper = self._search_update(found, c, lower, upper)

        return {"x_adv": best_x, "grad_evals": grad_evals, "forward_evals": forward_evals}
