"""L∞ and L2 balls of additive perturbations (pixel values in [0, 1]) and the L0 budget of JSMA."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_positive
from .base import Threat, per_example_draws

__all__ = ["LinfBall", "L2Ball", "L0Pixels"]


def _check_eps(eps: object) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a number in (0, inf], got {type(eps).__name__}")
    if not eps > 0:  # also rejects NaN
        raise ValueError(f"eps must be > 0 (math.inf for an unbounded ball), got {eps}")


@dataclass(frozen=True, kw_only=True)
class _AdditiveBall(Threat):
    """An additive perturbation ball ``{δ : ‖δ‖ ≤ eps}``: the checks and ``measure`` shared by L∞ and L2."""

    eps: float  # declared by each subclass with its default

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def measure(self, x: Tensor, result: Any) -> Tensor:
        """``size(result.x_adv − x)``."""
        return self.size(result.x_adv - x)


@dataclass(frozen=True, kw_only=True)
class LinfBall(_AdditiveBall):
    """``{δ : ‖δ‖∞ ≤ eps}`` with ``x + δ ∈ [0, 1]``.

    Goodfellow et al., *Explaining and Harnessing Adversarial Examples*, ICLR
    2015; Madry et al., *Towards Deep Learning Models Resistant to Adversarial
    Attacks*, ICLR 2018.

    Args:
        eps: budget in [0, 1] pixel units, > 0; ``math.inf`` for an unbounded
            ball (minimum-distortion attacks that only measure the size).

    Units: ``size`` is ``max_i |δ_i|`` in [0, 1] pixel units (``unit = "linf"``).

    Raises:
        TypeError: ``eps`` is not a number. ValueError: ``eps`` ≤ 0 or NaN.
    """

    name: ClassVar[str] = "linf"
    unit: ClassVar[str] = "linf"
    eps: float = 0.3

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Project ``x_adv`` ``(N, C, H, W)`` onto ``{‖x_adv − x‖∞ ≤ eps} ∩ [0, 1]``.

        Exact: the box clip, then the [0, 1] clip, which only moves coordinates
        towards ``x``.
        """
        eps = float(self.eps)
        return (x + (x_adv - x).clamp(-eps, eps)).clamp(0.0, 1.0)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """δ₀ ``(N, C, H, W)`` uniform in ``[−eps, eps]^d`` per example, drawn from ``(seed, index row)`` only.

        Not clipped to [0, 1]: use :meth:`project` on ``x + δ₀``.

        Raises:
            ValueError: unbounded ball (``eps = inf``); invalid ``seed``/``index``.
        """
        eps = float(self.eps)
        if math.isinf(eps):
            raise ValueError("an unbounded ball (eps = inf) has no uniform random start")
        d = x[0].numel()
        return per_example_draws(x, seed, index,
                                 lambda g: (torch.rand(d, generator=g, dtype=x.dtype) * 2 - 1) * eps).view_as(x)

    def size(self, delta: Tensor) -> Tensor:
        """``‖δ‖∞`` per example, ``(N,)``, for ``δ`` ``(N, …)``."""
        return delta.flatten(1).abs().amax(1)


