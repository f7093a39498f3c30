"""Lower bounds on the worst-case margin change: the provable-defenses paper's attacks.

The budget-restricted flow attack ``SmoothFlowPGD`` lives in
:mod:`spatialadv.attacks.smooth_flow` (importing it from here still works,
with a ``DeprecationWarning``).

The lower-bound attacks are those of *Provable Defenses against Spatially
Transformed Adversarial Inputs: Impossibility and Possibility Results* (ICLR
2019 submission; "the provable-defenses paper"), §3.

All achieved margins are measured on the **true bilinear warp**
(:func:`spatialadv.ops.flow_warp`, zero padding), the model that the upper
bounds of :mod:`~spatialadv.certify.bounds` cover, so ``lower ≤ upper`` is a
meaningful soundness check.

The paper's lower-bound attack (Thm. 1, Alg. 1; Thm. 2, Alg. 2 for linear
nets) maximises ``(z_i − z_j)(g(r; x)) − (z_i − z_j)(x)`` over *inputs*
``x`` in a box (``‖x‖∞ ≤ 1`` in the paper) and flows with ``ℓ_diff(r) ≤ ε``:

* Initialisation (Thm. 1/2) uses the paper's first-order model
  ``ℓ̃(x, r) = ∇σ(Wx)ᵀ diag(v) W Dg(0; x) r`` with ``Dg(0; x) = diag(x)``
  for each flow channel, as the paper states (§3.1 and App. 6.4).
  (This is *not* the derivative of bilinear interpolation, which involves the
  image gradient; it only seeds the search.) Its value is returned as
  ``margin_theorem``.
* Refinement (Alg. 1/2) alternates ``x ← vertex(sign α)`` and the flow update
  of Eq. 8/14, using the midpoint rule (Eq. 7/13) on the *exact* bilinear
  Jacobian ``Dg(r⁽ⁱ⁾; x)`` (:func:`warp_derivative`) at ``r⁽ⁱ⁾ = (2i−1)/(2n)·r``.
* ``margin`` is the exact ``Δ = (z_i − z_j)(g(r*; x*)) − (z_i − z_j)(x*)``.

Flows have two channels (``r_u, r_v``); the paper's scalar flow ``r_u = r_v``
is the special case its Prop. 3 argues is extremal for the linearised loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._deprecated import moved
from .._validation import check_int, check_positive
from ..ops.flow_smoothness import gram_inverse
from ..ops.warp import flow_warp
from ..threats import FlowSmoothnessBall
from .bounds import check_input_range, network_weights

__all__ = ["warp_derivative", "LowerBoundResult", "lower_bound_attack", "rescale_to_budget", "pair_margin_change",
           "attained_margin_range"]

#: names moved to :mod:`spatialadv.attacks` (attacks sit below certify): deprecated aliases
__getattr__ = moved(__name__, {"SmoothFlowPGD": "spatialadv.attacks"})


def warp_derivative(x: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    """Partial derivatives of the bilinear warp (zero padding) w.r.t. each pixel's own flow.

    Output pixel p of ``flow_warp(x, flow)`` depends only on ``flow[:, :, p]``,
    so the Jacobian is diagonal per flow channel (the provable-defenses paper, §2.2):
    ``∂g_p/∂Δu_p`` and ``∂g_p/∂Δv_p``.

    Args:
        x: ``(N, C, H, W)`` images (any float range).
        flow: ``(N, 2, H, W)`` pixels.

    Returns:
        ``(gu, gv)`` each ``(N, C, H, W)``, linear in x (differentiable w.r.t. x).
        At integer sampling positions (kinks) the right derivative is returned.

    Convention:
        As :func:`spatialadv.ops.flow_warp`: pixel ``(v, u)`` samples
        ``(v + Δv, u + Δu)``; outside pixels are 0.
    """
    n, c, h, w = x.shape
    gy = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    gx = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    sx = gx + flow[:, 0].to(x.dtype)
    sy = gy + flow[:, 1].to(x.dtype)
    x0, y0 = torch.floor(sx), torch.floor(sy)
    wx1, wy1 = (sx - x0).unsqueeze(1), (sy - y0).unsqueeze(1)
    x0l, y0l = x0.long(), y0.long()
    flat = x.reshape(n, c, h * w)

    def val(dy: int, dx: int) -> Tensor:
        xi, yi = x0l + dx, y0l + dy
        valid = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)).unsqueeze(1).to(x.dtype)
        idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
        return torch.gather(flat, 2, idx).view(n, c, h, w) * valid

    v00, v01, v10, v11 = val(0, 0), val(0, 1), val(1, 0), val(1, 1)
    gu = (1 - wy1) * (v01 - v00) + wy1 * (v11 - v10)
    gv = (1 - wx1) * (v10 - v00) + wx1 * (v11 - v01)
    return gu, gv


def pair_margin_change(model: nn.Module, x: Tensor, flow: Tensor, i: Tensor | int, j: Tensor | int) -> Tensor:
    """Exact ``Δ = (z_i − z_j)(flow_warp(x, flow)) − (z_i − z_j)(x)`` per example ``(N,)`` (zero padding)."""
    n = x.shape[0]
    i = torch.as_tensor(i, device=x.device).expand(n).long()
    j = torch.as_tensor(j, device=x.device).expand(n).long()
    dt = next(model.parameters()).dtype
    with torch.no_grad():
        z0 = model(x.to(dt))
        z1 = model(flow_warp(x, flow.to(x.dtype)).to(dt))
    d0 = z0.gather(1, i[:, None]) - z0.gather(1, j[:, None])
    d1 = z1.gather(1, i[:, None]) - z1.gather(1, j[:, None])
    return (d1 - d0)[:, 0].to(torch.float64)


def rescale_to_budget(flow: Tensor, eps: float, *, border: str = "zeros") -> Tensor:
    """Scale each flow ``(N, 2, H, W)`` (pixels) down, never up, so that ``ℓ_diff ≤ eps``.

    This is :meth:`spatialadv.threats.FlowSmoothnessBall.project`.
    """
    return FlowSmoothnessBall(eps=eps, border=border).project(flow)


@dataclass(frozen=True)
class LowerBoundResult:
    """Result of :func:`lower_bound_attack`.

    Attributes:
        x: ``(1, C, H, W)`` the input x* found (in ``input_range``; not a natural image).
        flow: ``(1, 2, H, W)`` the flow r* (pixels), ``ℓ_diff(r*) ≤ ε``.
        margin: exact ``Δ`` on the bilinear warp (float, logit units).
        margin_midpoint: the midpoint-rule estimate of Δ (Eq. 7/13) at (x*, r*).
        margin_theorem: the Thm. 1/2 value of the linearised model at the initialisation.
        history: exact Δ at the initialisation, then after each outer iteration (Fig. 4); ``history[0]`` is
            :attr:`margin_theorem_exact`.
    """

    x: Tensor
    flow: Tensor
    margin: float
    margin_midpoint: float
    margin_theorem: float
    history: tuple[float, ...]

    @property
    def margin_theorem_exact(self) -> float:
        """Exact ``Δ`` on the bilinear warp at Thm. 1's own ``(x*, r*)`` (float, logit units).

        Thm. 1's value (:attr:`margin_theorem`) is that of the paper's linearised loss; compare Alg. 1's exact
        :attr:`margin` with this one, not with it.
        """
        return self.history[0]


def _pair_weights(model: nn.Module, pair: tuple[int, int]):
    """The network's weights, ``v = V_i − V_j`` and ``W`` in float64; ValueError for a bad class pair."""
    net = network_weights(model)
    k = net.V.shape[0]
    i, j = pair
    if not (0 <= i < k and 0 <= j < k and i != j):
        raise ValueError(f"pair must be two different classes in [0, {k}), got {pair}")
    W = net.W.detach().to(torch.float64) if net.W is not None else None
    return net, (net.V[i] - net.V[j]).detach().to(torch.float64), W


