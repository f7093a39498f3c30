"""The smooth-adversarial-examples evaluation protocol and a check that a perturbation is smooth like its image.

The protocol is that of Zhang, Avrithis, Furon & Amsaleg, *Smooth Adversarial
Examples*, EURASIP Journal on Information Security, 2020, §5.1, Eqs. 20-21.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["protocol_summary", "operating_characteristic", "edge_flat_energy", "magnified_change"]


def protocol_summary(success: np.ndarray, distortion: np.ndarray) -> dict:
    """``P_suc`` and the conditional mean distortion ``D̄`` (Eq. 20).

    Args:
        success: ``(N,)`` bool, one entry per *correctly classified* image.
        distortion: ``(N,)`` L2 distortion ``‖x_a − x_o‖₂`` ([0, 1] pixel units);
            only entries with ``success`` are used.

    Returns:
        ``{"N", "N_suc", "P_suc", "D_bar", "D_max"}``; ``D_bar`` and ``D_max``
        are NaN when nothing succeeded.

    Raises:
        ValueError: shapes differ or ``N = 0``.
    """
    success = np.asarray(success, dtype=bool)
    distortion = np.asarray(distortion, dtype=np.float64)
    if success.shape != distortion.shape or success.ndim != 1:
        raise ValueError(f"success and distortion must be 1-D of equal length, got {success.shape} and {distortion.shape}")
    if success.size == 0:
        raise ValueError("no images: P_suc is undefined for N = 0")
    d = distortion[success]
    return {"N": int(success.size), "N_suc": int(success.sum()), "P_suc": float(success.mean()),
            "D_bar": float(d.mean()) if d.size else float("nan"), "D_max": float(d.max()) if d.size else float("nan")}


def operating_characteristic(success: np.ndarray, distortion: np.ndarray, grid: np.ndarray | None = None
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Operating characteristic ``P(D) = |{x_o ∈ X_suc : D(x_o) ≤ D}| / N`` (Eq. 21).

    Args:
        success: ``(N,)`` bool, one entry per *correctly classified* image
            (as in :func:`protocol_summary`).
        distortion: ``(N,)`` L2 distortion ``‖x_a − x_o‖₂`` ([0, 1] pixel
            units); only entries with ``success`` are used.
        grid: distortion values ``D`` at which to evaluate; default: 0 and every
            successful distortion, sorted (the exact step function).

    Raises:
        ValueError: empty arrays, not 1-D, or of different lengths.

    Returns:
        ``(D, P)``, two float64 arrays of the grid's length; ``P`` is
        non-decreasing, ``P(0) = 0`` unless an image is broken with zero
        distortion, and ``P(D_max) = P_suc``.
    """
    success = np.asarray(success, dtype=bool)
    distortion = np.asarray(distortion, dtype=np.float64)
    if success.shape != distortion.shape or success.ndim != 1 or success.size == 0:
        raise ValueError("success and distortion must be non-empty 1-D arrays of equal length")
    d = np.sort(distortion[success])
    if grid is None:
        grid = np.concatenate([[0.0], d])
    grid = np.asarray(grid, dtype=np.float64)
    return grid, np.searchsorted(d, grid, side="right") / success.size


