"""Flow smoothness loss and flow metrics (stAdv Eq. 4 and Appendix C Eqs. 5-6).

Neighbourhood: every function here uses the **4-connected** neighbourhood
N(p) = {up, down, left, right} restricted to pixels inside the image (no
padding). The double sum Σ_p Σ_{q∈N(p)} visits each unordered pair of
adjacent pixels twice, exactly as the equations are written.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def _check(flow: Tensor) -> None:
    if not isinstance(flow, Tensor) or not flow.is_floating_point():
        raise TypeError("flow must be a floating-point torch.Tensor of shape (N, 2, H, W)")
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (N, 2, H, W), got {tuple(flow.shape)}")
    if not bool(torch.isfinite(flow).all()):
        raise ValueError("flow contains NaN or infinite values")


def _sq_diffs(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Squared flow differences to the right and down neighbours.

    Returns ``(dh, dv)`` with shapes ``(N, H, W-1)`` and ``(N, H-1, W)``:
    ``‖Δu_p−Δu_q‖² + ‖Δv_p−Δv_q‖²`` for each horizontal / vertical pair.
    """
    dh = (flow[:, :, :, 1:] - flow[:, :, :, :-1]).pow(2).sum(1)
    dv = (flow[:, :, 1:, :] - flow[:, :, :-1, :]).pow(2).sum(1)
    return dh, dv


