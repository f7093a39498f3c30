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

The ellipsoid gives more than the box. For every ``n ≥ 0`` with
``diag(n) ⪯ MᵀM``, ``Σ_p n_p (r_u,p² + r_v,p²) ≤ ‖M r‖² ≤ ε²``, and
``u_{c,p}² ≤ 2ρ²(r_u,p² + r_v,p²)`` for the pixel change ``u = Dg r = 2ερ λ ⊙ t``, so
for each image channel c

    Σ_p n_p λ_p² t_{c,p}² ≤ 1/2,

whose lifted form ``Σ_p n_p λ_p² Z_{t(c,p), t(c,p)} ≤ 1/2`` is linear in ``diag(Z)``
(:func:`ellipsoid_constraints`: ``n = μ_min·1``, ``μ_min`` the smallest
eigenvalue of MᵀM, and the torsion vector ``n = 1/φ``, ``φ = (MᵀM)⁻¹1``).

Bounds on ``max zᵀPz`` over these sets (all sound; Q is ρ times the value):

* ``"frobenius"`` / ``"spectral"`` (§6.8, made sound): ``sᵀdiag(v)Wu ≤ ‖v‖₂‖W‖‖u‖₂``
  with ``‖u‖₂ ≤ ρε·min(sqrt(2C/μ_min), 2‖λ‖₂)``; ‖W‖ is ‖W‖_F or ‖W‖₂. The paper
  writes ``ε‖W‖‖v‖₂`` without these constants.
* ``"sdp-box"``: ``max tr(ZP)`` s.t. ``diag(Z) ≤ 1, Z ⪰ 0`` (Eq. 9's relaxation over
  the Prop. 2 box), bounded from above by its dual: for *any* ``c``,
  ``D·λ⁺_max(P − diag c) + Σ max(c, 0)`` (D = dim P) is a valid bound (weak duality).
* ``"sdp"``: the same SDP with the ellipsoid's diagonal constraints
  ``a_kᵀ diag(Z)_t ≤ K_k`` added; for any ``c`` and ``μ ≥ 0``,
  ``D·λ⁺_max(P − diag(c + Σ_k μ_k a_k)) + Σ max(c, 0) + Σ_k μ_k K_k`` is a valid
  bound. It is at most the spectral bound (hence the Frobenius one, ‖W‖₂ ≤ ‖W‖_F):
  exactly — with ``Z = GᵀG``, columns ``g_i``, ``S_r = (G_{r, s_i})_i``,
  ``T_r = (λ_j G_{r, t_j})_j``, Cauchy–Schwarz twice gives
  ``tr(PZ) = 2Σ_r S_rᵀ diag(v) W T_r ≤ 2‖W‖₂ (Σ_i v_i² Z_{s_i s_i})^{1/2} (Σ_j λ_j² Z_{t_j t_j})^{1/2}
  ≤ 2‖v‖₂‖W‖₂√K`` (``Z_ii ≤ 1``), ``K = min(C/(2μ_min), ‖λ‖₂²)`` by the
  ``n = μ_min·1`` constraints or the box. The certified dual value is too, up to
  the eigen-solver's rounding margin: its search starts from, and falls back to,
  a dual point of that value (:func:`spectral_start`).
  :func:`sdp_dual_bound` evaluates either dual with a dense float64 eigen-solver
  plus rounding margins; :func:`optimize_dual` searches the dual point;
  :func:`sdp_exact` solves either SDP with cvxpy (small networks only).
* ``"linear"`` (linear classifiers only, Eq. 16): ``2ερ‖v ⊙ λ‖₁``, exact for the
  box. ``"sdp"`` of a linear classifier adds the ellipsoid's constraints (a convex
  problem in ``|t|``, whose Lagrangian dual is evaluated in closed form); ``"sdp-box"``
  of a linear classifier is Eq. 16.

Convention:
    The provable-defenses paper's §4.1 relaxation (Eq. 9) is over the Prop. 2
    box, and its Fig. 5 shows the SDP bound as the tightest. The box alone is
    looser than the spectral bound on our networks (measured: about 3× on a
    trained fc-500 MNIST net), because the box forgets that the flow lies in
    the ellipsoid. So ``method="sdp"`` adds the ellipsoid's diagonal
    constraints, which only tighten the relaxation and make it at most the
    spectral bound by construction; ``method="sdp-box"`` is the paper's Eq. 9
    literally.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import cast, overload

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from torch import Tensor, nn

from .._validation import check_bool, check_images, check_int, check_labels
from ..attacks.base import model_input_error
from ..ops.flow_smoothness import box_half_widths, gram_min_eigenvalue, smoothness_gram

__all__ = ["NetworkWeights", "network_weights", "pair_matrices", "sdp_exact", "brute_force_max", "sdp_dual_bound",
           "ritz_top_eigen", "dual_objective", "optimize_dual", "pair_bounds", "Certificate", "certify", "METHODS",
           "initial_dual", "class_pairs", "check_input_range", "PairBounds", "weights_fingerprint",
           "check_reconstruction", "reconstructed_logits", "EllipsoidConstraints", "ellipsoid_constraints",
           "spectral_start"]

METHODS = ("sdp", "sdp-box", "spectral", "frobenius", "linear", "min")


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


