"""Line plots of measured curves, with their 95 % intervals where they have one.

The certificate reports draw with this: the provable-defenses paper's Figs. 2, 5 and 6 (*Provable Defenses against
Spatially Transformed Adversarial Inputs*, ICLR 2019 submission) and the smoothing certificates' accuracy curves
(certified and empirical accuracy against rotation, translation and flow budgets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._mpl import _plt, _save

__all__ = ["Curve", "Panel", "curve_panels"]


@dataclass(frozen=True)
class Curve:
    """One line of a :class:`Panel`.

    Attributes:
        x, y: the points (NaN values are not drawn).
        label: the legend entry.
        style: a matplotlib format string, e.g. ``"o-"``.
        low, high: optional interval ends per point, drawn as error bars (NaN: none at that point).
    """

    x: Sequence[float]
    y: Sequence[float]
    label: str
    style: str = "o-"
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None


@dataclass(frozen=True)
class Panel:
    """One axes of :func:`curve_panels`.

    Attributes:
        title, xlabel, ylabel: texts. curves: the lines.
        ylim: the y range (None: automatic). logy: logarithmic y axis.
    """

    title: str
    xlabel: str
    ylabel: str
    curves: Sequence[Curve] = field(default_factory=tuple)
    ylim: tuple[float, float] | None = None
    logy: bool = False


def curve_panels(panels: Sequence[Panel], path: str | Path, *, columns: int | None = None,
                 size: tuple[float, float] = (4.0, 3.3), title: str = "") -> Path:
    """A grid of line plots, one per :class:`Panel`, the intervals as error bars.

    Args:
        panels: the axes, filled row by row.
        path: where to write the PNG (parent folders are created); returned as a :class:`~pathlib.Path`.
        columns: panels per row (default: all in one row).
        size: width and height of one panel (inches).
        title: figure title (none if empty).

    Raises:
        ValueError: no panel.
    """
    if not panels:
        raise ValueError("curve_panels needs at least one panel")
    plt = _plt()
    cols = columns or len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols][k % cols]
        if k >= len(panels):
            ax.axis("off")
            continue
        p = panels[k]
        for c in p.curves:
            x, y = np.asarray(c.x, dtype=float), np.asarray(c.y, dtype=float)
            (line,) = ax.plot(x, y, c.style, label=c.label)
            if c.low is not None and c.high is not None:
                lo, hi = np.asarray(c.low, dtype=float), np.asarray(c.high, dtype=float)
                ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(y)
                if ok.any():
                    ax.errorbar(x[ok], y[ok], yerr=[y[ok] - lo[ok], hi[ok] - y[ok]], fmt="none",
                                ecolor=line.get_color(), alpha=0.5, capsize=2)
        if p.logy:
            ax.set_yscale("log")
        if p.ylim is not None:
            ax.set_ylim(*p.ylim)
        ax.set_title(p.title, fontsize=9)
        ax.set_xlabel(p.xlabel)
        ax.set_ylabel(p.ylabel)
        ax.grid(alpha=0.3)
        if p.curves:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)
