"""Attacks: immutable objects with one call signature.

Every attack is called as
``attack(model, x, y, *, target=None, index=None) -> AttackResult``; its threat
model (projections, random starts, size) is ``attack.threat``
(:mod:`spatialadv.threats`).
"""

from .base import Attack, AttackResult, margin
from .baselines import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2
from .smooth import SmoothCarliniWagnerL2, SmoothPGDL2
from .stadv import StAdv
from .sweep import MinDistortionSweep

__all__ = ["Attack", "AttackResult", "margin", "StAdv", "FGSM", "IFGSM", "PGD", "MIM", "CarliniWagnerL2"]

#: CLI names of the attacks.
ATTACKS = {"stadv": StAdv, "fgsm": FGSM, "ifgsm": IFGSM, "pgd": PGD, "mim": MIM, "cw": CarliniWagnerL2}
ATTACKS["spgd2"] = SmoothPGDL2
ATTACKS["scw"] = SmoothCarliniWagnerL2


def make_attack(name: str, **params) -> Attack:
    """Build an attack by CLI name (see :data:`ATTACKS`) with keyword hyper-parameters.

    Raises:
        ValueError: unknown name; TypeError/ValueError: invalid hyper-parameters.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return ATTACKS[name](**params)


__all__ += ["ATTACKS", "make_attack"]
__all__ += ["SmoothPGDL2", "SmoothCarliniWagnerL2", "MinDistortionSweep"]

from .rotation import RotationTranslation, worst_transform  # noqa: E402

__all__ += ["RotationTranslation", "worst_transform"]
ATTACKS["stm"] = RotationTranslation

from .generative import GeneratorNets, SdpAdv, advgan, sdadv  # noqa: E402

__all__ += ["SdpAdv", "GeneratorNets", "sdadv", "advgan"]

from .random_search import RandomSearch  # noqa: E402

__all__ += ["RandomSearch"]

from .jsma import JSMA  # noqa: E402

__all__ += ["JSMA"]
ATTACKS["jsma"] = JSMA
