"""Adversarial training: the FGSM adversary of "Adv-Train" and the PGD adversary of Madry et al.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015 (Eq. 3); the "Adv. training" baseline of Tramèr et al.
and the robust classifier of the SdpAdv experiments (ε = 0.3 on MNIST /
Fashion-MNIST).

An adversarially trained model is an ordinary cached model whose spec names
the objective ``fgsm-at`` (:mod:`spatialadv.models.training`)::

    spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(), Objective("fgsm-at", eps=0.3, adv_weight=0.5))
    model, info = load_or_train(spec)

PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards
Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018) is the
objective ``pgd-at`` with :func:`pgd_adversary`.

This module supplies only the adversaries those objectives plug into
:func:`spatialadv.models.train_model`; there is no second cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int, check_positive
from ..attacks.base import input_grad

__all__ = ["fgsm_adversary", "pgd_adversary"]


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


def pgd_adversary(eps: float = 0.3, steps: int = 40, step_size: float = 0.01) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The adversary of the ``pgd-at`` objective: L∞ PGD from a uniform random start (Madry et al. 2018, §2-3).

    ``x₀ = clip_[0,1](x + U(−eps, eps))`` (torch's global RNG, seeded by the
    training run), then ``steps`` times ``x ← Π(x + step_size · sign(∇_x CE(f(x), y)))``
    with Π the projection onto the L∞ ball of radius ``eps`` around ``x`` and
    onto [0, 1]. The model's mode is not changed; gradients are taken w.r.t.
    the input only.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0 (Madry et al. on MNIST: 0.3).
        steps: gradient steps, int ≥ 1 (MNIST: 40).
        step_size: step in pixel units, > 0 (MNIST: 0.01).

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)`` in [0, 1].

    Raises:
        ValueError: ``eps`` or ``step_size`` ≤ 0, ``steps`` < 1.
    """
    check_positive(eps, "eps")
    check_int(steps, "steps", minimum=1)
    check_positive(step_size, "step_size")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
        for _ in range(steps):
            g, _ = input_grad(model, xa, lambda z: F.cross_entropy(z, y, reduction="none"))
            xa = torch.minimum(torch.maximum(xa + step_size * g.sign(), x - eps), x + eps).clamp(0.0, 1.0)
        return xa.detach()

    return adversary
