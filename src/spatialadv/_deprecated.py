"""Deprecated import paths: a module-level ``__getattr__`` for names that moved to another module."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

__all__ = ["moved"]


def moved(module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``names`` (name → the module that now holds it) with a ``DeprecationWarning``.

    Args:
        module: the old module's ``__name__`` (named in the warning and in the ``AttributeError`` of other names).
        names: each moved name and the module to import it from now, e.g. ``{"SmoothFlowPGD": "spatialadv.attacks"}``.

    Returns:
        The function to assign to the old module's ``__getattr__``.
    """
    def __getattr__(name: str):
        if name in names:
            warnings.warn(f"{module}.{name} moved: import it from {names[name]}", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
