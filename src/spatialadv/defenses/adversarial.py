"""Adversarial training: "Adv-Train" with FGSM (Goodfellow et al. 2015; Tramèr et al. 2018),
the robust classifier of SdpAdv (seed 001, §4.1, ε = 0.3 on MNIST / Fashion-MNIST).

The training loop is :func:`spatialadv.models.train_model`; this module only
supplies the adversary for its hook and caches the result like every other
checkpoint (:func:`spatialadv.models.load_or_train`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_positive
from ..attacks.base import input_grad

__all__ = ["fgsm_adversary", "adversarially_trained"]


def fgsm_adversary(eps: float = 0.3) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """An adversary for :func:`~spatialadv.models.train_model`'s hook: one FGSM step.

    ``x_adv = clip_[0,1](x + eps · sign(∇_x CE(f(x), y)))`` computed on the
    model as it is (its mode is not changed; during training it is in train
    mode, as in Goodfellow et al. 2015). Gradients are taken w.r.t. the input
    only, so the model's parameters receive none.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0 (SdpAdv's Adv-Train: 0.3).
    """
    check_positive(eps, "eps")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        g, _ = input_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
        return (x + eps * g.sign()).clamp(0.0, 1.0)

    return adversary


def adversarially_trained(name: str, train, test=None, *, eps: float = 0.3, adv_weight: float = 0.5, config=None,
                          seed: int = 0, progress: bool = True, directory=None) -> tuple[nn.Module, dict]:
    """A registry model trained with FGSM adversarial training ("Adv-Train"), cached.

    Loss per batch: ``(1 − adv_weight) CE(f(x), y) + adv_weight CE(f(x_FGSM), y)``
    with ``x_FGSM`` from :func:`fgsm_adversary` (``eps``) on the current model
    (Goodfellow et al. 2015, Eq. 3, weight 0.5; Tramèr et al. 2018's
    "Adv. training" baseline). The checkpoint key includes the defense
    (``<name>-advtrain-fgsm...``), so it never collides with the plain model.

    Args:
        name: registry model name (e.g. ``"c4"``, ``"fc-200"``).
        train, test: :class:`~spatialadv.data.Dataset` splits (test only for the accuracy in ``info``).
        eps: FGSM budget in [0, 1] pixel units. adv_weight: weight of the adversarial loss in [0, 1].
        config: :class:`~spatialadv.models.TrainConfig` (default: the registry default).

    Returns:
        ``(model, info)`` as :func:`~spatialadv.models.load_or_train`; ``info["defense"]`` describes the training.
    """
    from ..models import TrainConfig, load_or_train

    check_positive(eps, "eps")
    check_positive(adv_weight, "adv_weight", allow_zero=True)
    if adv_weight > 1:
        raise ValueError(f"adv_weight must be in [0, 1], got {adv_weight}")
    defense = {"name": "advtrain-fgsm", "eps": float(eps), "adv_weight": float(adv_weight)}
    model, info = load_or_train(name, train, test, config=config or TrainConfig(), seed=seed, progress=progress,
                                directory=directory, adversary=fgsm_adversary(eps), defense=defense)
    return model, {**info, "defense": defense}
