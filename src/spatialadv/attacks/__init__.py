"""Attacks. Every attack is an immutable object called as
``attack(model, x, y, *, target=None) -> AttackResult``."""

from .base import Attack, AttackResult, margin
from .baselines import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2
from .stadv import StAdv

__all__ = ["Attack", "AttackResult", "margin", "StAdv", "FGSM", "IFGSM", "PGD", "MIM", "CarliniWagnerL2"]
