"""Attention maps of convolutional classifiers: CAM and Grad-CAM.

* CAM — Zhou, Khosla, Lapedriza, Oliva & Torralba, 2016, "Learning Deep
  Features for Discriminative Localization", CVPR 2016, Eq. 2:
  ``M_c(u, v) = Σ_k w_{c,k} A_k(u, v)`` for a network that ends in global
  average pooling and one linear layer ``w``.
* Grad-CAM — Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, 2017,
  "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
  Localization", ICCV 2017, Eqs. 1-2: ``α_k^c = mean_{u,v} ∂Z_c/∂A_k(u, v)``,
  ``L^c = ReLU(Σ_k α_k^c A_k)``; for a GAP + linear network it equals CAM
  up to the factor ``1/(H'W')`` and the ReLU (their Sec. 3.1). Computed with
  captum's ``LayerGradCam`` (Kokhlikyan et al., 2020, "Captum: A unified and
  generic model interpretability library for PyTorch").

Used for the stAdv attention analysis (Xiao et al., ICLR 2018, §4.5, Figs. 8-9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_images

__all__ = ["last_conv_layer", "grad_cam", "class_activation_map", "normalize_maps"]


def last_conv_layer(model: nn.Module) -> nn.Conv2d:
    """The last ``nn.Conv2d`` of ``model`` in ``model.modules()`` order.

    Raises:
        ValueError: the model has no ``nn.Conv2d``.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer; pass layer= explicitly")
    return convs[-1]


def normalize_maps(maps: Tensor) -> Tensor:
    """Scale each map ``(N, H, W)`` to [0, 1] by its own maximum (an all-zero map stays 0)."""
    peak = maps.flatten(1).amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak.view(-1, 1, 1)


def _classes(model: nn.Module, x: Tensor, target: Tensor | None) -> Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(1)
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    if target.shape[0] != x.shape[0]:
        raise ValueError(f"target must have shape ({x.shape[0]},), got {tuple(target.shape)}")
    return target


def grad_cam(model: nn.Module, x: Tensor, target: Tensor | None = None, *, layer: nn.Module | None = None,
             upsample: bool = True, normalize: bool = True, relu: bool = True) -> Tensor:
    """Grad-CAM maps (Selvaraju et al. 2017, Eqs. 1-2) of ``model`` on ``x``, via captum's ``LayerGradCam``.

    Args:
        model: classifier ``(N, C, H, W)`` in [0, 1] → logits ``(N, K)``; its
            train/eval mode is not changed and its parameters get no ``.grad``.
        x: images ``(N, C, H, W)`` in [0, 1].
        target: classes ``(N,)`` to explain; default the predicted class.
        layer: the convolutional layer whose activations ``A`` ``(N, K', H', W')``
            are weighted; default :func:`last_conv_layer` (the paper's choice).
        upsample: resize the maps bilinearly to ``(H, W)`` (``align_corners=False``).
        normalize: divide each map by its maximum (:func:`normalize_maps`), so maps are in [0, 1].
        relu: apply the ReLU of Eq. 2 (``False`` keeps the signed map).

    Returns:
        ``(N, H, W)`` (or ``(N, H', W')`` without ``upsample``), ``x``'s dtype.

    Raises:
        TypeError, ValueError: invalid ``x`` or ``target``; ``model`` without a conv layer.
    """
    from captum.attr import LayerGradCam  # lazy: captum is heavy and only Grad-CAM needs it

    check_images(x)
    layer = last_conv_layer(model) if layer is None else layer
    cls = _classes(model, x, target)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            maps = LayerGradCam(model, layer).attribute(x.detach(), target=cls, relu_attributions=relu)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    maps = maps.detach().sum(1)  # (N, H', W'); captum keeps a singleton channel axis
    if upsample:
        maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        if relu:
            maps = maps.clamp_min(0)
    return normalize_maps(maps) if normalize else maps


def class_activation_map(features: Tensor, weight: Tensor, target: Tensor, *, size: tuple[int, int] | None = None,
                         normalize: bool = True) -> Tensor:
    """CAM (Zhou et al. 2016, Eq. 2) from the last conv features of a GAP + linear network.

    Args:
        features: activations ``A`` ``(N, K', H', W')`` of the last conv layer.
        weight: the linear layer's weight ``(K, K')`` after global average pooling.
        target: classes ``(N,)`` to explain.
        size: resize to ``(H, W)`` bilinearly (``align_corners=False``); default none.
        normalize: ReLU then divide each map by its maximum (maps in [0, 1]);
            ``False`` returns the raw signed map.

    Returns:
        ``(N, H', W')`` or ``(N, *size)``.

    Raises:
        ValueError: shapes do not match.
    """
    if features.dim() != 4 or weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"features (N, K', H', W') and weight (K, K') must match, got {tuple(features.shape)} "
                         f"and {tuple(weight.shape)}")
    w = weight[target.long()]  # (N, K')
    maps = torch.einsum("nk,nkhw->nhw", w, features)
    if size is not None:
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(maps.clamp_min(0)) if normalize else maps
