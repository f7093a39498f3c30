"""Image-guided Laplacian smoothing.

From Zhang, Avrithis, Furon & Amsaleg, *Smooth Adversarial Examples*, EURASIP
Journal on Information Security, 2020, §3, Eqs. 6-9.

A perturbation ``z`` is smoothed on the 4-neighbour pixel graph of a guide
image ``x_o``: edges join horizontally and vertically adjacent pixels, with
weight ``w_ij = k_f(x_i, x_j)`` (spatial kernel 1 on the 4 neighbours, 0
elsewhere). There is one graph per colour channel (built from that channel of
the guide) and channel ``c`` of ``z`` is smoothed on graph ``c``, as in the
paper's reference implementation.

With ``D = diag(W 1)``, ``S = D^{-1/2} W D^{-1/2}`` and the regularised
Laplacian ``L_α = (I − α S) / (1 − α)``, the smoothing is
``s_α(z) = L_α⁻¹ z`` (Eq. 8) and its normalised form (Eq. 9)

    ŝ_α(z) = diag(s_α(1))⁻¹ s_α(z),

which keeps the dynamic range of ``z`` (``ŝ_α(1) = 1``). ``L_α`` is a symmetric
positive-definite M-matrix, so ``L_α⁻¹`` is entrywise positive and
``s_α(1) > 0``. ``ŝ_α`` is linear in ``z``; the guide is a constant (no
gradient flows to it).

Two solvers give the same operator:

* ``"direct"``: ``L_α⁻¹`` is formed per image and channel by Cholesky
  (``n = H·W`` unknowns, ``O(n³)`` once, ``O(n²)`` memory), then every call is
  one batched matrix product. Right for small images (MNIST: n = 784); this
  is the paper's "pre-compute L_α⁻¹".
* ``"cg"``: batched conjugate gradient with a matrix-free 5-point stencil,
  per-system stopping at relative residual ``tol`` or ``max_iter``
  iterations. Its backward pass is one more CG solve (``L_α`` is symmetric, so
  the vector-Jacobian product of ``ŝ_α`` is ``L_α⁻¹ (g / s_α(1))``) instead of
  differentiating through the iterations. Right for large images
  (224×224×3). ``cond(L_α) ≤ (1 + α)/(1 − α)``: α = 0.997 needs a few hundred
  iterations for ``tol = 1e-6``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from .._validation import check_int, check_positive

__all__ = ["graph_weights", "laplacian_matvec", "GuidedSmoothing", "smooth"]

Kernel = Literal["laplacian", "gaussian"]
Solver = Literal["auto", "direct", "cg"]

#: ``"auto"`` uses the direct solver up to this many pixels per image (16×16; at 28×28 CG is
#: already faster than a dense product, see benchmarks/smoothing.py) …
AUTO_DIRECT_MAX_PIXELS = 256
#: … and while the dense inverses take at most this many bytes in all.
AUTO_DIRECT_MAX_BYTES = 1 << 30


def _check_guide(guide: Tensor) -> None:
    if not isinstance(guide, Tensor):
        raise TypeError(f"guide must be a torch.Tensor, got {type(guide).__name__}")
    if guide.ndim != 4:
        raise ValueError(f"guide must have shape (N, C, H, W), got {tuple(guide.shape)}")
    if not guide.is_floating_point():
        raise TypeError(f"guide must be a floating-point tensor, got {guide.dtype}")
    if guide.shape[0] == 0:
        raise ValueError("guide is an empty batch (N = 0); smoothing needs at least one image")
    if guide.shape[-1] < 2 or guide.shape[-2] < 2:
        raise ValueError(f"guide must be at least 2×2 pixels, got {tuple(guide.shape[-2:])}")
    if not bool(torch.isfinite(guide).all()):
        raise ValueError("guide contains NaN or infinite values")
    lo, hi = float(guide.min()), float(guide.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"guide must have pixels in [0, 1] (sigma is on that scale), got range [{lo:.4g}, {hi:.4g}] "
                         "(divide uint8 images by 255)")


def graph_weights(guide: Tensor, *, sigma: float = 0.1, kernel: Kernel = "laplacian") -> tuple[Tensor, Tensor]:
    """Edge weights of the 4-neighbour graph of each channel of ``guide`` (Eq. 5, §3).

    Args:
        guide: image ``(N, C, H, W)``, values on the [0, 1] scale.
        sigma: feature-kernel bandwidth σ > 0 on the [0, 1] intensity scale.
        kernel: ``"laplacian"``: ``w = exp(−|x_i − x_j| / σ)``; ``"gaussian"``:
            ``w = exp(−(x_i − x_j)² / (2σ²))``.

    Returns:
        ``(w_h, w_v)``: horizontal edges ``(N, C, H, W−1)`` (pixel ``(i, j)`` –
        ``(i, j+1)``) and vertical edges ``(N, C, H−1, W)`` (``(i, j)`` – ``(i+1, j)``),
        in (0, 1].

    Raises:
        TypeError, ValueError: bad guide, ``sigma`` ≤ 0, unknown kernel.
    """
    _check_guide(guide)
    check_positive(sigma, "sigma")
    g = guide.detach()
    dh = g[..., :, 1:] - g[..., :, :-1]
    dv = g[..., 1:, :] - g[..., :-1, :]
    if kernel == "laplacian":
        return torch.exp(-dh.abs() / sigma), torch.exp(-dv.abs() / sigma)
    if kernel == "gaussian":
        return torch.exp(-dh.square() / (2 * sigma**2)), torch.exp(-dv.square() / (2 * sigma**2))
    raise ValueError(f"kernel must be 'laplacian' or 'gaussian', got {kernel!r}")


def _degree_inv_sqrt(w_h: Tensor, w_v: Tensor) -> Tensor:
    n, c, h, _ = w_h.shape
    w = w_v.shape[-1]
    d = torch.zeros(n, c, h, w, dtype=w_h.dtype, device=w_h.device)
    d[..., :, :-1] += w_h
    d[..., :, 1:] += w_h
    d[..., :-1, :] += w_v
    d[..., 1:, :] += w_v
    # Guard: a pixel whose every edge underflowed (tiny σ) is isolated, not 0/0.
    tiny = torch.finfo(d.dtype).tiny
    return d.clamp_min(tiny).rsqrt()


def _edge_coefficients(w_h: Tensor, w_v: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Off-diagonal entries of ``L_α``: ``−α/(1−α) · w_ij / sqrt(d_i d_j)`` on each edge."""
    dis = _degree_inv_sqrt(w_h, w_v)
    scale = -alpha / (1 - alpha)
    e_h = w_h * dis[..., :, :-1] * dis[..., :, 1:] * scale
    e_v = w_v * dis[..., :-1, :] * dis[..., 1:, :] * scale
    return e_h, e_v


