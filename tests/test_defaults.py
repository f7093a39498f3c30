"""Every function / class pair that shares hyper-parameters agrees on their defaults."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from spatialadv.attacks import SmoothCarliniWagnerL2, SmoothPGDL2
from spatialadv.ops.smoothing import GuidedSmoothing, graph_weights, laplacian_matvec, smooth


def _defaults(obj) -> dict:
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
        return out
    fn = obj.__init__ if inspect.isclass(obj) else obj
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


PAIRS = [
    (smooth, GuidedSmoothing),
    (smooth, SmoothPGDL2),
    (smooth, SmoothCarliniWagnerL2),
    (smooth, graph_weights),
    (smooth, laplacian_matvec),
]


@pytest.mark.parametrize("a, b", PAIRS, ids=[f"{a.__name__}-{b.__name__}" for a, b in PAIRS])
def test_shared_defaults_agree(a, b):
    da, db = _defaults(a), _defaults(b)
    shared = sorted(set(da) & set(db))
    assert shared, f"{a.__name__} and {b.__name__} share no defaulted parameter"
    for k in shared:
        assert da[k] == db[k], f"default of {k!r}: {a.__name__} has {da[k]!r}, {b.__name__} has {db[k]!r}"

