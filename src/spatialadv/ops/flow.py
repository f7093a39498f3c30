"""Flow smoothness loss and flow metrics (stAdv Eq. 4 and Appendix C Eqs. 5-6).

Neighbourhood: every function here uses the **4-connected** neighbourhood
N(p) = {up, down, left, right} restricted to pixels inside the image (no
padding). The double sum Σ_p Σ_{q∈N(p)} visits each unordered pair of
adjacent pixels twice, exactly as the equations are written.
"""

from __future__ import annotations

import math

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
