"""Defenses: adversarial training (the ``fgsm-at`` objective of :mod:`spatialadv.models`) and, later, input filters and detectors."""

from .adversarial import fgsm_adversary

__all__ = ["fgsm_adversary"]
