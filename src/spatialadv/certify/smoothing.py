"""Randomized smoothing: Cohen et al.'s CERTIFY / PREDICT and spatial certificates that hold on the warped image.

* :class:`SmoothedClassifier` — ``g(z) = argmax_c P_{δ ~ N(0, σ² I)}(f(z + δ) = c)`` with
  Monte-Carlo :meth:`~SmoothedClassifier.predict` and :meth:`~SmoothedClassifier.certify`
  (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
  Smoothing", ICML 2019, Algorithm 1 / Theorem 1).
* :func:`bilinear_box_deviation` — the exact per-pixel supremum of the bilinear
  interpolant's deviation over an axis-aligned box of sampling positions, the
  building block of every interpolation bound here.
* :func:`rotation_interpolation_bound`, :func:`translation_interpolation_bound`,
  :func:`flow_linf_bound` — sound upper bounds of ``‖T'(x) − T(x)‖₂`` for the
  image the model receives (our bilinear :func:`~spatialadv.ops.flow_warp`, zero padding).
* :func:`certify_rotation`, :func:`certify_translation`, :func:`certify_flow` —
  certificates of the smoothed classifier against every rotation within ±Θ,
  every translation within ±t px, every flow with ``‖r‖_∞ ≤ δ`` px;
  :func:`exhaustive_translation` — the exact, deterministic check of the base
  classifier on all integer shifts.

Construction of the spatial certificates (rotation, sub-pixel translation): a
grid of K parameter cells covering the budget; at each cell centre the
transformed image is certified with Cohen's L2 radius at confidence α/K
(Bonferroni), and the certificate of the cell holds when that radius exceeds a
sound bound on ``‖T_φ(x) − T_{φ_k}(x)‖₂`` over the cell. This is the
"sampled interpolation bound" idea of TSS (Li, Weber, Xu, Rimanic,
Kailkhura, Xie, Zhang & Li, "TSS: Transformation-Specific Smoothing for
Robustness Certification", ACM CCS 2021, §5 and Thm. 5) **without** TSS's
smoothing over the transformation parameter: the smoothed classifier is the
plain Gaussian one, so the guarantee needs no assumption on how rotations
compose under interpolation. It costs K·(n0 + n) forward passes per image
(K adapts to the image: see :func:`certify_rotation`); a rotation cell that
fails is split once into S sub-cells with fresh samples, the confidence split
between the two levels in advance (:func:`certify_grid`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import beta as _beta
from scipy.stats import binomtest
from scipy.stats import norm as _norm
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_bool, check_images, check_index, check_int, warn_if_training
from ..attacks.base import model_input_error
from ..ops.affine import affine_flow, affine_warp, rotation_translation_theta
from ..ops.warp import flow_warp
from ..threats.base import example_generator

__all__ = ["SmoothedClassifier", "FlowSmoothedClassifier", "SmoothingCertificate", "GridCertificate", "FlowCertificate", "lower_confidence_bound",
           "cohen_radius", "bilinear_box_deviation", "rotation_interpolation_bound", "translation_interpolation_bound",
           "flow_linf_bound", "certify_grid", "certify_rotation", "certify_translation", "exhaustive_translation",
           "certify_flow", "rotation_cells", "FP_SLACK", "SmoothingAugmentation"]

#: Absolute slack (L2, pixel units in [0, 1]) added to every interpolation bound: covers the difference between the
#: exact bilinear interpolant (the bounds are computed in float64) and the float32 warp the model receives
#: (≤ 784 pixels × ~1e-6 per pixel ≪ 1e-4).
FP_SLACK = 1e-4

_ABSTAIN = -1
#: Generator stream of :func:`certify_flow` (apart from the grid cells' streams ``(k, phase)``, k < 10⁶).
_FLOW_STREAM = 1_000_000


def _check_smoothed(smoothed: object) -> "SmoothedClassifier":
    if not isinstance(smoothed, SmoothedClassifier):
        raise TypeError(f"smoothed must be a SmoothedClassifier (wrap the base model: SmoothedClassifier(model, sigma=..., "
                        f"num_classes=...)), got {type(smoothed).__name__}")
    return smoothed


def _check_finite_number(value: object, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of {what}, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of {what}, got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------------------------ statistics
def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a float in (0, 1), got {alpha!r}")
    return float(alpha)


def lower_confidence_bound(k, n, alpha: float) -> np.ndarray:
    """One-sided (1 − α) Clopper–Pearson lower bound of a binomial proportion.

    ``p_lower = Beta⁻¹(α; k, n − k + 1)`` (0 where ``k = 0``): with probability
    ≥ 1 − α over the draws, the true proportion is ≥ ``p_lower``. Cohen et al.
    2019, Algorithm 1 (``LowerConfBound``), via :data:`scipy.stats.beta`.

    Args:
        k: successes, int or array, 0 ≤ k ≤ n.
        n: trials, int or array ≥ 1.
        alpha: in (0, 1).

    Returns:
        float64 array of the broadcast shape of ``k`` and ``n``.

    Raises:
        ValueError: ``alpha`` outside (0, 1), ``n < 1`` or ``k`` outside [0, n].

    Example:
        >>> round(float(lower_confidence_bound(100, 100, 0.001)), 4)
        0.9333
    """
    alpha = _check_alpha(alpha)
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError(f"need n ≥ 1 and 0 ≤ k ≤ n, got k={k}, n={n}")
    with np.errstate(invalid="ignore"):
        p = _beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k > 0, p, 0.0).astype(np.float64)


def cohen_radius(p_lower, sigma: float) -> np.ndarray:
    """Certified L2 radius ``σ Φ⁻¹(p_lower)`` (Cohen et al. 2019, Theorem 1 with ``p_B = 1 − p_A``); 0 where ``p_lower ≤ 1/2``.

    Args:
        p_lower: lower bound(s) of the top class's probability, in [0, 1].
        sigma: the noise level σ > 0 (pixel units, images in [0, 1]).

    Returns:
        float64 array, same shape as ``p_lower``, in pixel L2 units.

    Raises:
        ValueError: ``sigma`` not > 0 and finite.

    Example:
        >>> float(cohen_radius(0.5, 0.25)), round(float(cohen_radius(0.9772, 0.5)), 3)
        (0.0, 1.0)
    """
    _check_sigma(sigma)
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p > 0.5, sigma * _norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite float > 0 (pixel units, images in [0, 1]), got {sigma!r}")
    return float(sigma)


# ------------------------------------------------------------------------------------------------ smoothed classifier
@dataclass(frozen=True)
class SmoothingCertificate:
    """Cohen et al.'s CERTIFY outcome per example.

    Attributes:
        prediction: ``(B,)`` int64, the certified class, −1 where abstained.
        p_lower: ``(B,)`` float64, the (1 − α) lower confidence bound of the selected class's probability.
        radius: ``(B,)`` float64, certified L2 radius (pixel units), 0 where abstained.
        count: ``(B,)`` int64, votes for the selected class among the ``n`` estimation samples.
    """

    prediction: Tensor
    p_lower: Tensor
    radius: Tensor
    count: Tensor


class SmoothedClassifier:
    """The Gaussian-smoothed classifier ``g(z) = argmax_c P_{δ ~ N(0, σ² I)}(f(z + δ) = c)``.

    Source: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
    Randomized Smoothing", ICML 2019, Eq. 1, Algorithm 1 (PREDICT, CERTIFY)
    and Theorem 1.

    Sampling is seeded per example: the draws of example ``i`` come from a
    generator keyed by ``(seed, *index[i], *stream)`` only
    (:func:`spatialadv.threats.example_generator`), in chunks of
    ``batch_size`` samples, so a result does not depend on which other examples
    share the call.

    Convention:
        Noise is added to the image the model receives (``z`` in [0, 1]) and
        the noisy image is **not** clipped (Cohen et al.); σ and radii are in
        pixel units of [0, 1] images, L2 over all ``C·H·W`` values.
        Non-finite logits are refused, not counted: a model that returns NaN
        or ±inf on any noisy sample raises ``ValueError`` (the argmax of a NaN
        row would silently vote for class 0, and a model emitting NaN under
        noise is broken). Every forward pass is checked: a tensor ``(M, K)``
        with ``K = num_classes``, finite.

    Args:
        model: base classifier ``f``, ``(B, C, H, W)`` → logits ``(B, K)``; its mode is not changed.
        sigma: noise level σ > 0.
        num_classes: K.
        batch_size: noisy samples drawn and packed per pass, int ≥ 1.
        forward_batch: samples per forward call of ``model``, int ≥ 1; default ``batch_size`` on an
            accelerator, 1 024 on the CPU (a small CNN runs 2–2.5× faster there in chunks of 500–1 000
            than of 10 000: its activations then stay in cache; ``benchmarks/smoothing_certify.py``).

    Raises:
        TypeError: ``model`` not an ``nn.Module``; at sampling time (:meth:`counts`, :meth:`predict`,
            :meth:`certify`), images of another dtype than the model's weights or a model returning no tensor.
        ValueError: bad ``sigma``, ``num_classes``, ``batch_size`` or ``forward_batch``; at sampling time,
            images the model cannot take (channels, size), a model whose output width is not
            ``num_classes``, or NaN/inf logits.
    """

    def __init__(self, model: nn.Module, *, sigma: float, num_classes: int, batch_size: int = 10_000,
                 forward_batch: int | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.sigma = _check_sigma(sigma)
        check_int(num_classes, "num_classes", minimum=2)
        check_int(batch_size, "batch_size", minimum=1)
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        if forward_batch is not None:
            check_int(forward_batch, "forward_batch", minimum=1)
        self.forward_batch = forward_batch

    # -------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def _counts_many(self, zs: Tensor, num: int, gens: list[torch.Generator], *,
                     noise_shape: tuple[int, ...] | None = None,
                     make: Callable[[int, Tensor], Tensor] | None = None) -> Tensor:
        """Class counts ``(K, num_classes)`` of ``num`` noisy copies of each ``zs[k]`` drawn from ``gens[k]``.

        Each image's noise is drawn in chunks of ``batch_size`` from its own
        generator, independent of the other images; chunks are packed into
        forward passes of about ``batch_size`` samples. ``make(k, noise)`` turns
        a chunk of standard normal noise ``(m, *noise_shape)`` into the model's
        inputs for example k (default: ``zs[k] + σ·noise``, noise of ``zs[k]``'s shape).
        """
        k_img = zs.shape[0]
        counts = torch.zeros(k_img, self.num_classes, dtype=torch.int64)
        buf: list[Tensor] = []
        owners: list[Any] = []
        filled = 0

        def flush():
            nonlocal buf, owners, filled
            if not buf:
                return
            z = torch.cat(buf)
            step = self.forward_batch or (1024 if z.device.type == "cpu" else len(z))
            pred = torch.cat([self._predict_batch(z[j : j + step]) for j in range(0, len(z), step)])
            owner = torch.cat(owners)
            counts.index_put_((owner, pred), torch.ones_like(pred), accumulate=True)
            buf, owners, filled = [], [], 0

        shape = tuple(zs.shape[1:]) if noise_shape is None else tuple(noise_shape)
        if make is None:
            def make(k: int, noise: Tensor) -> Tensor:
                return zs[k] + self.sigma * noise
        for k in range(k_img):
            for s in range(0, num, self.batch_size):
                m = min(self.batch_size, num - s)
                noise = torch.randn((m, *shape), generator=gens[k], dtype=zs.dtype).to(zs.device)
                buf.append(make(k, noise))
                owners.append(torch.full((m,), k, dtype=torch.int64))
                filled += m
                if filled >= self.batch_size:
                    flush()
        flush()
        return counts

    def _predict_batch(self, z: Tensor) -> Tensor:
        """Base-classifier predictions ``(M,)`` on the CPU for noisy images ``z``, with the output checked."""
        try:
            out = self.model(z)
        except RuntimeError as e:  # dtype / device / channels / size mismatch between the images and the model
            raise model_input_error(self.model, z, e) from e
        if not isinstance(out, Tensor) or not out.is_floating_point():
            raise TypeError(f"the model must return a floating-point logits tensor (M, {self.num_classes}), "
                            f"got {type(out).__name__ if not isinstance(out, Tensor) else out.dtype}")
        if out.dim() != 2 or out.shape[0] != z.shape[0]:
            raise ValueError(f"the model must return logits of shape ({z.shape[0]}, {self.num_classes}), got {tuple(out.shape)}")
        if out.shape[1] != self.num_classes:
            raise ValueError(f"num_classes={self.num_classes} but the model returns {out.shape[1]} logits per image; "
                             "pass the model's number of classes")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"the model returned NaN or infinite logits (on x or its noisy copies, sigma={self.sigma}); "
                             "the smoothed classifier refuses them (they would be counted as votes for class 0)")
        return out.argmax(1).cpu()

    def _prepare(self, x: Tensor, index) -> tuple[Tensor, list[list[int]]]:
        x = check_images(x)
        ref = next(iter(self.model.parameters()), None)
        if ref is not None and ref.is_floating_point() and ref.dtype != x.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model has {ref.dtype} weights; convert one of them "
                            f"(x.to({ref.dtype}) or model.to({x.dtype}))")
        with torch.no_grad():
            self._predict_batch(x)  # the clean images: channels, size, output width, finite logits
        warn_if_training(self.model)
        rows = check_index(index, x.shape[0]).tolist()
        return x, rows

    def counts(self, x: Tensor, num: int, *, seed: int = 0, index: Tensor | None = None,
               stream: tuple[int, ...] = (0,)) -> Tensor:
        """Counts of each class among ``f(x_i + δ_j)``, ``j = 1..num``: ``(B, num_classes)`` int64.

        Args:
            x: ``(B, C, H, W)`` in [0, 1].
            num: samples per image, int ≥ 1.
            seed: int ≥ 0.
            index: per-example identities (default positions).
            stream: extra ints appended to each generator key (separates the selection and estimation draws).

        Raises:
            TypeError, ValueError: bad images, ``num``, ``seed`` or ``index``.
        """
        check_int(num, "num", minimum=1)
        check_int(seed, "seed", minimum=0)
        x, rows = self._prepare(x, index)
        gens = [example_generator(seed, [*row, *stream]) for row in rows]
        return self._counts_many(x, num, gens)

    def predict(self, x: Tensor, n: int, alpha: float = 0.001, *, seed: int = 0, index: Tensor | None = None) -> Tensor:
        """PREDICT (Cohen et al. 2019, Algorithm 1): the top class, or −1 (abstain) unless it wins a binomial test.

        With ``n_A, n_B`` the two largest counts among ``n`` noisy samples,
        the top class is returned when the two-sided binomial test of
        ``n_A`` successes in ``n_A + n_B`` trials at p = 1/2 has p-value ≤ α
        (:func:`scipy.stats.binomtest`); then it differs from ``g(x)`` with
        probability ≤ α.

        Args:
            x: ``(B, C, H, W)`` in [0, 1].
            n: samples, int ≥ 1.
            alpha: in (0, 1).
            seed: as :meth:`counts` (stream ``(2,)``).
            index: as :meth:`counts`.

        Returns:
            ``(B,)`` int64, −1 where abstained.

        Raises:
            TypeError, ValueError: bad arguments.
        """
        alpha = _check_alpha(alpha)
        return _predict_from_counts(self.counts(x, n, seed=seed, index=index, stream=(2,)), alpha)

    def certify(self, x: Tensor, *, n0: int = 100, n: int = 10_000, alpha: float = 0.001, seed: int = 0,
                index: Tensor | None = None, stream: tuple[int, ...] = ()) -> SmoothingCertificate:
        """CERTIFY (Cohen et al. 2019, Algorithm 1): select the class with ``n0`` samples, bound it with ``n``.

        ``ĉ_A = argmax`` of the counts of ``n0`` selection samples;
        ``p_A`` = the (1 − α) Clopper–Pearson lower bound of ``ĉ_A``'s count
        among ``n`` fresh estimation samples; abstain if ``p_A ≤ 1/2``, else
        ``g(x + e) = ĉ_A`` for every ``‖e‖₂ < σ Φ⁻¹(p_A)`` with probability ≥ 1 − α.

        Args:
            x: ``(B, C, H, W)`` in [0, 1].
            n0: selection samples, int ≥ 1.
            n: estimation samples, int ≥ 1.
            alpha: in (0, 1).
            seed: int ≥ 0, see the class docstring.
            index: per-example identities (default positions).
            stream: extra ints in the generator keys (selection draws use ``(*stream, 0)``, estimation ``(*stream, 1)``).

        Returns:
            :class:`SmoothingCertificate`.

        Raises:
            TypeError, ValueError: bad images, ``n0``, ``n``, ``alpha``, ``seed`` or ``index``.
        """
        check_int(n0, "n0", minimum=1)
        check_int(n, "n", minimum=1)
        alpha = _check_alpha(alpha)
        sel = self.counts(x, n0, seed=seed, index=index, stream=(*stream, 0))
        est = self.counts(x, n, seed=seed, index=index, stream=(*stream, 1))
        return _certify_from_counts(sel, est, n, alpha, self.sigma)

    def max_radius(self, n: int, alpha: float) -> float:
        """The largest radius ``n`` estimation samples can certify at confidence ``alpha`` (all ``n`` votes for one class)."""
        return float(cohen_radius(lower_confidence_bound(n, n, alpha), self.sigma))


def _predict_from_counts(c: Tensor, alpha: float) -> Tensor:
    """PREDICT's decision from class counts ``(B, K)``: the top class if it wins the binomial test at α, else −1."""
    top2 = c.topk(2, dim=1)
    out = torch.full((c.shape[0],), _ABSTAIN, dtype=torch.int64)
    for i in range(c.shape[0]):
        na, nb = int(top2.values[i, 0]), int(top2.values[i, 1])
        if na > 0 and binomtest(na, na + nb, 0.5).pvalue <= alpha:
            out[i] = int(top2.indices[i, 0])
    return out


def _certify_from_counts(sel: Tensor, est: Tensor, n: int, alpha: float, sigma: float) -> SmoothingCertificate:
    """CERTIFY's outcome from selection counts ``(B, K)`` and ``n`` independent estimation counts ``(B, K)``."""
    c_hat = sel.argmax(1)
    k = est.gather(1, c_hat[:, None])[:, 0].numpy()
    p = lower_confidence_bound(k, n, alpha)
    r = cohen_radius(p, sigma)
    pred = torch.where(torch.from_numpy(p > 0.5), c_hat, torch.full_like(c_hat, _ABSTAIN))
    return SmoothingCertificate(pred, torch.from_numpy(p), torch.from_numpy(r), torch.from_numpy(k).to(torch.int64))


# ------------------------------------------------------------------------------------------------ interpolation bounds
def bilinear_box_deviation(x: Tensor, flow: Tensor, half_width: Tensor | float, ref: Tensor | None = None) -> Tensor:
    """Per-pixel ``sup |I_x(q') − ref|`` over the box ``‖q' − (p + flow(p))‖_∞ ≤ half_width(p)`` — exact.

    ``I_x`` is the bilinear interpolant of ``x`` extended by zeros outside the
    image (what :func:`~spatialadv.ops.flow_warp` with ``padding_mode="zeros"``
    evaluates). On each unit cell ``I_x`` is bilinear, hence linear in each
    coordinate separately, so on every rectangle its maximum and minimum are
    attained at the rectangle's corners. The box is cut by the integer grid
    lines into such rectangles; their corners are the products of the axis
    values {box edges} ∪ {integers inside}, all of which are evaluated here.
    The supremum is therefore exact (up to float64 rounding), not a Lipschitz estimate.

    Args:
        x: ``(N, C, H, W)`` images (any values; computed in float64).
        flow: ``(N, 2, H, W)`` box centres as displacements in pixels (:func:`~spatialadv.ops.flow_warp` convention).
        half_width: box half-widths in pixels, ≥ 0, broadcastable to ``(N, 1, H, W)``.
        ref: ``(N, C, H, W)`` reference values; default ``I_x`` at the box centres (``flow_warp(x, flow)``).

    Returns:
        ``(N, C, H, W)`` float64, ≥ 0.

    Raises:
        TypeError, ValueError: bad shapes, negative or non-finite half-widths.
    """
    x64 = x.detach().to(torch.float64)
    flow = flow.detach().to(torch.float64)
    w = torch.as_tensor(half_width, dtype=torch.float64, device=x.device)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("half_width must be finite and ≥ 0")
    n, c, hh, ww = x64.shape
    w = torch.broadcast_to(w, (n, 1, hh, ww))[:, 0]  # (N, H, W)
    if ref is None:
        ref = flow_warp(x64, flow)
    ref = ref.detach().to(torch.float64)
    gy = torch.arange(hh, dtype=torch.float64, device=x.device).view(1, hh, 1)
    gx = torch.arange(ww, dtype=torch.float64, device=x.device).view(1, 1, ww)
    qx, qy = gx + flow[:, 0], gy + flow[:, 1]  # (N, H, W) box centres
    m = max(1, int(math.ceil(2 * float(w.max()))))  # an open interval of length 2w holds ≤ ⌈2w⌉ integers

    def axis(q: Tensor) -> list[Tensor]:
        lo, hi = q - w, q + w
        base = torch.floor(lo)
        pts = [lo, hi] + [torch.minimum(torch.maximum(base + j, lo), hi) for j in range(1, m + 1)]
        return [p - q for p in pts]  # offsets from the centre

    ax, ay = axis(qx), axis(qy)
    hi_v = torch.full_like(ref, -math.inf)
    lo_v = torch.full_like(ref, math.inf)
    for ox in ax:
        for oy in ay:
            v = flow_warp(x64, flow + torch.stack([ox, oy], 1))
            hi_v = torch.maximum(hi_v, v)
            lo_v = torch.minimum(lo_v, v)
    return torch.maximum(hi_v - ref, ref - lo_v).clamp_min(0.0)


def _l2_bound(dev: Tensor) -> Tensor:
    return dev.flatten(1).pow(2).sum(1).sqrt() + FP_SLACK


def rotation_cells(max_angle: float, cells: int) -> tuple[Tensor, float]:
    """Centres ``(K,)`` (degrees) and half-width (degrees) of K equal cells tiling ``[−max_angle, max_angle]``.

    Raises:
        ValueError: ``max_angle`` < 0 or ``cells`` not an odd int ≥ 1 (the centre cell is the identity).
    """
    check_int(cells, "cells", minimum=1)
    if cells % 2 == 0:
        raise ValueError(f"cells must be odd (the centre cell holds the identity), got {cells}")
    if not math.isfinite(max_angle) or max_angle < 0:
        raise ValueError(f"max_angle must be a finite number of degrees ≥ 0, got {max_angle!r}")
    half = max_angle / cells
    centres = torch.linspace(-max_angle + half, max_angle - half, cells, dtype=torch.float64) if cells > 1 else torch.zeros(1, dtype=torch.float64)
    return centres, half


def rotation_interpolation_bound(x: Tensor, centres: Tensor, half_width: float) -> Tensor:
    """Sound bound ``M_k ≥ sup_{|θ − θ_k| ≤ h} ‖R_θ x − R_{θ_k} x‖₂`` for every image and cell.

    ``R_θ x`` is the rotation the model receives:
    :func:`~spatialadv.ops.affine_warp` of
    :func:`~spatialadv.ops.rotation_translation_theta` ``(θ, 0, 0)`` (bilinear,
    zero padding, about the image centre ``c``).

    Proof sketch: output pixel ``p`` samples ``q(θ) = c + R(θ)⁻¹(p − c)``,
    which moves on the circle of radius ``ρ = ‖p − c‖`` about ``c``, so for
    ``|θ − θ_k| ≤ h`` (radians) ``‖q(θ) − q(θ_k)‖_∞ ≤ ‖q(θ) − q(θ_k)‖₂ ≤ ρ h``:
    ``q(θ)`` stays in the box of half-width ``ρh`` about ``q(θ_k)``, over
    which :func:`bilinear_box_deviation` gives the exact supremum of
    ``|I_x(q) − I_x(q(θ_k))|``; the L2 norm of these per-pixel suprema bounds
    ``‖R_θ x − R_{θ_k} x‖₂`` (each pixel is bounded separately), plus
    :data:`FP_SLACK` for float rounding. Same role as TSS's interpolation
    bound (Li et al., ACM CCS 2021, Thm. 5), with the exact box supremum in
    place of a Lipschitz estimate.

    Args:
        x: ``(N, C, H, W)``.
        centres: ``(K,)`` cell centres θ_k in degrees (positive counter-clockwise as displayed).
        half_width: cell half-width h in degrees, ≥ 0.

    Returns:
        ``(N, K)`` float64, L2 in pixel units of ``x``.

    Raises:
        ValueError: negative ``half_width``, bad shapes.
    """
    if not math.isfinite(half_width) or half_width < 0:
        raise ValueError(f"half_width must be a finite number of degrees ≥ 0, got {half_width!r}")
    n, c, h, w = x.shape
    centres = torch.as_tensor(centres, dtype=torch.float64).reshape(-1)
    k = centres.shape[0]
    theta = rotation_translation_theta(centres, 0.0, 0.0, dtype=torch.float64)
    flows = affine_flow(theta, (h, w), units="pixels")  # (K, 2, H, W)
    v = torch.arange(h, dtype=torch.float64).view(h, 1) - (h - 1) / 2.0
    u = torch.arange(w, dtype=torch.float64).view(1, w) - (w - 1) / 2.0
    rho = torch.sqrt(u * u + v * v)  # (H, W)
    hw = rho * math.radians(half_width)
    out = torch.empty(n, k, dtype=torch.float64)
    for i in range(n):
        xi = x[i : i + 1].to(torch.float64).expand(k, c, h, w)
        out[i] = _l2_bound(bilinear_box_deviation(xi, flows, hw))
    return out


def translation_interpolation_bound(x: Tensor, centres: Tensor, half_width: float) -> Tensor:
    """Sound bound ``M_k ≥ sup_{‖t − t_k‖_∞ ≤ h} ‖T_t x − T_{t_k} x‖₂`` for every image and cell.

    ``T_t x`` translates the content by ``t = (tx, ty)`` pixels (right, down)
    with bilinear sampling and zero padding
    (:func:`~spatialadv.ops.rotation_translation_theta` ``(0, tx, ty)``):
    output pixel ``p`` samples ``p − t``, so over the cell the sampling point
    stays in the box of half-width ``h`` about ``p − t_k``;
    :func:`bilinear_box_deviation` is exact over that box. ``h = 0`` gives
    :data:`FP_SLACK` (integer shifts are exact).

    Args:
        x: ``(N, C, H, W)``.
        centres: ``(K, 2)`` cell centres ``(tx, ty)`` in pixels.
        half_width: h ≥ 0 pixels.

    Returns:
        ``(N, K)`` float64.
    """
    if not math.isfinite(half_width) or half_width < 0:
        raise ValueError(f"half_width must be a finite number of pixels ≥ 0, got {half_width!r}")
    n, c, h, w = x.shape
    centres = torch.as_tensor(centres, dtype=torch.float64).reshape(-1, 2)
    k = centres.shape[0]
    flows = (-centres).view(k, 2, 1, 1).expand(k, 2, h, w)
    out = torch.empty(n, k, dtype=torch.float64)
    for i in range(n):
        xi = x[i : i + 1].to(torch.float64).expand(k, c, h, w)
        out[i] = _l2_bound(bilinear_box_deviation(xi, flows, half_width)) if half_width > 0 else FP_SLACK
    return out


def flow_linf_bound(x: Tensor, delta: float) -> Tensor:
    """Bound ``M(δ) ≥ sup_{‖r‖_∞ ≤ δ} ‖warp(x, r) − x‖₂`` per image (exact for one channel).

    The flow set: every displacement component ``|r_u(p)|, |r_v(p)| ≤ δ``
    pixels (a per-pixel L2 bound ``‖r(p)‖₂ ≤ δ`` is a subset, so it is
    covered). ``warp`` is :func:`~spatialadv.ops.flow_warp` (bilinear, zero
    padding). Pixel ``p`` of ``warp(x, r)`` is ``I_x(p + r(p))`` and depends on
    ``r(p)`` only, so the supremum of the norm is the L2 norm of the per-pixel
    suprema, each exact by :func:`bilinear_box_deviation` with reference
    ``x_p``; for ``C > 1`` channels share ``r(p)`` and summing per-channel
    suprema over-estimates (still sound). Plus :data:`FP_SLACK`.

    Args:
        x: ``(N, C, H, W)``.
        delta: δ ≥ 0 pixels.

    Returns:
        ``(N,)`` float64, L2 in pixel units of ``x``.
    """
    if not math.isfinite(delta) or delta < 0:
        raise ValueError(f"delta must be a finite number of pixels ≥ 0, got {delta!r}")
    n, c, h, w = x.shape
    if delta == 0:
        return torch.full((n,), FP_SLACK, dtype=torch.float64)
    zero = torch.zeros(n, 2, h, w, dtype=torch.float64, device=x.device)
    return _l2_bound(bilinear_box_deviation(x, zero, delta, ref=x.to(torch.float64)))


# ------------------------------------------------------------------------------------------------ grid certificates
@dataclass(frozen=True)
class GridCertificate:
    """Outcome of a grid certificate (:func:`certify_grid`) per example.

    A budget ``b`` (degrees, or pixels in ∞-norm) is certified iff
    ``prediction ≥ 0`` and ``b < certified_below`` and ``b ≤ max_budget``
    (:meth:`certified`): every cell meeting ``[−b, b]`` was certified for the same class.

    Attributes:
        prediction: ``(B,)`` int64, the class of the centre cell (identity), −1 where it abstained.
        certified_below: ``(B,)`` float64, the inner edge of the nearest failed cell (``inf`` if none failed).
        max_budget: the budget the grid covers.
        cells: ``(B,)`` int64, K, the cells of the grid (the Bonferroni factor).
        evaluated: ``(B,)`` int64, cells sampled before the first failure (all, with ``stop_on_failure=False``).
        min_margin: ``(B,)`` float64, smallest ``radius − M`` over the evaluated cells and sub-cells (pixel L2 units).
        max_bound: ``(B,)`` float64, largest interpolation bound ``M_k`` of the grid.
        refined: ``(B,)`` int64, failed cells replaced by their sub-cells (:func:`certify_grid`).
    """

    prediction: Tensor
    certified_below: Tensor
    max_budget: float
    cells: Tensor
    evaluated: Tensor
    min_margin: Tensor
    max_bound: Tensor
    refined: Tensor

    def certified(self, budget: float) -> Tensor:
        """``(B,)`` bool: certified at ``budget`` (see the class docstring)."""
        ok = (self.prediction >= 0) & (self.certified_below > budget)
        return ok & torch.tensor(budget <= self.max_budget + 1e-12)


def _cell_alpha(alpha: float, cells: int, refined: bool) -> float:
    """Confidence of one first-level cell of :func:`certify_grid`: α/K, or α/(2K) when failed cells may be refined."""
    return alpha / (2 * cells) if refined else alpha / cells


def certify_grid(smoothed: SmoothedClassifier, images: Tensor, bounds: Tensor, edges: Tensor, *, n0: int, n: int,
                 alpha: float, seed: int, row: list[int], stop_on_failure: bool = True,
                 refine: Callable[[int], tuple[Tensor, Tensor]] | None = None, splits: int = 0,
                 refine_samples: int | None = None) -> dict:
    """Certify one example over a grid of K transformed images (Bonferroni over the cells), refining failed cells once.

    The cell nearest the identity (smallest edge) runs CERTIFY (Cohen et al.
    2019, Algorithm 1): ``n0`` selection samples choose the class ``c``, ``n``
    estimation samples bound ``p_c``. Every other cell tests the same ``c``
    with ``n`` estimation samples of its own (``c`` is fixed before they are
    drawn, so the Clopper–Pearson bound stays valid). Cell k holds when its
    lower bound gives a radius ``σ Φ⁻¹(p_k) > bounds[k]``. Cells are sampled
    in order of ``edges`` (the cell's distance to the identity in budget
    units), in groups of about ``smoothed.batch_size / n`` cells; with
    ``stop_on_failure`` the group with the first failure ends the example
    (budgets are symmetric intervals about the identity, so nothing farther
    can be certified).

    Refinement (``refine`` given, ``splits`` = S ≥ 2): a failed cell whose
    estimated radius ``σ Φ⁻¹(k/n)`` exceeds its sub-cells' largest bound is
    replaced by its S sub-cells ``refine(k) = (images (S, C, H, W), bounds
    (S,))``, each tested for ``c`` with ``refine_samples`` fresh samples; the
    cell holds when all S do. Confidence: the K cells at ``α/(2K)`` each and the
    K·S possible sub-cells at ``α/(2KS)`` each, a split fixed before any
    sampling, so by the union bound over all ``K + KS`` tests — evaluated or
    not; the sub-cells' draws are independent of the choice to refine — every
    bound used holds simultaneously with probability ≥ 1 − α. Without
    refinement the K cells get ``α/K`` each.

    Guarantee: with probability ≥ 1 − α, ``g(z) = c`` for every ``z`` within
    ``bounds`` (L2) of the image of every passed cell or sub-cell, at once.

    Args:
        smoothed: the smoothed classifier.
        images: ``(K, C, H, W)`` in [0, 1], the cell centres' images.
        bounds: ``(K,)`` interpolation bounds M_k.
        edges: ``(K,)`` inner edges of the cells (≥ 0).
        n0: selection samples (centre cell).
        n: estimation samples per cell.
        alpha: total confidence parameter.
        seed: int ≥ 0.
        row: the example's seeding key (cell k adds ``(k, phase)`` to it, sub-cell j of cell k ``(k, 3, j)``).
        stop_on_failure: stop after the first failed cell's group.
        refine: sub-cells of cell k, or None (no refinement).
        splits: S, the sub-cells ``refine`` returns per cell (the Bonferroni factor of the second level).
        refine_samples: estimation samples per sub-cell (default ``n``).

    Returns:
        dict with ``prediction``, ``certified_below``, ``evaluated``, ``refined`` (cells replaced by sub-cells),
        ``min_margin``, ``max_bound``, ``cells``.

    Raises:
        ValueError: ``refine`` given with ``splits`` < 2.
    """
    _check_smoothed(smoothed)
    k_cells = images.shape[0]
    if refine is not None and splits < 2:
        raise ValueError(f"refinement needs splits ≥ 2 sub-cells per cell, got {splits!r}")
    order = sorted(range(k_cells), key=lambda k: (float(edges[k]), k))
    a = _cell_alpha(alpha, k_cells, refine is not None)
    a_sub = a / max(splits, 1)
    n_sub = n if refine_samples is None else refine_samples
    first = order[0]
    cert = smoothed.certify(images[first : first + 1], n0=n0, n=n, alpha=a, seed=seed, index=torch.tensor([row]),
                            stream=(first,))
    pred = int(cert.prediction[0])
    margins: list[float] = []
    below = math.inf
    refined = 0

    def passes(k: int, count: int, rk: float) -> bool:
        """Cell k holds with radius rk, or (refined) all its sub-cells hold; records margins."""
        nonlocal refined
        if rk > float(bounds[k]):
            margins.append(rk - float(bounds[k]))
            return True
        sub = refine(k) if refine is not None else None
        est = float(cohen_radius(min(count / n, 1 - 1e-9), smoothed.sigma))  # the radius p̂ would give
        if sub is None or not est > float(sub[1].max()):
            margins.append(rk - float(bounds[k]))
            return False
        refined += 1
        s_img, s_bounds = sub
        gens = [example_generator(seed, [*row, k, 3, j]) for j in range(s_img.shape[0])]
        c = smoothed._counts_many(s_img, n_sub, gens)[:, pred].numpy()
        r = cohen_radius(lower_confidence_bound(c, n_sub, a_sub), smoothed.sigma)
        margins.extend((r - s_bounds.numpy()).tolist())
        return bool(np.all(r > s_bounds.numpy()))  # a failed cell ends at its own inner edge (the caller)

    if pred < 0:
        below = float(edges[first])
        margins.append(-float(bounds[first]))
    elif not passes(first, int(cert.count[0]), float(cert.radius[0])):
        below = min(below, float(edges[first]))
    group = max(1, smoothed.batch_size // n)
    rest = order[1:]
    evaluated = 1
    s = 0
    while s < len(rest) and pred >= 0 and not (stop_on_failure and below < math.inf):
        ks = rest[s : s + group]
        s += len(ks)
        gens = [example_generator(seed, [*row, k, 1]) for k in ks]
        counts = smoothed._counts_many(images[ks], n, gens)[:, pred].numpy()
        r = cohen_radius(lower_confidence_bound(counts, n, a), smoothed.sigma)
        evaluated += len(ks)
        for k, ck, rk in zip(ks, counts.tolist(), r.tolist()):
            if not passes(k, int(ck), rk):
                below = min(below, float(edges[k]))
                if stop_on_failure:
                    break
    margin = min(margins) if margins else -math.inf
    return {"prediction": pred, "certified_below": below, "evaluated": evaluated, "refined": refined,
            "min_margin": margin, "max_bound": float(bounds.max()), "cells": k_cells}


def _grid_result(rows: list[dict], max_budget: float) -> GridCertificate:
    return GridCertificate(
        prediction=torch.tensor([r["prediction"] for r in rows], dtype=torch.int64),
        certified_below=torch.tensor([r["certified_below"] for r in rows], dtype=torch.float64),
        max_budget=float(max_budget),
        cells=torch.tensor([r["cells"] for r in rows], dtype=torch.int64),
        evaluated=torch.tensor([r["evaluated"] for r in rows], dtype=torch.int64),
        min_margin=torch.tensor([r["min_margin"] for r in rows], dtype=torch.float64),
        max_bound=torch.tensor([r["max_bound"] for r in rows], dtype=torch.float64),
        refined=torch.tensor([r["refined"] for r in rows], dtype=torch.int64))


def _warp_rotations(x1: Tensor, centres: Tensor) -> Tensor:
    _, c, h, w = x1.shape
    theta = rotation_translation_theta(centres, 0.0, 0.0, dtype=torch.float64)
    flows = affine_flow(theta, (h, w), units="pixels").to(x1.dtype)
    return flow_warp(x1.expand(len(centres), c, h, w), flows).clamp(0.0, 1.0)


def _rotation_subcells(x1: Tensor, centres: Tensor, half: float, splits: int, k: int) -> tuple[Tensor, Tensor]:
    """Images and interpolation bounds of the ``splits`` equal sub-cells of rotation cell k."""
    h = half / splits
    sub = float(centres[k]) - half + h * (2 * torch.arange(splits, dtype=torch.float64) + 1)
    bounds = rotation_interpolation_bound(x1, sub, h)[0]
    return _warp_rotations(x1, sub), bounds


#: Candidate cell counts of :func:`certify_rotation` (odd: the identity is a cell centre).
_CELL_COUNTS = (15, 21, 31, 45, 61, 91, 121, 181, 241, 361, 481, 601, 901, 1201)


def certify_rotation(smoothed: SmoothedClassifier, x: Tensor, *, max_angle: float = 30.0, n0: int = 64, n: int = 1000,
                     alpha: float = 0.001, seed: int = 0, index: Tensor | None = None, cells: int | None = None,
                     bound_fraction: float = 0.5, max_cells: int = 1201, refine: int = 4,
                     refine_samples: int | None = None, stop_on_failure: bool = True,
                     progress: bool = False) -> GridCertificate:
    """Certify the smoothed classifier against every rotation within ±``max_angle`` degrees.

    Guarantee: with probability ≥ 1 − α over the Monte-Carlo samples, for every
    budget ``Θ`` with ``Θ < certified_below`` and ``Θ ≤ max_angle``, and every
    ``θ ∈ [−Θ, Θ]``: ``g(R_θ x) = prediction``, where ``R_θ x`` is the image
    the model receives (:func:`~spatialadv.ops.affine_warp` of
    :func:`~spatialadv.ops.rotation_translation_theta` ``(θ, 0, 0)``,
    bilinear, zero padding, float32 rounding covered by :data:`FP_SLACK`)
    and ``g`` the Gaussian-smoothed classifier.

    Proof sketch: K equal cells tile ``[−max_angle, max_angle]``; at each
    centre θ_k, CERTIFY at confidence α/K gives ``g(z) = c`` for
    ``‖z − R_{θ_k} x‖₂ < r_k`` (Cohen et al. 2019, Thm. 1); for θ in the
    cell, ``‖R_θ x − R_{θ_k} x‖₂ ≤ M_k`` (:func:`rotation_interpolation_bound`);
    ``r_k > M_k`` for all cells meeting ``[−Θ, Θ]`` then gives the claim for
    all of them simultaneously (union bound over the K certificates). This is
    the construction of TSS (Li et al., ACM CCS 2021) for the interpolation
    error, without TSS's smoothing over the angle (see the module docstring).

    Refinement (``refine`` = S ≥ 2, the default 4): a cell that fails — its
    radius does not exceed ``M_k`` — is split once into S equal sub-cells of
    half-width ``h/S``, whose bounds are about S times smaller, each
    certified with ``refine_samples`` fresh samples; the cell holds when all of them do.
    The confidence is split in advance: α/(2K) per cell, α/(2KS) per
    possible sub-cell (:func:`certify_grid`), so the guarantee above holds
    unchanged. It rescues angles where ``p_c`` is high enough for a radius
    above the finer bound but not the coarse one, at S·n samples per rescued
    cell; ``refine=0`` gives the single-level grid at α/K per cell.

    Convention:
        Angles in degrees, positive counter-clockwise as displayed, about the
        image centre ``((W−1)/2, (H−1)/2)``; bilinear sampling, zero padding
        (black); budgets are symmetric intervals ``[−Θ, Θ]``; σ, radii and
        bounds are L2 over all ``C·H·W`` values of [0, 1] images.

    Choosing K (per image, from ``x`` only, before any sampling — so the
    Bonferroni factor is fixed in advance): the smallest K of
    ``(15, 21, 31, …, max_cells)`` (or ``cells`` if given) whose largest
    bound ``max_k M_k`` is ≤ ``bound_fraction`` × the largest radius ``n``
    samples can certify at a cell's confidence (α/K, or α/(2K) with
    refinement). Cost: ≤ K (n0 + n) forward passes, plus S·n per refined cell.

    Args:
        smoothed: the smoothed classifier ``g``.
        x: ``(B, C, H, W)`` in [0, 1].
        max_angle: Θ_max in degrees, in [0, 180] (0: the identity only).
        n0: selection samples (centre cell only).
        n: estimation samples per cell.
        alpha: total over the K cells, in (0, 1).
        seed: int ≥ 0.
        index: per-example identities (batch-independent seeding).
        cells: fix K (odd); default: chosen per image as above.
        bound_fraction: in (0, 1], the target of the automatic choice of K.
        max_cells: the largest K of the automatic choice.
        refine: sub-cells S per failed cell, 0 (no refinement) or ≥ 2.
        refine_samples: estimation samples per sub-cell (default ``4 n``: a failed cell's ``p_c`` is
            typically well below 1, where more samples tighten the Clopper–Pearson bound most).
        stop_on_failure: stop an example at its first failed cell (cheaper; same certified budgets).
        progress: tqdm bar over the examples.

    Returns:
        :class:`GridCertificate` (budgets in degrees).

    Raises:
        TypeError: ``smoothed`` not a :class:`SmoothedClassifier`; non-int counts, non-bool flags.
        ValueError: bad images; ``max_angle`` outside [0, 180]; ``refine`` = 1; even ``cells``;
            counts < 1; α outside (0, 1); ``bound_fraction`` outside (0, 1].
    """
    _check_smoothed(smoothed)
    x = check_images(x)
    max_angle = _check_finite_number(max_angle, "max_angle", "degrees")
    if not 0 <= max_angle <= 180:
        raise ValueError(f"max_angle must be in [0, 180] degrees (rotations beyond ±180° repeat), got {max_angle!r}")
    if isinstance(bound_fraction, bool) or not (isinstance(bound_fraction, (int, float)) and 0 < bound_fraction <= 1):
        raise ValueError(f"bound_fraction must be in (0, 1], got {bound_fraction!r}")
    check_int(n0, "n0", minimum=1)
    check_int(n, "n", minimum=1)
    check_int(max_cells, "max_cells", minimum=1)
    check_int(refine, "refine", minimum=0)
    if refine == 1:
        raise ValueError("refine must be 0 (no refinement) or >= 2 sub-cells per failed cell, got 1")
    if cells is not None:
        rotation_cells(max_angle, cells)  # cells: an odd int >= 1
    check_int(seed, "seed", minimum=0)
    check_bool(stop_on_failure, "stop_on_failure")
    check_bool(progress, "progress")
    refine_samples = 4 * n if refine_samples is None else refine_samples
    check_int(refine_samples, "refine_samples", minimum=1)
    alpha = _check_alpha(alpha)
    refined = refine >= 2
    rows = check_index(index, x.shape[0]).tolist()
    out = []
    for i in tqdm(range(x.shape[0]), desc="certify rotation", disable=not progress, unit="img"):
        xi = x[i : i + 1]
        candidates = [cells] if cells is not None else [k for k in _CELL_COUNTS if k < max_cells] + [max_cells]
        if max_angle == 0:
            candidates = [1]
        elif cells is None and len(candidates) > 2:
            # skip candidates that are clearly too coarse: the bound shrinks about linearly with the cell width
            c0, h0 = rotation_cells(float(max_angle), candidates[0])
            m0 = float(rotation_interpolation_bound(xi, c0, h0)[0].max())
            need = 0.8 * candidates[0] * m0 / (bound_fraction * smoothed.max_radius(n, _cell_alpha(alpha, candidates[0], refined)))
            candidates = [k for k in candidates[:-1] if k >= need] + [candidates[-1]]
        for k in candidates:
            centres, half = rotation_cells(float(max_angle), k)
            bounds = rotation_interpolation_bound(xi, centres, half)[0]
            if float(bounds.max()) <= bound_fraction * smoothed.max_radius(n, _cell_alpha(alpha, k, refined)):
                break
        edges = (centres.abs() - half).clamp_min(0.0)
        sub = functools.partial(_rotation_subcells, xi, centres, half, refine) if refined else None
        out.append(certify_grid(smoothed, _warp_rotations(xi, centres), bounds, edges, n0=n0, n=n, alpha=alpha,
                                seed=seed, row=rows[i], stop_on_failure=stop_on_failure, refine=sub,
                                splits=refine if refined else 0, refine_samples=refine_samples))
    return _grid_result(out, float(max_angle))


def _shift(x1: Tensor, centres: Tensor) -> Tensor:
    _, c, h, w = x1.shape
    theta = rotation_translation_theta(0.0, centres[:, 0], centres[:, 1], dtype=torch.float64)
    flows = affine_flow(theta, (h, w), units="pixels").to(x1.dtype)
    return flow_warp(x1.expand(len(centres), c, h, w), flows).clamp(0.0, 1.0)


def _translation_cells(max_shift: float, step: float) -> tuple[Tensor, float, bool]:
    """Centres ``(K, 2)``, half-width, integer-only flag of the translation grid."""
    m = int(math.floor(max_shift / step + 1e-9))
    if m * step < max_shift - 1e-9:
        m += 1  # cover the budget with the last cell
    vals = torch.arange(-m, m + 1, dtype=torch.float64) * step
    gx, gy = torch.meshgrid(vals, vals, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1), step / 2.0, False


def certify_translation(smoothed: SmoothedClassifier, x: Tensor, *, max_shift: float = 3.0, step: float | None = None,
                        n0: int = 64, n: int = 1000, alpha: float = 0.001, seed: int = 0, index: Tensor | None = None,
                        stop_on_failure: bool = True, progress: bool = False) -> GridCertificate:
    """Certify the smoothed classifier against translations within ±``max_shift`` px (∞-norm box).

    Two modes:

    * ``step=None`` — **integer shifts**: the grid is every integer
      ``(tx, ty)`` with ``|tx|, |ty| ≤ max_shift`` (exact shifts, zero
      padding, no interpolation error: ``M_k`` = :data:`FP_SLACK`); budgets
      are integers and the guarantee covers integer shifts only.
    * ``step = s > 0`` — **sub-pixel shifts**: square cells of side ``s``
      centred at multiples of ``s`` covering the box; ``M_k`` from
      :func:`translation_interpolation_bound`; every real shift in the box is covered.

    Guarantee: with probability ≥ 1 − α, for every budget ``t < certified_below``,
    ``t ≤ max_shift`` and every shift ``‖(tx, ty)‖_∞ ≤ t`` (integers only in
    the first mode): ``g(T_{tx,ty} x) = prediction``, ``T`` the translation
    the model receives (:func:`~spatialadv.ops.rotation_translation_theta`
    ``(0, tx, ty)``, bilinear, zero padding). Proof as :func:`certify_rotation`
    (Cohen et al. 2019 Thm. 1 per cell at α/K, union bound, interpolation bound).

    Convention:
        ``tx`` positive moves the content right, ``ty`` down (pixels); zero
        padding; the budget is the ∞-norm box ``max(|tx|, |ty|) ≤ t``.

    Args:
        smoothed: ``g``.
        x: ``(B, C, H, W)`` in [0, 1].
        max_shift: pixels in [0, max(H, W)] (an integer in the first mode).
        step: sub-pixel cell side in pixels, in (0, max(max_shift, 1)], or None for integer shifts.
        n0: as :func:`certify_rotation`.
        n: as :func:`certify_rotation`.
        alpha: as :func:`certify_rotation`.
        seed: as :func:`certify_rotation`.
        index: as :func:`certify_rotation`.
        stop_on_failure: as :func:`certify_rotation`.
        progress: as :func:`certify_rotation`.

    Returns:
        :class:`GridCertificate` (budgets in pixels, ∞-norm).

    Raises:
        TypeError: ``smoothed`` not a :class:`SmoothedClassifier`; non-number ``max_shift``/``step``,
            non-int counts, non-bool flags.
        ValueError: bad images; ``max_shift`` outside [0, max(H, W)] (or not an integer without ``step``);
            ``step`` outside (0, max(max_shift, 1)]; counts < 1; α outside (0, 1).
    """
    _check_smoothed(smoothed)
    x = check_images(x)
    max_shift = _check_finite_number(max_shift, "max_shift", "pixels")
    if not 0 <= max_shift <= max(x.shape[2], x.shape[3]):
        raise ValueError(f"max_shift must be in [0, {max(x.shape[2], x.shape[3])}] pixels (the image size), got {max_shift!r}")
    check_int(seed, "seed", minimum=0)
    check_bool(stop_on_failure, "stop_on_failure")
    check_bool(progress, "progress")
    if step is None:
        if float(max_shift) != int(max_shift):
            raise ValueError(f"integer shifts need an integer max_shift, got {max_shift!r}; give step for sub-pixel shifts")
        centres, half, _ = _translation_cells(float(max_shift), 1.0)
        half = 0.0
    else:
        step = _check_finite_number(step, "step", "pixels")
        if not 0 < step <= max(max_shift, 1.0):
            raise ValueError(f"step must be a number of pixels in (0, max(max_shift, 1)], got {step!r}")
        centres, half, _ = _translation_cells(float(max_shift), float(step))
    alpha = _check_alpha(alpha)
    check_int(n0, "n0", minimum=1)
    check_int(n, "n", minimum=1)
    rows = check_index(index, x.shape[0]).tolist()
    edges = (centres.abs().amax(1) - half).clamp_min(0.0)
    out = []
    for i in tqdm(range(x.shape[0]), desc="certify translation", disable=not progress, unit="img"):
        xi = x[i : i + 1]
        bounds = translation_interpolation_bound(xi, centres, half)[0]
        out.append(certify_grid(smoothed, _shift(xi, centres), bounds, edges, n0=n0, n=n, alpha=alpha, seed=seed,
                                row=rows[i], stop_on_failure=stop_on_failure))
    return _grid_result(out, float(max_shift))


@torch.no_grad()
def exhaustive_translation(model: nn.Module, x: Tensor, *, max_shift: int = 3) -> tuple[Tensor, Tensor]:
    """Exact, deterministic check of the **base** classifier on every integer shift within ±``max_shift`` px.

    Guarantee (no probability): for every integer budget ``t < certified_below``
    (``t ≤ max_shift``) and every integer shift ``|tx|, |ty| ≤ t``:
    ``f(T_{tx,ty} x) = prediction`` (``f(x)``). The set is finite, so
    enumerating it is a proof. Integer shifts only.

    Args:
        model: ``f``.
        x: ``(B, C, H, W)`` in [0, 1].
        max_shift: int ≥ 0.

    Returns:
        ``(prediction (B,), certified_below (B,))``, the latter float64 (``inf`` if every shift keeps the class).
    """
    x = check_images(x)
    check_int(max_shift, "max_shift", minimum=0)
    centres, _, _ = _translation_cells(float(max_shift), 1.0)
    edges = centres.abs().amax(1)
    pred = model(x).argmax(1).cpu()
    below = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for i in range(x.shape[0]):
        p = model(_shift(x[i : i + 1], centres)).argmax(1).cpu()
        bad = p != pred[i]
        if bool(bad.any()):
            below[i] = float(edges[bad].min())
    return pred, below


@dataclass(frozen=True)
class FlowCertificate:
    """Outcome of :func:`certify_flow`.

    Attributes:
        prediction: ``(B,)`` int64, −1 where abstained. radius: ``(B,)`` certified L2 radius.
        deltas: the flow budgets δ (pixels). bounds: ``(B, len(deltas))`` the bounds ``M(δ)``.
        certified: ``(B, len(deltas))`` bool, ``prediction ≥ 0`` and ``radius > M(δ)``.
    """

    prediction: Tensor
    radius: Tensor
    deltas: tuple[float, ...]
    bounds: Tensor
    certified: Tensor


def certify_flow(smoothed: SmoothedClassifier, x: Tensor, deltas, *, n0: int = 64, n: int = 1000, alpha: float = 0.001,
                 seed: int = 0, index: Tensor | None = None) -> FlowCertificate:
    """Certify the smoothed classifier against every flow with ``‖r‖_∞ ≤ δ`` px, for each δ of ``deltas``.

    Guarantee (input space, the image the model receives): with probability
    ≥ 1 − α, for every δ with ``certified[:, j]`` and every flow ``r``
    ``(2, H, W)`` with all components ``|r| ≤ δ`` pixels:
    ``g(flow_warp(x, r)) = prediction`` (:func:`~spatialadv.ops.flow_warp`,
    bilinear, zero padding). Proof: one CERTIFY at ``x`` (Cohen et al. 2019,
    Thm. 1) gives radius ``R``; ``‖flow_warp(x, r) − x‖₂ ≤ M(δ)``
    (:func:`flow_linf_bound`); ``R > M(δ)`` concludes. One test, so no
    union bound over the δ's.

    This is **not** DeformRS (Alfarra et al., AAAI 2022), which smooths in
    flow-parameter space and certifies the parameters only; here the
    smoothing is in pixel space and the bound is on the warped pixels.

    Args:
        smoothed: ``g``.
        x: ``(B, C, H, W)`` in [0, 1].
        deltas: iterable of δ ≥ 0 (pixels).
        n0: CERTIFY's selection samples.
        n: CERTIFY's estimation samples.
        alpha: in (0, 1).
        seed: int ≥ 0.
        index: per-example identities.

    Returns:
        :class:`FlowCertificate`.

    Raises:
        TypeError: ``smoothed`` not a :class:`SmoothedClassifier`; ``deltas`` not an iterable of numbers.
        ValueError: bad images; a δ negative or not finite; counts < 1; α outside (0, 1).
    """
    _check_smoothed(smoothed)
    x = check_images(x)
    if isinstance(deltas, (int, float, str, bytes)) or not hasattr(deltas, "__iter__"):
        raise TypeError(f"deltas must be an iterable of numbers of pixels (e.g. (0.1, 0.5)), got {type(deltas).__name__}")
    deltas = tuple(_check_finite_number(d.item() if isinstance(d, Tensor) and d.numel() == 1 else d, "deltas", "pixels")
                   for d in deltas)
    if any(d < 0 for d in deltas):
        raise ValueError(f"deltas must be >= 0 pixels, got {deltas}")
    check_int(n0, "n0", minimum=1)
    check_int(n, "n", minimum=1)
    _check_alpha(alpha)
    cert = smoothed.certify(x, n0=n0, n=n, alpha=alpha, seed=seed, index=index, stream=(_FLOW_STREAM,))
    bounds = torch.stack([flow_linf_bound(x, d) for d in deltas], 1) if deltas else torch.zeros(x.shape[0], 0, dtype=torch.float64)
    ok = (cert.prediction[:, None] >= 0) & (cert.radius[:, None] > bounds)
    return FlowCertificate(cert.prediction, cert.radius, deltas, bounds, ok)


# ------------------------------------------------------------------------------------------------ flow-space smoothing
class FlowSmoothedClassifier(SmoothedClassifier):
    """Smoothing in flow space: ``G_x(ψ) = argmax_c P_{φ ~ N(0, σ² I)}(f(flow_warp(x, ψ + φ)) = c)``.

    The noise ``φ`` is a flow ``(2, H, W)`` in pixels, i.i.d. Gaussian per
    component; the base classifier ``f`` receives ``flow_warp(x, ψ + φ)``
    (:func:`~spatialadv.ops.flow_warp`, bilinear, zero padding): one warp of
    the clean image ``x`` at the summed flow, so no interpolation error enters.
    CERTIFY and PREDICT are Cohen et al.'s (ICML 2019, Algorithm 1, Theorem 1)
    applied to the classifier ``ψ ↦ f(flow_warp(x, ψ))`` of the flow: the
    certified radius ``R = σ Φ⁻¹(p_A)`` is an L2 radius **in flow space**
    (pixels, over all ``2·H·W`` components). Source: Alfarra, Bibi, Khan, Torr
    & Ghanem, "DeformRS: Certifying Input Deformations with Randomized
    Smoothing", AAAI 2022 (DeformRS-VF, the vector-field smoothed classifier and
    its L2 certificate).

    Guarantee of :meth:`certify` at ``flow = ψ`` (default 0): with probability
    ≥ 1 − α over the samples, ``G_x(ψ + e) = c`` for every flow ``e``
    ``(2, H, W)`` with ``‖e‖₂ < R``. At ``ψ = 0``: every image
    ``flow_warp(x, e)`` with ``‖e‖₂ < R`` is classified ``c`` **by the
    defender who smooths around the clean x in flow space**, i.e. who is given
    ``(x, e)`` and evaluates ``G_x(e)``.

    Convention:
        Flows in pixels, channel 0 horizontal (along W), channel 1 vertical
        (along H), output pixel ``p`` samples ``p + flow(p)``
        (:func:`~spatialadv.ops.flow_warp`); σ and radii are L2 over all
        ``2·H·W`` flow components, in pixels. The warped image is not clipped
        (bilinear interpolation of a [0, 1] image stays in [0, 1]).
        What the certificate does **not** cover: the flow-smoothed classifier
        applied to a received image ``z = flow_warp(x, e)`` is
        ``G_z(0) = argmax P(f(flow_warp(flow_warp(x, e), φ)))``, and
        ``flow_warp(flow_warp(x, e), φ) ≠ flow_warp(x, e + φ)`` (warps do not
        compose additively: the second warp samples the first at displaced
        points, and bilinear resampling twice blurs), so ``G_z(0)`` may
        differ from the certified ``G_x(e)``; no bound on that difference is
        claimed here. Nor does it cover images that are not a warp of ``x``
        (pixel noise, clipping), nor flows with ``‖e‖₂ ≥ R`` however small
        their ‖·‖∞ (``‖e‖₂ ≤ √(2HW)·‖e‖_∞``, so the L∞ radius it implies is
        ``R / √(2HW)``).

    Args:
        model: base classifier ``f``, ``(B, C, H, W)`` → logits ``(B, K)``; its mode is not changed.
        sigma: flow noise σ > 0, pixels.
        num_classes: K.
        batch_size: as :class:`SmoothedClassifier`.
        forward_batch: as :class:`SmoothedClassifier`.

    Raises:
        TypeError, ValueError: as :class:`SmoothedClassifier`; at sampling time also a ``flow`` that is not
            a float tensor ``(B, 2, H, W)`` of ``x``'s dtype with finite values.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> g = FlowSmoothedClassifier(net, sigma=0.5, num_classes=3)
        >>> g.certify(torch.rand(2, 1, 4, 4), n0=8, n=20).radius.shape
        torch.Size([2])
    """

    def _flow(self, x: Tensor, flow: Tensor | None) -> Tensor:
        b, _, h, w = x.shape
        if flow is None:
            return torch.zeros(b, 2, h, w, dtype=x.dtype, device=x.device)
        if not isinstance(flow, Tensor) or not flow.is_floating_point():
            raise TypeError(f"flow must be a float tensor (B, 2, H, W) in pixels, got {type(flow).__name__}")
        if tuple(flow.shape) != (b, 2, h, w):
            raise ValueError(f"flow must have shape (B, 2, H, W) = {(b, 2, h, w)} (pixels), got {tuple(flow.shape)}")
        if flow.dtype != x.dtype:
            raise TypeError(f"flow has dtype {flow.dtype} but x has {x.dtype}; convert one of them")
        if not bool(torch.isfinite(flow).all()):
            raise ValueError("flow must be finite (pixels), got NaN or inf")
        return flow.detach().to(x.device)

    def counts(self, x: Tensor, num: int, *, flow: Tensor | None = None, seed: int = 0, index: Tensor | None = None,
               stream: tuple[int, ...] = (0,)) -> Tensor:
        """Counts of each class among ``f(flow_warp(x_i, ψ_i + φ_j))``, ``j = 1..num``: ``(B, num_classes)`` int64.

        Args:
            x: ``(B, C, H, W)`` in [0, 1].
            num: samples per image, int ≥ 1.
            flow: ``(B, 2, H, W)`` centre flows ψ in pixels (default zero).
            seed: int ≥ 0.
            index: per-example identities (default positions).
            stream: extra ints appended to each generator key.

        Raises:
            TypeError, ValueError: bad images, flows, ``num``, ``seed`` or ``index``.
        """
        check_int(num, "num", minimum=1)
        check_int(seed, "seed", minimum=0)
        x = check_images(x)
        psi = self._flow(x, flow)
        x, rows = self._prepare(x, index)
        gens = [example_generator(seed, [*row, *stream]) for row in rows]
        c, h, w = x.shape[1:]
        sigma = self.sigma

        def make(k: int, noise: Tensor) -> Tensor:
            return flow_warp(x[k : k + 1].expand(noise.shape[0], c, h, w), psi[k] + sigma * noise)

        return self._counts_many(x, num, gens, noise_shape=(2, h, w), make=make)

    def predict(self, x: Tensor, n: int, alpha: float = 0.001, *, flow: Tensor | None = None, seed: int = 0,
                index: Tensor | None = None) -> Tensor:
        """PREDICT (Cohen et al. 2019, Algorithm 1) of ``G_x(ψ)``: ``(B,)`` int64, −1 where abstained.

        Args:
            x: ``(B, C, H, W)`` in [0, 1].
            n: samples, int ≥ 1.
            alpha: in (0, 1).
            flow: ``(B, 2, H, W)`` ψ in pixels (default zero).
            seed: as :meth:`counts` (stream ``(2,)``).
            index: as :meth:`counts`.

        Raises:
            TypeError, ValueError: bad arguments.
        """
        alpha = _check_alpha(alpha)
        return _predict_from_counts(self.counts(x, n, flow=flow, seed=seed, index=index, stream=(2,)), alpha)

    def certify(self, x: Tensor, *, flow: Tensor | None = None, n0: int = 100, n: int = 10_000, alpha: float = 0.001,
                seed: int = 0, index: Tensor | None = None, stream: tuple[int, ...] = ()) -> SmoothingCertificate:
        """CERTIFY (Cohen et al. 2019, Algorithm 1) of ``G_x`` at ``ψ``: radius in flow space (L2, pixels).

        With probability ≥ 1 − α: ``G_x(ψ + e) = prediction`` for every ``‖e‖₂ < radius`` (see the class
        docstring for what this covers and what it does not).

        Args:
            x: ``(B, C, H, W)`` in [0, 1].
            flow: ``(B, 2, H, W)`` ψ in pixels (default zero: certify around the clean image).
            n0: selection samples, int ≥ 1.
            n: estimation samples, int ≥ 1.
            alpha: in (0, 1).
            seed: int ≥ 0.
            index: per-example identities (default positions).
            stream: extra ints in the generator keys (selection ``(*stream, 0)``, estimation ``(*stream, 1)``).

        Returns:
            :class:`SmoothingCertificate` with ``radius`` in flow-space L2 pixels.

        Raises:
            TypeError, ValueError: bad images, flows, ``n0``, ``n``, ``alpha``, ``seed`` or ``index``.
        """
        check_int(n0, "n0", minimum=1)
        check_int(n, "n", minimum=1)
        alpha = _check_alpha(alpha)
        sel = self.counts(x, n0, flow=flow, seed=seed, index=index, stream=(*stream, 0))
        est = self.counts(x, n, flow=flow, seed=seed, index=index, stream=(*stream, 1))
        return _certify_from_counts(sel, est, n, alpha, self.sigma)


# ------------------------------------------------------------------------------------------------ training
class SmoothingAugmentation:
    """Draws from the smoothing distribution for training: a random rotation and translation, then Gaussian noise.

    ``x_aug = T_{θ, tx, ty}(x) + σ ε`` with ``θ ~ U[−rotation, rotation]`` degrees, ``tx, ty ~ U[−translation,
    translation]`` pixels (independent per image), ``ε ~ N(0, I)``; ``T`` is
    :func:`~spatialadv.ops.affine_warp` of :func:`~spatialadv.ops.rotation_translation_theta` (bilinear, zero padding),
    the warp the certificates are stated for. With ``flow_sigma`` > 0 the image is first warped by a Gaussian flow,
    ``flow_warp(x, φ)`` with ``φ ~ N(0, flow_sigma² I)`` ``(2, H, W)`` pixels: the distribution of
    :class:`FlowSmoothedClassifier` (DeformRS, Alfarra et al. AAAI 2022, train their base models on it). Training the base classifier on this distribution is what makes the
    smoothed classifier accurate (Gaussian data augmentation: Cohen et al. 2019, §4; transformation augmentation:
    TSS, Li et al. ACM CCS 2021, §6).

    Called as an adversary of :class:`~spatialadv.training.TrainingParts` ``(model, x, y) -> x_aug``: the model is not
    used; the draws come from one generator seeded by ``seed`` and advance batch after batch (deterministic for a seed).

    Args:
        sigma: noise level σ ≥ 0. rotation: degrees ≥ 0. translation: pixels ≥ 0. seed: int ≥ 0.
        flow_sigma: Gaussian flow noise, pixels ≥ 0 (0: none, and no draw is made, so the other draws are
            those of a generator without it).
    """

    def __init__(self, *, sigma: float, rotation: float = 0.0, translation: float = 0.0, seed: int = 0,
                 flow_sigma: float = 0.0):
        for name, v in (("sigma", sigma), ("rotation", rotation), ("translation", translation),
                        ("flow_sigma", flow_sigma)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
        check_int(seed, "seed", minimum=0)
        self.sigma, self.rotation, self.translation = float(sigma), float(rotation), float(translation)
        self.flow_sigma = float(flow_sigma)
        self.gen = torch.Generator().manual_seed(int(seed) + 7919)

    @torch.no_grad()
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``x_aug`` ``(B, C, H, W)`` (not clipped) for images ``x`` ``(B, C, H, W)`` in [0, 1]."""
        b = x.shape[0]
        u = torch.rand(3, b, generator=self.gen, dtype=torch.float64) * 2 - 1
        out = x
        if self.rotation > 0 or self.translation > 0:
            theta = rotation_translation_theta(u[0] * self.rotation, u[1] * self.translation, u[2] * self.translation,
                                               dtype=x.dtype, device=x.device)
            out = affine_warp(x, theta, units="pixels")
        if self.flow_sigma > 0:
            b, _, h, w = x.shape
            phi = self.flow_sigma * torch.randn((b, 2, h, w), generator=self.gen, dtype=x.dtype).to(x.device)
            out = flow_warp(out, phi)
        if self.sigma > 0:
            out = out + self.sigma * torch.randn(x.shape, generator=self.gen, dtype=x.dtype).to(x.device)
        return out
