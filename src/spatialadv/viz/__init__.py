"""Figures (matplotlib, Agg backend): targeted grids, attack comparisons, flow fields.

All functions take NumPy arrays of images ``(C, H, W)`` in [0, 1] and write a
PNG to ``path``; they return the path. Figure numbers refer to Xiao et al.,
*Spatially Transformed Adversarial Examples*, ICLR 2018 ("stAdv Fig."), and
Zhang, Avrithis, Furon & Amsaleg, *Smooth Adversarial Examples*, EURASIP
Journal on Information Security, 2020 ("smooth-adv Fig.").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._mpl import _plt, _save, _show
from .curves import Curve, Panel, curve_panels

__all__ = ["targeted_grid", "comparison_figure", "flow_quiver", "operating_characteristic_plot", "magnification_figure",
           "perturbation_panels", "scale_unit", "image_map_figure", "Curve", "Panel", "curve_panels"]


def targeted_grid(cells: dict[tuple[int, int], np.ndarray], num_classes: int, path: str | Path, *,
                  title: str = "", class_names: list[str] | None = None) -> Path:
    """K×K targeted grid as stAdv Fig. 2: row = true class, column = target class, originals on the diagonal.

    ``cells[(row, col)]`` is an image ``(C, H, W)``; missing cells are drawn
    grey with "n/a".
    """
    plt = _plt()
    k = num_classes
    names = class_names or [str(i) for i in range(k)]
    fig, axes = plt.subplots(k, k, figsize=(k * 0.9, k * 0.9 + 0.5))
    for r in range(k):
        for c in range(k):
            _show(axes[r, c], cells.get((r, c)))
            if r == 0:
                axes[r, c].set_title(names[c], fontsize=7)
            if c == 0:
                axes[r, c].set_ylabel(names[r], fontsize=7)
    fig.suptitle(title or "targeted adversarial examples (rows: true class, columns: target; diagonal: original)", fontsize=8)
    return _save(plt, fig, path)


def comparison_figure(columns: list[str], rows: list[list[np.ndarray | None]], path: str | Path, *,
                      row_labels: list[str] | None = None, title: str = "") -> Path:
    """Grid of images: one column per method, one row per example.

    For example original, FGSM, C&W and stAdv columns, as stAdv Fig. 4.
    """
    plt = _plt()
    nr, nc = len(rows), len(columns)
    fig, axes = plt.subplots(nr, nc, figsize=(nc * 1.3, nr * 1.3 + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            _show(axes[i, j], img)
            if i == 0:
                axes[i, j].set_title(columns[j], fontsize=8)
        if row_labels:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(plt, fig, path)


def flow_quiver(panels: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: str | Path, *, min_px: float = 0.05) -> Path:
    """Flow fields over the image as stAdv Fig. 5.

    Args:
        panels: ``(x, x_adv, flow, label)`` with images ``(C, H, W)`` and flow
            ``(2, H, W)`` in pixels (channel 0 Δu along W, channel 1 Δv along H).
        path: where to write the PNG (parent folders are created); returned as a :class:`~pathlib.Path`.
        min_px: arrows shorter than this many pixels are not drawn.

    Each row shows the original, the adversarial image, and the adversarial
    image with an arrow at every pixel from its position to the position it
    samples in the original (the flow's sign convention of ``flow_warp``).
    """
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.6 * len(panels)), squeeze=False)
    for i, (x, xa, flow, label) in enumerate(panels):
        _show(axes[i, 0], x)
        _show(axes[i, 1], xa)
        _show(axes[i, 2], xa)
        h, w = flow.shape[1:]
        vv, uu = np.mgrid[0:h, 0:w]
        mag = np.hypot(flow[0], flow[1])
        m = mag > min_px
        axes[i, 2].quiver(uu[m], vv[m], flow[0][m], flow[1][m], mag[m], cmap="autumn", angles="xy",
                          scale_units="xy", scale=1, width=0.006)
        axes[i, 0].set_title("original", fontsize=8)
        axes[i, 1].set_title(label, fontsize=8)
        axes[i, 2].set_title(f"flow (max {mag.max():.2f} px)", fontsize=8)
    return _save(plt, fig, path)


def scale_unit(a: np.ndarray) -> np.ndarray:
    """Map an array ``(C, H, W)`` to [0, 1], each channel independently.

    Min → 0, max → 1; a constant channel → 0.5, as the smooth-adv figures scale
    perturbations (smooth-adv Fig. 4 caption).
    """
    a = np.asarray(a, dtype=np.float64)
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), 0.5)


def operating_characteristic_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                                  title: str = "", d_max: float | None = None) -> Path:
    """Operating characteristics ``P(D)`` of several attacks (smooth-adv Fig. 2).

    Args:
        curves: label → ``(D, P)`` from :func:`spatialadv.eval.operating_characteristic`.
        path: where to write the PNG (parent folders are created); returned as a :class:`~pathlib.Path`.
        title: figure title (none if empty).
        d_max: right end of the distortion axis (default: the largest D).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    right = d_max if d_max is not None else max((float(d[-1]) for d, _ in curves.values() if len(d)), default=1.0)
    for label, (d, p) in curves.items():
        d = np.append(d, right)
        p = np.append(p, p[-1] if len(p) else 0.0)
        ax.step(d, p, where="post", label=label)
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("distortion D (L2, pixels in [0, 1])")
    ax.set_ylabel("P(D): fraction broken with distortion ≤ D")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def magnification_figure(original: np.ndarray, magnified_original: np.ndarray,
                         rows: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, *, title: str = "") -> Path:
    """Smooth-adv Fig. 1: the original and each attack's adversarial image, above their adversarial magnifications.

    The magnifications (:func:`spatialadv.ops.filters.magnify`) are shown
    scaled per image with :func:`scale_unit`.

    Args:
        original: the original image ``(C, H, W)`` in [0, 1].
        magnified_original: its magnification ``(C, H, W)``, any scale.
        rows: ``(label, x_adv, magnified x_adv)`` per attack; ``x_adv`` None → "n/a".
        path: where to write the PNG (parent folders are created); returned as a :class:`~pathlib.Path`.
        title: figure title (none if empty).
    """
    plt = _plt()
    cols = 1 + len(rows)
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols, 3.4), squeeze=False)
    items = [("original", original, magnified_original)] + rows
    for j, (label, img, mag) in enumerate(items):
        _show(axes[0, j], img)
        _show(axes[1, j], None if mag is None else scale_unit(mag))
        axes[0, j].set_title(label, fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("magnified", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def perturbation_panels(original: np.ndarray, rows: list[tuple[str, np.ndarray | None, float | None]],
                        path: str | Path, *, title: str = "") -> Path:
    """Smooth-adv Figs. 4-5: the original, then per attack the adversarial image and its perturbation.

    Top: the adversarial image; bottom: its perturbation ``x_adv − x`` scaled
    to [0, 1] per channel, labelled with ``D = ‖r‖₂``.

    Args:
        original: the original image ``(C, H, W)`` in [0, 1].
        rows: ``(label, x_adv or None, D or None)`` per attack.
        path: where to write the PNG (parent folders are created); returned as a :class:`~pathlib.Path`.
        title: figure title (none if empty).
    """
    plt = _plt()
    cols = 1 + len(rows)
    fig, axes = plt.subplots(2, cols, figsize=(1.5 * cols, 3.5), squeeze=False)
    _show(axes[0, 0], original)
    axes[0, 0].set_title("original", fontsize=8)
    axes[1, 0].axis("off")
    for j, (label, adv, dist) in enumerate(rows, start=1):
        _show(axes[0, j], adv)
        axes[0, j].set_title(label, fontsize=8)
        _show(axes[1, j], None if adv is None else scale_unit(np.asarray(adv) - np.asarray(original)))
        if dist is not None:
            axes[1, j].set_xlabel(f"D = {dist:.2f}", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def image_map_figure(images: list[np.ndarray], maps: list[np.ndarray | list[np.ndarray]], titles: list[str],
                     path: str | Path, *, map_titles: list[str] | None = None, overlay: bool = True,
                     suptitle: str = "") -> Path:
    """Images in the first row and one or more rows of maps under them (stAdv Figs. 8-9, the LAN thesis Figs. 2, 4, 5).

    Args:
        images: ``(C, H, W)`` images in [0, 1], one per column.
        maps: per column an ``(H, W)`` map in [0, 1], or a list of them (one per map row).
        titles: one title per column.
        map_titles: one label per map row (y-axis).
        path: the PNG to write.
        overlay: draw each map as a heat map over the grey image (``jet``, α = 0.5);
            otherwise the map alone in grey.
        suptitle: the figure's title.

    Returns:
        ``path``.
    """
    plt = _plt()
    cols = len(images)
    per_col = [m if isinstance(m, list) else [m] for m in maps]
    rows = 1 + max(len(m) for m in per_col)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 0.4, 1.55 * rows + 0.3), squeeze=False)
    for j, img in enumerate(images):
        _show(axes[0, j], img)
        axes[0, j].set_title(titles[j], fontsize=7)
        for i in range(1, rows):
            ax = axes[i, j]
            m = per_col[j][i - 1] if i - 1 < len(per_col[j]) else None
            if m is None:
                _show(ax, None)
                continue
            ax.set_xticks([])
            ax.set_yticks([])
            if overlay:
                base = np.asarray(img).mean(0)
                ax.imshow(base, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.imshow(np.asarray(m), cmap="jet", vmin=0, vmax=1, alpha=0.5, interpolation="bilinear")
            else:
                ax.imshow(np.asarray(m), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if map_titles and j == 0 and i - 1 < len(map_titles):
                ax.set_ylabel(map_titles[i - 1], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8)
    return _save(plt, fig, path)
