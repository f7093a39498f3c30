"""Perturbations smooth like the image: an L2 ball of image-guided smoothed perturbations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_int, check_positive
from ..ops.smoothing import GuidedSmoothing
from .base import per_example_draws
from .lp import L2Ball

__all__ = ["SmoothLikeX", "SmoothingParams", "check_smoothing"]


def check_smoothing(*, alpha: Any, sigma: Any, kernel: Any, solver: Any, cg_tol: Any,
                    cg_max_iter: Any) -> None:
    """Validate the hyper-parameters of :class:`~spatialadv.ops.smoothing.GuidedSmoothing`.

    ``cg_tol`` and ``cg_max_iter`` are its ``tol`` and ``max_iter``.

    Raises:
        TypeError: ``alpha`` (or another number) is not a number; ``cg_max_iter`` not an int.
        ValueError: ``alpha`` outside [0, 1), ``sigma``/``cg_tol`` ≤ 0, ``cg_max_iter`` < 1,
            unknown ``kernel`` (``"laplacian"``, ``"gaussian"``) or ``solver``
            (``"auto"``, ``"direct"``, ``"cg"``).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float in [0, 1), got {type(alpha).__name__}")
    if not 0 <= alpha < 1 or math.isnan(alpha):
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
    check_positive(sigma, "sigma")
    if kernel not in ("laplacian", "gaussian"):
        raise ValueError(f"kernel must be 'laplacian' or 'gaussian', got {kernel!r}")
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {solver!r}")
    check_positive(cg_tol, "cg_tol")
    check_int(cg_max_iter, "cg_max_iter", minimum=1)


@dataclass(frozen=True, kw_only=True)
class SmoothingParams:
    """The image-guided smoothing's hyper-parameters, shared by :class:`SmoothLikeX`, sPGD2 and sC&W.

    Args:
        alpha: α in [0, 1) of ``L_α`` (Zhang et al., Eq. 8; paper: 0.95).
        sigma: bandwidth of the feature kernel on the [0, 1] pixel scale, > 0.
        kernel: ``"laplacian"`` or ``"gaussian"`` feature kernel.
        solver: ``"auto"``, ``"direct"`` or ``"cg"`` (see :mod:`spatialadv.ops.smoothing`).
        cg_tol: the CG solver's relative-residual tolerance, > 0.
        cg_max_iter: the CG solver's iteration cap per solve, ≥ 1.
    """

    alpha: float = 0.95
    sigma: float = 0.1
    kernel: str = "laplacian"
    solver: str = "auto"
    cg_tol: float = 1e-5
    cg_max_iter: int = 1000

    def check_params(self) -> None:
        """Validate the fields (see :func:`check_smoothing`)."""
        check_smoothing(alpha=self.alpha, sigma=self.sigma, kernel=self.kernel, solver=self.solver, cg_tol=self.cg_tol,
                        cg_max_iter=self.cg_max_iter)

    def smoothing_kwargs(self) -> dict:
        """The fields as keyword arguments of another :class:`SmoothingParams` (e.g. :class:`SmoothLikeX`)."""
        return {"alpha": self.alpha, "sigma": self.sigma, "kernel": self.kernel, "solver": self.solver,
                "cg_tol": self.cg_tol, "cg_max_iter": self.cg_max_iter}

    def smoother(self, x: Tensor) -> GuidedSmoothing:
        """The smoothing ``ŝ_α`` guided by the images ``x`` ``(N, C, H, W)``."""
        return GuidedSmoothing(x, alpha=float(self.alpha), sigma=float(self.sigma), kernel=self.kernel,  # type: ignore[arg-type]
                               solver=self.solver,  # type: ignore[arg-type]  # both checked by check_smoothing
                               tol=float(self.cg_tol), max_iter=int(self.cg_max_iter))


@dataclass(frozen=True, kw_only=True)
class SmoothLikeX(L2Ball, SmoothingParams):
    """Perturbations ``δ = ŝ_α(z)`` smoothed like the original image, with ``‖δ‖₂ ≤ eps``.

    Zhang, Avrithis, Furon & Amsaleg, *Smooth Adversarial Examples*, EURASIP
    Journal on Information Security, 2020, Eqs. 8-9 and 12.

    ``ŝ_α`` is the normalised smoothing guided by ``x``
    (:class:`spatialadv.ops.smoothing.GuidedSmoothing`): linear in ``z``, so
    rescaling a smooth δ onto the L2 ball keeps it smooth, and :meth:`project`
    is the L2-ball projection of :class:`L2Ball` (then the [0, 1] clip).

    Args:
        eps: L2 budget ([0, 1] pixel units), > 0 (paper MNIST: 5).
        alpha, sigma, kernel, solver, cg_tol, cg_max_iter: the smoothing (see
            :class:`~spatialadv.ops.smoothing.GuidedSmoothing`).

    Units: ``size`` is ``‖δ‖₂`` in [0, 1] pixel units (``unit = "l2"``).

    Raises:
        TypeError, ValueError: invalid budget or smoothing (named in the message).
    """

    name: ClassVar[str] = "smooth_l2"
    unit: ClassVar[str] = "l2"
    eps: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_params()

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """δ₀ ``(N, C, H, W)``: ``ŝ_α`` of a Gaussian ``z``, rescaled to a random radius.

        ``z`` is drawn from ``(seed, index row)`` and ``ŝ_α(z)`` rescaled to L2 norm ``eps · U^(1/d)`` (``U`` from the same generator); not
        clipped to [0, 1].

        Raises:
            ValueError: unbounded ball; invalid ``seed``/``index``.
        """
        eps = float(self.eps)
        if math.isinf(eps):
            raise ValueError("an unbounded ball (eps = inf) has no uniform random start")
        d = x[0].numel()
        z = per_example_draws(x, seed, index, lambda g: torch.randn(d + 1, generator=g, dtype=x.dtype))
        u, radius = z[:, :d].view_as(x), z[:, d]
        radius = eps * torch.special.ndtr(radius).pow(1.0 / d)  # Φ(N(0,1)) is U(0,1)
        with torch.no_grad():
            s = self.smoother(x)(u)
        nrm = s.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        return s * (radius / nrm).view(-1, 1, 1, 1)