def flow_tv_loss(flow: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Per-example flow smoothness loss L_flow (stAdv Eq. 4).

    ``L_flow(f) = Σ_p Σ_{q∈N(p)} sqrt(‖Δu_p−Δu_q‖² + ‖Δv_p−Δv_q‖² + eps) − sqrt(eps)``

    Args:
        flow: ``(N, 2, H, W)`` displacements in pixels.
        eps: ≥ 0, added inside the square root so the gradient exists at a
            zero difference. The constant ``sqrt(eps)`` is subtracted per
            term so a constant flow has loss exactly 0; this does not change
            the gradient. ``eps = 0`` gives Eq. 4 literally (gradient NaN at 0).

    Returns:
        ``(N,)`` loss in pixels (sum over directed 4-neighbour pairs).

    Raises:
        TypeError: ``flow`` not a float tensor, ``eps`` not a number.
        ValueError: ``flow`` not ``(N, 2, H, W)`` or containing NaN/inf;
            ``eps`` negative, NaN or infinite.

    Example:
        >>> f = torch.zeros(1, 2, 3, 3); f[0, 0, :, 2] = 1.0   # one column moved 1 px
        >>> float(flow_tv_loss(f, eps=0.0))   # 3 pairs across the step, counted twice
        6.0
    """
    _check(flow)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a number >= 0, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    dh, dv = _sq_diffs(flow)
    s = eps**0.5
    per_pair = (dh + eps).sqrt().sub(s).flatten(1).sum(1) + (dv + eps).sqrt().sub(s).flatten(1).sum(1)
    return 2.0 * per_pair


def flow_tv(flow: Tensor) -> Tensor:
    """Per-example total variation of a flow (stAdv Appendix C, Eq. 5).

    ``TV(f) = sqrt( (1/n) Σ_p Σ_{q∈N(p)} ‖Δu_p−Δu_q‖² + ‖Δv_p−Δv_q‖² )``, n = H·W.

    Args:
        flow: ``(N, 2, H, W)`` in pixels.

    Returns:
        ``(N,)`` in pixels.

    Raises:
        TypeError: ``flow`` not a float tensor.
        ValueError: ``flow`` not ``(N, 2, H, W)`` or containing NaN/inf.
    """
    _check(flow)
    dh, dv = _sq_diffs(flow)
    n = flow.shape[2] * flow.shape[3]
    return (2.0 * (dh.flatten(1).sum(1) + dv.flatten(1).sum(1)) / n).sqrt()


def flow_l2(flow: Tensor) -> Tensor:
    """Per-example root-mean-square displacement (stAdv Appendix C, Eq. 6).

    ``L2(f) = sqrt( (1/n) Σ_p ‖Δu_p‖² + ‖Δv_p‖² )``, n = H·W.

    Args:
        flow: ``(N, 2, H, W)`` in pixels.

    Returns:
        ``(N,)`` in pixels.

    Raises:
        TypeError: ``flow`` not a float tensor.
        ValueError: ``flow`` not ``(N, 2, H, W)`` or containing NaN/inf.
    """
    _check(flow)
    n = flow.shape[2] * flow.shape[3]
    return (flow.pow(2).flatten(1).sum(1) / n).sqrt()


#: Units a flow can be expressed in: ``"pixels"`` (what every function here
#: takes and returns) or ``"normalized"`` (grid coordinates, [−1, 1] from the
#: first to the last pixel centre of each axis).
FLOW_UNITS = ("pixels", "normalized")


def _unit_scale(flow: Tensor) -> Tensor:
    """``(1, 2, 1, 1)``: normalised grid units per pixel, ``2/(W−1)`` for Δu and ``2/(H−1)`` for Δv."""
    h, w = flow.shape[2], flow.shape[3]
    return torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=flow.dtype, device=flow.device).view(1, 2, 1, 1)


def to_normalized(flow: Tensor) -> Tensor:
    """Convert a flow from pixels to normalised grid coordinates.

    Args:
        flow: ``(N, 2, H, W)`` in pixels (channel 0 Δu along W, channel 1 Δv along H).

    Returns:
        ``(N, 2, H, W)``: Δu · 2/(W−1) and Δv · 2/(H−1).

    Convention:
        Normalised coordinates run from −1 at the first pixel centre to +1 at
        the last (``align_corners=True`` in ``torch.nn.functional.grid_sample``
        terms), so one pixel is 2/27 on a 28-pixel axis. This is the unit in
        which stAdv's τ = 0.05 (Xiao et al., ICLR 2018, §4.1) and its Table 6
        flow metrics are read here; see :class:`spatialadv.attacks.StAdv`.

    Raises:
        TypeError, ValueError: as :func:`flow_tv`.

    Example:
        >>> round(float(to_normalized(torch.ones(1, 2, 28, 28))[0, 0, 0, 0]) * 27, 6)  # one pixel is 2/27
        2.0
    """
    _check(flow)
    return flow * _unit_scale(flow)


def to_pixels(flow: Tensor) -> Tensor:
    """Inverse of :func:`to_normalized`: normalised grid coordinates ``(N, 2, H, W)`` → pixels."""
    _check(flow)
    return flow / _unit_scale(flow)


def neumann_smoother(h: int, w: int, lam: float, *, spacing: tuple[float, float] = (1.0, 1.0),
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Callable[[Tensor], Tensor]:
    """The operator ``K = (I + λ L)⁻¹`` on flows ``(M, 2·H·W)``, L the 4-neighbour grid Laplacian.

    ``L`` is the graph Laplacian of the H × W pixel grid with 4-neighbour edges
    (free, i.e. Neumann, boundary), applied to each flow channel. ``K`` is
    symmetric positive definite with eigenvalues in (0, 1]; a constant flow is
    left unchanged and a component of spatial frequency ω is damped by
    ``1 / (1 + λ ω²)`` (roughly: details finer than ``sqrt(λ)`` pixels are
    suppressed). ``K`` is diagonal in the product basis of the two path-graph
    Laplacians' eigenvectors, so one application is four small matrix products.

    Used by :class:`spatialadv.attacks.StAdv` as the initial inverse-Hessian
    approximation of L-BFGS (a Sobolev-gradient preconditioner): it changes
    the solver's path, not the objective.

    On the CPU the eigenbasis is the orthonormal DCT-II (``scipy.fft.dctn``); on
    other devices dense eigenvector products; both in float64.

    Args:
        h: image height (pixels), ≥ 1.
        w: image width (pixels), ≥ 1.
        lam: λ ≥ 0 in units of ``spacing``²; 0 gives the identity.
        spacing: ``(s_v, s_u)``, the length of one pixel step along H and
            along W in the unit of ``lam`` (``(1, 1)``: pixels; ``(2/(H−1),
            2/(W−1))``: normalised grid coordinates, so that one λ means the
            same smoothing length relative to the image at every size).
        device: device of the operator's matrices.
        dtype: unused (kept for symmetry); the result has the input's dtype.

    Returns:
        A function mapping ``(M, 2·H·W)`` (or any shape with ``2·H·W``
        elements per row) to ``K v`` of the same shape and dtype; each row's
        result does not depend on the other rows (batch-independent).

    Raises:
        ValueError: ``h`` or ``w`` < 1, ``lam`` negative or not finite,
            ``spacing`` not positive.

    Example:
        >>> k = neumann_smoother(4, 4, 10.0)
        >>> torch.allclose(k(torch.ones(1, 32)), torch.ones(1, 32), atol=1e-5)
        True
    """
    if isinstance(h, bool) or isinstance(w, bool) or not isinstance(h, int) or not isinstance(w, int) or h < 1 or w < 1:
        raise ValueError(f"h and w must be integers >= 1, got {h!r}, {w!r}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")

    sv, su = (float(v) for v in spacing)
    if not (math.isfinite(sv) and math.isfinite(su) and sv > 0 and su > 0):
        raise ValueError(f"spacing must be two finite numbers > 0, got {spacing!r}")
    if lam == 0:
        return lambda v: v

    def path_eig(m: int) -> tuple[Tensor, Tensor]:
        lap = torch.zeros(m, m, dtype=torch.float64)
        i = torch.arange(m - 1)
        lap[i, i + 1] = -1.0
        lap[i + 1, i] = -1.0
        lap -= torch.diag(lap.sum(1))
        ev, q = torch.linalg.eigh(lap)
        return ev.clamp_min(0), q

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cpu":
        # The path graph's Laplacian (free ends) is diagonalised by the orthonormal DCT-II, with eigenvalues
        # 2 − 2 cos(π k / m): K v = IDCT(scale · DCT(v)) per channel, O(HW log HW) by scipy.fft instead of
        # four dense products (7x faster at 224 px). Each row is transformed on its own (batch-independent).
        import scipy.fft

        def dct_eig(m: int) -> Tensor:
            return 2.0 - 2.0 * torch.cos(math.pi * torch.arange(m, dtype=torch.float64) / m)

        scale64 = (1.0 / (1.0 + lam * (dct_eig(h)[:, None] / sv**2 + dct_eig(w)[None, :] / su**2))).numpy()

        def apply_dct(v: Tensor) -> Tensor:
            # float64 whatever the input (as the dense path): the rounding to float32 then almost never differs
            # from that of the exact product, so stAdv's iterates match the dense path's
            z = v.detach().reshape(-1, 2, h, w).to(torch.float64).numpy()
            workers = torch.get_num_threads()  # torch's intra-op thread count, as the attack's other work
            c = scipy.fft.dctn(z, type=2, axes=(-2, -1), norm="ortho", workers=workers)
            c *= scale64.astype(c.dtype, copy=False)
            out = scipy.fft.idctn(c, type=2, axes=(-2, -1), norm="ortho", overwrite_x=True, workers=workers)
            return torch.from_numpy(out).to(v.dtype).reshape(v.shape)

        return apply_dct

    eh, qh = path_eig(h)
    ew, qw = path_eig(w)
    # other devices: dense eigenbases, float64 and the small matrix always on the left (one equally shaped
    # product per image and channel), so an image's result does not depend on how many images are in the batch
    scale = (1.0 / (1.0 + lam * (eh[:, None] / sv**2 + ew[None, :] / su**2))).to(device=device)
    qh, qw = qh.to(device=device), qw.to(device=device)

    def apply(v: Tensor) -> Tensor:
        z = v.reshape(-1, 2, h, w).to(torch.float64)
        c = (qw.T @ (qh.T @ z).transpose(-1, -2)).transpose(-1, -2) * scale
        out = (qw @ (qh @ c).transpose(-1, -2)).transpose(-1, -2)
        return out.to(v.dtype).reshape(v.shape)

    return apply