# ------------------------------------------------------------------------------- ellipsoid constraints
@dataclass(frozen=True, eq=False)
class EllipsoidConstraints:
    """Diagonal constraints ``a_kᵀ diag(Z)_t ≤ level_k`` the flow ellipsoid puts on the SDP (see the module docstring).

    Row k bounds the image-side block ``t`` of ``z = [s; t]`` (the D = C·H·W
    coordinates, flatten order (C, H, W)): ``Σ_p n_k,p λ_p² t_{c,p}² ≤ 1/2`` for
    one image channel c, where ``diag(n_k) ⪯ MᵀM`` (see :func:`ellipsoid_constraints`).

    Attributes:
        a: ``(k, D)`` float64, ``a_k = n_k ⊙ λ²`` on channel c's pixels and 0 elsewhere (≥ 0).
        level: ``(k,)`` float64, the right-hand sides (all 1/2).
        weights: ``(k, H·W)`` float64, the vectors ``n_k`` (``diag(n_k) ⪯ MᵀM``).
        channel: the image channel of each row.
        kind: ``"min-eigenvalue"`` (``n = μ_min·1``) or ``"torsion"`` (``n = 1/φ``, ``φ ≈ (MᵀM)⁻¹1``) per row.
    """

    a: Tensor
    level: Tensor
    weights: Tensor
    channel: tuple[int, ...]
    kind: tuple[str, ...]

    def __len__(self) -> int:
        """The number of constraints k."""
        return len(self.kind)


def _gram_minorants(h: int, w: int, border: str, ridge: float) -> dict[str, np.ndarray]:
    """Vectors ``n ≥ 0`` with ``diag(n) ⪯ MᵀM`` (``MᵀM`` including the ridge): ``"min-eigenvalue"`` and, for a Z-matrix, ``"torsion"``.

    ``"torsion"``: ``φ ≈ (MᵀM)⁻¹1 > 0`` (solved numerically), ``n_p = (MᵀM φ)_p / φ_p`` with the
    rounding error of the product taken off. ``A = MᵀM − diag(n)`` is a symmetric Z-matrix
    (off-diagonal entries ≤ 0) with ``Aφ ≥ 0``, so ``diag(φ) A diag(φ)`` is diagonally dominant
    with a non-negative diagonal, hence ``A ⪰ 0`` — whatever the accuracy of φ. Dropped (with
    only ``"min-eigenvalue"`` left) if ``MᵀM`` had a positive off-diagonal entry or φ were not
    positive.
    """
    g = smoothness_gram(h, w, border=border, ridge=ridge).toarray()
    # μ_min less the eigen-solver's rounding margin (Weyl, as in _safe_lambda_max, with ‖G‖₂ ≤ its largest
    # absolute row sum), so that G − μI ⪰ 0 holds for sure
    mu = gram_min_eigenvalue(h, w, border=border, ridge=ridge)
    mu -= 16 * h * w * np.finfo(np.float64).eps * float(np.abs(g).sum(1).max())
    out = {"min-eigenvalue": np.full(h * w, max(mu, 0.0))}
    off = g - np.diag(np.diag(g))
    if off.max() > 0:
        return out
    phi = scipy.linalg.cho_solve(scipy.linalg.cho_factor(g, lower=True), np.ones(h * w))
    if not (np.all(np.isfinite(phi)) and phi.min() > 0):
        return out
    gphi = g @ phi
    # |fl(Gφ) − Gφ| ≤ γ_n·(|G||φ|), γ_n ≈ n·eps: take it off so that Gφ − diag(n)φ ≥ 0 holds exactly
    err = 2 * (h * w + 2) * np.finfo(np.float64).eps * (np.abs(g) @ phi)
    n = np.maximum(gphi - err, 0.0) / phi * (1 - 4 * np.finfo(np.float64).eps)
    out["torsion"] = n
    return out


