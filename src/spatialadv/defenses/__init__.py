"""Defenses: input filters, the adversaries of adversarial training (any attack can be one), and detectors.

Input filters and ``filter ∘ model``: :mod:`.filters`; the adversaries of the ``fgsm-at``, ``ens-at``, ``ll-at`` and
``pgd-at`` objectives (registered in :mod:`spatialadv.training`) and :func:`attack_adversary`: :mod:`.adversarial`; Defense-GAN (generator, projection): :mod:`.defense_gan`;
latent attention detection (LAN): :mod:`.lan`.
"""

from .._deprecated import moved
from .adversarial import (
    attack_adversary,
    bf16_is_native,
    ensemble_adversary,
    fgsm_adversary,
    ll_adversary,
    pgd_adversary,
)
from .defense_gan import DefenseGANProjection, GANConfig, load_or_train_generator
from .filters import BilateralFilter, Defended, MeanFilter, MedianFilter, mean_filter, median_filter
from .lan import (
    LANConfig,
    LANDetector,
    MaskClassifier,
    MaskGenerator,
    corrupt,
    lan_loss,
    load_or_train_lan,
    train_lan,
    train_mask_classifier,
)

__all__ = ["fgsm_adversary", "pgd_adversary", "bf16_is_native", "ll_adversary", "ensemble_adversary", "attack_adversary",
           "DefenseGANProjection", "GANConfig", "load_or_train_generator",
           "MeanFilter", "MedianFilter", "BilateralFilter", "Defended", "mean_filter", "median_filter",
           "MaskGenerator", "MaskClassifier", "corrupt", "lan_loss", "train_lan",
           "train_mask_classifier", "LANDetector", "LANConfig", "load_or_train_lan"]

#: names moved to :mod:`spatialadv.attacks` (attacks sit below this layer): deprecated aliases
__getattr__ = moved(__name__, {"LANAdaptivePGD": "spatialadv.attacks"})
