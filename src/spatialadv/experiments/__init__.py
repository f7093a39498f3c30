"""The papers' experiments, run end to end by ``spatialadv reproduce NAME``.

One module per experiment; each declares a frozen ``Config`` (its defaults,
CLI options, stored with the run), a ``plan`` (the runs it needs, executed by
the shared runner), its reference numbers with citations, a ``report`` built
from the stored records and config, and ``EXPERIMENTS`` (its commands: a
dataset variant is another default Config). See
:mod:`spatialadv.experiments.framework`.

To add one: write a module here that defines ``EXPERIMENTS``; it is found by
name (modules whose name starts with ``_`` and ``framework`` are not experiments).
"""

from __future__ import annotations

import importlib
import pkgutil

from .framework import Experiment, rebuild, run_experiment

__all__ = ["Experiment", "experiments", "run_experiment", "rebuild"]

#: Modules listed first keep their commands first in ``--help``; any other module defining ``EXPERIMENTS`` follows.
_ORDER = ("stadv", "smooth", "sdpadv", "certify_bounds", "certify_stadv")


def _modules() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "framework"]
    return [f"{__name__}.{m}" for m in sorted(found, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))]


def experiments() -> dict[str, Experiment]:
    """All registered experiments by command name (imports their modules).

    Raises:
        RuntimeError: two modules register the same name.
    """
    found: dict[str, Experiment] = {}
    for mod in _modules():
        for e in getattr(importlib.import_module(mod), "EXPERIMENTS", ()):
            if e.name in found:
                raise RuntimeError(f"experiment {e.name!r} registered twice")
            found[e.name] = e
    return found
