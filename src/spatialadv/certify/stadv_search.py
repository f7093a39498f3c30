"""Moved: :class:`~spatialadv.attacks.StAdvTauBinarySearch` lives in :mod:`spatialadv.attacks.stadv_search`.

Importing it from here still works, with a ``DeprecationWarning``.
"""

from .._deprecated import moved

__all__: list[str] = []

__getattr__ = moved(__name__, {"StAdvTauBinarySearch": "spatialadv.attacks"})
