"""Affine warps of images (spatial transformer sampling, Jaderberg et al. 2015) and θ builders.

An affine transform is a matrix ``θ (N, 2, 3)`` that maps each **output**
pixel's coordinates to the coordinates it samples in the **input** (the
"inverse map" of a spatial transformer network). It is applied as a per-pixel
flow with the exact bilinear sampler :func:`~spatialadv.ops.warp.flow_warp`,
so the identity returns its input bit for bit and integer pixel shifts and
exact quarter-turn rotations are exact permutations of pixels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .warp import flow_warp

__all__ = [
    "affine_warp",
    "affine_flow",
    "identity_theta",
    "theta_to_pixels",
    "theta_to_normalized",
    "rotation_translation_theta",
]

_UNITS = ("normalized", "pixels")


def _check_theta(theta: object, n: int | None = None) -> Tensor:
    if not isinstance(theta, Tensor):
        raise TypeError(f"theta must be a torch.Tensor of shape (N, 2, 3), got {type(theta).__name__}")
    if not theta.is_floating_point():
        raise TypeError(f"theta must be floating point, got dtype {theta.dtype}")
    if theta.dim() != 3 or theta.shape[1:] != (2, 3) or (n is not None and theta.shape[0] != n):
        want = f"({n}, 2, 3)" if n is not None else "(N, 2, 3)"
        raise ValueError(f"theta must have shape {want}, got {tuple(theta.shape)}")
    if not torch.isfinite(theta).all():
        raise ValueError("theta contains NaN or infinite values")
    return theta


def _check_units(units: object) -> None:
    if units not in _UNITS:
        raise ValueError(f"units must be one of {_UNITS}, got {units!r}")


def _half_sizes(h: int, w: int, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """``s = ((W − 1)/2, (H − 1)/2)``: pixels per normalised unit along x (columns) and y (rows)."""
    return torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=dtype, device=device)


def identity_theta(n: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """θ_I, the identity transform ``(n, 2, 3)``: ``[[1, 0, 0], [0, 1, 0]]`` (same in both units)."""
    eye = torch.zeros(2, 3, dtype=dtype, device=device)
    eye[0, 0] = 1
    eye[1, 1] = 1
    return eye.expand(n, 2, 3).clone()


def theta_to_pixels(theta: Tensor, size: tuple[int, int]) -> Tensor:
    """Convert θ from normalised coordinates to centred pixel coordinates.

    Args:
        theta: ``(N, 2, 3)`` in normalised coordinates (see :func:`affine_warp`).
        size: ``(H, W)`` of the images, pixels (each ≥ 2).

    Returns:
        ``(N, 2, 3)``: ``A_ij = θ_ij s_i / s_j`` for the linear part and
        ``t_i = s_i θ_i2`` for the translation, ``s = ((W−1)/2, (H−1)/2)``.
    """
    theta = _check_theta(theta)
    h, w = size
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least (2, 2) pixels, got {size}")
    s = _half_sizes(h, w, theta.dtype, theta.device)
    lin = theta[:, :, :2] * (s[:, None] / s[None, :])
    return torch.cat([lin, theta[:, :, 2:] * s[:, None]], dim=2)


def theta_to_normalized(theta: Tensor, size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`theta_to_pixels`: centred-pixel θ ``(N, 2, 3)`` to normalised θ."""
    theta = _check_theta(theta)
    h, w = size
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least (2, 2) pixels, got {size}")
    s = _half_sizes(h, w, theta.dtype, theta.device)
    lin = theta[:, :, :2] * (s[None, :] / s[:, None])
    return torch.cat([lin, theta[:, :, 2:] / s[:, None]], dim=2)