def _to_box(z: Tensor, lo: float, hi: float) -> Tensor:
    """π∞ to ``[−1, 1]`` then the affine map onto ``[lo, hi]``."""
    z = z / z.abs().max().clamp_min(1e-300)
    return (lo + hi) / 2 + (hi - lo) / 2 * z


def _ellipsoid_argmax(cvec: Tensor, ginv: Tensor, eps: float) -> Tensor:
    """The argmax of ``cᵀr`` over ``‖M r‖ ≤ ε`` per channel-stacked flow: ``ε G⁻¹c / sqrt(cᵀG⁻¹c)`` (Eqs. 6, 8).

    cvec: ``(2, d)``; ginv: ``(d, d)``. Returns ``(2, d)``.
    """
    gc = cvec @ ginv  # G symmetric
    nrm = (gc * cvec).sum().clamp_min(1e-300).sqrt()
    return eps * gc / nrm


def lower_bound_attack(model: nn.Module, image_shape, eps: float, *, pair: tuple[int, int] = (1, 0),
                       input_range=(-1.0, 1.0), n_mid: int = 8, iters: int = 20, x_iters: int = 5,
                       border: str = "zeros", ridge: float = 0.0) -> LowerBoundResult:
    """The lower-bound attack of the provable-defenses paper (Alg. 1 for one hidden layer, Alg. 2 for linear nets).

    Searches an input ``x*`` in the box ``input_range`` and a flow ``r*`` with
    ``ℓ_diff(r*) ≤ ε`` that make ``Δ = (z_i − z_j)(g(r*; x*)) − (z_i − z_j)(x*)``
    large, for the class pair ``(i, j) = pair`` (§6.6: the two-class reduction
    of the multi-class case).

    Steps (see the module docstring):
      1. Init, Thm. 1: ``x* = π∞(W_d⁻¹ 1)``. W is ``m × D`` with ``m < D``
         for the paper's nets, so no rank-D submatrix exists; the least-norm
         solution of ``W x = 1`` (pseudo-inverse) plays W_d⁻¹'s role (it
         activates every hidden unit before π∞). Linear nets (Thm. 2): the
         top eigenvector of ``diag(v) (MᵀM)⁻¹ diag(v)``. Then ``r*`` per Eq. 6/12.
      2. Repeat ``iters`` times: ``x_iters`` rounds of ``x ← vertex(sign α)``
         with ∇σ frozen at the current x (α = coefficient of x in Eq. 7), then
         the flow update Eq. 8/14 (midpoint rule with ``n_mid`` intervals).
      The best exact Δ seen is returned.

    Args:
        model: one-hidden-layer or linear network (:func:`~spatialadv.certify.network_weights`).
        image_shape: ``(C, H, W)``.
        eps: budget ε > 0 on ℓ_diff (pixels).
        pair: ``(i, j)``: the attack increases ``z_i − z_j``.
        input_range: the box for x (paper: ``(−1, 1)``). Compare with
            :func:`~spatialadv.certify.pair_bounds` computed with the same range.
        n_mid: midpoint-rule intervals n, int ≥ 1.
        iters: outer iterations (flow updates), int ≥ 0.
        x_iters: rounds of ``x ← vertex(sign α)`` per outer iteration, int ≥ 1.
        border: border of the smoothness operator, ``"zeros"`` or ``"replicate"``
            (:mod:`~spatialadv.ops.flow_smoothness`).
        ridge: ridge ``≥ 0`` added to ``MᵀM`` (:mod:`~spatialadv.ops.flow_smoothness`).

    Returns:
        A :class:`LowerBoundResult`; ``margin`` is the best exact Δ found.

    Raises:
        ValueError, TypeError: bad arguments or unsupported model.
    """
    check_positive(eps, "eps")
    check_int(n_mid, "n_mid")
    check_int(iters, "iters", minimum=0)
    check_int(x_iters, "x_iters")
    check_input_range(input_range)
    lo, hi = map(float, input_range)
    ch, h, w = image_shape
    net, v, W = _pair_weights(model, pair)
    dtype = torch.float64
    ginv = torch.tensor(gram_inverse(h, w, border=border, ridge=ridge), dtype=dtype)
    b = net.b.detach().to(dtype) if net.b is not None else None
    d = h * w

    def pre(xf: Tensor) -> Tensor:  # (B, D) → pre-activations
        assert W is not None and b is not None  # called for hidden networks only
        return xf @ W.T + b

    def coeff_w(xf: Tensor) -> Tensor:  # Wᵀ diag(v) ∇σ(Wx + b) (hidden) or v (linear), (B, D)
        if W is None:
            return v.expand(xf.shape[0], -1)
        return ((pre(xf) > 0).to(dtype) * v) @ W

    def f(xf: Tensor) -> Tensor:
        if W is None:
            return xf @ v
        return torch.relu(pre(xf)) @ v

    def exact(x: Tensor, r: Tensor) -> float:
        return float(f(flow_warp(x, r).flatten(1)) - f(x.flatten(1)))

    def mids(r: Tensor) -> Tensor:
        z = (2 * torch.arange(1, n_mid + 1, dtype=dtype) - 1) / (2 * n_mid)
        return z.view(-1, 1, 1, 1) * r  # (n_mid, 2, H, W)

    def midpoint_terms(x: Tensor, r: Tensor, frozen: Tensor | None = None):
        """Per midpoint: (Dg r) (n, C, H, W), weights w = Wᵀdiag(v)∇σ at g(r_i; x) (n, D)."""
        rm = mids(r)
        xb = x.expand(n_mid, -1, -1, -1)
        gu, gv = warp_derivative(xb, rm)
        dgr = gu * r[:, :1] + gv * r[:, 1:]
        wts = frozen if frozen is not None else coeff_w(flow_warp(xb, rm).flatten(1))
        return gu, gv, dgr, wts

    def midpoint_value(x: Tensor, r: Tensor) -> float:
        _, _, dgr, wts = midpoint_terms(x, r)
        return float((dgr.flatten(1) * wts).sum(1).mean())

    # ---- initialisation (Thm. 1 / Thm. 2)
    if W is not None:
        z0 = torch.linalg.lstsq(W, torch.ones(W.shape[0], 1, dtype=dtype)).solution[:, 0]
    else:
        # top eigenvector of diag(v_pix) G⁻² diag(v_pix), v summed over channels per pixel
        vp = v.view(ch, d).sum(0)
        g2 = ginv @ ginv
        mat = vp[:, None] * g2 * vp[None, :]
        z0 = torch.linalg.eigh(0.5 * (mat + mat.T))[1][:, -1].repeat(ch)
    x = _to_box(z0, lo, hi).view(1, ch, h, w)
    cw = coeff_w(x.flatten(1)).view(ch, d)
    c_lin = (x.view(ch, d) * cw).sum(0)  # Dg(0; x) = diag(x) per channel (paper's linearisation)
    cvec = torch.stack([c_lin, c_lin])
    r = _ellipsoid_argmax(cvec, ginv, eps).view(1, 2, h, w)
    margin_theorem = float(eps * (cvec @ ginv * cvec).sum().sqrt())

    best = (exact(x, r), x.clone(), r.clone())
    history = [best[0]]
    for _ in range(iters):
        # refinement of x: sign of the coefficients of x in Eq. 7 with ∇σ frozen
        for _ in range(x_iters):
            frozen = midpoint_terms(x, r)[3]
            xs = x.clone().requires_grad_(True)
            with torch.enable_grad():
                _, _, dgr, _ = midpoint_terms(xs, r, frozen)
                (alpha,) = torch.autograd.grad((dgr.flatten(1) * frozen).sum() / n_mid, xs)
            x_new = torch.where(alpha > 0, torch.full_like(x, hi), torch.full_like(x, lo))
            x_new = torch.where(alpha == 0, x, x_new)
            if torch.equal(x_new, x):
                break
            x = x_new
        # refinement of r (Eq. 8): align r with Σ_i Dg(r_i; x)ᵀ Wᵀ diag(v) ∇σ(W g(r_i; x))
        gu, gv, _, wts = midpoint_terms(x, r)
        wts = wts.view(n_mid, ch, h, w)
        cvec = torch.stack([(gu * wts).sum((0, 1)).flatten(), (gv * wts).sum((0, 1)).flatten()]) / n_mid
        if float(cvec.abs().max()) > 0:
            r = _ellipsoid_argmax(cvec, ginv, eps).view(1, 2, h, w)
        val = exact(x, r)
        history.append(val)
        if val > best[0]:
            best = (val, x.clone(), r.clone())
    val, x, r = best
    return LowerBoundResult(x=x.float(), flow=r.float(), margin=val, margin_midpoint=midpoint_value(x, r),
                            margin_theorem=margin_theorem, history=tuple(history))


