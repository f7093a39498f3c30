"""Adversarial training: the FGSM adversary of "Adv-Train".

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015 (Eq. 3); the "Adv. training" baseline of Tramèr et al.
and the robust classifier of the SdpAdv experiments (ε = 0.3 on MNIST /
Fashion-MNIST).

An adversarially trained model is an ordinary cached model whose spec names
the objective ``fgsm-at`` (:mod:`spatialadv.models.training`)::

    spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(), Objective("fgsm-at", eps=0.3, adv_weight=0.5))
    model, info = load_or_train(spec)

This module supplies only the adversary that objective plugs into
:func:`spatialadv.models.train_model`; there is no second cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive
from ..attacks.base import input_grad

__all__ = ["fgsm_adversary"]


def fgsm_adversary(eps: float = 0.3) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The adversary of the ``fgsm-at`` objective: one L∞ FGSM step.

    ``x_adv = clip_[0,1](x + eps · sign(∇_x CE(f(x), y)))`` computed on the
    model as it is (its mode is not changed; during training it is in train
    mode, as in Goodfellow et al. 2015). Gradients are taken w.r.t. the input
    only, so the model's parameters receive none.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0 (SdpAdv's Adv-Train: 0.3).

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)`` in [0, 1].

    Raises:
        ValueError: ``eps`` ≤ 0.
    """
    check_positive(eps, "eps")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        g, _ = input_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
        return (x + eps * g.sign()).clamp(0.0, 1.0)

    return adversary
