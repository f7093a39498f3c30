"""Attacks: immutable objects with one call signature, and their registry.

Every attack is called as
``attack(model, x, y, *, target=None, index=None) -> AttackResult``; its threat
model (projections, random starts, size and its unit) is ``attack.threat``
(:mod:`spatialadv.threats`). :data:`ATTACKS` names every attack class of this
package, once; :func:`make_attack` builds one by name (the CLI's ``--attack``).
"""

from .adaptive import LANAdaptivePGD
from .base import Attack, AttackResult, margin
from .baselines import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2
from .generative import GeneratorNets, SdpAdv, advgan, sdadv
from .jsma import JSMA
from .random_search import RandomSearch
from .rotation import RotationTranslation, worst_transform
from .smooth import SmoothCarliniWagnerL2, SmoothPGDL2
from .smooth_flow import SmoothFlowPGD
from .stadv import StAdv
from .stadv_search import StAdvTauBinarySearch
from .sweep import MinDistortionSweep

__all__ = ["Attack", "AttackResult", "margin", "ATTACKS", "NEEDS_OBJECTS", "make_attack", "cli_attacks",
           "StAdv", "StAdvTauBinarySearch", "FGSM", "IFGSM", "PGD", "MIM", "CarliniWagnerL2", "SmoothPGDL2",
           "SmoothCarliniWagnerL2", "MinDistortionSweep", "RotationTranslation", "worst_transform", "SdpAdv",
           "GeneratorNets", "sdadv", "advgan", "RandomSearch", "JSMA", "SmoothFlowPGD", "LANAdaptivePGD"]

#: The registry: name → attack class, every :class:`Attack` subclass of this package once
#: (SdAdv and AdvGAN are settings of :class:`SdpAdv`: :func:`sdadv`, :func:`advgan`).
ATTACKS: dict[str, type[Attack]] = {
    "stadv": StAdv,
    "stadv-tau-search": StAdvTauBinarySearch,
    "fgsm": FGSM,
    "ifgsm": IFGSM,
    "pgd": PGD,
    "mim": MIM,
    "cw": CarliniWagnerL2,
    "spgd2": SmoothPGDL2,
    "scw": SmoothCarliniWagnerL2,
    "stm": RotationTranslation,
    "jsma": JSMA,
    "random-search": RandomSearch,
    "smooth-flow-pgd": SmoothFlowPGD,
    "sweep": MinDistortionSweep,
    "sdpadv": SdpAdv,
    "lan-pgd": LANAdaptivePGD,
}

#: Attacks that need Python objects besides JSON hyper-parameters (name → what), so the
#: command line cannot build them: build them in Python (``make_attack`` passes the objects on).
NEEDS_OBJECTS: dict[str, str] = {
    "sweep": "attacks=(...), a tuple of Attack objects",
    "sdpadv": "fitted generator networks (SdpAdv(...).fit(...) or SdpAdv.load(...))",
    "lan-pgd": "detector=, the detector's classifier module (e.g. a LANDetector)",
}


def cli_attacks() -> list[str]:
    """The registry names the command line can build from ``--param KEY=VALUE`` alone, sorted."""
    return sorted(n for n in ATTACKS if n not in NEEDS_OBJECTS)


def make_attack(name: str, **params) -> Attack:
    """Build an attack by registry name (see :data:`ATTACKS`) with keyword hyper-parameters.

    JSON lists become tuples (``tau_search=[0.05, 0.005]``).

    Raises:
        ValueError: unknown name; TypeError/ValueError: invalid hyper-parameters
            (an attack of :data:`NEEDS_OBJECTS` called without its objects included).
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    try:
        return ATTACKS[name](**params)
    except TypeError as e:
        if name in NEEDS_OBJECTS:
            raise TypeError(f"attack {name!r} needs {NEEDS_OBJECTS[name]}: {e}") from e
        raise
