"""Models: the papers' architectures, training objectives, and one cache of trained models.

* :mod:`~spatialadv.models.architectures` — the registry :data:`MODELS`, :func:`build_model`,
  :class:`STNClassifier`.
* :mod:`~spatialadv.models.training` — :class:`TrainConfig`, :class:`Objective` (``standard``,
  ``fgsm-at``, ``random``, ``hinge``, ``frobenius``, ``spectral``, ``sdp``, ``stadv-at``, ``smoothing``),
  :func:`train_model`, :func:`accuracy`.
* :mod:`~spatialadv.models.cache` — :class:`ModelSpec`, :func:`model_key`, :func:`load_or_train`,
  safetensors checkpoints.

Typical use::

    from spatialadv.data import DataSpec
    from spatialadv.models import ModelSpec, Objective, TrainConfig, load_or_train

    spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(epochs=12, seed=0), Objective("fgsm-at", eps=0.3))
    model, info = load_or_train(spec)   # eval mode, frozen; info["cached"], info["test_accuracy"], ...
"""

from .architectures import MODELS, STNClassifier, build_model
from .cache import (
    KEY_FORMAT,
    CorruptCheckpointError,
    ModelSpec,
    cache_dir,
    load_checkpoint,
    load_or_train,
    model_key,
    save_checkpoint,
    state_checksum,
)
from .training import (
    OBJECTIVES,
    Objective,
    ObjectiveType,
    OptionSpec,
    TrainConfig,
    TrainingParts,
    accuracy,
    hinge_loss,
    register_objective,
    train_model,
)

__all__ = ["MODELS", "STNClassifier", "build_model", "TrainConfig", "Objective", "OBJECTIVES", "ObjectiveType", "OptionSpec",
           "TrainingParts", "register_objective", "hinge_loss", "train_model", "accuracy", "ModelSpec", "model_key",
           "load_or_train", "cache_dir", "save_checkpoint", "load_checkpoint", "KEY_FORMAT",
           "CorruptCheckpointError", "state_checksum"]
