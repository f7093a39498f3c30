"""Defenses: adversarial training (the ``fgsm-at`` and ``pgd-at`` objectives of :mod:`spatialadv.models`) and detectors (LAN)."""

from .adversarial import fgsm_adversary, pgd_adversary
from .lan import (
    LANAdaptivePGD,
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

__all__ = ["fgsm_adversary", "pgd_adversary", "MaskGenerator", "MaskClassifier", "corrupt", "lan_loss", "train_lan",
           "train_mask_classifier", "LANDetector", "LANConfig", "load_or_train_lan", "LANAdaptivePGD"]
