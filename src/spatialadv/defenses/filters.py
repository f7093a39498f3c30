"""Input-filter defenses: ``filter ∘ model`` as one :class:`~torch.nn.Module` every attack accepts.

* :class:`MeanFilter` — the 3 × 3 mean (box) filter of Xiao et al.,
  *Spatially Transformed Adversarial Examples*, ICLR 2018, §4.4 and Table 5;
* :class:`BilateralFilter` — the bilateral filter of Zhang, Lorenzo & Le Merrer
  (Zhang et al.), *Smooth Adversarial Examples*, EURASIP J. on Information Security
  2020, §5.4 and Table 3 (domain σ 0.5 px, range σ 0.2);
* :class:`MedianFilter` — the median filter of feature squeezing (Xu, Evans &
  Qi, *Feature Squeezing: Detecting Adversarial Examples in Deep Neural
  Networks*, NDSS 2018);
* :class:`Defended` — ``model(preprocess(x))``, optionally with BPDA gradients
  (Athalye, Carlini & Wagner, *Obfuscated Gradients Give a False Sense of
  Security*, ICML 2018, §4.1): the backward pass treats the preprocessing as
  the identity.

Why our own ops: the filters must pass gradients to the attacks that run with
the filter inside the model (the adaptive attack of stAdv §4.4), which SciPy's
and scikit-image's filters do not; the tests check that our filters equal
``scipy.ndimage.uniform_filter`` / ``median_filter`` (``mode="nearest"``) and
scikit-image's ``denoise_bilateral`` on the same images.

Convention:
    Borders are replicated (the outside pixel takes the value of the nearest
    inside pixel; SciPy's ``mode="nearest"``) for the mean and median filters;
    the bilateral filter leaves outside pixels out of both of its sums
    (:func:`spatialadv.ops.filters.joint_bilateral`). Images are ``(N, C, H,
    W)`` in [0, 1]; channels are filtered independently by the mean and median
    filters, and with one range weight per pixel pair (Euclidean over
    channels) by the bilateral filter.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_int, check_positive
from ..ops.filters import joint_bilateral

__all__ = ["MeanFilter", "MedianFilter", "BilateralFilter", "Defended", "mean_filter", "median_filter"]


def _check_images(x: object) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor (N, C, H, W), got {tuple(x.shape)} {x.dtype}")


def _check_size(size: Any) -> int:
    check_int(size, "size", minimum=1)
    if size % 2 == 0:
        raise ValueError(f"size must be odd (a centred window), got {size}")
    return int(size)


def _windows(x: Tensor, size: int) -> Tensor:
    """``(N, C, size², H·W)``: every pixel's ``size × size`` neighbourhood, borders replicated."""
    n, c, h, w = x.shape
    r = size // 2
    padded = F.pad(x, (r, r, r, r), mode="replicate") if r else x
    return F.unfold(padded.reshape(n * c, 1, h + 2 * r, w + 2 * r), size).reshape(n, c, size * size, h * w)


def mean_filter(x: Tensor, size: int = 3) -> Tensor:
    """Mean (box) filter over a ``size × size`` window, borders replicated.

    Args:
        x: images ``(N, C, H, W)``.
        size: window side in pixels, odd int ≥ 1 (stAdv Table 5: 3).

    Returns:
        ``(N, C, H, W)``, differentiable in ``x``.

    Raises:
        TypeError, ValueError: ``x`` not a float ``(N, C, H, W)`` tensor; ``size`` not odd or < 1.
    """
    _check_images(x)
    size = _check_size(size)
    return _windows(x, size).mean(2).reshape(x.shape)


def median_filter(x: Tensor, size: int = 3) -> Tensor:
    """Median filter over a ``size × size`` window, borders replicated.

    The window holds an odd number of pixels, so the median is one of them;
    the gradient flows to that pixel (ties: the one :func:`torch.median` picks).

    Args:
        x: images ``(N, C, H, W)``.
        size: window side in pixels, odd int ≥ 1 (feature squeezing on MNIST: 2 × 2 — an even window is not
            centred, so it is not offered; use 3).

    Returns:
        ``(N, C, H, W)``.

    Raises:
        TypeError, ValueError: as :func:`mean_filter`.
    """
    _check_images(x)
    size = _check_size(size)
    return _windows(x, size).median(2).values.reshape(x.shape)


