"""Threat models: what a perturbation is and how big it is.

One frozen dataclass per threat model, each with ``name``, ``unit``,
``project(...)``, ``random_start(x, seed, index)``, ``size(...)`` and
``measure(x, result)`` (see :class:`Threat`). Attacks take their projections,
random starts and sizes from these classes; ``AttackResult.unit`` is the
threat's ``unit``.

=========================  ====================  =========================================
class                      perturbation           ``size`` (``unit``)
=========================  ====================  =========================================
:class:`LinfBall`          additive δ             ‖δ‖∞, [0, 1] pixels (``linf``)
:class:`L2Ball`            additive δ             ‖δ‖₂, [0, 1] pixels (``l2``)
:class:`SmoothLikeX`       δ = ŝ_α(z)             ‖δ‖₂, [0, 1] pixels (``l2``)
:class:`PixelFlow`         flow (N, 2, H, W) px   stAdv TV, Eq. 5, pixels (``flow_tv``)
:class:`FlowSmoothnessBall` flow (N, 2, H, W) px  ℓ_diff, pixels (``flow_smoothness``)
:class:`RotationTranslationBox` (angle°, tx, ty)  fraction of the box (``rt_box``)
:class:`AffineLinf`        θ (N, 2, 3), η         fraction of the box (``affine_linf_box``)
:class:`L0Pixels`          additive δ (JSMA)      ‖δ‖₀, changed features (``l0``)
=========================  ====================  =========================================
"""

from .base import Threat, example_generator, per_example_draws
from .flow import FlowSmoothnessBall, PixelFlow
from .geometric import AffineLinf, RotationTranslationBox
from .lp import L0Pixels, L2Ball, LinfBall
from .smooth import SmoothingParams, SmoothLikeX, check_smoothing

__all__ = ["Threat", "example_generator", "per_example_draws", "LinfBall", "L2Ball", "SmoothLikeX", "SmoothingParams", "check_smoothing",
           "PixelFlow", "FlowSmoothnessBall", "RotationTranslationBox", "AffineLinf",
           "L0Pixels"]
