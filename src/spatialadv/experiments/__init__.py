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

from .framework import Experiment, experiments, rebuild, run_experiment

__all__ = ["Experiment", "experiments", "run_experiment", "rebuild"]
