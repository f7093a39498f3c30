"""The papers' experiments, run end to end by ``spatialadv reproduce NAME``.

Each experiment module defines ``EXPERIMENTS``, a list of :class:`Experiment`.
An experiment writes one output folder (``results.sqlite``, ``report.md``,
``report.json``, figures); the store's ``config`` meta names the experiment,
so ``spatialadv report OUT`` rebuilds the right report from the store alone.

To add one: write a module here and append its import path to ``_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Experiment", "experiments"]


@dataclass(frozen=True)
class Experiment:
    """One ``spatialadv reproduce NAME`` command.

    Attributes:
        name: the command name, e.g. ``"stadv-mnist"``.
        help: one line for ``--help``.
        add_arguments: adds the experiment's options to its sub-parser
            (``--out`` is added by the CLI, default ``runs/NAME``).
        run: runs the experiment from parsed arguments and returns the report
            dict; it must hold ``"figures"`` (a list of file names).
        rebuild: rebuilds the report of an output folder from its store.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]
    rebuild: Callable[[Path], dict]


_MODULES = (
    "spatialadv.experiments.stadv_mnist",
    "spatialadv.experiments.smooth",
    "spatialadv.experiments.sdpadv",
    "spatialadv.experiments.certify",
)


def experiments() -> dict[str, Experiment]:
    """All registered experiments by name (imports their modules)."""
    found: dict[str, Experiment] = {}
    for mod in _MODULES:
        for e in importlib.import_module(mod).EXPERIMENTS:
            if e.name in found:
                raise RuntimeError(f"experiment {e.name!r} registered twice")
            found[e.name] = e
    return found
