"""The papers' experiments, run end to end by ``spatialadv reproduce NAME``.

One module per experiment; each declares a frozen ``Config`` (its defaults,
CLI options, stored with the run), a ``plan`` (the runs it needs, executed by
the shared runner), its reference numbers with citations, a ``report`` built
from the stored records and config, and ``EXPERIMENTS`` (its commands: a
dataset variant is another default Config). See
:mod:`spatialadv.experiments.framework`.

To add one: write a module here and append its import path to ``_MODULES``.
"""

from __future__ import annotations

import importlib

from .framework import Experiment, rebuild, run_experiment

__all__ = ["Experiment", "experiments", "run_experiment", "rebuild"]

_MODULES = (
    "spatialadv.experiments.stadv",
    "spatialadv.experiments.smooth",
    "spatialadv.experiments.sdpadv",
    "spatialadv.experiments.certify_bounds",
    "spatialadv.experiments.certify_stadv",
)


def experiments() -> dict[str, Experiment]:
    """All registered experiments by command name (imports their modules).

    Raises:
        RuntimeError: two modules register the same name.
    """
    found: dict[str, Experiment] = {}
    for mod in _MODULES:
        for e in importlib.import_module(mod).EXPERIMENTS:
            if e.name in found:
                raise RuntimeError(f"experiment {e.name!r} registered twice")
            found[e.name] = e
    return found
