"""Geometric threat models: a rotation–translation box (STM) and affine + L∞ (SdpAdv).

SdpAdv is the attack of *Perturbations Are Not Enough: Generating Adversarial
Examples with Spatial Distortions* (ICLR 2020 submission; "the SdpAdv paper").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._validation import check_positive
from ..ops.affine import identity_theta
from .base import Threat, per_example_draws

__all__ = ["RotationTranslationBox", "AffineLinf"]


def _box_ratio(v: Tensor, limit: float) -> Tensor:
    """``|v| / limit``; for ``limit = 0``: 0 where ``v = 0``, ``inf`` elsewhere (outside the set)."""
    if limit > 0:
        return v.abs() / limit
    return torch.where(v == 0, torch.zeros_like(v), torch.full_like(v, float("inf")))


@dataclass(frozen=True, kw_only=True)
class RotationTranslationBox(Threat):
    """Rotations by at most ``max_rotation`` degrees combined with translations of at most ``max_translation`` pixels.

    The translation bound holds along each axis. Engstrom et al., *Exploring
    the Landscape of Spatial Robustness*, ICML 2019, Sec. 3.

    Parameters of one transform: ``(angle, tx, ty)`` — degrees, positive
    counter-clockwise as displayed; pixels, positive right / down — applied as
    :func:`spatialadv.ops.rotation_translation_theta` (rotate about the image
    centre, then translate).

    Args:
        max_rotation: degrees, ≥ 0.
        max_translation: pixels, ≥ 0 (the same bound for x and y).

    Units: ``size`` is the box norm ``max(|angle| / max_rotation, max(|tx|, |ty|) / max_translation)``,
    a unitless fraction of the budget box (≤ 1 inside the set;
    ``unit = "rt_box"``). A zero limit contributes 0 when its parameter is 0.

    Raises:
        TypeError, ValueError: non-numeric or negative limits.
    """

    name: ClassVar[str] = "rotation_translation"
    unit: ClassVar[str] = "rt_box"
    max_rotation: float = 30.0
    max_translation: float = 3.0

    def __post_init__(self) -> None:
        check_positive(self.max_rotation, "max_rotation", allow_zero=True)
        check_positive(self.max_translation, "max_translation", allow_zero=True)

    def _limits(self) -> Tensor:
        return torch.tensor([self.max_rotation, self.max_translation, self.max_translation], dtype=torch.float64)

    def project(self, params: Tensor) -> Tensor:
        """Clip ``(…, 3)`` parameters ``(angle°, tx px, ty px)`` entrywise to the box."""
        lim = self._limits().to(device=params.device, dtype=params.dtype)
        return torch.maximum(torch.minimum(params, lim), -lim)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None, *, num: int | None = None) -> Tensor:
        """Parameters uniform in the box, float64, drawn from ``(seed, index row)`` only.

        Args:
            x: the batch ``(N, C, H, W)`` (gives N and the device).
            seed: int ≥ 0.
            index: ``None`` (``arange(N)``), ``(N,)`` or ``(N, k)`` identities
                (:func:`~spatialadv._validation.check_index`).
            num: ``None`` for one transform per example ``(N, 3)``, or an int ≥ 1
                for ``num`` transforms per example ``(N, num, 3)`` (worst-of-k).

        Returns:
            ``(N, 3)`` or ``(N, num, 3)`` float64 ``(angle°, tx px, ty px)`` on ``x.device``.
        """
        lim = self._limits()
        k = 1 if num is None else num
        out = per_example_draws(x, seed, index,
                                lambda g: (torch.rand(k, 3, generator=g, dtype=torch.float64) * 2 - 1) * lim)
        return out[:, 0] if num is None else out

    def size(self, angle: Tensor, shift: Tensor) -> Tensor:
        """Box norm ``(N,)`` of ``angle`` ``(N,)`` degrees and ``shift`` ``(N, 2)`` pixels."""
        a = _box_ratio(angle, float(self.max_rotation))
        t = _box_ratio(shift, float(self.max_translation)).amax(-1)
        return torch.maximum(a, t)

    def measure(self, x: Tensor, result: Any) -> Tensor:
        """``size(result.params["angle"], result.params["shift"])``."""
        return self.size(result.params["angle"], result.params["shift"])


@dataclass(frozen=True, kw_only=True)
class AffineLinf(Threat):
    """An affine warp near the identity followed by an additive L∞ perturbation: SdpAdv's threat model.

    The L∞ ``η`` of Xiao, Li, Zhu, He, Liu & Song, Generating
    Adversarial Examples with Adversarial Networks (AdvGAN), IJCAI 2018, plus
    a spatial-transformer θ (the SdpAdv paper's Eq. 5): ``x_A = clip_[0,1](t_θ(x) + η)`` with
    ``|θ − θ_I| ≤ gamma`` entrywise and ``‖η‖∞ ≤ eps``.

    θ ``(N, 2, 3)`` is in **normalised** coordinates
    (:func:`spatialadv.ops.affine_warp` convention: corner pixel centres at ±1);
    η ``(N, C, H, W)`` in [0, 1] pixel units.

    Args:
        gamma: ≥ 0, entrywise bound on ``θ − θ_I`` (0: AdvGAN, no warp).
        eps: in [0, 1], L∞ bound on η (0: SdAdv, no additive part).

    Units: ``size`` is the box norm ``max(max|θ − θ_I| / gamma, ‖η‖∞ / eps)``,
    a unitless fraction of the budget (≤ 1 inside the set;
    ``unit = "affine_linf_box"``). A zero bound contributes 0 when its part is 0.

    Raises:
        TypeError, ValueError: non-numeric, negative, or ``eps > 1``.
    """

    name: ClassVar[str] = "affine_linf"
    unit: ClassVar[str] = "affine_linf_box"
    gamma: float = 0.3
    eps: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self.gamma, "gamma", allow_zero=True)
        check_positive(self.eps, "eps", allow_zero=True)
        if self.eps > 1:
            raise ValueError(f"eps must be in [0, 1] (pixel units), got {self.eps}")

    def project_theta(self, theta: Tensor) -> Tensor:
        """``θ_I + clip(θ − θ_I, −gamma, gamma)`` for ``θ`` ``(N, 2, 3)``."""
        eye = identity_theta(theta.shape[0], dtype=theta.dtype, device=theta.device)
        return eye + (theta - eye).clamp(-self.gamma, self.gamma)

    def project_eta(self, eta: Tensor) -> Tensor:
        """``clip(η, −eps, eps)`` entrywise."""
        return eta.clamp(-self.eps, self.eps)

    def project(self, theta: Tensor, eta: Tensor) -> tuple[Tensor, Tensor]:
        """Both projections: ``(project_theta(θ), project_eta(η))``."""
        return self.project_theta(theta), self.project_eta(eta)

    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """θ ``(N, 2, 3)`` and η ``(N, C, H, W)`` uniform in their boxes (dtype of ``x``).

        Drawn from ``(seed, index row)`` only (θ's six numbers first, then η).
        """
        d = x[0].numel()
        g_, e_ = float(self.gamma), float(self.eps)
        flat = per_example_draws(x, seed, index,
                                 lambda g: torch.rand(6 + d, generator=g, dtype=x.dtype) * 2 - 1)
        n = x.shape[0]
        theta = identity_theta(n, dtype=x.dtype, device=x.device) + g_ * flat[:, :6].view(n, 2, 3)
        return theta, (e_ * flat[:, 6:]).view_as(x)

    def size(self, theta: Tensor, eta: Tensor) -> Tensor:
        """Box norm ``(N,)`` of θ ``(N, 2, 3)`` and η (``(N, C, H, W)``, or its L∞ norms ``(N,)``)."""
        eye = identity_theta(theta.shape[0], dtype=theta.dtype, device=theta.device)
        t = _box_ratio((theta - eye).flatten(1).abs().amax(1), float(self.gamma))
        e = _box_ratio(eta.flatten(1).abs().amax(1) if eta.dim() > 1 else eta.abs(), float(self.eps))
        return torch.maximum(t, e.to(t.dtype))

    def measure(self, x: Tensor, result: Any) -> Tensor:
        """``size(result.params["theta"], result.params["eta_linf"])``."""
        return self.size(result.params["theta"], result.params["eta_linf"])