def edge_flat_energy(r: Tensor, x: Tensor, *, edge: float = 0.5, flat: float = 0.05) -> tuple[Tensor, Tensor]:
    """How rough a perturbation is within flat image regions and across strong image edges.

    Over the 4-neighbour pixel pairs ``(i, j)`` of each image and channel,
    split into *flat* pairs (``|x_i − x_j| ≤ flat``) and *edge* pairs
    (``|x_i − x_j| ≥ edge``), the energy of a set of pairs is

        Σ (r_i − r_j)² / Σ (r_i² + r_j²)   ∈ [0, 2],

    0 for a perturbation constant across every pair of the set, ≈ 1 for white
    noise, 2 for a checkerboard. A perturbation *smooth like the image*
    (*Smooth Adversarial Examples*, §3) has a small flat energy and may have a large edge
    energy. Each energy is normalised by the perturbation's own magnitude on
    the same pairs, so a perturbation that is ~0 on flat regions is judged by
    its shape there, not by its amplitude.

    Args:
        r: perturbations ``(N, C, H, W)``.
        x: the original images ``(N, C, H, W)`` on the [0, 1] scale.
        edge: a pair with ``|x_i − x_j| ≥ edge`` is an edge pair ([0, 1] scale, ``> flat``).
        flat: a pair with ``|x_i − x_j| ≤ flat`` is a flat pair ([0, 1] scale, ``< edge``).

    Returns:
        ``(flat_energy, edge_energy)``, each ``(N,)``; NaN where an image has no
        pair of that kind or ``r`` is 0 on all of them.
    """
    if r.shape != x.shape or r.ndim != 4:
        raise ValueError(f"r and x must both be (N, C, H, W) of the same shape, got {tuple(r.shape)} and {tuple(x.shape)}")
    if not 0 <= flat < edge:
        raise ValueError(f"need 0 <= flat < edge, got flat={flat}, edge={edge}")

    def pairs(t: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.cat([t[..., :, 1:].flatten(1), t[..., 1:, :].flatten(1)], 1)
        b = torch.cat([t[..., :, :-1].flatten(1), t[..., :-1, :].flatten(1)], 1)
        return a, b

    ra, rb = pairs(r)
    xa, xb = pairs(x)
    dx = (xa - xb).abs()
    num = (ra - rb).square()
    den = ra.square() + rb.square()
    nan = torch.tensor(float("nan"), dtype=r.dtype, device=r.device)

    def energy(mask: Tensor) -> Tensor:
        d = (den * mask).sum(1)
        return torch.where(d > 0, (num * mask).sum(1) / torch.where(d > 0, d, torch.ones_like(d)), nan)

    return energy(dx <= flat), energy(dx >= edge)


def magnified_change(x_adv: Tensor, x: Tensor, *, flat: float = 0.05, beta: float = 0.8, sigma: float = 5.0) -> tuple[Tensor, Tensor]:
    """How visible a perturbation is under adversarial magnification, and how much of that is in flat regions.

    The change is ``‖mag(x_adv) − mag(x)‖₂`` per image, with ``mag`` the adversarial magnification of
    *Smooth Adversarial Examples* (Zhang, Avrithis, Furon & Amsaleg, EURASIP J. Inf. Secur. 2020, App. A, Eq. 22;
    :func:`spatialadv.ops.filters.magnify`): a local normalisation, so the change is in units of local standard
    deviations, whatever the perturbation's amplitude. Its *flat share* is the fraction of the squared change on
    pixels whose 4 neighbours all lie within ``flat`` of them in ``x`` (the flat regions of
    :func:`edge_flat_energy`): where the original has no texture, ``mag`` divides a small smooth perturbation by a
    small local deviation, and it shows.

    Args:
        x_adv: adversarial images ``(N, C, H, W)`` on the [0, 1] scale.
        x: the original images, same shape.
        flat: a pixel is flat if every 4-neighbour of it differs from it by at most ``flat`` in ``x`` (every channel).
        beta: the magnification's β (paper: 0.8).
        sigma: the magnification's domain σ in pixels (paper: 5).

    Returns:
        ``(change, flat_share)``, each ``(N,)`` float64; ``flat_share`` is NaN where the change is 0.

    Raises:
        ValueError: shapes differ or are not 4-D; ``flat`` negative.
    """
    from ..ops.filters import magnify

    if x_adv.shape != x.shape or x.ndim != 4:
        raise ValueError(f"x_adv and x must both be (N, C, H, W) of the same shape, got {tuple(x_adv.shape)} and {tuple(x.shape)}")
    if not flat >= 0:
        raise ValueError(f"flat must be >= 0, got {flat}")
    xd, ad = x.double(), x_adv.double()
    d = (magnify(ad, beta=beta, sigma=sigma) - magnify(xd, beta=beta, sigma=sigma)).square()
    pad = torch.nn.functional.pad(xd, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    nb = [pad[..., 1:h + 1, 0:w], pad[..., 1:h + 1, 2:w + 2], pad[..., 0:h, 1:w + 1], pad[..., 2:h + 2, 1:w + 1]]
    is_flat = torch.stack([(n - xd).abs() <= flat for n in nb]).all(0).all(1, keepdim=True).expand_as(d)
    total = d.flatten(1).sum(1)
    share = torch.where(total > 0, (d * is_flat).flatten(1).sum(1) / torch.where(total > 0, total, torch.ones_like(total)),
                        torch.tensor(float("nan"), dtype=torch.float64))
    return total.sqrt(), share