def affine_flow(theta: Tensor, size: tuple[int, int], *, units: str = "normalized") -> Tensor:
    """The per-pixel flow ``(N, 2, H, W)`` (pixels, :func:`flow_warp` convention) of an affine θ.

    ``flow(p) = (A − I)(p − c) + t`` with ``[A | t]`` the centred-pixel θ and
    ``c = ((W−1)/2, (H−1)/2)`` the image centre. Computed from ``θ − θ_I`` so
    the identity gives an exactly zero flow.

    Raises:
        TypeError, ValueError: bad θ, ``units`` or ``size``.
    """
    _check_units(units)
    theta = _check_theta(theta)
    h, w = size
    if units == "normalized":
        theta = theta_to_pixels(theta, size)
    delta = theta - identity_theta(theta.shape[0], dtype=theta.dtype, device=theta.device)
    u = torch.arange(w, dtype=theta.dtype, device=theta.device) - (w - 1) / 2.0  # (W,)
    v = torch.arange(h, dtype=theta.dtype, device=theta.device) - (h - 1) / 2.0  # (H,)
    d = delta[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    flow = d[:, :, 0] * u.view(1, 1, 1, w) + d[:, :, 1] * v.view(1, 1, h, 1) + d[:, :, 2]
    return flow  # (N, 2, H, W)


def affine_warp(x: Tensor, theta: Tensor, *, units: str = "normalized", padding_mode: str = "zeros") -> Tensor:
    """Warp images by affine transforms with bilinear sampling (STN grid generator + sampler).

    Args:
        x: images ``(N, C, H, W)``, float (values not range-checked), H, W ≥ 2.
        theta: ``(N, 2, 3)`` affine maps from output to input coordinates, in
            ``units``; differentiable (gradients flow to ``x`` and ``theta``).
        units: ``"normalized"`` (STN / ``torch.nn.functional.affine_grid``
            convention, ``align_corners=True``: the centres of the corner
            pixels are at ±1) or ``"pixels"`` (centred pixel coordinates:
            linear part unitless, translation column in pixels).
        padding_mode: border fill, ``"zeros"`` (samples outside the image
            are 0, black on MNIST) or ``"border"`` (clamped to the edge).

    Returns:
        The warped images ``(N, C, H, W)``, dtype and device of ``x``.

    Convention:
        Coordinates are ``(x, y)`` = (column, row), origin at the image
        centre, x to the right, y **down** (image display). Output pixel at
        ``p`` takes the input value at ``θ [p; 1]`` (inverse map). In
        normalised units ``x = 2u/(W−1) − 1``, ``y = 2v/(H−1) − 1`` for
        column ``u`` and row ``v`` (``align_corners=True``), so a normalised
        translation of ``2/(W−1)`` is one pixel. A θ whose translation is
        ``+k`` pixels in x moves the content ``k`` pixels to the **left**
        (it samples from the right). Rotation direction: see
        :func:`rotation_translation_theta`. Padding: ``padding_mode``.
        θ_I returns ``x`` bit for bit; an integer pixel translation is an
        exact shift.

    Raises:
        TypeError: ``x`` or ``theta`` not a tensor or not floating-point (checked in that order).
        ValueError: shapes that do not match, non-finite θ, unknown ``units``
            or ``padding_mode``.

    Source:
        Jaderberg et al. (2015), "Spatial Transformer Networks", Eqs. 1-5;
        the affine distortion ``t_θ`` of SdpAdv (*Perturbations Are Not
        Enough: Generating Adversarial Examples with Spatial Distortions*,
        ICLR 2020 submission, Eq. 5).

    Example:
        >>> x = torch.rand(2, 1, 5, 5)
        >>> torch.equal(affine_warp(x, identity_theta(2)), x)
        True
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor (convert integer images with x.float() / 255), got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"x must be at least 2×2 pixels, got {tuple(x.shape[2:])}")
    _check_theta(theta, x.shape[0])
    flow = affine_flow(theta.to(dtype=x.dtype, device=x.device), (x.shape[2], x.shape[3]), units=units)
    return flow_warp(x, flow, padding_mode=padding_mode)


def rotation_translation_theta(angle: Tensor | float, tx: Tensor | float, ty: Tensor | float, *,
                               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """θ that rotates the content about the image centre, **then** translates it.

    θ is in **pixel** units, for :func:`affine_warp` with ``units="pixels"``.

    Args:
        angle: rotation in **degrees**, positive = counter-clockwise as
            displayed (y axis pointing down); scalar or ``(N,)``.
        tx: content translation in pixels, positive = to the right; scalar or ``(N,)``.
        ty: content translation in pixels, positive = down; scalar or ``(N,)``.
        dtype: floating dtype of the returned θ (computed in float64, then cast).
        device: device of the returned θ (default: the CPU).

    Returns:
        ``(N, 2, 3)`` (N = 1 for scalars): the inverse map
        ``p_in = R(angle)⁻¹ (p_out − t)``, i.e. ``[R⁻¹ | −R⁻¹ t]``, where the
        forward content map is ``p_out = R p_in + t`` with
        ``R = [[cos φ, sin φ], [−sin φ, cos φ]]`` (counter-clockwise on screen).
        Angles that are multiples of 90° use exact cos/sin values (0, ±1).

    Convention:
        Order: rotate, then translate (the translation is in output pixels,
        not rotated). Centre of rotation: the image centre
        ``((W−1)/2, (H−1)/2)``. Units: degrees, pixels.

    Example:
        >>> rotation_translation_theta(90.0, 0.0, 0.0)
        tensor([[[ 0., -1.,  0.],
                 [ 1.,  0.,  0.]]])
    """
    a = torch.as_tensor(angle, dtype=torch.float64).reshape(-1)
    tx_ = torch.as_tensor(tx, dtype=torch.float64).reshape(-1)
    ty_ = torch.as_tensor(ty, dtype=torch.float64).reshape(-1)
    a, tx_, ty_ = torch.broadcast_tensors(a, tx_, ty_)
    if not (torch.isfinite(a).all() and torch.isfinite(tx_).all() and torch.isfinite(ty_).all()):
        raise ValueError("angle, tx and ty must be finite")
    rad = a * (math.pi / 180.0)
    c, s = torch.cos(rad), torch.sin(rad)
    quarter = torch.remainder(a, 90.0) == 0  # exact values for multiples of 90°
    k = torch.remainder(torch.round(a / 90.0), 4)
    c = torch.where(quarter, torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)[k.long()], c)
    s = torch.where(quarter, torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)[k.long()], s)
    # R⁻¹ = Rᵀ = [[c, −s], [s, c]]; translation −R⁻¹ t
    r_inv = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (N, 2, 2)
    t = torch.stack([tx_, ty_], -1)[..., None]  # (N, 2, 1)
    theta = torch.cat([r_inv, -(r_inv @ t)], dim=2)
    return (theta + 0.0).to(dtype=dtype, device=device)  # +0.0 turns −0 into +0
