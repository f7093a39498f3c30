"""Every docstring example in the package runs and gives the printed result (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import spatialadv

MODULES = sorted(m.name for m in pkgutil.walk_packages(spatialadv.__path__, "spatialadv."))


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name, one_thread):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                          verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} doctest examples failed in {name}"


def test_doctests_exist():
    attempted = 0
    for name in MODULES:
        finder = doctest.DocTestFinder()
        attempted += sum(len(t.examples) for t in finder.find(importlib.import_module(name)))
    assert attempted >= 10
