"""Helpers shared by the reproduce reports: opening a folder's store and formatting numbers."""

from __future__ import annotations

import math
from pathlib import Path

from .store import ResultStore

__all__ = ["open_results", "fmt"]


def open_results(out: str | Path, experiment: str) -> ResultStore:
    """Open ``out/results.sqlite`` of a ``spatialadv reproduce EXPERIMENT`` folder.

    Raises:
        FileNotFoundError: the folder has no store (the message names the command that writes it).
    """
    path = Path(out) / "results.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}: run `spatialadv reproduce {experiment} --out {out}` first")
    return ResultStore(path)


def fmt(v, digits: int = 2, pct: bool = False) -> str:
    """``v`` with ``digits`` decimals (× 100 with ``pct``); "–" for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"