class _WindowFilter(nn.Module):
    """A ``size × size`` window filter (odd ``size`` ≥ 1) applying ``_op(x, size)``."""

    _op = staticmethod(mean_filter)

    def __init__(self, size: int = 3) -> None:
        super().__init__()
        self.size = _check_size(size)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        return self._op(x, self.size)

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return f"size={self.size}"


class MeanFilter(_WindowFilter):
    """:func:`mean_filter` as a module (stAdv Table 5: ``MeanFilter(3)``).

    Args:
        size: window side in pixels, odd int ≥ 1.

    Raises:
        ValueError: ``size`` not odd or < 1.
    """

    _op = staticmethod(mean_filter)


class MedianFilter(_WindowFilter):
    """:func:`median_filter` as a module.

    Args:
        size: window side in pixels, odd int ≥ 1.

    Raises:
        ValueError: ``size`` not odd or < 1.
    """

    _op = staticmethod(median_filter)


class BilateralFilter(nn.Module):
    """Bilateral filter (Tomasi & Manduchi, *Bilateral Filtering for Gray and Color Images*, ICCV 1998) as a module.

    ``out(p) = Σ_q k_d(‖p − q‖) k_r(‖x(p) − x(q)‖) x(q) / Σ_q k_d k_r`` with
    Gaussian kernels over the pixels within ``ceil(3 σ_d)`` of ``p``
    (:func:`spatialadv.ops.filters.joint_bilateral` with the image as its own guide);
    differentiable in ``x`` (through the weights too).

    Args:
        sigma_domain: domain-kernel standard deviation in pixels, > 0 (smooth-adv Table 3: 0.5, a 5 × 5 window).
        sigma_range: range-kernel standard deviation in pixel-value units of [0, 1], > 0 (smooth-adv Table 3: 0.2).

    Raises:
        ValueError: a σ ≤ 0.
    """

    def __init__(self, sigma_domain: float = 0.5, sigma_range: float = 0.2) -> None:
        super().__init__()
        check_positive(sigma_domain, "sigma_domain")
        check_positive(sigma_range, "sigma_range")
        self.sigma_domain, self.sigma_range = float(sigma_domain), float(sigma_range)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        return joint_bilateral(x, sigma_spatial=self.sigma_domain, sigma_range=self.sigma_range)

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return f"sigma_domain={self.sigma_domain:g}, sigma_range={self.sigma_range:g}"


class Defended(nn.Module):
    """A model behind an input transformation: ``forward(x) = model(preprocess(x))``.

    An ordinary :class:`~torch.nn.Module` mapping images ``(N, C, H, W)`` in
    [0, 1] to logits ``(N, K)``, so every attack accepts it: attacking a
    ``Defended`` model *is* the adaptive attack with the filter inside the
    network (Xiao et al. 2018, §4.4). ``train()`` / ``eval()`` reach both parts.

    Args:
        preprocess: ``(N, C, H, W) -> (N, C, H, W)`` module (a filter, a projection, …).
        model: the classifier, images → logits.
        bpda: if True, the backward pass treats ``preprocess`` as the identity
            (Backward Pass Differentiable Approximation, Athalye, Carlini &
            Wagner, ICML 2018, §4.1): ``∇_x ≈ ∇_{x'} model(x')`` at
            ``x' = preprocess(x)``. The forward pass is unchanged. Use it for
            preprocessing without a useful gradient (a projection, quantisation).

    Raises:
        TypeError: ``preprocess`` or ``model`` is not an ``nn.Module``; ``bpda`` is not a bool.
    """

    def __init__(self, preprocess: nn.Module, model: nn.Module, *, bpda: bool = False) -> None:
        super().__init__()
        for name, m in (("preprocess", preprocess), ("model", model)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
        check_bool(bpda, "bpda")
        self.preprocess, self.model, self.bpda = preprocess, model, bpda

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` images → ``(N, K)`` logits of ``model(preprocess(x))``."""
        if self.bpda:
            with torch.no_grad():
                xp = self.preprocess(x)
            xp = x + (xp - x).detach()  # value preprocess(x), gradient of the identity
        else:
            xp = self.preprocess(x)
        return self.model(xp)

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return f"bpda={self.bpda}"
