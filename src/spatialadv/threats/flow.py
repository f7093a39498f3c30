"""Flow threat models: stAdv's pixel flow and the ℓ_diff smoothness ball of flows.

stAdv is Xiao, Zhu, Li, He, Liu & Song, *Spatially Transformed Adversarial
Examples*, ICLR 2018. The smoothness ball is the threat model of *Provable
Defenses against Spatially Transformed Adversarial Inputs: Impossibility and
Possibility Results* (ICLR 2019 submission; "the provable-defenses paper").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_positive
from ..ops.flow import flow_tv
from ..ops.flow_smoothness import flow_smoothness, gram_inverse_sqrt
from .base import Threat, per_example_draws

__all__ = ["PixelFlow", "FlowSmoothnessBall"]


@dataclass(frozen=True, kw_only=True)
class PixelFlow(Threat):
    """Per-pixel displacement fields ``f`` ``(N, 2, H, W)`` in pixels, measured by their total variation.

    The warp is stAdv's Eq. 1 and the total variation its Appendix C Eq. 5.

    stAdv itself penalises the flow (Eq. 2) rather than bounding it, so the
    default budget is unbounded; a finite ``budget`` makes the set
    ``{f : TV(f) ≤ budget}``.

    Convention:
        Channel 0 is the horizontal displacement Δu (along W, positive right),
        channel 1 the vertical Δv (along H, positive down); pixel ``(v, u)`` of
        the warped image samples the input at ``(v + Δv, u + Δu)``
        (:func:`spatialadv.ops.flow_warp`).

    Args:
        budget: largest TV (Eq. 5, pixels), > 0; ``math.inf`` (default) for
            stAdv's unconstrained flows.
        start_radius: half-width (pixels, > 0) of the uniform per-pixel
            displacement of :meth:`random_start`.

    Units: ``size`` is ``TV(f)`` of Eq. 5 in pixels,
    :func:`spatialadv.ops.flow_tv` (``unit = "flow_tv"``).

    Raises:
        TypeError, ValueError: non-numeric or non-positive arguments.
    """

    name: ClassVar[str] = "flow"
    unit: ClassVar[str] = "flow_tv"
    budget: float = math.inf
    start_radius: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise TypeError(f"budget must be a number in (0, inf], got {type(self.budget).__name__}")
        if not self.budget > 0:
            raise ValueError(f"budget must be > 0 (math.inf for no budget), got {self.budget}")
        check_positive(self.start_radius, "start_radius")

    def project(self, flow: Tensor) -> Tensor:
        """Scale each flow ``(N, 2, H, W)`` down (never up) so that ``TV ≤ budget``.

        TV is positively homogeneous, so the radial scaling lands on the
        boundary (it is a retraction onto the set, not the Euclidean projection).
        The identity for an unbounded budget.
        """
        if math.isinf(self.budget):
            return flow
        tv = flow_tv(flow)
        factor = (float(self.budget) / tv.clamp_min(torch.finfo(flow.dtype).tiny)).clamp(max=1.0)
        return flow * factor.view(-1, 1, 1, 1)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """A random flow ``(N, 2, H, W)`` per example, projected onto the budget.

        Every displacement is uniform in ``[−start_radius, start_radius]``
        pixels, drawn from ``(seed, index row)`` only, then :meth:`project`-ed
        onto the budget.
        """
        _, _, h, w = x.shape
        r = float(self.start_radius)
        flow = per_example_draws(x, seed, index, lambda g: (torch.rand(2, h, w, generator=g, dtype=x.dtype) * 2 - 1) * r)
        return self.project(flow)

    def size(self, flow: Tensor) -> Tensor:
        """``TV(f)`` of stAdv Eq. 5 per example, ``(N,)`` pixels."""
        return flow_tv(flow)

    def measure(self, x: Tensor, result: Any) -> Tensor:
        """``size(result.flow)``."""
        return self.size(result.flow)


@dataclass(frozen=True, kw_only=True)
class FlowSmoothnessBall(Threat):
    """Flows ``r`` ``(N, 2, H, W)`` (pixels) with ``ℓ_diff(r) = sqrt(‖M r_u‖² + ‖M r_v‖²) ≤ eps``.

    The smooth-flow threat model certified by :mod:`spatialadv.certify.bounds`
    (the provable-defenses paper's certificates for spatially smooth flows,
    Eq. 2 and Prop. 1: M stacks the four neighbour difference matrices;
    :func:`spatialadv.ops.flow_smoothness.flow_smoothness`).

    Latent parametrisation (used by
    :class:`~spatialadv.attacks.SmoothFlowPGD`): ``r = eps · (MᵀM + ridge·I)^{-1/2} s``
    per channel with ``‖s‖₂ ≤ 1`` over both channels jointly — a point of the
    unit ball maps into the set (exactly onto ``ℓ_diff ≤ eps`` for
    ``ridge = 0``).

    Args:
        eps: budget on ℓ_diff in pixels, > 0.
        border: ``"zeros"`` (flow outside the image is 0) or ``"replicate"``.
        ridge: ≥ 0, added to ``MᵀM`` in the latent map (needed for
            ``"replicate"``, whose ``MᵀM`` is singular).

    Units: ``size`` is ℓ_diff in pixels (``unit = "flow_smoothness"``).

    Raises:
        TypeError, ValueError: invalid ``eps``, ``border`` or ``ridge``.
    """

    name: ClassVar[str] = "flow_smoothness"
    unit: ClassVar[str] = "flow_smoothness"
    eps: float = 1.0
    border: str = "zeros"
    ridge: float = 0.0

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        if self.border not in ("zeros", "replicate"):
            raise ValueError(f"border must be 'zeros' or 'replicate', got {self.border!r}")
        check_positive(self.ridge, "ridge", allow_zero=True)

    def latent_basis(self, h: int, w: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """``(MᵀM + ridge·I)^{-1/2}`` ``(H·W, H·W)`` (symmetric) of the latent map."""
        return torch.tensor(gram_inverse_sqrt(h, w, border=self.border, ridge=self.ridge), dtype=dtype, device=device)

    def latent_to_flow(self, s: Tensor, basis: Tensor, h: int, w: int) -> Tensor:
        """``r = eps · s · basis`` reshaped: ``s`` ``(N, 2, H·W)`` → flow ``(N, 2, H, W)`` pixels."""
        return (float(self.eps) * (s @ basis)).view(s.shape[0], 2, h, w)

    @staticmethod
    def project_latent(s: Tensor) -> Tensor:
        """Project latents ``(N, 2, H·W)`` onto the unit L2 ball (both channels jointly)."""
        nrm = s.flatten(1).norm(dim=1).view(-1, 1, 1)
        return s / nrm.clamp_min(1.0)

    def random_latent(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """A random latent ``s`` ``(N, 2, H·W)`` per example.

        A Gaussian direction of unit length times a radius uniform in [0, 1]
        (not uniform in volume), drawn from ``(seed, index row)`` only.
        """
        _, _, h, w = x.shape

        def draw(g: torch.Generator) -> Tensor:
            s = torch.randn(2, h * w, generator=g, dtype=x.dtype)
            return s / s.norm() * torch.rand(1, 1, generator=g, dtype=x.dtype)

        return per_example_draws(x, seed, index, draw)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Tensor:
        """The flow ``(N, 2, H, W)`` of :meth:`random_latent` (pixels, inside the set)."""
        _, _, h, w = x.shape
        basis = self.latent_basis(h, w, dtype=x.dtype, device=x.device)
        return self.latent_to_flow(self.random_latent(x, seed, index), basis, h, w)

    def project(self, flow: Tensor) -> Tensor:
        """Scale each flow ``(N, 2, H, W)`` down (never up) so that ``ℓ_diff ≤ eps``.

        The bound is ``eps`` times ``1 − 1e-9``, a margin against rounding.
        ℓ_diff is a norm, so this radial retraction lands on the boundary; it
        is not the Euclidean projection.
        """
        s = self.size(flow.to(torch.float64))
        eps = float(self.eps)
        factor = torch.where(s > eps, eps / s.clamp_min(1e-300), torch.ones_like(s)) * (1 - 1e-9)
        return flow * factor.to(flow.dtype).view(-1, 1, 1, 1)

    def size(self, flow: Tensor) -> Tensor:
        """ℓ_diff per example ``(N,)`` in pixels (computed in float64, returned in ``flow.dtype``)."""
        return flow_smoothness(flow.to(torch.float64), border=self.border).to(flow.dtype)

    def measure(self, x: Tensor, result: Any) -> Tensor:
        """``size(result.flow)``."""
        return self.size(result.flow)