def attained_margin_range(model: nn.Module, image_shape, *, pair: tuple[int, int] = (1, 0), input_range=(-1.0, 1.0),
                          restarts: int = 8, iters: int = 100, seed: int = 0) -> tuple[float, float]:
    """The lowest and highest ``z_i − z_j`` found over inputs in the box: a lower estimate of the margin's range.

    Every bilinear warp with zero padding maps an image of the box into the box when the box holds 0 (each output
    pixel is a convex combination of input pixels and zeros), so no flow of any size changes ``z_i − z_j`` by more
    than ``sup − inf`` over the box: the lower bounds of :func:`lower_bound_attack` are capped by that range,
    whatever ε. This returns values *attained* at vertices of the box (``(low, high)``, ``high − low ≤ sup − inf``):
    from ``restarts`` random sign vectors, ``x ← vertex(sign ∇)`` with the ReLU pattern of the current x (the
    coordinate-wise maximiser of the margin for that pattern, as Alg. 1's x update) until it repeats or ``iters``
    rounds, for each direction.

    Args:
        model: one-hidden-layer or linear network (:func:`~spatialadv.certify.network_weights`).
        image_shape: ``(C, H, W)``.
        pair: ``(i, j)``.
        input_range: the box ``(lo, hi)``, as in :func:`lower_bound_attack`.
        restarts: random starting vertices per direction, int ≥ 1.
        iters: most vertex updates per start, int ≥ 1.
        seed: seed of the random starts.

    Returns:
        ``(low, high)`` floats (logit units).

    Raises:
        ValueError, TypeError: bad arguments or unsupported model.
    """
    check_int(restarts, "restarts")
    check_int(iters, "iters")
    check_input_range(input_range)
    lo, hi = map(float, input_range)
    net, v, W = _pair_weights(model, pair)
    i, j = pair
    dtype = torch.float64
    d = int(torch.tensor(image_shape).prod())
    b = net.b.detach().to(dtype) if net.b is not None else torch.zeros(W.shape[0] if W is not None else 0, dtype=dtype)
    c = float(net.c[i] - net.c[j])
    gen = torch.Generator().manual_seed(seed)

    def f(x: Tensor) -> Tensor:  # (B, D) → (B,): z_i − z_j
        return (x @ v if W is None else torch.relu(x @ W.T + b) @ v) + c

    def grad(x: Tensor) -> Tensor:  # ∇ of f with the ReLU pattern of x frozen
        return v.expand_as(x) if W is None else ((x @ W.T + b > 0).to(dtype) * v) @ W

    out = []
    for sign in (-1.0, 1.0):
        x = torch.where(torch.rand(restarts, d, generator=gen, dtype=dtype) < 0.5, lo, hi).to(dtype)
        best = f(x)
        for _ in range(iters):
            x_new = torch.where(sign * grad(x) > 0, hi, lo).to(dtype)
            val = f(x_new)
            best = torch.maximum(best, val) if sign > 0 else torch.minimum(best, val)
            if torch.equal(x_new, x):
                break
            x = x_new
        out.append(float(best.max() if sign > 0 else best.min()))
    return out[0], out[1]