def ellipsoid_constraints(image_shape, *, border: str = "zeros", ridge: float = 0.0) -> EllipsoidConstraints:
    """The ellipsoid's diagonal constraints on the SDP of :func:`pair_bounds` (``method="sdp"``).

    For every ``n ≥ 0`` with ``diag(n) ⪯ MᵀM`` and every flow with ``ℓ_diff(r) ≤ ε``,
    ``Σ_p n_p (r_u,p² + r_v,p²) ≤ ‖M r‖² ≤ ε²``; the per-channel pixel change
    ``u_{c,p} = 2ερλ_p t_{c,p}`` obeys ``u_{c,p}² ≤ 2ρ²(r_u,p² + r_v,p²)``, so
    ``Σ_p n_p λ_p² t_{c,p}² ≤ 1/2`` for each image channel c, and its lifted form
    ``Σ_p n_p λ_p² Z_{t(c,p), t(c,p)} ≤ 1/2`` is a linear constraint on ``diag(Z)``.
    Two choices of n per channel: ``μ_min·1`` (what the spectral bound uses) and
    the torsion vector ``1/φ`` (:func:`_gram_minorants`; dropped where it coincides with
    the first, e.g. ``border="replicate"``, whose φ is constant).

    Args:
        image_shape: ``(C, H, W)``.
        border: ``"zeros"`` or ``"replicate"`` (:mod:`~spatialadv.ops.flow_smoothness`).
        ridge: ridge ``≥ 0`` added to ``MᵀM`` (``> 0`` for ``"replicate"``).

    Returns:
        :class:`EllipsoidConstraints` with ``k = 2C`` rows (``C`` where the torsion vector is dropped).

    Raises:
        ValueError: bad shape, border or ridge; singular ``MᵀM``.
    """
    ch, h, w = _check_shape(image_shape)
    if border not in ("zeros", "replicate"):
        raise ValueError(f"border must be 'zeros' or 'replicate', got {border!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    lam2 = box_half_widths(h, w, border=border, ridge=ridge) ** 2
    minor = _gram_minorants(h, w, border, float(ridge))
    if "torsion" in minor and np.allclose(minor["torsion"], minor["min-eigenvalue"], rtol=1e-9, atol=0):
        del minor["torsion"]  # e.g. replicate + ridge: φ is constant and 1/φ = ridge = μ_min
    hw = h * w
    rows, weights, chans, kinds = [], [], [], []
    for c in range(ch):
        for kind, n in minor.items():
            a = np.zeros(ch * hw)
            a[c * hw:(c + 1) * hw] = n * lam2
            rows.append(a)
            weights.append(n)
            chans.append(c)
            kinds.append(kind)
    return EllipsoidConstraints(torch.tensor(np.stack(rows)), torch.full((len(rows),), 0.5, dtype=torch.float64),
                                torch.tensor(np.stack(weights)), tuple(chans), tuple(kinds))


def _check_constraints(constraints: EllipsoidConstraints | None, d: int) -> tuple[Tensor, Tensor] | None:
    if constraints is None:
        return None
    if not isinstance(constraints, EllipsoidConstraints):
        raise TypeError(f"constraints must be EllipsoidConstraints (ellipsoid_constraints()) or None, got "
                        f"{type(constraints).__name__}")
    a = constraints.a.detach().to("cpu", torch.float64)
    level = constraints.level.detach().to("cpu", torch.float64)
    if a.dim() != 2 or a.shape[1] != d or level.shape != (a.shape[0],):
        raise ValueError(f"constraints must have a (k, {d}) and level (k,), got {tuple(a.shape)} and "
                         f"{tuple(level.shape)}")
    return a, level


def sdp_exact(bmat, *, constraints: EllipsoidConstraints | None = None, solver: str = "CLARABEL",
              **solver_kwargs) -> float:
    """Solve ``max tr(ZP) s.t. diag(Z) ≤ 1, Z ⪰ 0`` (+ the ellipsoid's diagonal constraints) with cvxpy.

    Without ``constraints`` this is the provable-defenses paper's Eq. 9 (the
    relaxation over the Prop. 2 box, ``method="sdp-box"``); with
    :func:`ellipsoid_constraints` it adds ``a_kᵀ diag(Z)_t ≤ level_k``
    (``method="sdp"``), which can only lower the value.

    Args:
        bmat: ``B`` ``(m, D)`` (array or tensor); ``P = [[0, B], [Bᵀ, 0]]``.
        constraints: :class:`EllipsoidConstraints` over the D image coordinates, or None (box only).
        solver: a cvxpy SDP solver (``"CLARABEL"`` or ``"SCS"``).
        **solver_kwargs: passed on to ``cvxpy.Problem.solve`` (e.g. ``eps`` for SCS).

    Returns:
        The optimal value (solver precision; not itself a certified bound — use
        :func:`sdp_dual_bound` for one). Memory grows as ``(m + D)²``: meant for
        small networks, tests and benchmarks.

    Raises:
        RuntimeError: the solver did not reach an optimal status.
        ValueError, TypeError: constraints of the wrong size or type.
    """
    import cvxpy as cp  # lazy: cvxpy is heavy and only the exact SDP needs it

    b = np.asarray(bmat.detach().cpu() if isinstance(bmat, Tensor) else bmat, dtype=np.float64)
    cons = _check_constraints(constraints, b.shape[1])
    p = _dense_p(b)
    z = cp.Variable(p.shape, PSD=True)
    rules = [cp.diag(z) <= 1]
    if cons is not None:
        rules.append(cons[0].numpy() @ cp.diag(z)[b.shape[0]:] <= cons[1].numpy())
    prob = cp.Problem(cp.Maximize(cp.trace(p @ z)), rules)
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


def _linear_margin(terms: Tensor, count: int) -> Tensor:
    """Rounding margin of a float64 sum of ``count`` terms whose absolute values sum to ``terms``."""
    return 4 * (count + 2) * torch.finfo(torch.float64).eps * terms


def _split_value(cfull: Tensor, mu: Tensor, a: Tensor, level: Tensor, m: int) -> Tensor:
    """``Σ max(c, 0) + μ·level`` with ``c = c' − [0; Aᵀμ]`` (the linear part of the dual), per pair ``(Kp,)``.

    ``cfull`` is ``c'`` ``(Kp, m + D)``, ``mu`` ``(Kp, k)``; no rounding margin.
    """
    return cfull[:, :m].clamp_min(0).sum(1) + (cfull[:, m:] - mu @ a).clamp_min(0).sum(1) + mu @ level


def sdp_dual_bound(bmat: Tensor, c: Tensor, *, mu: Tensor | None = None,
                   constraints: EllipsoidConstraints | None = None) -> Tensor:
    """Certified upper bound on ``max tr(ZP)`` (hence on ``max_{‖z‖∞≤1} zᵀPz``) from any dual point ``(c, μ)``.

    Box only (``constraints=None``, the paper's Eq. 9): ``D·λ⁺_max(P − diag c) + Σ max(c, 0)``.
    With the ellipsoid's diagonal constraints ``a_kᵀ diag(Z)_t ≤ K_k`` (:func:`ellipsoid_constraints`):
    ``D·λ⁺_max(P − diag c') + Σ max(c, 0) + Σ_k μ_k K_k`` with ``c' = c + [0; Σ_k μ_k a_k]``
    (zero on the hidden block s). Weak duality: ``tr(PZ) = tr((P − diag c')Z) + c'ᵀdiag(Z)``,
    the first term ≤ ``λ⁺_max·tr(Z) ≤ λ⁺_max·D`` (``diag(Z) ≤ 1``), the second
    ``≤ Σ max(c, 0) + Σ μ_k K_k`` (``0 ≤ diag(Z) ≤ 1``, ``μ ≥ 0``). D = m + D_img = dim P.
    λ_max comes from a dense float64 eigen-solver plus a rounding margin
    (:func:`_safe_lambda_max`), the linear part gets a rounding margin too. Not
    differentiable (use :func:`dual_objective`).

    Args:
        bmat: ``(Kp, m, D)`` or ``(m, D)``: ``P = [[0, B], [Bᵀ, 0]]``.
        c: ``(Kp, m + D)`` or ``(m + D,)``, any real values (the box multipliers).
        mu: ``(Kp, k)`` or ``(k,)`` multipliers ``≥ 0`` of the constraints (default 0); only with ``constraints``.
        constraints: :class:`EllipsoidConstraints` over the D image coordinates, or None (box only).

    Returns:
        ``(Kp,)`` (or a 0-d tensor) float64.

    Raises:
        ValueError: shapes that do not match, non-finite c or μ, negative μ, ``mu`` without ``constraints``.
        TypeError: ``constraints`` of another type.
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
    cons = _check_constraints(constraints, d)
    mm: Tensor | None = None
    if cons is None:
        if mu is not None:
            raise ValueError("mu needs constraints (the multipliers of the ellipsoid's constraints)")
    else:
        kc = cons[0].shape[0]
        mm = torch.zeros(kp, kc, dtype=torch.float64) if mu is None else mu.detach().to("cpu", torch.float64)
        if single and mu is not None:
            mm = mm[None]
        if mm.shape != (kp, kc):
            raise ValueError(f"mu must have shape {(kp, kc) if not single else (kc,)}, got {tuple(mm.shape[single:])}")
        if not torch.isfinite(mm).all() or bool((mm < 0).any()):
            raise ValueError("mu must be finite and >= 0")
    out = torch.empty(kp, dtype=torch.float64)
    for k in range(kp):
        ceff = cc[k].clone()
        lin = cc[k].clamp_min(0).sum()
        margin = _linear_margin(cc[k].abs().sum(), m + d)
        if cons is not None and mm is not None:
            at = mm[k] @ cons[0]
            ceff[m:] += at
            lin = lin + mm[k] @ cons[1]
            kc = len(cons[1])
            margin = margin + _linear_margin(mm[k] @ (cons[0].sum(1) + cons[1]), m + d + kc)
            # c' is rounded: |fl(c + Aᵀμ) − (c + Aᵀμ)| ≤ γ_{k+1}·(|c| + Aᵀμ) entrywise, which moves λ_max by
            # at most its largest entry (Weyl), counted D times
            margin = margin + (m + d) * _linear_margin((cc[k, m:].abs() + at).max(), kc)
        a = torch.zeros(m + d, m + d, dtype=torch.float64)
        a[:m, m:] = b[k]
        a[m:, :m] = b[k].T
        a -= torch.diag(ceff)
        lam_max = _safe_lambda_max(a)
        out[k] = (m + d) * lam_max.clamp_min(0) + lin + margin
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


@overload
def optimize_dual(w: Tensor, dv: Tensor, lam: Tensor, *, steps: int = ..., lr: float | None = ..., ritz_iters: int = ...,
                  block: int = ..., smoothing: float = ..., seed: int = ...,
                  constraints: None = ...) -> tuple[Tensor, Tensor]: ...


@overload
def optimize_dual(w: Tensor, dv: Tensor, lam: Tensor, *, steps: int = ..., lr: float | None = ..., ritz_iters: int = ...,
                  block: int = ..., smoothing: float = ..., seed: int = ...,
                  constraints: EllipsoidConstraints) -> tuple[Tensor, Tensor, Tensor]: ...


def optimize_dual(w: Tensor, dv: Tensor, lam: Tensor, *, steps: int = 300, lr: float | None = None, ritz_iters: int = 4,
                  block: int = 8, smoothing: float = 0.05, seed: int = 0,
                  constraints: EllipsoidConstraints | None = None) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Search dual points minimising the SDP dual for each pair, then certify them.

    Box only (``constraints=None``, the paper's Eq. 9): start at :func:`initial_dual`, Adam
    (learning rate ``lr`` times the mean ``|c|`` of the start) on
    ``Σc + D·λ_max(P − diag c)``, with λ_max replaced by a soft-max of the
    top ``block`` Ritz values (temperature ``smoothing``·mean|c|, annealed;
    warm-started block Ritz iterations, ``ritz_iters`` per step); the c with
    the best value is shifted by its Ritz λ_max (so that ``P − diag c ⪯ 0``
    approximately) and evaluated with :func:`sdp_dual_bound`.

    With the ellipsoid's constraints (:func:`ellipsoid_constraints`): start at
    :func:`spectral_start` (whose value is the spectral bound) and search in the
    Schur-complement form of the dual: the image block is ``c'_t = Σ_k μ_k a_k``
    (the box enters as one more row ``a = λ²``, ``K = ‖λ‖²``), so
    ``P − diag([y; c'_t]) ⪯ 0`` iff ``diag(y) ⪰ diag(v) W diag(λ²/c'_t) Wᵀ diag(v)``,
    an m×m problem in ``(y, μ)`` (:func:`_adam_schur`: Adam as above on
    ``Σy + m·λ_max + μ·K``). The best ``y`` is shifted by the λ_max of the dense m×m
    matrix, the image block split between box and constraints by the small LP
    ``min_{μ≥0} Σ max(c'_t − Aᵀμ, 0) + μ·K`` (HiGHS) where that is lower, and the point
    certified with :func:`sdp_dual_bound` in the full space. The spectral start is
    certified as well wherever the search ended above its value, and the lower
    certified value kept: the result is at most the spectral bound up to the
    eigen-solver's rounding margin. (Dropping per-pixel box multipliers loses
    nothing when the box is inactive at the optimum, as we measured on our nets.)

    Either way the result is a valid bound whatever the search did.

    Args:
        w: first-layer weights ``W`` ``(m, D)`` (float64 recommended, as for the next two).
        dv: output-weight differences ``V_i − V_j`` ``(Kp, m)``, one row per pair.
        lam: box half-widths λ ``(D,)``, repeated per image channel.
        steps: Adam steps (0 returns the certified start).
        lr: Adam learning rate, relative to the mean ``|c|`` of the start (box; default 0.05) or
            to each entry of ``y`` and to the largest start multiplier (with constraints; default 0.1).
        ritz_iters: block Ritz iterations per Adam step.
        block: number of top Ritz values in the soft-max (capped at ``m + D``).
        smoothing: soft-max temperature relative to the mean ``|c|`` of the
            start, annealed linearly to 0.
        seed: seed of the random Ritz starts.
        constraints: :class:`EllipsoidConstraints` over the D image coordinates, or None (box only).

    Returns:
        ``(bound (Kp,) float64, c (Kp, m + D))`` without constraints;
        ``(bound, c, mu (Kp, k))`` with them (``sdp_dual_bound(B, c, mu=mu, constraints=...)`` gives the bound).
    """
    w, dv, lam = (t.detach().to(torch.float64) for t in (w, dv, lam))
    gen = torch.Generator().manual_seed(seed)
    cons = _check_constraints(constraints, w.shape[1])
    if cons is not None and constraints is not None:
        return _optimize_dual_constrained(w, dv, lam, constraints, cons[0], cons[1], steps, 0.1 if lr is None else lr,
                                          ritz_iters, block, smoothing, gen)
    bmat = dv[:, :, None] * w[None] * lam[None, None, :]
    c = initial_dual(bmat)
    if steps > 0:
        with torch.enable_grad():
            c = _adam_dual(w, dv, lam, c, steps, 0.05 if lr is None else lr, ritz_iters, gen, min(block, c.shape[1]),
                           smoothing)
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


def _start_groups(a: Tensor, level: Tensor, kind: tuple[str, ...], lam: Tensor) -> list[tuple[str, Tensor, float, list[int]]]:
    """Diagonal weights of the spectral-type starts: ``(name, a_g (D,), K_g, rows)`` per constraint kind, all kinds together, the box.

    The box is ``a_g = λ²``, ``K_g = ‖λ‖²`` (implied by ``diag(Z) ≤ 1``), with no rows.
    """
    groups: list[tuple[str, Tensor, float, list[int]]] = [("box", lam**2, float((lam**2).sum()), [])]
    kinds = list(dict.fromkeys(kind))
    for kd in kinds:
        rows = [i for i, k in enumerate(kind) if k == kd]
        groups.append((kd, a[rows].sum(0), float(level[rows].sum()), rows))
    if len(kinds) > 1:  # n = the mean of the kinds' vectors
        groups.append(("mean", a.sum(0) / len(kinds), float(level.sum()) / len(kinds), list(range(len(kind)))))
    return groups


def _group_norms(w: Tensor, lam: Tensor, constraints: EllipsoidConstraints) -> list[tuple[float, str, Tensor, float, list[int], float]]:
    """Per start group: ``(2σ_g√K_g, name, a_g, K_g, rows, σ_g)`` with ``σ_g = ‖W diag(λ/√a_g)‖₂·(1 + 1e-12)``."""
    a, level = constraints.a.to(torch.float64), constraints.level.to(torch.float64)
    out = []
    for name, ag, kg, rows in _start_groups(a, level, constraints.kind, lam):
        if bool((ag > 0).all()):
            sig = float(torch.linalg.matrix_norm(w * (lam / ag.sqrt())[None], ord=2)) * (1 + 1e-12)
            out.append((2 * sig * math.sqrt(kg), name, ag, kg, rows, sig))
    return out


def spectral_start(w: Tensor, dv: Tensor, lam: Tensor, constraints: EllipsoidConstraints) -> tuple[Tensor, Tensor, Tensor]:
    """A dual point ``(c, μ)`` per pair whose value is at most the spectral bound: the proof that SDP ≤ spectral.

    For a group of constraints with diagonal weight ``a_g = Σ_{k∈g} μ̂_k a_k > 0`` and
    level ``K_g = Σ μ̂_k K_k`` (one row per image channel, disjoint; μ̂ = 1, or 1/2 for
    the mean of two kinds), take ``c' = [β v²; γ a_g]`` (``c = 0`` on the image block,
    ``μ_k = γ μ̂_k``). With ``σ_g = ‖W diag(λ/√a_g)‖₂`` and ``βγ = σ_g²``,
    ``P − diag c' ⪯ 0`` (its Schur complement ``γ diag(a_g) − Bᵀ diag(βv²)⁻¹ B ⪰ 0``), so the
    dual value is ``β‖v‖² + γK_g``, minimised at ``2‖v‖σ_g√K_g``. For the
    ``"min-eigenvalue"`` rows ``a_g = μ_min λ²``, ``K_g = C/2``:
    ``2‖v‖‖W‖₂√(C/(2μ_min))``, i.e. ρ× it is the spectral Q; the box (``c = c' = γλ²``,
    μ = 0) gives ``2‖v‖‖W‖₂‖λ‖₂``, the other branch of its ``min``. The group with the
    lowest value (the same for every pair) is used; ``σ_g`` is raised by 1e-12
    relative against the rounding of the SVD.

    Args:
        w: first-layer weights ``W`` ``(m, D)``, float64.
        dv: output-weight differences ``V_i − V_j`` ``(Kp, m)``, float64.
        lam: box half-widths λ ``(D,)``, repeated per image channel, float64.
        constraints: :func:`ellipsoid_constraints` of the image shape.

    Returns:
        ``(c (Kp, m + D), mu (Kp, k), value (Kp,))``: the value in exact arithmetic
        (certify it with :func:`sdp_dual_bound`).
    """
    k = len(constraints)
    m = dv.shape[1]
    val, name, ag, kg, rows, sig = min(_group_norms(w, lam, constraints), key=lambda g: g[0])
    vn = dv.norm(dim=1)
    beta = sig * math.sqrt(kg) / vn.clamp_min(1e-300)
    gamma = sig * vn / math.sqrt(kg)
    kp = dv.shape[0]
    c = torch.zeros(kp, m + ag.shape[0], dtype=torch.float64)
    c[:, :m] = beta[:, None] * dv**2
    mu = torch.zeros(kp, k, dtype=torch.float64)
    if name == "box":
        c[:, m:] = gamma[:, None] * ag
    else:
        mu[:, rows] = gamma[:, None] / (len(dict.fromkeys(constraints.kind)) if name == "mean" else 1)
    return c, mu, val * vn


def _lp_multipliers(ct: Tensor, a: Tensor, level: Tensor) -> Tensor | None:
    """The best μ ≥ 0 for a given ``c'`` (image block ``ct`` ``(Kp, D)``): the dual of ``max c'ᵀd, 0 ≤ d ≤ 1, A d ≤ K``.

    Solved with HiGHS per pair (``(Kp, k)``); None if any LP fails (the caller keeps its own μ).
    """
    out = []
    an, kn = a.numpy(), level.numpy()
    for row in ct.numpy():
        res = scipy.optimize.linprog(-row, A_ub=an, b_ub=kn, bounds=(0, 1), method="highs")
        if res.status != 0 or res.ineqlin is None:
            return None
        out.append(np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0))
    return torch.tensor(np.stack(out), dtype=torch.float64)