def _l_matvec(v: Tensor, e_h: Tensor, e_v: Tensor, c0: float) -> Tensor:
    """``L_α v`` from the edge coefficients (5-point stencil, ``c0 = 1/(1−α)`` on the diagonal)."""
    out = v * c0
    out[..., :, :-1].addcmul_(e_h, v[..., :, 1:])
    out[..., :, 1:].addcmul_(e_h, v[..., :, :-1])
    out[..., :-1, :].addcmul_(e_v, v[..., 1:, :])
    out[..., 1:, :].addcmul_(e_v, v[..., :-1, :])
    return out


def laplacian_matvec(v: Tensor, guide: Tensor, *, alpha: float = 0.95, sigma: float = 0.1,
                     kernel: Kernel = "laplacian") -> Tensor:
    """``L_α v = (v − α S v) / (1 − α)`` for every image and channel (§3), matrix-free.

    Args:
        v: ``(N, C, H, W)``.
        guide: ``(N, C, H, W)`` guide image on the [0, 1] scale.
        alpha: α ∈ [0, 1) (see :class:`GuidedSmoothing`).
        sigma: feature-kernel bandwidth σ > 0 on the [0, 1] scale (see :class:`GuidedSmoothing`).
        kernel: ``"laplacian"`` or ``"gaussian"`` feature kernel (see :class:`GuidedSmoothing`).

    Returns:
        ``(N, C, H, W)``.
    """
    w_h, w_v = graph_weights(guide, sigma=sigma, kernel=kernel)
    e_h, e_v = _edge_coefficients(w_h.to(v.dtype), w_v.to(v.dtype), alpha)
    return _l_matvec(v, e_h, e_v, 1 / (1 - alpha))


