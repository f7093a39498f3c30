"""The attack registry: every attack class of spatialadv.attacks once, built by name; moved classes' old paths."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import spatialadv.attacks as attacks
from spatialadv.attacks import ATTACKS, NEEDS_OBJECTS, Attack, cli_attacks, make_attack


def _attack_classes() -> set[type]:
    """Every concrete Attack subclass defined in a module of the spatialadv.attacks package."""
    found = set()
    for info in pkgutil.iter_modules(attacks.__path__):
        mod = importlib.import_module(f"spatialadv.attacks.{info.name}")
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, Attack) and obj is not Attack and obj.__module__ == mod.__name__:
                found.add(obj)
    return found


def test_every_attack_class_is_registered_once():
    classes = _attack_classes()
    assert len(classes) >= 16  # the walk found the package's attacks
    assert set(ATTACKS.values()) == classes
    assert len(set(ATTACKS.values())) == len(ATTACKS)  # one name per class
    assert set(NEEDS_OBJECTS) <= set(ATTACKS)
    for name in ("sdpadv", "random-search", "sweep", "jsma", "stm", "spgd2", "scw", "smooth-flow-pgd", "lan-pgd",
                 "stadv-tau-search"):
        assert name in ATTACKS


def test_every_registered_class_is_exported_and_defines_its_threat():
    for name, cls in ATTACKS.items():
        assert getattr(attacks, cls.__name__) is cls and cls.__name__ in attacks.__all__
        assert "threat" in {k for c in cls.__mro__ if c is not Attack for k in vars(c)}, name
        assert not hasattr(cls, "unit") and "norm" not in vars(Attack)


def test_make_attack_builds_by_name_and_names_what_is_missing():
    assert cli_attacks() == sorted(set(ATTACKS) - set(NEEDS_OBJECTS))
    for name in cli_attacks():
        a = make_attack(name)
        assert isinstance(a, ATTACKS[name]) and a.threat.unit  # defaults are valid; the unit is the threat's
    assert make_attack("stadv", tau_search=[0.05, 0.005]).tau_search == (0.05, 0.005)
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        make_attack("nope")
    with pytest.raises(TypeError, match="'lan-pgd' needs detector="):
        make_attack("lan-pgd")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_it'"):
        make_attack("pgd", max_it=3)
    sweep = make_attack("sweep", attacks=[make_attack("fgsm", eps=0.1)])
    assert sweep.attacks == (ATTACKS["fgsm"](eps=0.1),)


def test_cli_attack_choices_come_from_the_registry():
    from spatialadv.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["attack"]
    assert next(a for a in sub._actions if a.dest == "attack").choices == cli_attacks()


@pytest.mark.parametrize("module,name", [
    ("spatialadv.certify", "SmoothFlowPGD"), ("spatialadv.certify.lower_bound", "SmoothFlowPGD"),
    ("spatialadv.certify", "StAdvTauBinarySearch"), ("spatialadv.certify.stadv_search", "StAdvTauBinarySearch"),
    ("spatialadv.defenses", "LANAdaptivePGD"), ("spatialadv.defenses.lan", "LANAdaptivePGD"),
])
def test_moved_attacks_keep_their_old_paths_with_a_warning(module, name):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=f"{name} moved: import it from spatialadv.attacks"):
        assert getattr(mod, name) is getattr(attacks, name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mod.Nope  # noqa: B018


def test_attacks_import_nothing_above_them():
    code = ("import sys, spatialadv.attacks; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('spatialadv.')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # attacks and the layers below them (tests/test_layers.py: LAYERS); nothing of eval, defenses, certify, training, ...
    below = {"attacks", "models", "threats", "ops", "data", "attention", "viz", "distributed", "references", "_validation",
             "_config", "_paths", "optim"}
    assert set(eval(out)) <= below
