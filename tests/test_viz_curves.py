"""viz.curve_panels: the line plots of the certificate reports, intervals as error bars."""

from __future__ import annotations

import math

import pytest

from spatialadv.viz import Curve, Panel, curve_panels


def test_curve_panels_writes_a_grid_with_intervals(tmp_path):
    nan = math.nan
    panels = [Panel("rates", "ε", "fraction", [Curve([0, 1, 2], [0.1, 0.5, 0.9], "ours", "o-", [0.0, 0.4, nan],
                                                     [0.2, 0.6, nan])], ylim=(0, 1)),
              Panel("bounds", "ε", "bound", [Curve([1, 2], [1.0, 10.0], "Alg. 1", "x--")], logy=True),
              Panel("empty", "x", "y")]
    path = curve_panels(panels, tmp_path / "sub" / "fig.png", columns=2)
    assert path == tmp_path / "sub" / "fig.png" and path.stat().st_size > 1000
    with pytest.raises(ValueError, match="at least one panel"):
        curve_panels([], tmp_path / "none.png")
