"""The flow smoothness operator M of the spatial certificate: moved to :mod:`spatialadv.ops.flow_smoothness`.

Pure functions below the threat models and attacks that use them; this
module re-exports them under their old path.
"""

from ..ops.flow_smoothness import (  # noqa: F401
    BORDERS,
    box_half_widths,
    flow_smoothness,
    gram_inverse,
    gram_inverse_sqrt,
    gram_min_eigenvalue,
    neighbour_matrices,
    smoothness_gram,
)

__all__ = ["BORDERS", "neighbour_matrices", "smoothness_gram", "box_half_widths", "flow_smoothness",
           "gram_inverse_sqrt", "gram_inverse", "gram_min_eigenvalue"]
