"""Defenses: adversarial training (the ``fgsm-at`` and ``pgd-at`` objectives of :mod:`spatialadv.models`) and, later, input filters and detectors."""

from .adversarial import fgsm_adversary, pgd_adversary

__all__ = ["fgsm_adversary", "pgd_adversary"]
