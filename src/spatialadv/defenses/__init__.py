"""Defenses: adversarial training (and, later, input filters and detectors)."""

from .adversarial import adversarially_trained, fgsm_adversary

__all__ = ["adversarially_trained", "fgsm_adversary"]
