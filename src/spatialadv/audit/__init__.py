"""Audit a user's model: robust accuracy per threat model and in the worst case per example.

``spatialadv audit --model FILE.py:FACTORY --weights W.safetensors --data mnist`` (or the functions
below) attacks the first ``n`` examples under each threat — stAdv flows, STM rotations/translations,
L∞, L2, smooth perturbations — each as a cascade of attacks run only on the examples still robust
(AutoAttack's scheme: Croce & Hein, *Reliable Evaluation of Adversarial Robustness with an Ensemble of
Diverse Parameter-free Attacks*, ICML 2020), checks the model before trusting the numbers (probabilities
instead of logits, randomness, masked gradients, implausible clean accuracy) and writes a report with a
JSON entry in RobustBench's leaderboard style (Croce et al., *RobustBench: a standardized adversarial
robustness benchmark*, NeurIPS 2021 Datasets and Benchmarks). Records go to the same resumable SQLite
store as every run (:class:`spatialadv.eval.ResultStore`).

Why its own module and not a ``reproduce`` experiment: an experiment's models come from the registry
and its cache by specification, and its report is rebuilt from the store by name; an audit's model is
the user's code and weights, checked before anything is written, and its cascades choose each attack's
examples from the previous attack's records. It shares the store, the runner, the run keys, the
attacks, the threats' measures and the figure helpers.
"""

from .core import (
    PAPERS,
    STORE_NAME,
    THREATS,
    AuditConfig,
    Stage,
    audit_report,
    check_model_on_data,
    run_audit,
    sanity_checks,
    select_examples,
    stages,
)
from .loading import (
    IMAGE_SUFFIXES,
    AuditInputError,
    GuardedModel,
    ModelError,
    Normalize,
    SelectLogits,
    load_image_folder,
    load_user_data,
    load_user_model,
)

__all__ = ["THREATS", "AuditConfig", "Stage", "stages", "select_examples", "check_model_on_data", "sanity_checks",
           "run_audit", "audit_report", "STORE_NAME", "PAPERS", "AuditInputError", "ModelError", "GuardedModel", "Normalize", "SelectLogits",
           "load_user_model", "load_user_data", "load_image_folder", "IMAGE_SUFFIXES"]