def _cg(matvec: Callable[[Tensor], Tensor], b: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int, Tensor]:
    """Batched conjugate gradient, one system per ``(n, c)`` slice of ``b``.

    Each system stops when ``‖r‖ ≤ tol ‖b‖`` (a zero right-hand side gives 0 at
    once); a stopped system's step is 0, and ``0/0`` never occurs (a zero
    curvature or residual gives a zero step). Returns ``(x, iterations, rel_residual)``.
    """
    dims = (-2, -1)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    thresh = (tol * tol) * (b * b).sum(dims, keepdim=True)
    it = 0
    for it in range(1, max_iter + 1):
        active = rs > thresh
        if not bool(active.any()):
            it -= 1
            break
        ap = matvec(p)
        pap = (p * ap).sum(dims, keepdim=True)
        ok = active & (pap > 0)
        a = torch.where(ok, rs / torch.where(ok, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x.addcmul_(a, p)
        r.addcmul_(a, ap, value=-1)
        rs_new = (r * r).sum(dims, keepdim=True)
        okb = ok & (rs > 0)
        beta = torch.where(okb, rs_new / torch.where(okb, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = p.mul_(beta).add_(r)
        rs = torch.where(active, rs_new, rs)
    bn = (b * b).sum(dims, keepdim=True).sqrt()
    rel = torch.where(bn > 0, rs.sqrt() / torch.where(bn > 0, bn, torch.ones_like(bn)), torch.zeros_like(bn))
    return x, it, rel


class _CGSmooth(torch.autograd.Function):
    """``ŝ_α(z)`` by CG; backward is one more CG solve (L_α symmetric)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, e_h: Tensor, e_v: Tensor, s1: Tensor, c0: Any, tol: float, max_iter: int,
                owner: Any) -> Tensor:
        x, it, rel = _cg(lambda v: _l_matvec(v, e_h, e_v, c0), z.detach(), tol, max_iter)
        owner._note(it, rel)
        ctx.save_for_backward(e_h, e_v, s1)
        ctx.c0, ctx.tol, ctx.max_iter, ctx.owner = c0, tol, max_iter, owner
        return x / s1

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:
        e_h, e_v, s1 = ctx.saved_tensors
        gz, it, rel = _cg(lambda v: _l_matvec(v, e_h, e_v, ctx.c0), g / s1, ctx.tol, ctx.max_iter)
        ctx.owner._note(it, rel)
        return gz, None, None, None, None, None, None, None


class GuidedSmoothing:
    """The normalised smoothing ``ŝ_α`` guided by a batch of images (Eqs. 8-9), precomputed once.

    Build it once per batch of original images ``x_o`` and call it on as many
    perturbations as needed (every iteration of sC&W / sPGD2): the graph, the
    normaliser ``s_α(1)`` and, for the direct solver, ``L_α⁻¹`` are computed
    here.

    Args:
        guide: original images ``(N, C, H, W)`` with pixels in [0, 1] (checked).
        alpha: α ∈ [0, 1): 0 is the identity, → 1 is a strict low-pass
            (paper: 0.95 on MNIST, 0.997 on ImageNet).
        sigma: bandwidth σ > 0 of the feature kernel on the [0, 1] scale (the
            paper does not state it; 0.1 makes an MNIST stroke edge (Δ ≈ 1) a
            weight e⁻¹⁰ against 1 inside flat regions).
        kernel: ``"laplacian"`` (paper) or ``"gaussian"`` feature kernel.
        solver: ``"direct"``, ``"cg"`` or ``"auto"`` (direct up to
            :data:`AUTO_DIRECT_MAX_PIXELS` pixels and :data:`AUTO_DIRECT_MAX_BYTES`
            of dense inverses, else CG).
        tol: CG relative-residual tolerance (> 0).
        max_iter: CG iteration cap per solve (≥ 1); a solve that hits it with a
            residual above ``100·tol`` issues a ``RuntimeWarning``.

    Call: ``smoother(z, index=None) -> (M, C, H, W)``, where ``z`` is
    ``(M, C, H, W)`` and ``index`` (``(M,)`` int64, optional) says which guide
    image each row of ``z`` belongs to (default: row ``i`` ↔ image ``i``, M = N).
    Differentiable in ``z``, in the dtype of the guide.

    Attributes:
        cg_iterations: CG iterations of the last forward or backward solve.

    Raises:
        TypeError, ValueError: bad guide or hyper-parameter; ``z`` of the wrong
            shape or dtype. An empty batch (N = 0 guides or M = 0 signals) is a
            ``ValueError``, like an empty batch of images in the attacks.
    """

    def __init__(self, guide: Tensor, *, alpha: float = 0.95, sigma: float = 0.1, kernel: Kernel = "laplacian",
                 solver: Solver = "auto", tol: float = 1e-5, max_iter: int = 1000) -> None:
        _check_guide(guide)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1 or math.isnan(alpha):
            raise ValueError(f"alpha must be a float in [0, 1), got {alpha!r}")
        check_positive(tol, "tol")
        check_int(max_iter, "max_iter", minimum=1)
        if solver not in ("auto", "direct", "cg"):
            raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {solver!r}")
        self.alpha, self.sigma, self.kernel, self.tol, self.max_iter = float(alpha), float(sigma), kernel, float(tol), int(max_iter)
        self.shape = tuple(guide.shape)
        self.dtype = guide.dtype
        n, c, h, w = self.shape
        pixels = h * w
        if solver == "auto":
            nbytes = n * c * pixels * pixels * guide.element_size()
            solver = "direct" if pixels <= AUTO_DIRECT_MAX_PIXELS and nbytes <= AUTO_DIRECT_MAX_BYTES else "cg"
        self.solver = solver
        self.cg_iterations = 0
        self._warned = False
        self.w_h, self.w_v = graph_weights(guide, sigma=sigma, kernel=kernel)
        self.e_h, self.e_v = _edge_coefficients(self.w_h, self.w_v, self.alpha)
        self.c0 = 1 / (1 - self.alpha)
        if solver == "direct":
            self._a = self._dense_operator()  # (N, C, n, n): diag(s_α(1))⁻¹ L_α⁻¹
        else:
            ones = torch.ones(self.shape, dtype=self.dtype, device=guide.device)
            s1, it, rel = _cg(self._lmv, ones, self.tol, self.max_iter)
            self._note(it, rel)
            self.s1 = s1

    # -- internals ---------------------------------------------------------------------------
    def _lmv(self, v: Tensor) -> Tensor:
        return _l_matvec(v, self.e_h, self.e_v, self.c0)

    def _note(self, it: int, rel: Tensor) -> None:
        self.cg_iterations = it
        if it >= self.max_iter and not self._warned and bool((rel > 100 * self.tol).any()):
            self._warned = True
            warnings.warn(f"conjugate gradient hit max_iter={self.max_iter} with relative residual "
                          f"{float(rel.max()):.2e} > 100·tol; raise max_iter", RuntimeWarning, stacklevel=3)

    def _dense_operator(self) -> Tensor:
        n, c, h, w = self.shape
        p = h * w
        dev = self.w_h.device
        idx = torch.arange(p, device=dev).view(h, w)
        ih, jh = idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)
        iv, jv = idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)
        lap = torch.zeros(n, c, p * p, dtype=self.dtype, device=dev)
        for i, j, e in ((ih, jh, self.e_h.reshape(n, c, -1)), (iv, jv, self.e_v.reshape(n, c, -1))):
            lap[..., i * p + j] = e
            lap[..., j * p + i] = e
        lap = lap.view(n, c, p, p)
        lap.diagonal(dim1=-2, dim2=-1).fill_(self.c0)
        chol = torch.linalg.cholesky(lap)
        inv = torch.cholesky_inverse(chol)  # L_α⁻¹, symmetric
        s1 = inv.sum(-1, keepdim=True)  # s_α(1) = L_α⁻¹ 1 (> 0: inverse M-matrix)
        return inv / s1

    # -- call --------------------------------------------------------------------------------
    def __call__(self, z: Tensor, index: Tensor | None = None) -> Tensor:
        """Smooth ``z`` with the guide's graphs: ``ŝ_α(z)``, ``(M, C, H, W)``, differentiable in ``z``.

        Args:
            z: signals ``(M, C, H, W)`` in the guide's dtype, any scale.
            index: ``(M,)`` int64, the guide image of each row of ``z``;
                default (None) row ``i`` ↔ image ``i`` (then M = N).

        Raises:
            TypeError: ``z`` not a tensor, or not in the guide's dtype; ``index`` not an integer tensor.
            ValueError: ``z`` or ``index`` of the wrong shape, an empty ``z`` (M = 0), NaN/inf in ``z``,
                or an ``index`` entry outside ``[0, N)`` (negative indices are refused, not wrapped).
        """
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        n, c, h, w = self.shape
        if z.ndim != 4 or tuple(z.shape[1:]) != (c, h, w):
            raise ValueError(f"z must have shape (M, {c}, {h}, {w}), got {tuple(z.shape)}")
        if z.shape[0] == 0:
            raise ValueError("z is an empty batch (M = 0); smoothing needs at least one signal")
        if z.dtype != self.dtype:
            raise TypeError(f"z must have the guide's dtype {self.dtype}, got {z.dtype}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("z contains NaN or infinite values")
        if index is None:
            if z.shape[0] != n:
                raise ValueError(f"z has {z.shape[0]} rows but the guide has {n} images; pass index=")
            sel: slice | Tensor = slice(None)
        else:
            if not isinstance(index, Tensor):
                raise TypeError(f"index must be an integer torch.Tensor of shape ({z.shape[0]},), got {type(index).__name__}")
            if index.dtype.is_floating_point or index.is_complex() or index.dtype == torch.bool:
                raise TypeError(f"index must be an integer tensor (torch.long), got dtype {index.dtype}")
            if index.shape != (z.shape[0],):
                raise ValueError(f"index must have shape ({z.shape[0]},), got {tuple(index.shape)}")
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= n:
                raise ValueError(f"index must be in [0, {n}) (the guide's {n} images), got range [{lo}, {hi}]")
            sel = index.to(device=self.e_h.device, dtype=torch.long)
        if self.solver == "direct":
            a = self._a if index is None else self._a[sel]
            return (a @ z.reshape(z.shape[0], c, h * w, 1)).view(z.shape)
        return _CGSmooth.apply(z, self.e_h[sel], self.e_v[sel], self.s1[sel], self.c0, self.tol, self.max_iter, self)


def smooth(z: Tensor, guide: Tensor, *, alpha: float = 0.95, sigma: float = 0.1, kernel: Kernel = "laplacian",
           solver: Solver = "auto", tol: float = 1e-5, max_iter: int = 1000) -> Tensor:
    """Normalised image-guided smoothing ``ŝ_α(z) = diag(s_α(1))⁻¹ L_α⁻¹ z`` (Eqs. 8-9).

    Functional form of :class:`GuidedSmoothing` (same defaults); build the class
    once when smoothing many signals with the same guide.

    Args:
        z: signal ``(N, C, H, W)`` to smooth (a perturbation or a gradient), any scale.
        guide: images ``(N, C, H, W)`` on the [0, 1] scale; channel ``c`` of ``z``
            is smoothed on the graph of channel ``c`` of the guide.
        alpha: α ∈ [0, 1): 0 is the identity, → 1 a strict low-pass (see :class:`GuidedSmoothing`).
        sigma: feature-kernel bandwidth σ > 0 on the [0, 1] scale (see :class:`GuidedSmoothing`).
        kernel: ``"laplacian"`` (paper) or ``"gaussian"`` feature kernel.
        solver: ``"direct"``, ``"cg"`` or ``"auto"`` (see :class:`GuidedSmoothing`).
        tol: CG relative-residual tolerance, > 0.
        max_iter: CG iteration cap per solve, ≥ 1.

    Returns:
        ``(N, C, H, W)``, differentiable in ``z``.

    Raises:
        TypeError: ``z`` or ``guide`` not a float tensor, or of different dtypes.
        ValueError: bad shapes, an empty batch (N = 0), NaN/inf in ``z`` or ``guide``,
            ``guide`` pixels outside [0, 1], or a hyper-parameter out of range
            (see :class:`GuidedSmoothing`).

    Example:
        >>> import torch
        >>> x = torch.rand(2, 1, 8, 8)
        >>> torch.allclose(smooth(torch.ones_like(x), x), torch.ones_like(x), atol=1e-5)
        True
    """
    return GuidedSmoothing(guide, alpha=alpha, sigma=sigma, kernel=kernel, solver=solver, tol=tol,
                           max_iter=max_iter)(z)