def _schur_matvec(w: Tensor, dv: Tensor, r: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """``(M_k − diag y_k) X_k`` with ``M_k = diag(v_k) W diag(r_k) Wᵀ diag(v_k)`` per pair, without forming M: X ``(Kp, m, b)``."""
    m, d = w.shape
    kp, _, nb = x.shape
    s = (dv[:, :, None] * x).permute(1, 0, 2).reshape(m, kp * nb)
    t = (w.T @ s).reshape(d, kp, nb).permute(1, 0, 2) * r[:, :, None]
    out = (w @ t.permute(1, 0, 2).reshape(d, kp * nb)).reshape(m, kp, nb).permute(1, 0, 2)
    return dv[:, :, None] * out - y[:, :, None] * x


def _ritz_op(op, vb: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Top-b Ritz pairs of a batch of symmetric operators ``op`` (block LOBPCG-style, warm start ``vb`` ``(Kp, n, b)``)."""
    prev = None
    for _ in range(iters):
        av = op(vb)
        theta = (vb * av).sum(1, keepdim=True)
        s = torch.cat([vb, av - vb * theta] + ([prev] if prev is not None else []), 2)
        q, _ = torch.linalg.qr(s)
        t = q.transpose(1, 2) @ op(q)
        _, evecs = torch.linalg.eigh(0.5 * (t + t.transpose(1, 2)))
        prev = vb
        vb = q @ evecs[:, :, -vb.shape[2]:]
    return (vb * op(vb)).sum(1), vb


def _adam_schur(w, dv, lam2, y0, mu0, a_all, k_all, steps, lr, ritz_iters, gen, block, smoothing):
    """Adam on the Schur-complement form of the dual; returns the best ``(y, μ)`` seen.

    With the image block of the dual fixed to ``c'_t = Σ_k μ_k a_k`` (rows ``a_all``:
    the ellipsoid's constraints and the box as ``a = λ²``, ``K = ‖λ‖²``),
    ``P − diag([y; c'_t]) ⪯ 0`` iff ``diag(y) ⪰ M(μ) = diag(v) W diag(λ²/c'_t) Wᵀ diag(v)``,
    an m×m condition: minimise ``Σy + m·λ_max(M(μ) − diag y) + μ·K`` (shift-invariant in y)
    over ``y = y₀ ⊙ exp(x)`` (relative steps of size ``lr``) and ``μ = s·ξ``, ``ξ ≥ 0``
    (projected; ``s`` the largest start multiplier, so steps of ``lr·s``), λ_max replaced
    by a soft-max of the top ``block`` Ritz values (temperature annealed to 0), as in
    :func:`_adam_dual`.
    """
    kp, m = y0.shape
    x = torch.zeros_like(y0, requires_grad=True)
    mscale = mu0.amax(1, keepdim=True).clamp_min(1e-300)
    xi = (mu0 / mscale).clone().requires_grad_(True)
    floor = 1e-12 * (mu0 @ a_all).amax(1, keepdim=True)
    opt = torch.optim.Adam([x, xi], lr=lr)
    vb, _ = torch.linalg.qr(torch.randn(kp, m, block, dtype=y0.dtype, generator=gen))
    best_val = torch.full((kp,), float("inf"), dtype=torch.float64)
    best_y, best_mu = y0.clone(), mu0.clone()
    tscale = y0.mean(1)
    for step in range(steps):
        y, mu = y0 * x.exp(), mscale * xi
        r = lam2 / torch.maximum(mu @ a_all, floor)
        yd, rd = y.detach(), r.detach()
        theta, vb = _ritz_op(lambda q: _schur_matvec(w, dv, rd, yd, q), vb, ritz_iters if step else 30)
        with torch.no_grad():
            val = y.sum(1) + m * theta.max(1).values + mu @ k_all
            better = val < best_val
            best_val = torch.where(better, val, best_val)
            best_y[better], best_mu[better] = y[better], mu[better]
        temp = smoothing * tscale * (1 - step / steps) + 1e-12 * tscale
        wts = torch.softmax(theta / temp[:, None], 1)
        th = (wts * (vb * _schur_matvec(w, dv, r, y, vb)).sum(1)).sum(1)
        obj = y.sum(1) + m * th + mu @ k_all
        opt.zero_grad()
        (obj / best_val).sum().backward()
        opt.step()
        with torch.no_grad():
            xi.clamp_(min=0)
        for g in opt.param_groups:
            g["lr"] = lr * (1 - step / steps) + 1e-3 * lr
    return best_y, best_mu


def _optimize_dual_constrained(w, dv, lam, cons, a, level, steps, lr, ritz_iters, block, smoothing, gen):
    """:func:`optimize_dual` with the ellipsoid's constraints: ``(bound, c, mu)``."""
    m, d = w.shape
    kp, k = dv.shape[0], a.shape[0]
    bmat = dv[:, :, None] * w[None] * lam[None, None, :]
    lam2 = lam**2
    c_sp, mu_sp, val_sp = spectral_start(w, dv, lam, cons)
    c, mu = c_sp.clone(), mu_sp.clone()
    live = torch.nonzero(dv.abs().amax(1) > 0).flatten()  # V_i = V_j: Q = 0 at the start already
    if len(live):
        # rows of the Schur form: the constraints, then the box as one more row (a = λ², K = ‖λ‖²)
        a_all = torch.cat([a, lam2[None]])
        k_all = torch.cat([level, lam2.sum()[None]])
        dl = dv[live]
        y = c_sp[live, :m].clone()
        mu_all = torch.cat([mu_sp[live], (c_sp[live, m:].sum(1) / lam2.sum())[:, None]], 1)
        if steps > 0:
            y0 = y.clamp_min(1e-9 * y.mean(1, keepdim=True)).clamp_min(1e-300)
            with torch.enable_grad():
                y, mu_all = _adam_schur(w, dl, lam2, y0, mu_all, a_all, k_all, steps, lr, ritz_iters, gen,
                                        min(block, m), smoothing)
        # shift y by the exact λ_max of the m×m Schur matrix, so that P − diag c' ⪯ 0 up to rounding
        r = lam2 / (mu_all @ a_all)
        for p in range(len(live)):
            mmat = dl[p][:, None] * ((w * r[p][None]) @ w.T) * dl[p][None, :]
            y[p] = y[p] + torch.linalg.eigvalsh(0.5 * (mmat + mmat.T) - torch.diag(y[p]))[-1]
        c[live] = torch.cat([y, mu_all[:, k:] * lam2[None]], 1)
        mu[live] = mu_all[:, :k]
    # the best split of the image block between the box and the constraints (a small LP), where it helps
    cp = c.clone()
    cp[:, m:] += mu @ a
    lp_mu = _lp_multipliers(cp[:, m:], a, level)
    if lp_mu is not None:
        better = _split_value(cp, lp_mu, a, level, m) < _split_value(cp, mu, a, level, m)
        mu = torch.where(better[:, None], lp_mu, mu)
        c = torch.where(better[:, None], cp - torch.cat([torch.zeros(kp, m, dtype=cp.dtype), lp_mu @ a], 1), c)
    bound = sdp_dual_bound(bmat, c, mu=mu, constraints=cons)
    # the spectral start is a dual point too: certify it where the search ended above its value
    worse = torch.nonzero(bound > val_sp).flatten()
    if len(worse):
        b_sp = sdp_dual_bound(bmat[worse], c_sp[worse], mu=mu_sp[worse], constraints=cons)
        keep = b_sp < bound[worse]
        idx = worse[keep]
        bound[idx], c[idx], mu[idx] = b_sp[keep], c_sp[idx], mu_sp[idx]
    return bound, c, mu


def _linear_ellipsoid_value(mu: np.ndarray, b: np.ndarray, a: np.ndarray, level: np.ndarray) -> tuple[float, np.ndarray]:
    """Lagrangian dual of ``max Σ 2b_i x_i`` s.t. ``0 ≤ x ≤ 1``, ``Σ_i a_ki x_i² ≤ K_k`` at ``μ ≥ 0``, and its gradient in μ.

    ``Σ_i max_{0≤x≤1} (2b_i x − q_i x²) + μ·K`` with ``q = Aᵀμ``: ``2b − q`` where ``q ≤ b``, else ``b²/q``.
    """
    q = mu @ a
    x = np.where(q <= b, 1.0, b / np.maximum(q, 1e-300))
    val = float(np.where(q <= b, 2 * b - q, b * x).sum() + mu @ level)
    return val, level - a @ (x * x)


def _linear_ellipsoid_bound(dv: Tensor, lam: Tensor, constraints: EllipsoidConstraints) -> Tensor:
    """The SDP bound of a linear classifier with the ellipsoid's constraints, per pair ``(Kp,)`` (times ρ: Q).

    For ``z = V x + c`` the margin change is at most ``2ερ Σ_i |v_i| λ_i |t_i|`` with
    ``|t| ≤ 1`` and the diagonal constraints ``Σ_i a_ki t_i² ≤ K_k``: a convex
    problem in ``x = |t|``, whose Lagrangian dual (:func:`_linear_ellipsoid_value`;
    the SDP with ``m = 1`` has the same value) is minimised over ``μ ≥ 0`` by
    L-BFGS-B. Any μ ≥ 0 gives a valid bound: μ = 0 gives Eq. 16, μ = γ on one kind
    of rows (``γ² = Σ b²/a_g / K_g``) at most ``2√(Σ b²/a_g · K_g)`` — for the
    ``"min-eigenvalue"`` rows the spectral bound. The lowest value over these starts
    and their L-BFGS-B refinements, plus a rounding margin, is returned.
    """
    an, kn = constraints.a.to(torch.float64).numpy(), constraints.level.to(torch.float64).numpy()
    lam_n = lam.to(torch.float64).numpy()
    groups = [[i for i, k in enumerate(constraints.kind) if k == kd] for kd in dict.fromkeys(constraints.kind)]
    out = []
    for v in dv.to(torch.float64).numpy():
        b = np.abs(v) * lam_n
        starts = [np.zeros(len(kn))]
        for rows in groups:
            ag = an[rows].sum(0)
            if np.all(ag > 0):
                s0 = np.zeros(len(kn))
                s0[rows] = math.sqrt(float((b * b / ag).sum()) / float(kn[rows].sum()))
                starts.append(s0)
        cands = []
        for s0 in starts:
            res = scipy.optimize.minimize(_linear_ellipsoid_value, s0, args=(b, an, kn), jac=True, method="L-BFGS-B",
                                          bounds=[(0, None)] * len(kn))
            cands += [s0, np.maximum(np.asarray(res.x, dtype=np.float64), 0.0)]
        vals = [_linear_ellipsoid_value(mu, b, an, kn)[0] for mu in cands]
        i = int(np.argmin(vals))
        size = 2 * float(b.sum()) + float(cands[i] @ (an.sum(1) + kn))
        out.append(vals[i] + float(_linear_margin(torch.tensor(size), len(b) + len(kn))))
    return torch.tensor(out, dtype=torch.float64)


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
    symmetric with a zero diagonal. Source: the provable-defenses paper, §4.1
    (Eq. 9, the SDP over the Prop. 2 box), §6.7 (Eq. 16) and §6.8 (the norm
    bounds); the ellipsoid's constraints of ``"sdp"`` are ours (module docstring,
    ``Convention``).

    Args:
        model: a one-hidden-layer or linear network (:func:`network_weights`).
        image_shape: ``(C, H, W)`` of the model's input.
        method: ``"sdp"`` (the SDP with the flow ellipsoid's diagonal constraints,
            :func:`ellipsoid_constraints`: at most the spectral and Frobenius bounds,
            up to a rounding margin of about 1e-9 relative), ``"sdp-box"`` (the
            paper's Eq. 9, over the Prop. 2 box only; looser than the spectral bound
            on our nets) — both the certified dual value, or the cvxpy optimum with
            ``exact=True`` —, ``"spectral"``, ``"frobenius"``, ``"linear"`` (linear
            models only, Eq. 16; rejected for hidden-layer models), or ``"min"``: the
            entrywise minimum of the ``"sdp"``, spectral and Frobenius ``Q`` (each is
            a valid bound for every pair, so their minimum is too; it differs from
            ``"sdp"`` by rounding margins at most).
        input_range: ``(lo, hi)`` pixel range; ρ = max(hi, 0) − min(lo, 0) scales every bound.
        border: border of the smoothness operator, ``"zeros"`` or ``"replicate"``
            (:mod:`~spatialadv.ops.flow_smoothness`).
        ridge: ridge ``≥ 0`` added to ``MᵀM`` (:mod:`~spatialadv.ops.flow_smoothness`).
        dual_steps: Adam steps of :func:`optimize_dual` (``"sdp"``, ``"sdp-box"``).
        ritz_iters: Ritz iterations per Adam step of :func:`optimize_dual`.
        exact: solve each pair's SDP with cvxpy (slow for large nets; the
            solver's optimum, not a certified dual value).
        solver: the cvxpy solver with ``exact=True`` (see :func:`sdp_exact`).

    Returns:
        ``Q`` ``(K, K)`` float64, in logit units per unit ε (ℓ_diff pixels), as a
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
        RuntimeError: ``exact=True`` and the cvxpy solver did not reach an optimal status.

    Cost: ``"sdp"`` of a 500-hidden-unit MNIST net (45 pairs, ``dual_steps=100``)
    takes about a minute on one CPU thread; ``"spectral"`` and ``"frobenius"`` a second.
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
        cons = ellipsoid_constraints((ch, h, w), border=border, ridge=ridge) if method == "sdp" else None
        if net.W is None:
            if cons is None:
                vals = 2 * rho * (dv * lam).abs().sum(1)  # the SDP of a linear model over the box is Eq. 16
            else:
                vals = _linear_ellipsoid_bound(dv, lam, cons) * rho
        else:
            Wd = net.W.detach().to(torch.float64)
            if exact:
                bm = dv[:, :, None] * Wd[None] * lam[None, None, :]
                vals = torch.tensor([sdp_exact(bm[p], constraints=cons, solver=solver) for p in range(len(pairs))],
                                    dtype=torch.float64) * rho
            elif cons is None:
                vals = optimize_dual(Wd, dv, lam, steps=dual_steps, ritz_iters=ritz_iters)[0] * rho
            else:
                vals = optimize_dual(Wd, dv, lam, steps=dual_steps, ritz_iters=ritz_iters, constraints=cons)[0] * rho
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


