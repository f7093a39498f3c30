"""The flow smoothness operator M of the spatial certificate (pure functions).

Below the threat models, attacks and certificates that use it
(:class:`~spatialadv.threats.FlowSmoothnessBall`,
:class:`~spatialadv.attacks.SmoothFlowPGD`, :mod:`spatialadv.certify`);
:mod:`spatialadv.certify` re-exports it.

From *Provable Defenses against Spatially Transformed Adversarial Inputs:
Impossibility and Possibility Results* (ICLR 2019 submission; "the
provable-defenses paper"), Eq. 2 and Props. 1-2.

A flow ``r`` on an H×W grid has two channels ``(r_u, r_v)`` (pixels). Its
smoothness is the square root of stAdv's squared 4-neighbour sum (the
provable-defenses paper, Eq. 2, without the per-pair square root of stAdv's L_flow):

    ℓ_diff(r) = sqrt( Σ_p Σ_{q∈N(p)} (r_u,p − r_u,q)² + (r_v,p − r_v,q)² )
              = sqrt( ‖M r_u‖² + ‖M r_v‖² ),

with ``MᵀM = Σ_{k∈{t,b,l,r}} (I − M⁽ᵏ⁾)ᵀ(I − M⁽ᵏ⁾)`` (Prop. 1), where row p
of the neighbour matrix ``M⁽ᵏ⁾`` is the one-hot vector of p's neighbour in
direction k. For the paper's single flow ``r_u = r_v = r`` this is Prop. 1's
``ℓ_diff = sqrt(2 rᵀMᵀMr)``; the paper then writes the budget as ``‖M r‖ ≤ ε``
(Eq. 3), dropping the √2. Here ``ε`` always bounds ℓ_diff of the full
two-channel flow.

Convention:
    Pixels are numbered row-major, ``p = row·W + col`` (``flow[:, c].flatten(1)``).
    Border (what a missing neighbour of a border pixel is):

    * ``"zeros"`` (default, Dirichlet): the flow outside the image is 0, so a
      border pixel pays ``r_p²`` per missing neighbour. ``MᵀM`` is then
      positive definite and λ is finite. This is the choice the certificate
      uses: it bounds flows whose smoothness *including the step to a zero
      flow outside the image* is ≤ ε. It is a stricter budget than the
      paper's (a pure translation by t pixels costs ``t·sqrt(2·2(H+W))``,
      not 0).
    * ``"replicate"`` (the neighbourhood of stAdv Eq. 4 and of
      :mod:`spatialadv.ops.flow`): the missing neighbour is the pixel itself.
      ``MᵀM`` is twice the graph Laplacian; constant flows (translations)
      are in its null space, so ``(MᵀM)⁻¹`` and λ do not exist. Passing
      ``ridge > 0`` uses ``MᵀM + ridge·I`` instead (a budget
      ``ℓ_diff² + ridge‖r‖² ≤ ε²``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
from torch import Tensor

__all__ = ["BORDERS", "neighbour_matrices", "smoothness_gram", "box_half_widths", "flow_smoothness",
           "gram_inverse_sqrt", "gram_inverse", "gram_min_eigenvalue"]

BORDERS = ("zeros", "replicate")


def _check_grid(h: int, w: int, border: str, ridge: float = 0.0) -> None:
    for v, name in ((h, "h"), (w, "w")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (ridge >= 0 and np.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")


def neighbour_matrices(h: int, w: int, *, border: str = "zeros") -> dict[str, sp.csr_matrix]:
    """The neighbour matrices M⁽ᵗ⁾, M⁽ᵇ⁾, M⁽ˡ⁾, M⁽ʳ⁾ of an H×W grid (the provable-defenses paper, §2.1).

    Args:
        h: grid height H in pixels, int ≥ 1.
        w: grid width W in pixels, int ≥ 1.
        border: ``"zeros"`` (a missing neighbour gives a zero row) or
            ``"replicate"`` (a missing neighbour is the pixel itself).

    Returns:
        ``{"t", "b", "l", "r"}`` → sparse ``(H·W, H·W)`` float64 CSR matrices;
        row p is the one-hot vector of p's top/bottom/left/right neighbour.

    Raises:
        ValueError: bad grid size or border.
    """
    _check_grid(h, w, border)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    p = (rows * w + cols).ravel()
    out = {}
    for k, (dr, dc) in {"t": (-1, 0), "b": (1, 0), "l": (0, -1), "r": (0, 1)}.items():
        nr, nc = rows.ravel() + dr, cols.ravel() + dc
        inside = (nr >= 0) & (nr < h) & (nc >= 0) & (nc < w)
        if border == "zeros":
            r_idx, c_idx = p[inside], (nr * w + nc)[inside]
        else:
            r_idx, c_idx = p, np.where(inside, nr * w + nc, p)
        out[k] = sp.csr_matrix((np.ones(len(r_idx)), (r_idx, c_idx)), shape=(h * w, h * w))
    return out


def smoothness_gram(h: int, w: int, *, border: str = "zeros", ridge: float = 0.0) -> sp.csr_matrix:
    """``MᵀM = Σ_k (I − M⁽ᵏ⁾)ᵀ(I − M⁽ᵏ⁾) + ridge·I`` (provable-defenses paper, Prop. 1), sparse ``(H·W, H·W)`` float64.

    ``rᵀ MᵀM r`` is the squared smoothness of one flow channel (see the
    module docstring). Raises ValueError on a bad grid, border or ridge.
    """
    _check_grid(h, w, border, ridge)
    eye = sp.identity(h * w, format="csr")
    g = sum(((eye - m).T @ (eye - m)) for m in neighbour_matrices(h, w, border=border).values())
    if ridge:
        g = g + ridge * eye
    return sp.csr_matrix(g)


@lru_cache(maxsize=16)
def _dense_factors(h: int, w: int, border: str, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    g = smoothness_gram(h, w, border=border, ridge=ridge).toarray()
    evals, evecs = np.linalg.eigh(g)
    if evals[0] <= 1e-10 * max(evals[-1], 1.0):
        raise ValueError(
            f"MᵀM is singular for border={border!r} with ridge={ridge} (constant flows / translations are in its "
            "null space): use border='zeros' or a ridge > 0")
    return evals, evecs


def gram_inverse(h: int, w: int, *, border: str = "zeros", ridge: float = 0.0) -> np.ndarray:
    """Dense ``(MᵀM)⁻¹`` ``(H·W, H·W)`` float64 (read-only, cached). Raises ValueError if singular."""
    evals, evecs = _dense_factors(h, w, border, float(ridge))
    out = (evecs / evals) @ evecs.T
    out.setflags(write=False)
    return out


def gram_inverse_sqrt(h: int, w: int, *, border: str = "zeros", ridge: float = 0.0) -> np.ndarray:
    """Dense symmetric ``(MᵀM)^{-1/2}`` ``(H·W, H·W)`` float64 (read-only, cached).

    It maps the unit ball onto the ellipsoid ``‖M r‖ ≤ 1``. Raises ValueError if
    ``MᵀM`` is singular.
    """
    evals, evecs = _dense_factors(h, w, border, float(ridge))
    out = (evecs / np.sqrt(evals)) @ evecs.T
    out.setflags(write=False)
    return out


def gram_min_eigenvalue(h: int, w: int, *, border: str = "zeros", ridge: float = 0.0) -> float:
    """Smallest eigenvalue μ_min of ``MᵀM``: ``‖r‖₂ ≤ ℓ_diff(r)/sqrt(μ_min)``. Raises ValueError if singular."""
    return float(_dense_factors(h, w, border, float(ridge))[0][0])


def box_half_widths(h: int, w: int, *, border: str = "zeros", ridge: float = 0.0) -> np.ndarray:
    """Per-pixel half-widths λ of the box around ``{r : ‖M r‖ ≤ 1}`` (provable-defenses paper, Prop. 2).

    ``‖M r‖ ≤ ε`` implies ``|r_p| ≤ ε·λ_p`` with ``λ_p² = ((MᵀM)⁻¹)_pp``, and the
    bound is attained by ``r = ε (MᵀM)⁻¹e_p / λ_p``. For a two-channel flow
    with ``ℓ_diff(r) ≤ ε`` the same λ bounds each channel.

    Args:
        h: grid height H in pixels, int ≥ 1.
        w: grid width W in pixels, int ≥ 1.
        border: ``"zeros"`` (default, Dirichlet) or ``"replicate"``; see the
            module docstring.
        ridge: finite ``≥ 0``, added to the diagonal of ``MᵀM`` (required
            ``> 0`` for ``"replicate"``); see the module docstring.

    Returns:
        ``(H·W,)`` float64, finite and > 0 (row-major pixels).

    Raises:
        ValueError: singular ``MᵀM`` (``border="replicate"`` with ``ridge=0``),
            bad grid size, border or ridge.
    """
    _check_grid(h, w, border, ridge)
    if border == "replicate" and ridge == 0:
        raise ValueError("MᵀM is singular for border='replicate' with ridge=0 (translations are in its null space): "
                         "use border='zeros' or ridge > 0")
    g = smoothness_gram(h, w, border=border, ridge=ridge).toarray()
    try:
        c = scipy.linalg.cho_factor(g, lower=True)
    except np.linalg.LinAlgError as e:
        raise ValueError(f"MᵀM is singular for border={border!r}, ridge={ridge}: use border='zeros' or ridge > 0") from e
    inv = scipy.linalg.cho_solve(c, np.eye(h * w))
    lam = np.sqrt(np.diag(inv))
    if not np.all(np.isfinite(lam)):
        raise ValueError("λ is not finite: MᵀM is numerically singular")
    return lam


def flow_smoothness(flow: Tensor, *, border: str = "zeros") -> Tensor:
    """ℓ_diff of each flow (provable-defenses paper, Eq. 2 / Prop. 1): ``sqrt(‖M r_u‖² + ‖M r_v‖²)``.

    Args:
        flow: ``(N, 2, H, W)`` float, pixels (channel 0 = Δu along W, 1 = Δv along H).
        border: ``"zeros"`` (flow outside the image is 0) or ``"replicate"``
            (differences to outside pixels are 0, as in :func:`spatialadv.ops.flow.flow_tv`:
            then ``ℓ_diff = sqrt(H·W)·flow_tv``).

    Returns:
        ``(N,)`` in pixels, differentiable (the gradient at a zero flow is NaN-free
        only away from 0; use ``flow_smoothness(...)**2`` in objectives if needed).

    Raises:
        TypeError, ValueError: malformed flow or border.
    """
    if not isinstance(flow, Tensor) or not flow.is_floating_point():
        raise TypeError("flow must be a floating-point torch.Tensor of shape (N, 2, H, W)")
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (N, 2, H, W), got {tuple(flow.shape)}")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    mode = "constant" if border == "zeros" else "replicate"
    pad = torch.nn.functional.pad(flow, (1, 1, 1, 1), mode=mode)
    c = pad[:, :, 1:-1, 1:-1]
    sq = ((c - pad[:, :, :-2, 1:-1]).pow(2) + (c - pad[:, :, 2:, 1:-1]).pow(2)
          + (c - pad[:, :, 1:-1, :-2]).pow(2) + (c - pad[:, :, 1:-1, 2:]).pow(2))
    return sq.flatten(1).sum(1).sqrt()
