"""Image panels with the classifier's prediction above each image (SdpAdv Figs. 3-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _plt, _save, _show

__all__ = ["prediction_panel"]


def prediction_panel(images: list[np.ndarray], titles: list[str], path: str | Path, *, columns: int = 10,
                     title: str = "", colors: list[str] | None = None) -> Path:
    """A grid of images ``(C, H, W)`` in [0, 1], each under its own small title
    (e.g. the model's predicted label), as one sub-figure of SdpAdv Fig. 3.

    Args:
        images: list of images; titles: one string per image.
        columns: images per row. colors: optional title colour per image.
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
