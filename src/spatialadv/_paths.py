"""Checks of the paths a user gives (``--out``, ``SPATIALADV_CACHE``, checkpoint files), made before any work.

A path under a regular file (``--out notes.txt/run``) or a file path that is a folder would otherwise fail
with ``NotADirectoryError`` / ``IsADirectoryError`` after training; these checks say so first, in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PathError", "check_folder", "check_file"]


class PathError(ValueError):
    """A folder or file path that cannot be used: a file in place of a folder, or a folder in place of a file."""


def check_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse a folder path that exists as something else or lies under a regular file (it may not exist yet).

    Args:
        path: the folder (created later by the caller).
        what: how the user gave it, for the message (``"--out runs/x"``, ``"SPATIALADV_CACHE=/c"``).

    Raises:
        PathError: ``path`` or one of its ancestors exists and is not a folder.
    """
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                where = "is a file, not a folder" if q == p else f"lies under {q}, a file, not a folder"
                raise PathError(f"{what}: {p} {where}")
            return


def check_file(path: str | os.PathLike, what: str) -> None:
    """Refuse a file path that is a folder or lies under a regular file (it may not exist yet).

    Raises:
        PathError: ``path`` is a folder, or one of its ancestors exists and is not a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise PathError(f"{what}: {p} is a folder, expected a file (move the folder away)")
    check_folder(p.parent, what)
