"""Image panels with the classifier's prediction above each image.

As in Figs. 3-4 of *Perturbations Are Not Enough: Generating Adversarial
Examples with Spatial Distortions* (ICLR 2020 submission; "the SdpAdv paper").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._mpl import _plt, _save, _show

__all__ = ["prediction_panel"]


def prediction_panel(images: list[np.ndarray], titles: list[str], path: str | Path, *, columns: int = 10,
                     title: str = "", colors: list[str] | None = None) -> Path:
    """A grid of images ``(C, H, W)`` in [0, 1], each under its own small title.

    The titles are e.g. the model's predicted labels, as in one sub-figure of
    the SdpAdv paper's Fig. 3.

    Args:
        images: the images, each ``(C, H, W)`` in [0, 1].
        titles: one string per image.
        path: where to write the PNG (parent folders are created); returned as a :class:`~pathlib.Path`.
        columns: images per row.
        title: figure title (none if empty).
        colors: optional matplotlib colour of each image's title (default black).

    Raises:
        ValueError: not one title per image.
    """
    if len(images) != len(titles):
        raise ValueError(f"need one title per image, got {len(images)} images and {len(titles)} titles")
    plt = _plt()
    n = max(len(images), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 0.95, rows * 1.1 + 0.4), squeeze=False)
    for k in range(rows * cols):
        ax = axes[k // cols, k % cols]
        if k < len(images):
            _show(ax, images[k])
            ax.set_title(titles[k], fontsize=7, color=(colors[k] if colors else "black"))
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(plt, fig, path)
