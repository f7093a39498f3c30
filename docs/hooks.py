"""MkDocs hooks: a quiet, reproducible environment for the tutorials executed at build time."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_startup(command, dirty, **kwargs):
    """Put src/ and docs/ on sys.path; a temporary checkpoint cache, the Agg backend, no progress bars."""
    # The executed blocks import this checkout's spatialadv and docs/_docs_helpers.py.
    for p in (ROOT / "src", ROOT / "docs"):
        if str(p) not in sys.path:
            sys.path.insert(0, str(p))
    os.environ.setdefault("MPLBACKEND", "Agg")
    # Tutorials never read or fill the user's checkpoint cache.
    os.environ.setdefault("SPATIALADV_CACHE", tempfile.mkdtemp(prefix="spatialadv-docs-cache-"))
    os.environ.setdefault("TQDM_DISABLE", "1")
