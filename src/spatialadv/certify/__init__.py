"""Certified robustness to smooth spatial flows.

After *Provable Defenses against Spatially Transformed Adversarial Inputs:
Impossibility and Possibility Results* (ICLR 2019 submission; "the
provable-defenses paper") and C. Nguyen, *Two Approaches to Defend against
Adversarial Examples: Attention-based and Certificate-based*, MSc thesis,
Lehigh University, 2018 ("the Nguyen thesis"), §4.

* :mod:`~spatialadv.ops.flow_smoothness` (re-exported here) — the neighbour matrices M⁽ᵗ'ᵇ'ˡ'ʳ⁾,
  ``MᵀM`` (Prop. 1), box half-widths λ (Prop. 2), ℓ_diff of a flow: pure maths, shared with the flow threat models.
* :mod:`~spatialadv.certify.bounds` — upper bounds (linear Eq. 16, Frobenius,
  spectral, SDP over the Prop. 2 box and SDP with the flow ellipsoid's constraints, exact and dual) and
  :func:`certify`.
* :mod:`~spatialadv.certify.lower_bound` — the lower-bound attack (Thms. 1-2,
  Algs. 1-2), evaluated on the true bilinear warp. The budget-restricted flow
  attack :class:`~spatialadv.attacks.SmoothFlowPGD` and stAdv with a τ binary
  search (:class:`~spatialadv.attacks.StAdvTauBinarySearch`) are in
  :mod:`spatialadv.attacks` (importing them from here still works, with a
  ``DeprecationWarning``).
* :mod:`~spatialadv.certify.penalties` — the training penalties of the provable-defenses paper, §6.8 (the objectives
  that use them, and the variants' specs, are in :mod:`spatialadv.training`).
* :mod:`~spatialadv.certify.smoothing` — randomized smoothing (Cohen et al., ICML 2019): the smoothed
  classifier, PREDICT / CERTIFY, and certificates against rotations, translations and flows that hold on the
  warped image the model receives (interpolation error bounded exactly per pixel, after TSS, Li et al., CCS 2021).
"""

from .._deprecated import moved
from ..ops.flow_smoothness import (
    BORDERS,
    box_half_widths,
    flow_smoothness,
    gram_inverse,
    gram_inverse_sqrt,
    neighbour_matrices,
    smoothness_gram,
)
from .bounds import (
    METHODS,
    Certificate,
    EllipsoidConstraints,
    NetworkWeights,
    PairBounds,
    brute_force_max,
    certify,
    dual_objective,
    ellipsoid_constraints,
    network_weights,
    optimize_dual,
    pair_bounds,
    pair_matrices,
    ritz_top_eigen,
    sdp_dual_bound,
    sdp_exact,
    spectral_start,
    weights_fingerprint,
)
from .lower_bound import (
    LowerBoundResult,
    attained_margin_range,
    lower_bound_attack,
    pair_margin_change,
    rescale_to_budget,
    warp_derivative,
)
from .smoothing import (
    FlowCertificate,
    FlowSmoothedClassifier,
    GridCertificate,
    SmoothedClassifier,
    SmoothingAugmentation,
    SmoothingCertificate,
    bilinear_box_deviation,
    certify_flow,
    certify_rotation,
    certify_translation,
    cohen_radius,
    exhaustive_translation,
    flow_linf_bound,
    lower_confidence_bound,
    rotation_interpolation_bound,
    translation_interpolation_bound,
)

__all__ = ["METHODS", "Certificate", "NetworkWeights", "brute_force_max", "certify", "dual_objective", "network_weights",
           "EllipsoidConstraints", "ellipsoid_constraints", "spectral_start", "optimize_dual", "pair_bounds", "pair_matrices", "ritz_top_eigen", "sdp_dual_bound", "sdp_exact",
           "BORDERS", "box_half_widths", "flow_smoothness", "gram_inverse", "gram_inverse_sqrt", "neighbour_matrices",
           "smoothness_gram", "LowerBoundResult", "lower_bound_attack", "attained_margin_range", "pair_margin_change",
           "rescale_to_budget", "warp_derivative", "PairBounds", "weights_fingerprint"]
__all__ += ["SmoothedClassifier", "FlowSmoothedClassifier", "SmoothingCertificate", "GridCertificate", "FlowCertificate", "SmoothingAugmentation",
            "lower_confidence_bound", "cohen_radius", "bilinear_box_deviation", "rotation_interpolation_bound",
            "translation_interpolation_bound", "flow_linf_bound", "certify_rotation", "certify_translation",
            "exhaustive_translation", "certify_flow"]

#: names moved to :mod:`spatialadv.attacks` (attacks sit below certify): deprecated aliases
__getattr__ = moved(__name__, {"SmoothFlowPGD": "spatialadv.attacks", "StAdvTauBinarySearch": "spatialadv.attacks"})
