"""Models: the papers' architectures, checkpoint files, and the one cached-artifact helper.

* :mod:`~spatialadv.models.architectures` — the registry :data:`MODELS`, :func:`build_model`,
  :class:`STNClassifier`.
* :mod:`~spatialadv.models.artifacts` — safetensors checkpoints with a checksum
  (:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`CorruptCheckpointError`), the cache root
  :func:`cache_dir`, the one gate for cache file names (:func:`artifact_path`) and the one
  cached-artifact helper (:func:`load_or_build`: a name → built once → a verified file) that every
  cache of the library goes through.

Training — objectives, :class:`~spatialadv.training.ModelSpec` and
:func:`~spatialadv.training.load_or_train` — is the layer above: :mod:`spatialadv.training`.

Typical use::

    from spatialadv.models import build_model, load_checkpoint

    model = build_model("c4")
    meta = load_checkpoint(model, "c4.safetensors")   # verified: keys, shapes, checksum, finite weights
"""

from .architectures import MODELS, STNClassifier, build_model
from .artifacts import (
    Artifact,
    CorruptCheckpointError,
    artifact_path,
    cache_dir,
    checkpoint_metadata,
    load_checkpoint,
    load_or_build,
    save_checkpoint,
    state_checksum,
)

__all__ = ["MODELS", "STNClassifier", "build_model", "cache_dir", "artifact_path", "load_or_build", "Artifact",
           "save_checkpoint", "load_checkpoint", "checkpoint_metadata", "CorruptCheckpointError", "state_checksum"]
