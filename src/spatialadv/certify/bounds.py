"""Upper bounds on the margin change a smooth flow can cause.

From *Provable Defenses against Spatially Transformed Adversarial Inputs:
Impossibility and Possibility Results* (ICLR 2019 submission; "the
provable-defenses paper"), §4.1, §6.5 and §6.7, and C. Nguyen, *Two Approaches
to Defend against Adversarial Examples: Attention-based and Certificate-based*,
MSc thesis, Lehigh University, 2018 ("the Nguyen thesis"), §4.1.

What is bounded
---------------
For a one-hidden-layer ReLU network ``z(x) = V σ(W x + b) + c`` (or a linear
one, ``z(x) = V x + c``), an image ``x`` with pixels in ``[lo, hi]`` and a
two-channel flow ``r`` with ``ℓ_diff(r) ≤ ε`` (:func:`~spatialadv.ops.flow_smoothness.flow_smoothness`,
``border`` as chosen), the *true bilinear warp* ``g(r; x)``
(:func:`spatialadv.ops.flow_warp`, zero or border padding) changes the
margin of class i over class j by at most ``ε · Q[i, j]``:

    (z_i − z_j)(g(r; x)) − (z_i − z_j)(x)  ≤  ε · Q[i, j].

Derivation (the provable-defenses paper, Eqs. 4, 15 and §4.1, extended to two
flow channels as in the Nguyen thesis, Eq. 11). Along the path ``t ↦ g(t r; x)`` the fundamental theorem of
calculus gives ``Δ = ∫₀¹ ∇σᵀ diag(v) W Dg(t r) r dt`` with ``v = V_i − V_j``.
This is exact for the bilinear warp (piecewise smooth, so almost everywhere
differentiable); no linearisation is involved. Then

* ``∇σ ∈ [0, 1]ᵐ`` (ReLU), relaxed to ``s ∈ [−1, 1]ᵐ`` as in the paper;
* output pixel p depends only on its own flow ``r_p``, and
  ``∂g_p/∂r_u,p``, ``∂g_p/∂r_v,p`` are convex combinations of differences of
  two neighbouring pixels (or of a pixel and the zero padding), so lie in
  ``[−ρ, ρ]`` with ``ρ = max(hi, 0) − min(lo, 0)`` (ρ = 1 for images in
  [0, 1]: the paper's "Dg ∈ [−2, 2]" for ``r_u = r_v``; ρ = 2 on [−1, 1]);
* ``|r_u,p|, |r_v,p| ≤ ε λ_p`` (Prop. 2, box of the ellipsoid).

Hence ``Δ ≤ 2ερ · max_{‖s‖∞≤1, ‖t‖∞≤1} sᵀ B t`` with ``B = diag(v) W diag(λ)``,
i.e. ``Δ ≤ ερ · max_{‖z‖∞≤1} zᵀPz``, ``P = [[0, B], [Bᵀ, 0]]`` (Eq. 9). With C
image channels λ is repeated per channel. The bound does not depend on x, so
``Q`` is computed once per network (as the paper notes for Eq. 16).

The certificate therefore covers the true bilinear warp of images in
``[lo, hi]`` — not only a first-order model of it — for every flow in the
(Dirichlet-border by default) ℓ_diff ball.

Bounds on ``max_{‖z‖∞≤1} zᵀPz`` (all sound, loosest first):

* ``"frobenius"`` / ``"spectral"`` (§6.8, made sound): ``sᵀdiag(v)Wu ≤ ‖v‖₂‖W‖‖u‖₂``
  with ``‖u‖₂ ≤ ρε·min(sqrt(2C/μ_min), 2‖λ‖₂)`` (``μ_min`` the smallest
  eigenvalue of MᵀM); ‖W‖ is ‖W‖_F or ‖W‖₂. The paper writes ``ε‖W‖‖v‖₂``
  without these constants.
* ``"sdp"``: ``max tr(ZP)`` s.t. ``diag(Z) ≤ 1, Z ⪰ 0`` (Eq. 9's relaxation),
  bounded from above by its dual: for *any* ``c``,
  ``D·λ⁺_max(P − diag c) + Σ max(c, 0)`` (D = dim P) is a valid bound
  (weak duality). :func:`sdp_dual_bound` evaluates it with a dense float64
  eigen-solver plus a safety margin; :func:`optimize_dual` searches c;
  :func:`sdp_exact` solves the SDP with cvxpy (small networks only).
* ``"linear"`` (linear classifiers only, Eq. 16): ``2ερ‖v ⊙ λ‖₁``, exact for the box.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from .._validation import check_bool, check_images, check_int, check_labels
from ..attacks.base import model_input_error
from ..ops.flow_smoothness import box_half_widths, gram_min_eigenvalue

__all__ = ["NetworkWeights", "network_weights", "pair_matrices", "sdp_exact", "brute_force_max", "sdp_dual_bound",
           "ritz_top_eigen", "dual_objective", "optimize_dual", "pair_bounds", "Certificate", "certify", "METHODS",
           "initial_dual", "class_pairs", "check_input_range", "PairBounds", "weights_fingerprint",
           "check_reconstruction", "reconstructed_logits"]

METHODS = ("sdp", "spectral", "frobenius", "linear", "min")


@dataclass(frozen=True)
class NetworkWeights:
    """Weights of a one-hidden-layer ReLU network (``W``, ``b`` set) or a linear one (``W is None``).

    Attributes:
        W: ``(m, D)`` first layer, or None for a linear classifier.
        b: ``(m,)`` first-layer bias, or None.
        V: ``(K, m)`` output layer (``(K, D)`` for a linear classifier).
        c: ``(K,)`` output bias.
    """

    W: Tensor | None
    b: Tensor | None
    V: Tensor
    c: Tensor

    @property
    def hidden(self) -> bool:
        """Whether the network has a hidden ReLU layer (``W`` is set); False for a linear classifier."""
        return self.W is not None


_SUPPORTED = ("the spatial certificate supports nn.Flatten → nn.Linear → nn.ReLU → nn.Linear (one hidden layer) or "
              "nn.Flatten → nn.Linear models (nn.Dropout and nn.Identity ignored), returning logits")


def network_weights(model: nn.Module) -> NetworkWeights:
    """Read the weights of ``Flatten → Linear → ReLU → Linear`` or ``Flatten → Linear``.

    ``nn.Dropout`` and ``nn.Identity`` layers are ignored (the model is meant to be
    in eval mode). The tensors are the model's parameters (not copies), so bounds
    built from them are differentiable with respect to the weights.

    Only the layer kinds are read here; whether ``model.forward`` really computes
    this network (and not, e.g., ``net(2 * x)`` or a softmax of it) is checked by
    :func:`check_reconstruction` (called by :func:`pair_bounds` and :func:`certify`).

    Raises:
        TypeError: ``model`` not an ``nn.Module``; any other layer kind (convolutions,
            other activations, normalisation, a final softmax, ...) or parameters
            outside the supported layers (the bounds hold only for these networks).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    leaves = [m for m in model.modules() if len(list(m.children())) == 0]
    leaves = [m for m in leaves if not isinstance(m, (nn.Flatten, nn.Dropout, nn.Identity))]
    kinds = [type(m) for m in leaves]
    names = [k.__name__ for k in kinds]
    if kinds and kinds[-1] in (nn.Softmax, nn.LogSoftmax, nn.Sigmoid, nn.Softmin):
        raise TypeError(f"model ends with {names[-1]}: the certificate bounds logit margins, remove the final "
                        f"{names[-1]}; {_SUPPORTED}; got layers {names}")
    if kinds == [nn.Linear, nn.ReLU, nn.Linear]:
        w, v = cast(nn.Linear, leaves[0]), cast(nn.Linear, leaves[2])
        b = w.bias if w.bias is not None else torch.zeros(w.out_features, dtype=w.weight.dtype, device=w.weight.device)
        c = v.bias if v.bias is not None else torch.zeros(v.out_features, dtype=v.weight.dtype, device=v.weight.device)
        net = NetworkWeights(w.weight, b, v.weight, c)
    elif kinds == [nn.Linear]:
        v = cast(nn.Linear, leaves[0])
        c = v.bias if v.bias is not None else torch.zeros(v.out_features, dtype=v.weight.dtype, device=v.weight.device)
        net = NetworkWeights(None, None, v.weight, c)
    else:
        raise TypeError(f"{_SUPPORTED}; got layers {names} (convolutions, other activations or normalisation layers "
                        "are not supported)")
    known = {id(p) for m in leaves for p in m.parameters()}
    extra = [name for name, p in model.named_parameters() if id(p) not in known]
    if extra:
        raise TypeError(f"{_SUPPORTED}; the model has parameters outside these layers ({', '.join(extra[:4])}), "
                        "which the certificate cannot describe")
    return net