@dataclass(frozen=True, kw_only=True)
class L2Ball(_AdditiveBall):
    """``{δ : ‖δ‖₂ ≤ eps}`` with ``x + δ ∈ [0, 1]``.

    Madry et al., *Towards Deep Learning Models Resistant to Adversarial
    Attacks*, ICLR 2018; Carlini & Wagner, *Towards Evaluating the Robustness
    of Neural Networks*, IEEE S&P 2017.

    Args:
        eps: budget (L2 norm over all C·H·W values, [0, 1] pixel units), > 0;
            ``math.inf`` for an unbounded ball.

    Units: ``size`` is ``‖δ‖₂`` in [0, 1] pixel units (``unit = "l2"``).

    Raises:
        TypeError: ``eps`` is not a number. ValueError: ``eps`` ≤ 0 or NaN.
    """

    name: ClassVar[str] = "l2"
    unit: ClassVar[str] = "l2"
    eps: float = 1.0

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Rescale ``x_adv − x`` ``(N, C, H, W)`` to L2 norm ≤ ``eps`` per example, then clip ``x_adv`` to [0, 1].

        The clip moves coordinates towards ``x``, so the result
        stays in the ball; it is the exact Euclidean projection onto the ball,
        followed by the box clip, as in Madry et al.
        """
        d = x_adv - x
        n = d.flatten(1).norm(dim=1)
        factor = (float(self.eps) / n.clamp_min(torch.finfo(d.dtype).tiny)).clamp(max=1.0)
        return (x + d * factor.view(-1, *([1] * (d.dim() - 1)))).clamp(0.0, 1.0)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """δ₀ ``(N, C, H, W)`` uniform in the ball per example.

        A Gaussian direction normalised to unit length times radius ``eps · U^(1/d)`` (``d = C·H·W``),
        drawn from ``(seed, index row)`` only; not clipped to [0, 1].

        Raises:
            ValueError: unbounded ball (``eps = inf``); invalid ``seed``/``index``.
        """
        eps = float(self.eps)
        if math.isinf(eps):
            raise ValueError("an unbounded ball (eps = inf) has no uniform random start")
        d = x[0].numel()

        def draw(g: torch.Generator) -> Tensor:
            u = torch.randn(d, generator=g, dtype=x.dtype)
            u = u / u.norm().clamp_min(torch.finfo(x.dtype).tiny)
            return u * (eps * torch.rand(1, generator=g, dtype=x.dtype).pow(1.0 / d))

        return per_example_draws(x, seed, index, draw).view_as(x)

    def size(self, delta: Tensor) -> Tensor:
        """``‖δ‖₂`` per example, ``(N,)``, for ``δ`` ``(N, …)``."""
        return delta.flatten(1).norm(dim=1)


@dataclass(frozen=True, kw_only=True)
class L0Pixels(Threat):
    """``{δ : ‖δ‖₀ ≤ ⌊gamma · d⌋}``, at most a fraction ``gamma`` of the ``d = C·H·W`` features changed.

    Papernot et al., *The Limitations of Deep Learning in Adversarial
    Settings*, IEEE EuroS&P 2016, Sec. III (Υ, the maximum distortion, in % of
    the features).

    Args:
        gamma: maximum fraction of changed features, in (0, 1].

    Units: ``size`` is the number of changed features (``unit = "l0"``); for
    one-channel images a feature is a pixel.

    Raises:
        TypeError: ``gamma`` is not a number. ValueError: ``gamma`` not in (0, 1].
    """

    name: ClassVar[str] = "l0"
    unit: ClassVar[str] = "l0"
    gamma: float = 0.145

    def __post_init__(self) -> None:
        check_positive(self.gamma, "gamma")
        if float(self.gamma) > 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")

    def budget(self, x: Tensor) -> int:
        """The largest number of changed features allowed in one image of ``x`` ``(N, C, H, W)``."""
        return int(math.floor(float(self.gamma) * x[0].numel() + 1e-9))

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Keep, per example, the :meth:`budget` largest changes ``|x_adv − x|`` and reset the others to ``x``.

        The Euclidean projection of ``δ = x_adv − x`` onto ``{‖δ‖₀ ≤ k}``
        (ties broken by feature order), then the [0, 1] clip, which changes
        no feature that was not changed already.
        """
        d = (x_adv - x).flatten(1)
        k = self.budget(x)
        keep = torch.zeros_like(d, dtype=torch.bool)
        if k > 0:
            keep.scatter_(1, d.abs().topk(min(k, d.shape[1]), dim=1, sorted=False).indices, True)
        return (x.flatten(1) + torch.where(keep, d, torch.zeros_like(d))).view_as(x).clamp(0.0, 1.0)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """δ₀ ``(N, C, H, W)``: :meth:`budget` features chosen uniformly per example, each changed by U[−1, 1].

        Drawn from ``(seed, index row)`` only; not clipped to [0, 1]: use
        :meth:`project` on ``x + δ₀``.
        """
        d, k = x[0].numel(), self.budget(x)

        def draw(g: torch.Generator) -> Tensor:
            delta = torch.zeros(d, dtype=x.dtype)
            delta[torch.randperm(d, generator=g)[:k]] = torch.rand(k, generator=g, dtype=x.dtype) * 2 - 1
            return delta

        return per_example_draws(x, seed, index, draw).view_as(x)

    def measure(self, x: Tensor, result: Any) -> Tensor:
        """``size(result.x_adv − x)``."""
        return self.size(result.x_adv - x)

    def size(self, delta: Tensor) -> Tensor:
        """``‖δ‖₀`` per example (number of non-zero entries, as ``delta``'s dtype), ``(N,)``."""
        return (delta.flatten(1) != 0).sum(1).to(delta.dtype)
