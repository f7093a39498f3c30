"""Training: objectives, the training loop, and the one cache of trained models.

The layer above :mod:`spatialadv.defenses` and :mod:`spatialadv.certify`:
its objectives table names the defenses' adversaries and certify's penalties.

* :mod:`~spatialadv.training.config` — :class:`TrainConfig` (Adam settings, seed).
* :mod:`~spatialadv.training.objectives` — :class:`Objective`, :class:`OptionSpec`,
  :class:`ObjectiveType`, :class:`TrainingParts`, :data:`OBJECTIVES`,
  :func:`register_objective`, :func:`register_adversarial_objective`, :func:`hinge_loss`.
* :mod:`~spatialadv.training.builtin` — the built-in objectives (``standard``, ``fgsm-at``, ``pgd-at``,
  ``ens-at``, ``ll-at``, ``adv-critic``, ``random``, ``hinge``, ``frobenius``, ``spectral``, ``sdp``,
  ``stadv-at``, ``smoothing``) and :func:`certify_spec`, the provable-defenses paper's training variants.
* :mod:`~spatialadv.training.loop` — :func:`train_model` (with an optional held-out learning curve
  and early stop on its plateau), :func:`accuracy`, :class:`TrainingCollapsed`.
* :mod:`~spatialadv.training.specs` — :class:`ModelSpec`, :func:`model_key`, :func:`load_or_train`
  (checkpoints through :func:`spatialadv.models.load_or_build`).

Typical use::

    from spatialadv.data import DataSpec
    from spatialadv.training import ModelSpec, Objective, TrainConfig, load_or_train

    spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(epochs=12, seed=0), Objective("fgsm-at", eps=0.3))
    model, info = load_or_train(spec)   # eval mode, frozen; info["cached"], info["test_accuracy"], ...
"""

from .builtin import ENSEMBLE_STATIC, VARIANTS, certify_spec  # importing it registers the built-in objectives
from .config import TrainConfig
from .loop import COLLAPSE_MARGIN, TrainingCollapsed, accuracy, train_model
from .objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveType,
    OptionSpec,
    TrainingParts,
    hinge_loss,
    register_adversarial_objective,
    register_objective,
)
from .specs import KEY_FORMAT, ModelSpec, load_or_train, model_key

__all__ = ["TrainConfig", "Objective", "OBJECTIVES", "ObjectiveType", "OptionSpec", "TrainingParts", "register_objective",
           "register_adversarial_objective", "hinge_loss", "train_model", "accuracy", "ModelSpec", "model_key",
           "load_or_train", "KEY_FORMAT", "ENSEMBLE_STATIC", "VARIANTS", "certify_spec", "TrainingCollapsed",
           "COLLAPSE_MARGIN"]