def reconstructed_logits(net: NetworkWeights, x: Tensor) -> Tensor:
    """Logits ``(N, K)`` float64 of the network described by ``net`` on ``x`` ``(N, C, H, W)``.

    ``V relu(W x + b) + c`` (or ``V x + c``) on the flattened images, computed
    in float64 (the network :func:`pair_bounds` bounds).
    """
    z = x.detach().flatten(1).to(torch.float64)
    if net.W is not None and net.b is not None:
        z = torch.relu(z @ net.W.detach().to(z.device, torch.float64).T + net.b.detach().to(z.device, torch.float64))
    return z @ net.V.detach().to(z.device, torch.float64).T + net.c.detach().to(z.device, torch.float64)


def _dropout_active(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.training and m.p > 0 for m in model.modules())


def _call_model(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` without gradients; torch errors on ``x`` become TypeError/ValueError naming ``x``."""
    with torch.no_grad():
        try:
            out = model(x)
        except RuntimeError as e:
            raise model_input_error(model, x, e) from e
    if not isinstance(out, Tensor):
        raise TypeError(f"the model must return a logits tensor (N, K), got {type(out).__name__} "
                        "(return the logits only, not a tuple or dict)")
    return out


def check_reconstruction(model: nn.Module, net: NetworkWeights, x: Tensor, logits: Tensor | None = None) -> Tensor:
    """Check that ``model`` computes the network :func:`network_weights` read from its weights, on ``x``.

    The certificate bounds the network rebuilt from the weights
    (:func:`reconstructed_logits`); a ``forward`` that rescales its input, adds
    a softmax, or returns NaN would be certified with the wrong bound. One
    forward pass of ``model`` on ``x`` (skipped when ``logits`` is given) is
    compared with the rebuilt network's logits.

    Tolerance: ``max |model(x) − rebuilt(x)| ≤ tol``, ``tol = max(1e-4, 10·ε_dtype) · (1 + max |rebuilt(x)|)``
    (``ε_dtype`` the machine epsilon of the model's weights, 2⁻¹⁰ for float32 on CUDA
    with TF32 matmuls allowed). The comparison is
    skipped (the other checks are not) when active dropout (train mode) makes the
    model's output random.

    Args:
        model: the module (its mode is not changed).
        net: its :func:`network_weights`.
        x: ``(N, C, H, W)`` images, in the model's dtype and on its device.
        logits: ``model(x)`` if already computed.

    Returns:
        The model's logits ``(N, K)`` (in the model's dtype).

    Raises:
        TypeError: the model did not return a float tensor (e.g. a tuple), or raised on ``x``
            because of its dtype.
        ValueError: ``x`` of the wrong size for the first layer; logits of the wrong shape,
            NaN/inf, that look like probabilities (every row non-negative and summing to 1),
            or that differ from the rebuilt network's beyond the tolerance.
    """
    in_dim = net.W.shape[1] if net.W is not None else net.V.shape[1]
    d = int(math.prod(x.shape[1:]))
    if d != in_dim:
        raise ValueError(f"x has images of shape {tuple(x.shape[1:])} ({d} values) but the model's first layer takes "
                         f"{in_dim} values")
    out = _call_model(model, x) if logits is None else logits
    n, k = x.shape[0], net.V.shape[0]
    if not out.is_floating_point():
        raise TypeError(f"the model must return a floating-point logits tensor (N, K), got dtype {out.dtype}")
    if tuple(out.shape) != (n, k):
        raise ValueError(f"the model must return logits of shape ({n}, {k}) (its last layer has {k} outputs), "
                         f"got {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the model returned NaN or infinite logits; the certificate needs finite logits")
    out64 = out.detach().to(torch.float64)
    if bool((out64 >= 0).all()) and bool(((out64.sum(1) - 1).abs() <= 1e-4).all()):
        raise ValueError("the model's output looks like probabilities (every row non-negative and summing to 1): the "
                         "certificate bounds logit margins; remove the final softmax and pass the logits")
    if _dropout_active(model):
        return out
    ref = reconstructed_logits(net, x)
    eps = torch.finfo(net.V.dtype).eps if net.V.is_floating_point() else 0.0
    if net.V.dtype == torch.float32 and net.V.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        eps = 2.0**-10  # TF32 matmuls keep 10 mantissa bits
    tol = max(1e-4, 10 * eps) * (1.0 + float(ref.abs().max()))
    diff = float((out64 - ref.to(out64.device)).abs().max())
    if not diff <= tol:
        raise ValueError(f"the model's logits differ from those of the network rebuilt from its weights (max abs logit "
                         f"difference {diff:.4g} > tolerance {tol:.3g}): its forward does not apply these layers to the images "
                         "as they are (e.g. it rescales or normalises the input); the certificate would bound another "
                         "network")
    return out


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of the weights the certificate reads (:func:`network_weights`): dtype, shape and bytes of W, b, V, c.

    Args:
        model: a one-hidden-layer or linear network.

    Returns:
        64 hex digits; changes when any weight changes (e.g. after fine-tuning).

    Raises:
        TypeError: unsupported model (see :func:`network_weights`).
    """
    net = network_weights(model)
    h = hashlib.sha256()
    for name in ("W", "b", "V", "c"):
        t = getattr(net, name)
        if t is None:
            h.update(f"{name}:none".encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _plain(out):
    """Strip :class:`PairBounds` from the results of a torch operation (derived tensors carry no fingerprint)."""
    if isinstance(out, PairBounds):
        return out.as_subclass(Tensor)
    if isinstance(out, (tuple, list)):
        return type(out)(_plain(o) for o in out)
    return out


class PairBounds(Tensor):
    """The ``(K, K)`` float64 Q of :func:`pair_bounds`, a ``Tensor`` that remembers which network it bounds.

    Use it as the tensor Q (indexing, arithmetic, ``tolist()``); any operation
    on it returns a plain ``Tensor`` (a changed Q is no longer the network's
    bound). :func:`certify` checks that a ``PairBounds`` was computed for the
    model it certifies (same :func:`weights_fingerprint`), for the same image
    shape and pixel range.

    Attributes:
        fingerprint: :func:`weights_fingerprint` of the network.
        image_shape: ``(C, H, W)`` the bound was computed for.
        input_range: ``(lo, hi)`` pixel range the bound was computed for.
        method: the bound (:data:`METHODS`).
        border: the smoothness operator's border.
        ridge: the ridge added to ``MᵀM``.
    """

    fingerprint: str
    image_shape: tuple[int, int, int]
    input_range: tuple[float, float]
    method: str
    border: str
    ridge: float

    @staticmethod
    def __new__(cls, q: Tensor, *, fingerprint: str, image_shape, input_range, method: str, border: str,
                ridge: float) -> "PairBounds":
        """Wrap ``q`` (shares its storage) with its provenance."""
        obj = q.as_subclass(Tensor).as_subclass(cls)
        obj.fingerprint, obj.image_shape, obj.method, obj.border, obj.ridge = (
            fingerprint, tuple(image_shape), method, border, float(ridge))
        obj.input_range = (float(input_range[0]), float(input_range[1]))
        return obj

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """Run ``func`` as on a plain tensor; results are plain tensors."""
        return _plain(super().__torch_function__(func, types, args, kwargs or {}))

    def provenance(self) -> dict:
        """The keyword arguments that rebuild this object around a tensor: fingerprint, shape, range, settings."""
        return {"fingerprint": self.fingerprint, "image_shape": self.image_shape, "input_range": self.input_range,
                "method": self.method, "border": self.border, "ridge": self.ridge}

    def __deepcopy__(self, memo) -> "PairBounds":
        """A copy with its own storage and the same provenance."""
        return PairBounds(self.as_subclass(Tensor).clone(), **self.provenance())

    def __reduce_ex__(self, protocol):
        """Pickle (``torch.save``) as the plain tensor plus the provenance."""
        return (_rebuild_pair_bounds, (self.as_subclass(Tensor).detach().clone(), self.provenance()))


def _rebuild_pair_bounds(q: Tensor, provenance: dict) -> PairBounds:
    """Unpickle a :class:`PairBounds`."""
    return PairBounds(q, **provenance)


def _check_q(q: object, k: int, model: nn.Module, image_shape: tuple[int, ...], input_range) -> Tensor:
    """Validate a Q passed to :func:`certify` (see its docstring); return it as a plain float64 tensor."""
    if not isinstance(q, Tensor):
        raise TypeError(f"q must be a torch.Tensor (K, K) or the PairBounds of pair_bounds(), got {type(q).__name__}")
    if not q.is_floating_point():
        raise TypeError(f"q must be a floating-point tensor, got dtype {q.dtype}")
    if tuple(q.shape) != (k, k):
        raise ValueError(f"q must be ({k}, {k}) for this {k}-class model, got {tuple(q.shape)}")
    plain = q.as_subclass(Tensor).detach().to("cpu", torch.float64) if isinstance(q, PairBounds) \
        else q.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(plain).all()):
        raise ValueError("q contains NaN or infinite values")
    if bool((plain < 0).any()):
        raise ValueError(f"q must be >= 0 (a bound on a margin change per unit eps), got min {float(plain.min()):.4g}")
    if not torch.allclose(plain, plain.T, rtol=1e-9, atol=1e-12):
        raise ValueError("q must be symmetric (Q[i, j] = Q[j, i])")
    if isinstance(q, PairBounds):
        if q.fingerprint != weights_fingerprint(model):
            raise ValueError("q was computed by pair_bounds for another network (its weight fingerprint differs from "
                             "this model's; were the weights changed?); recompute pair_bounds(model, ...)")
        if tuple(image_shape) != q.image_shape:
            raise ValueError(f"q was computed for images of shape {q.image_shape}, x has {tuple(image_shape)}")
        if (float(input_range[0]), float(input_range[1])) != q.input_range:
            raise ValueError(f"q was computed for input_range {q.input_range}, certify got {tuple(input_range)}")
    return plain


def _check_shape(image_shape) -> tuple[int, int, int]:
    if not (isinstance(image_shape, (tuple, list, torch.Size)) and len(image_shape) == 3
            and all(isinstance(s, int) and s >= 1 for s in image_shape)):
        raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
    return tuple(image_shape)


def check_input_range(input_range) -> float:
    """Validate an input box ``(lo, hi)`` and return ρ, the largest difference of two sampled values.

    ``ρ = max(hi, 0) − min(lo, 0)`` (zero padding samples 0).

    Raises:
        ValueError: not a pair, not finite, or ``hi <= lo``.
    """
    if not (isinstance(input_range, (tuple, list)) and len(input_range) == 2):
        raise ValueError(f"input_range must be (lo, hi), got {input_range!r}")
    lo, hi = map(float, input_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"input_range must be finite with hi > lo, got {input_range!r}")
    return max(hi, 0.0) - min(lo, 0.0)


def _lam_d(image_shape, border: str, ridge: float, dtype=torch.float64) -> Tensor:
    ch, h, w = _check_shape(image_shape)
    lam = torch.as_tensor(box_half_widths(h, w, border=border, ridge=ridge), dtype=dtype)
    return lam.repeat(ch)  # flatten order (C, H, W)


def class_pairs(k: int) -> list[tuple[int, int]]:
    """All unordered class pairs ``(i, j)`` with ``0 <= i < j < k``, in lexicographic order."""
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pair_matrices(weights: NetworkWeights, lam_d: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
    """``B_ij = diag(V_i − V_j) W diag(λ)`` for each pair, ``(len(pairs), m, D)`` (provable-defenses paper, §6.7).

    ``P_ij = [[0, B_ij], [B_ijᵀ, 0]]``. Raises ValueError for a linear network.
    """
    if not weights.hidden:
        raise ValueError("pair_matrices needs a one-hidden-layer network")
    idx_i = torch.tensor([p[0] for p in pairs])
    idx_j = torch.tensor([p[1] for p in pairs])
    dv = weights.V[idx_i] - weights.V[idx_j]
    W = weights.W
    assert W is not None  # hidden
    return dv[:, :, None] * W[None] * lam_d.to(W.dtype)[None, None, :]


def _dense_p(bmat: np.ndarray) -> np.ndarray:
    m, d = bmat.shape
    p = np.zeros((m + d, m + d))
    p[:m, m:] = bmat
    p[m:, :m] = bmat.T
    return p


def sdp_exact(bmat, *, solver: str = "CLARABEL", **solver_kwargs) -> float:
    """Solve ``max tr(ZP) s.t. diag(Z) ≤ 1, Z ⪰ 0`` with cvxpy (the provable-defenses paper, Eq. 9).

    Args:
        bmat: ``B`` ``(m, D)`` (array or tensor); ``P = [[0, B], [Bᵀ, 0]]``.
        solver: a cvxpy SDP solver (``"CLARABEL"`` or ``"SCS"``).
        **solver_kwargs: passed on to ``cvxpy.Problem.solve`` (e.g. ``eps`` for SCS).

    Returns:
        The optimal value (solver precision; not itself a certified bound — use
        :func:`sdp_dual_bound` for one). Memory grows as ``(m + D)²``: meant for
        small networks, tests and benchmarks.

    Raises:
        RuntimeError: the solver did not reach an optimal status.
    """
    import cvxpy as cp  # lazy: cvxpy is heavy and only the exact SDP needs it

    b = np.asarray(bmat.detach().cpu() if isinstance(bmat, Tensor) else bmat, dtype=np.float64)
    p = _dense_p(b)
    z = cp.Variable(p.shape, PSD=True)
    prob = cp.Problem(cp.Maximize(cp.trace(p @ z)), [cp.diag(z) <= 1])
    prob.solve(solver=solver, **solver_kwargs)
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"SDP solver {solver} ended with status {prob.status}")
    return float(prob.value)


def brute_force_max(bmat) -> float:
    """``max_{z ∈ {±1}ⁿ} zᵀPz`` by enumerating every z (n = m + D ≤ 22).

    This is the exact value of ``max_{‖z‖∞≤1} zᵀPz`` (P has a zero diagonal, so
    the maximum of this multilinear form is at a vertex). ``bmat`` is ``B``
    ``(m, D)`` (array or tensor), ``P = [[0, B], [Bᵀ, 0]]``. Raises ValueError
    for n > 22.
    """
    b = np.asarray(bmat.detach().cpu() if isinstance(bmat, Tensor) else bmat, dtype=np.float64)
    p = _dense_p(b)
    n = p.shape[0]
    if n > 22:
        raise ValueError(f"brute force over 2^{n} sign vectors is too large (n ≤ 22)")
    best = -np.inf
    # fix z_0 = +1 (zᵀPz is even in z) and enumerate the rest in chunks
    rest = n - 1
    for start in range(0, 2 ** rest, 1 << 16):
        codes = np.arange(start, min(start + (1 << 16), 2 ** rest))
        bits = ((codes[:, None] >> np.arange(rest)[None, :]) & 1).astype(np.float64) * 2 - 1
        z = np.concatenate([np.ones((len(codes), 1)), bits], 1)
        best = max(best, float(np.einsum("ni,ij,nj->n", z, p, z).max()))
    return best


# ------------------------------------------------------------------------------------- dual bound
def _matvec(w: Tensor, dv: Tensor, lam: Tensor, c: Tensor, x: Tensor) -> Tensor:
    """``(P_k − diag c_k) X_k`` for every pair k without forming P: X ``(Kp, m+D, b)``."""
    m, d = w.shape
    kp, _, nb = x.shape
    xs, xt = x[:, :m], x[:, m:]
    # one GEMM for all pairs: (m, D) @ (D, Kp·b)
    t = (lam[None, :, None] * xt).permute(1, 0, 2).reshape(d, kp * nb)
    ys = dv[:, :, None] * (w @ t).reshape(m, kp, nb).permute(1, 0, 2)
    s = (dv[:, :, None] * xs).permute(1, 0, 2).reshape(m, kp * nb)
    yt = lam[None, :, None] * (w.T @ s).reshape(d, kp, nb).permute(1, 0, 2)
    return torch.cat([ys, yt], 1) - c[:, :, None] * x


def ritz_top_eigen(w: Tensor, dv: Tensor, lam: Tensor, c: Tensor, u0: Tensor | None = None, *, iters: int = 20,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Approximate top eigenpair of ``A_k = P_k − diag(c_k)`` for each pair k, matrix-free.

    A LOBPCG-style iteration (Rayleigh-Ritz on ``span{u, A u − θ u, u_prev}``),
    warm-started from ``u0``. The Ritz value never exceeds λ_max (it is a
    Rayleigh quotient), so it is **not** a certified bound: use it to train or to
    search c, and :func:`sdp_dual_bound` to certify.

    Args:
        w: first-layer weights ``W`` ``(m, D)``.
        dv: output-weight differences ``V_i − V_j`` ``(Kp, m)``, one row per pair.
        lam: box half-widths λ ``(D,)``, repeated per image channel.
        c: dual vectors ``(Kp, m + D)``, one per pair.
        u0: ``(Kp, m + D)`` start, random if None.
        iters: iterations, int ≥ 0.
        generator: random generator of the start when ``u0`` is None (default: torch's global one).

    Returns:
        ``(theta (Kp,), u (Kp, m + D))`` unit vectors, detached.
    """
    with torch.no_grad():
        kp, n = c.shape
        w, dv, lam, c = (t.detach() for t in (w, dv, lam, c))
        u = u0.detach().clone() if u0 is not None else torch.randn(kp, n, dtype=c.dtype, generator=generator)
        u = u / u.norm(dim=1, keepdim=True)
        prev = None
        for _ in range(iters):
            au = _matvec(w, dv, lam, c, u[:, :, None])[:, :, 0]
            theta = (u * au).sum(1, keepdim=True)
            res = au - theta * u
            cols = [u, res] + ([prev] if prev is not None else [])
            s = torch.stack(cols, 2)
            q, _ = torch.linalg.qr(s)
            t = q.transpose(1, 2) @ _matvec(w, dv, lam, c, q)
            t = 0.5 * (t + t.transpose(1, 2))
            evals, evecs = torch.linalg.eigh(t)
            prev = u
            u = (q @ evecs[:, :, -1:])[:, :, 0]
            u = u / u.norm(dim=1, keepdim=True)
        au = _matvec(w, dv, lam, c, u[:, :, None])[:, :, 0]
        return (u * au).sum(1), u


def dual_objective(w: Tensor, dv: Tensor, lam: Tensor, c: Tensor, u: Tensor) -> Tensor:
    """Differentiable surrogate of the SDP dual, ``Σ c + D · uᵀ(P − diag c)u`` per pair ``(Kp,)``.

    With ``u`` the top eigenvector of ``P − diag c`` this is ``Σc + D·λ_max``,
    which is a valid bound once ``c + λ_max ≥ 0`` (weak duality) and whose
    gradient in ``(W, V, c)`` is that of the eigenvalue. ``u`` is treated as a
    constant. This is the training penalty of the SDP-regularised network
    (the provable-defenses paper, §6.8 item 6, following Raghunathan et al. 2018); its value with
    an approximate ``u`` under-estimates λ_max, so never report it as a certificate.
    """
    n = c.shape[1]
    au = _matvec(w, dv, lam, c, u.detach()[:, :, None])[:, :, 0]
    return c.sum(1) + n * (u.detach() * au).sum(1)


def _safe_lambda_max(a: np.ndarray | Tensor) -> Tensor:
    """λ_max of symmetric matrices ``(Kp, n, n)`` in float64 plus a rounding margin.

    LAPACK's symmetric eigen-solver is backward stable: the computed
    eigenvalues are exact for ``A + E`` with ``‖E‖₂ ≲ n·eps·‖A‖₂``; Weyl's
    inequality then bounds the error of λ_max. We add ``16·n·eps·‖A‖_F``
    (``‖A‖₂ ≤ ‖A‖_F``) so the returned value is never below the true λ_max.
    """
    a = torch.as_tensor(a, dtype=torch.float64)
    a = 0.5 * (a + a.transpose(-1, -2))
    top = torch.linalg.eigvalsh(a)[..., -1]
    n = a.shape[-1]
    margin = 16 * n * torch.finfo(torch.float64).eps * torch.linalg.matrix_norm(a)
    return top + margin


def sdp_dual_bound(bmat: Tensor, c: Tensor) -> Tensor:
    """Certified upper bound on ``max tr(ZP)`` (hence on ``max_{‖z‖∞≤1} zᵀPz``) from any dual vector c.

    ``D·λ⁺_max(P − diag c) + Σ max(c, 0)`` (weak duality), with
    λ_max from a dense float64 eigen-solver plus a rounding margin
    (:func:`_safe_lambda_max`). Not differentiable (use :func:`dual_objective`).

    Args:
        bmat: ``(Kp, m, D)`` or ``(m, D)``: ``P = [[0, B], [Bᵀ, 0]]``.
        c: ``(Kp, m + D)`` or ``(m + D,)``, any real values.

    Returns:
        ``(Kp,)`` (or a 0-d tensor) float64.

    Raises:
        ValueError: shapes that do not match, non-finite c.
    """
    single = bmat.dim() == 2
    b = bmat.detach().to(torch.float64)
    cc = c.detach().to(torch.float64)
    if single:
        b, cc = b[None], cc[None]
    kp, m, d = b.shape
    if cc.shape != (kp, m + d):
        raise ValueError(f"c must have shape {(kp, m + d)}, got {tuple(c.shape)}")
    if not torch.isfinite(cc).all():
        raise ValueError("c must be finite")
    out = torch.empty(kp, dtype=torch.float64)
    for k in range(kp):
        a = torch.zeros(m + d, m + d, dtype=torch.float64)
        a[:m, m:] = b[k]
        a[m:, :m] = b[k].T
        a -= torch.diag(cc[k])
        lam_max = _safe_lambda_max(a)
        out[k] = (m + d) * lam_max.clamp_min(0) + cc[k].clamp_min(0).sum()
    return out[0] if single else out


def initial_dual(bmat: Tensor) -> Tensor:
    """A starting dual vector c ``(Kp, m + D)`` for ``bmat`` ``(Kp, m, D)``, per pair.

    The better of the diagonal-dominance choice (feasible,
    ``diag(c) ⪰ P``) and the spectral one (``αβ = σ²``, σ ≈ ‖B‖₂ by 30 power
    iterations, so feasible only up to that estimate), per pair. Feasibility is
    not needed: :func:`optimize_dual` certifies whatever c it ends with.
    """
    kp, m, d = bmat.shape
    ab = bmat.abs()
    c_dd = torch.cat([ab.sum(2), ab.sum(1)], 1)
    vec = torch.ones(kp, d, 1, dtype=bmat.dtype) / math.sqrt(d)
    for _ in range(30):
        vec = bmat.transpose(1, 2) @ (bmat @ vec)
        vec = vec / vec.norm(dim=1, keepdim=True).clamp_min(1e-300)
    sig = (bmat @ vec).norm(dim=(1, 2)) * 1.01
    c_sp = torch.cat([(sig * math.sqrt(d / m))[:, None].expand(kp, m), (sig * math.sqrt(m / d))[:, None].expand(kp, d)], 1)
    use_dd = c_dd.sum(1) < c_sp.sum(1)
    return torch.where(use_dd[:, None], c_dd, c_sp).clone()


def optimize_dual(w: Tensor, dv: Tensor, lam: Tensor, *, steps: int = 300, lr: float = 0.05, ritz_iters: int = 4,
                  block: int = 8, smoothing: float = 0.05, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Search dual vectors c minimising the SDP dual for each pair, then certify them.

    Adam (learning rate ``lr`` times the mean ``|c|`` of the start) on
    ``Σc + D·λ_max(P − diag c)``, with λ_max replaced by a soft-max of the
    top ``block`` Ritz values (temperature ``smoothing``·mean|c|, annealed;
    warm-started block Ritz iterations, ``ritz_iters`` per step); the c with
    the best value is shifted by its Ritz λ_max (so that ``P − diag c ⪯ 0``
    approximately) and evaluated with :func:`sdp_dual_bound`. The result is a
    valid bound whatever the search did.

    Args:
        w: first-layer weights ``W`` ``(m, D)`` (float64 recommended, as for the next two).
        dv: output-weight differences ``V_i − V_j`` ``(Kp, m)``, one row per pair.
        lam: box half-widths λ ``(D,)``, repeated per image channel.
        steps: Adam steps (0 returns the certified start).
        lr: Adam learning rate, relative to the mean ``|c|`` of the start.
        ritz_iters: block Ritz iterations per Adam step.
        block: number of top Ritz values in the soft-max (capped at ``m + D``).
        smoothing: soft-max temperature relative to the mean ``|c|`` of the
            start, annealed linearly to 0.
        seed: seed of the random Ritz starts.

    Returns:
        ``(bound (Kp,) float64, c (Kp, m + D))``.
    """
    w, dv, lam = (t.detach().to(torch.float64) for t in (w, dv, lam))
    bmat = dv[:, :, None] * w[None] * lam[None, None, :]
    c = initial_dual(bmat)
    gen = torch.Generator().manual_seed(seed)
    if steps > 0:
        with torch.enable_grad():
            c = _adam_dual(w, dv, lam, c, steps, lr, ritz_iters, gen, min(block, c.shape[1]), smoothing)
    # shift c by its (Ritz) λ_max so that λ_max(P − diag c) ≈ 0, then certify with the exact eigen-solver:
    # the certified value D·λ⁺_max + Σc⁺ is valid whatever the shift was.
    theta, _ = ritz_top_eigen(w, dv, lam, c, iters=60, generator=gen)
    c = c + theta[:, None]
    return sdp_dual_bound(bmat, c), c


def _ritz_block(w, dv, lam, c, vb, iters):
    """Top-b Ritz pairs of every ``P_k − diag c_k`` (block LOBPCG-style, warm start ``vb`` ``(Kp, n, b)``)."""
    prev = None
    for _ in range(iters):
        av = _matvec(w, dv, lam, c, vb)
        theta = (vb * av).sum(1, keepdim=True)
        s = torch.cat([vb, av - vb * theta] + ([prev] if prev is not None else []), 2)
        q, _ = torch.linalg.qr(s)
        t = q.transpose(1, 2) @ _matvec(w, dv, lam, c, q)
        _, evecs = torch.linalg.eigh(0.5 * (t + t.transpose(1, 2)))
        prev = vb
        vb = q @ evecs[:, :, -vb.shape[2]:]
    return (vb * _matvec(w, dv, lam, c, vb)).sum(1), vb


def _adam_dual(w, dv, lam, c, steps, lr, ritz_iters, gen, block, smoothing):
    """Adam on ``Σc + D·smax_μ(top-b Ritz values of P − diag c)``; returns the best c seen.

    The soft-max is over the top ``block`` eigenvalues with temperature
    μ = ``smoothing``·mean|c₀|, annealed to 0: at the optimum the top
    eigenvalue is highly degenerate, and the smoothed objective converges much faster than the plain
    top-eigenvector subgradient. Returns the c with the best (Ritz) dual value seen.
    """
    kp, n = c.shape
    scale = c.abs().mean(1, keepdim=True).clamp_min(1e-12)
    c = c.clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=lr)
    vb, _ = torch.linalg.qr(torch.randn(kp, n, block, dtype=c.dtype, generator=gen))
    best_val = torch.full((kp,), float("inf"), dtype=torch.float64)
    best_c = c.detach().clone()
    for step in range(steps):
        theta, vb = _ritz_block(w, dv, lam, c.detach(), vb, ritz_iters if step else 30)
        val = c.detach().sum(1) + n * theta.max(1).values
        better = val < best_val
        best_val = torch.where(better, val, best_val)
        best_c[better] = c.detach()[better]
        mu = smoothing * scale[:, 0] * (1 - step / steps) + 1e-12
        wts = torch.softmax(theta / mu[:, None], 1)
        obj = c.sum(1) + n * (wts * (vb * _matvec(w, dv, lam, c, vb)).sum(1)).sum(1)
        opt.zero_grad()
        (obj / scale[:, 0]).sum().backward()
        c.grad *= scale  # per-pair learning rate proportional to the pair's scale
        opt.step()
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps) + 1e-3 * lr
    return best_c


# ------------------------------------------------------------------------------------ pair bounds
def _probe(net: NetworkWeights, image_shape: tuple[int, int, int], input_range) -> Tensor:
    """Four seeded images ``(4, C, H, W)`` in ``input_range`` (dtype and device of the weights): the corners and two uniform draws."""
    lo, hi = float(input_range[0]), float(input_range[1])
    gen = torch.Generator().manual_seed(0)
    u = torch.rand((2, *image_shape), generator=gen, dtype=torch.float64)
    u = torch.cat([torch.zeros(1, *image_shape, dtype=torch.float64), torch.ones(1, *image_shape, dtype=torch.float64), u])
    dtype = net.V.dtype if net.V.is_floating_point() else torch.float32
    return (lo + (hi - lo) * u).to(device=net.V.device, dtype=dtype)


def pair_bounds(model: nn.Module, image_shape, *, method: str = "sdp", input_range=(0.0, 1.0), border: str = "zeros",
                ridge: float = 0.0, dual_steps: int = 100, ritz_iters: int = 4, exact: bool = False,
                solver: str = "CLARABEL") -> PairBounds:
    """Per-class-pair bound ``Q`` ``(K, K)`` float64 on the margin change per unit ε (see the module docstring).

    ``(z_i − z_j)(g(r; x)) − (z_i − z_j)(x) ≤ ε·Q[i, j]`` for every image with
    pixels in ``input_range`` and every flow with ``ℓ_diff(r) ≤ ε``. Q is
    symmetric with a zero diagonal.

    Args:
        model: a one-hidden-layer or linear network (:func:`network_weights`).
        image_shape: ``(C, H, W)`` of the model's input.
        method: ``"sdp"`` (dual bound, or the cvxpy optimum with ``exact=True``),
            ``"spectral"``, ``"frobenius"`` or ``"linear"`` (linear models only, Eq. 16;
            for hidden-layer models ``"linear"`` is rejected), or ``"min"``: the
            entrywise minimum of the SDP, spectral and Frobenius ``Q`` (each is a
            valid bound for every pair, so their minimum is too; at least as tight
            as each, in particular as the spectral one, which the SDP dual through
            the Prop. 2 box is not on our nets).
        input_range: ``(lo, hi)`` pixel range; ρ = max(hi, 0) − min(lo, 0) scales every bound.
        border: border of the smoothness operator, ``"zeros"`` or ``"replicate"``
            (:mod:`~spatialadv.ops.flow_smoothness`).
        ridge: ridge ``≥ 0`` added to ``MᵀM`` (:mod:`~spatialadv.ops.flow_smoothness`).
        dual_steps: Adam steps of :func:`optimize_dual` (``method="sdp"``).
        ritz_iters: Ritz iterations per Adam step of :func:`optimize_dual`.
        exact: solve each pair's SDP with cvxpy (slow for large nets; the
            solver's optimum, not a certified dual value).
        solver: the cvxpy solver with ``exact=True`` (see :func:`sdp_exact`).

    Returns:
        ``Q`` ``(K, K)`` float64, in logit units per unit ε, as a
        :class:`PairBounds` (a ``Tensor`` that also records the network's
        :func:`weights_fingerprint`, the image shape, range and settings, so
        :func:`certify` can check it bounds the model it certifies).

    Raises:
        ValueError: unknown method, bad shape/range, border or ridge, ``dual_steps`` or
            ``ritz_iters`` < 1, singular MᵀM; the model's output on a few seeded
            probe images in ``input_range`` is not the network rebuilt from its
            weights (:func:`check_reconstruction`: rescaled input, softmax, NaN).
        TypeError: unsupported model (:func:`network_weights`), non-int ``dual_steps`` /
            ``ritz_iters``, non-bool ``exact``, a model returning no tensor.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_int(dual_steps, "dual_steps", minimum=1)
    check_int(ritz_iters, "ritz_iters", minimum=1)
    check_bool(exact, "exact")
    if border not in ("zeros", "replicate"):
        raise ValueError(f"border must be 'zeros' or 'replicate', got {border!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if method == "min":
        parts = [pair_bounds(model, image_shape, method=m, input_range=input_range, border=border, ridge=ridge,
                             dual_steps=dual_steps, ritz_iters=ritz_iters, exact=exact,
                             solver=solver).as_subclass(Tensor)
                 for m in ("sdp", "spectral", "frobenius")]
        q = torch.stack(parts).amin(0)
        return PairBounds(q, fingerprint=weights_fingerprint(model), image_shape=tuple(image_shape), input_range=input_range,
                          method="min", border=border, ridge=ridge)
    ch, h, w = _check_shape(image_shape)
    rho = check_input_range(input_range)
    net = network_weights(model)
    d = ch * h * w
    in_dim = net.W.shape[1] if net.W is not None else net.V.shape[1]
    if in_dim != d:
        raise ValueError(f"image_shape {image_shape} has {d} pixels but the model's first layer takes {in_dim}")
    check_reconstruction(model, net, _probe(net, (ch, h, w), input_range))
    lam = _lam_d(image_shape, border, ridge)
    k = net.V.shape[0]
    pairs = class_pairs(k)
    V = net.V.detach().to(torch.float64)
    dv = torch.stack([V[i] - V[j] for i, j in pairs])
    if method == "linear":
        if net.hidden:
            raise ValueError("method='linear' (Eq. 16) is for linear classifiers; use sdp, spectral or frobenius")
        vals = 2 * rho * (dv * lam).abs().sum(1)
    elif method in ("spectral", "frobenius"):
        mu = gram_min_eigenvalue(h, w, border=border, ridge=ridge)
        u_norm = rho * min(math.sqrt(2 * ch / mu), 2 * float(lam.norm()))
        if net.W is not None:
            Wd = net.W.detach().to(torch.float64)
            wn = torch.linalg.matrix_norm(Wd, ord=2 if method == "spectral" else "fro")
        else:
            wn = torch.tensor(1.0, dtype=torch.float64)
        vals = dv.norm(dim=1) * wn * u_norm
    else:
        if net.W is None:
            vals = 2 * rho * (dv * lam).abs().sum(1)  # the SDP of a linear model is Eq. 16
        else:
            Wd = net.W.detach().to(torch.float64)
            if exact:
                bm = dv[:, :, None] * Wd[None] * lam[None, None, :]
                vals = torch.tensor([sdp_exact(bm[p], solver=solver) for p in range(len(pairs))], dtype=torch.float64) * rho
            else:
                vals = optimize_dual(Wd, dv, lam, steps=dual_steps, ritz_iters=ritz_iters)[0] * rho
    q = torch.zeros(k, k, dtype=torch.float64)
    for (i, j), val in zip(pairs, vals):
        q[i, j] = q[j, i] = val
    return PairBounds(q, fingerprint=weights_fingerprint(model), image_shape=(ch, h, w), input_range=input_range,
                      method=method, border=border, ridge=ridge)


@dataclass(frozen=True)
class Certificate:
    """Result of :func:`certify`.

    Attributes:
        bound: ``(N,)`` upper bound on ``max_{j≠y} (z_j − z_y)(g(r; x))`` over all
            flows with ``ℓ_diff(r) ≤ ε`` (logit units).
        certified: ``(N,)`` bool, ``bound < 0``: no such flow changes the prediction
            away from y (and the clean prediction is y).
        clean_margin: ``(N,)`` ``z_y − max_{j≠y} z_j`` on the clean image.
        eps: ``(N,)`` the budget ε per example (pixels, ℓ_diff units).
        pair_bounds: ``(K, K)`` Q used (per unit ε).
        method: the bound used.
    """

    bound: Tensor
    certified: Tensor
    clean_margin: Tensor
    eps: Tensor
    pair_bounds: Tensor
    method: str


def certify(model: nn.Module, x: Tensor, y: Tensor, eps, *, method: str = "sdp", q: Tensor | None = None,
            input_range=(0.0, 1.0), border: str = "zeros", ridge: float = 0.0, dual_steps: int = 100) -> Certificate:
    """Certify images against every flow with ``ℓ_diff(r) ≤ ε`` (the provable-defenses paper's §6.7 criterion).

    ``bound = max_{j≠y} [z_j(x) − z_y(x) + ε·Q[j, y]]``; ``certified = bound < 0``.
    Valid for the true bilinear warp (zero or border padding) of images with
    pixels in ``input_range`` (see the module docstring).

    Args:
        model: one-hidden-layer or linear network, in eval mode (not modified;
            in train mode a ``UserWarning`` is issued and the mode kept:
            dropout makes the clean logits, hence the bounds, random).
        x: ``(N, C, H, W)`` images in ``input_range`` (checked for [0, 1] when
            that is the range).
        y: ``(N,)`` int64 labels.
        eps: budget ε ≥ 0 (float or ``(N,)`` tensor), ℓ_diff units (pixels).
        method: see :func:`pair_bounds`.
        q: a precomputed Q (reuse it across ε; it does not depend on x): the
            :class:`PairBounds` returned by :func:`pair_bounds` (checked to be
            computed for this network — same :func:`weights_fingerprint` — and
            for ``x``'s image shape and ``input_range``), or a plain ``(K, K)``
            float tensor (e.g. loaded from JSON), checked to be finite,
            non-negative and symmetric only.
        input_range: ``(lo, hi)`` pixel range of ``x`` (see :func:`pair_bounds`).
        border: border of the smoothness operator (see :func:`pair_bounds`).
        ridge: ridge added to ``MᵀM`` (see :func:`pair_bounds`).
        dual_steps: Adam steps of the dual search when Q is computed (see :func:`pair_bounds`).

    Returns:
        A :class:`Certificate` of the batch.

    Raises:
        ValueError, TypeError: bad inputs (shapes, ranges, labels, negative eps);
            ``q`` not a float tensor ``(K, K)`` matching the model's K, with
            NaN/inf or negative entries, not symmetric, or a
            :class:`PairBounds` of another network, image shape or range.
        TypeError: a model that is not one of the supported networks
            (:func:`network_weights`: convolutions, other layers); ``x`` of
            another dtype than the model's weights (e.g. float64 images, float32
            model); a model returning no tensor (e.g. a tuple).
        ValueError: ``x``'s images not of the size the first layer takes; the
            model's logits NaN/inf, looking like probabilities (rows
            non-negative summing to 1), or differing from those of the network
            rebuilt from its weights (a ``forward`` that rescales the input, adds
            a softmax, ...: :func:`check_reconstruction`, one extra comparison on ``x``).

    Warns:
        UserWarning: ``model`` is in train mode.
    """
    lo, hi = map(float, input_range)
    check_input_range(input_range)
    if (lo, hi) == (0.0, 1.0):
        check_images(x)
    elif not (isinstance(x, Tensor) and x.is_floating_point() and x.dim() == 4 and bool(torch.isfinite(x).all())
              and float(x.min()) >= lo and float(x.max()) <= hi):
        raise ValueError(f"x must be a finite float tensor (N, C, H, W) with values in [{lo}, {hi}]")
    n = x.shape[0]
    net = network_weights(model)
    ref = net.V
    if ref.is_floating_point() and x.dtype != ref.dtype:
        raise TypeError(f"x has dtype {x.dtype} but the model has {ref.dtype} weights; convert one of them "
                        f"(x.to({ref.dtype}) or model.to({x.dtype}))")
    if x.device != ref.device:
        raise ValueError(f"x is on device {x.device} but the model is on {ref.device}; move one of them")
    if model.training:
        warnings.warn("certify: the model is in train mode (dropout active), so the clean logits and the bounds are "
                      "random; call model.eval() first (the mode is not changed)", UserWarning, stacklevel=2)
    logits = check_reconstruction(model, net, x).to(torch.float64)
    k = logits.shape[1]
    y = check_labels(y, n, k)
    eps_t = torch.as_tensor(eps, dtype=torch.float64).flatten()
    if eps_t.numel() == 1:
        eps_t = eps_t.expand(n)
    if eps_t.shape != (n,) or not torch.isfinite(eps_t).all() or bool((eps_t < 0).any()):
        raise ValueError(f"eps must be a finite float >= 0 or an (N,) tensor of them, got {eps!r}")
    if q is None:
        q = pair_bounds(model, tuple(x.shape[1:]), method=method, input_range=input_range, border=border, ridge=ridge,
                        dual_steps=dual_steps)
    q_plain = _check_q(q, k, model, tuple(x.shape[1:]), input_range).to(x.device)
    zy = logits.gather(1, y[:, None])
    diff = logits - zy + eps_t[:, None].to(logits.device) * q_plain[:, y].T
    diff = diff.masked_fill(torch.nn.functional.one_hot(y, k).bool(), float("-inf"))
    bound = diff.amax(1)
    others = logits.masked_fill(torch.nn.functional.one_hot(y, k).bool(), float("-inf")).amax(1)
    return Certificate(bound=bound, certified=bound < 0, clean_margin=zy[:, 0] - others, eps=eps_t,
                       pair_bounds=q, method=method)


