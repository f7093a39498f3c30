"""Moved: :class:`~spatialadv.attacks.StAdvTauBinarySearch` lives in :mod:`spatialadv.attacks.stadv_search`.

Importing it from here still works, with a ``DeprecationWarning``.
"""

__all__: list[str] = []


def __getattr__(name: str):
    """``StAdvTauBinarySearch``: a deprecated alias of :class:`spatialadv.attacks.StAdvTauBinarySearch`."""
    if name == "StAdvTauBinarySearch":
        import warnings

        from ..attacks.stadv_search import StAdvTauBinarySearch

        warnings.warn("spatialadv.certify.stadv_search.StAdvTauBinarySearch moved: import it from spatialadv.attacks",
                      DeprecationWarning, stacklevel=2)
        return StAdvTauBinarySearch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
