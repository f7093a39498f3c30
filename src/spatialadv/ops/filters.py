"""Edge-preserving filters and adversarial magnification (Zhang et al. 2020, App. A, Eq. 22).

Why a filter of our own: magnification needs a *joint* (guided) bilateral
filter — the range kernel is computed on a reference image, not on the image
being filtered — which neither SciPy nor scikit-image provides (scikit-image's
``denoise_bilateral`` is the unguided filter; the tests check that our
unguided case agrees with it). The filter is a direct windowed sum in torch,
batched over images, meant for figures and small images (cost
``O(N·C·H·W·(2r+1)²)``, ``r = ceil(3σ_s)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_positive

__all__ = ["joint_bilateral", "magnify"]


def _check(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (N, C, H, W), got {tuple(x.shape)} {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def joint_bilateral(v: Tensor, guide: Tensor | None = None, *, sigma_spatial: float = 5.0,
                    sigma_range: float = 5.0 / 255.0) -> Tensor:
    """Joint (cross) bilateral filter of ``v`` guided by ``guide`` (Tomasi & Manduchi 1998).

    ``out(p) = Σ_q k_s(‖p − q‖) k_r(‖g(p) − g(q)‖) v(q) / Σ_q k_s k_r`` over the
    pixels ``q`` inside the image within ``r = ceil(3σ_s)`` pixels (a square
    window; pixels outside the image are left out of both sums, no padding),
    with Gaussian kernels ``k(d) = exp(−d²/2σ²)``. The range distance is the
    Euclidean distance over all channels of the guide (one weight per pixel
    pair), and every channel of ``v`` is filtered with the same weights.

    Args:
        v: images ``(N, C, H, W)`` to filter.
        guide: reference images ``(N, C', H, W)`` for the range kernel; default
            ``v`` itself (the ordinary bilateral filter).
        sigma_spatial: domain-kernel standard deviation in pixels, > 0.
        sigma_range: range-kernel standard deviation in the guide's units
            (default 5/255: 5 grey levels of an 8-bit image, on the [0, 1] scale).

    Returns:
        ``(N, C, H, W)``.

    Raises:
        TypeError, ValueError: bad tensors, shapes that do not match, σ ≤ 0.
    """
    _check(v, "v")
    guide = v if guide is None else guide
    _check(guide, "guide")
    if guide.shape[0] != v.shape[0] or guide.shape[-2:] != v.shape[-2:]:
        raise ValueError(f"guide {tuple(guide.shape)} must match v {tuple(v.shape)} in N, H and W")
    check_positive(sigma_spatial, "sigma_spatial")
    check_positive(sigma_range, "sigma_range")
    n, c, h, w = v.shape
    r = int(math.ceil(3 * sigma_spatial))
    k = 2 * r + 1
    ones = torch.ones(n, 1, h, w, dtype=v.dtype, device=v.device)
    # neighbourhoods (N, ·, k·k, H·W); zero padding marks outside pixels via the `ones` channel
    pv = F.unfold(v, k, padding=r).view(n, c, k * k, h * w)
    pg = F.unfold(guide.to(v.dtype), k, padding=r).view(n, guide.shape[1], k * k, h * w)
    inside = F.unfold(ones, k, padding=r).view(n, 1, k * k, h * w)
    off = torch.arange(-r, r + 1, dtype=v.dtype, device=v.device)
    d2 = (off[:, None] ** 2 + off[None, :] ** 2).reshape(1, 1, k * k, 1)
    centre = guide.to(v.dtype).reshape(n, guide.shape[1], 1, h * w)
    g2 = (pg - centre).square().sum(1, keepdim=True)
    wgt = torch.exp(-d2 / (2 * sigma_spatial**2) - g2 / (2 * sigma_range**2)) * inside
    out = (wgt * pv).sum(2) / wgt.sum(2)
    return out.view(n, c, h, w)


def magnify(x: Tensor, *, beta: float = 0.8, sigma: float = 5.0, sigma_range: float | None = None) -> Tensor:
    """Adversarial magnification (App. A, Eq. 22): a local normalisation that reveals perturbations.

    ``mag(x) = (x − μ_x(x)) / (β σ_x(x) + (1 − β) σ_Ω(x))`` with
    ``μ_x = b(x)`` the bilateral filter of ``x``,
    ``σ_x = b_x((x − μ_x)²)^{1/2}`` the guided bilateral filter (range kernel on
    ``x``) of the squared residual (the paper prints the exponent as −1/2; a
    standard deviation is the square root), and ``σ_Ω`` the global standard
    deviation of each image and channel. Channels are filtered independently
    with a shared range weight (Euclidean distance over channels).

    Args:
        x: images ``(N, C, H, W)`` on the [0, 1] scale.
        beta: β ∈ [0, 1], how much local variation is normalised (paper 0.8).
        sigma: standard deviation of the domain kernel, pixels (paper 5).
        sigma_range: standard deviation of the range kernel on the [0, 1]
            scale; default ``sigma / 255`` (the paper's 5, read on the 8-bit scale).

    Returns:
        ``(N, C, H, W)`` unbounded (about ±3 for typical images); map it to
        [0, 1] for display (e.g. :func:`spatialadv.viz.magnification_figure`).

    Raises:
        TypeError, ValueError: bad images or parameters.
    """
    _check(x, "x")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
        raise ValueError(f"beta must be a float in [0, 1], got {beta!r}")
    check_positive(sigma, "sigma")
    sr = sigma / 255.0 if sigma_range is None else sigma_range
    mu = joint_bilateral(x, sigma_spatial=sigma, sigma_range=sr)
    res = x - mu
    local = joint_bilateral(res.square(), x, sigma_spatial=sigma, sigma_range=sr).clamp_min(0).sqrt()
    glob = x.flatten(2).std(2, unbiased=False)[..., None, None]
    den = beta * local + (1 - beta) * glob
    return res / den.clamp_min(torch.finfo(x.dtype).eps)
