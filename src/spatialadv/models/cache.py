"""One model specification, one cache key, one load-or-train: :class:`ModelSpec`, :func:`model_key`, :func:`load_or_train`.

A trained model is fully described by a :class:`ModelSpec` — architecture
(:data:`~spatialadv.models.MODELS`), data (:class:`~spatialadv.data.DataSpec`),
training hyper-parameters (:class:`~spatialadv.models.TrainConfig`, whose
``seed`` seeds initialisation and training) and objective
(:class:`~spatialadv.models.Objective`). Its checkpoint lives at
``<cache>/models/<model_key(spec)>.safetensors`` (no pickle) with the spec in
the metadata.

Example:
    >>> from spatialadv.data import DataSpec
    >>> spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(epochs=12), Objective("fgsm-at"))
    >>> model_key(spec)[:21]
    'c4-fgsm-at-mnist-seed'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import DataSpec
from .architectures import MODELS, build_model
from .training import Objective, TrainConfig, accuracy, train_model

log = logging.getLogger(__name__)

__all__ = ["ModelSpec", "model_key", "load_or_train", "cache_dir", "save_checkpoint", "load_checkpoint", "KEY_FORMAT"]

#: Version of the key/checkpoint format; bumping it invalidates every cached model.
KEY_FORMAT = 2


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a trained model.

    Attributes:
        architecture: a key of :data:`~spatialadv.models.MODELS` (e.g. ``"c4"``, ``"fc-500"``, ``"stn-fc-500"``).
        data: the training data (the test split of the same :class:`~spatialadv.data.DataSpec`
            gives ``info["test_accuracy"]``).
        train: optimiser settings; ``train.seed`` seeds initialisation, batch order and dropout.
        objective: the training objective (default cross-entropy).

    Raises:
        ValueError: unknown architecture.
        TypeError: a field of the wrong type.

    Example:
        >>> from spatialadv.data import DataSpec
        >>> spec = ModelSpec("fc-500", DataSpec("digits"), TrainConfig(epochs=1), Objective("sdp"))
        >>> ModelSpec.from_dict(spec.to_dict()) == spec
        True
    """

    architecture: str
    data: DataSpec
    train: TrainConfig = TrainConfig()
    objective: Objective = Objective("standard")

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in MODELS:
            raise ValueError(f"ModelSpec.architecture must be one of {sorted(MODELS)}, got {self.architecture!r}")
        for name, kind in (("data", DataSpec), ("train", TrainConfig), ("objective", Objective)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"ModelSpec.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict:
        """JSON-able ``{"architecture", "data", "train", "objective"}`` (nested dicts)."""
        return {"architecture": self.architecture, "data": self.data.to_dict(), "train": asdict(self.train),
                "objective": self.objective.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(d["architecture"], DataSpec(**d["data"]), TrainConfig(**d["train"]), Objective.from_dict(d["objective"]))


def model_key(spec: ModelSpec) -> str:
    """The cache key of a model: ``<architecture>-<objective>-<data>-seed<train.seed>-<hash>``.

    ``<hash>`` is the first 10 hex digits of the SHA-256 of the sorted JSON of
    ``spec.to_dict()`` and :data:`KEY_FORMAT`, so the key changes when any field
    of the spec changes (including defaults-filled objective options and
    ``data.max_train``) and not otherwise.

    Raises:
        TypeError: ``spec`` is not a :class:`ModelSpec`.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"model_key takes a ModelSpec, got {type(spec).__name__}")
    blob = json.dumps({"format": KEY_FORMAT, "spec": spec.to_dict()}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{spec.architecture}-{spec.objective.name}-{spec.data.name}-seed{spec.train.seed}-{digest}"


def cache_dir() -> Path:
    """Checkpoint cache root: ``$SPATIALADV_CACHE`` or ``~/.cache/spatialadv`` (models under ``models/``)."""
    return Path(os.environ.get("SPATIALADV_CACHE", Path.home() / ".cache" / "spatialadv"))


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save the state dict as safetensors (no pickle), atomically.

    Args:
        model: any module (its ``state_dict`` tensors are saved).
        path: target file; parent folders are created.
        metadata: JSON-able values, each stored as a JSON string under its key.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load safetensors weights into ``model``; returns the decoded metadata.

    Raises:
        FileNotFoundError: missing file.
        RuntimeError: keys or shapes do not match the model.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def load_or_train(spec: ModelSpec, *, progress: bool = True,
                  directory: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Return the model ``spec`` describes, trained once and then loaded from the cache.

    The architecture is built under ``torch.manual_seed(spec.train.seed)`` in a
    forked RNG (the caller's RNG state is untouched) and, when no checkpoint
    exists, trained on ``spec.data.train()`` with ``spec.objective``
    (:func:`~spatialadv.models.train_model`) in the same forked RNG — the same
    spec gives the same weights on one machine — then saved as
    ``<directory>/<model_key(spec)>.safetensors`` with the spec, test accuracy,
    training time and notes as metadata.

    Args:
        spec: the model to get.
        progress: show a training progress bar.
        directory: checkpoint folder (default ``cache_dir() / "models"``).

    Returns:
        ``(model, info)``. The model is in **eval mode with every parameter
        frozen** (``requires_grad=False``): attacks still get input gradients;
        call ``requires_grad_(True)`` on it to fine-tune. ``info`` has

        * ``"key"``: :func:`model_key` of the spec;
        * ``"path"``: the checkpoint path (str);
        * ``"cached"``: True when loaded rather than trained;
        * ``"test_accuracy"``: top-1 accuracy in [0, 1] on the whole test split of ``spec.data``;
        * ``"train_seconds"``: wall-clock training time (float), None when cached;
        * ``"notes"``: the objective's notes (dict, e.g. ``pool_success_rates`` of ``stadv-at``);
        * ``"spec"``: ``spec.to_dict()``.

    Raises:
        TypeError: ``spec`` is not a :class:`ModelSpec` (the pre-2 signature
            ``load_or_train(name, train, test, ...)`` is gone).
        ValueError: the architecture does not accept the data's image size.
        FileNotFoundError: the dataset's files are missing.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError("load_or_train takes a ModelSpec, e.g. load_or_train(ModelSpec('c4', DataSpec('mnist'), "
                        f"TrainConfig(), Objective('standard'))); got {type(spec).__name__}")
    key = model_key(spec)
    path = Path(directory or cache_dir() / "models") / f"{key}.safetensors"
    train, test = spec.data.train(), spec.data.test()
    c, s = int(train.x.shape[1]), int(train.x.shape[2])
    cached = path.is_file()
    seconds, notes = None, {}
    with torch.random.fork_rng():
        torch.manual_seed(spec.train.seed)
        model = build_model(spec.architecture, in_channels=c, image_size=s, num_classes=train.num_classes)
        if not cached:
            t0 = time.perf_counter()
            notes = train_model(model, train, spec.train, objective=spec.objective, progress=progress)
            seconds = time.perf_counter() - t0
    if cached:
        meta = load_checkpoint(model, path)
        if meta.get("spec") != spec.to_dict():
            warnings.warn(f"checkpoint {path} records spec {meta.get('spec')}, not {spec.to_dict()}", stacklevel=2)
        notes = meta.get("notes", {})
        log.info("loaded %s from %s", key, path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    acc = accuracy(model, test.x, test.y)
    if not cached:
        save_checkpoint(model, path, {"format": KEY_FORMAT, "key": key, "spec": spec.to_dict(), "test_accuracy": acc,
                                      "train_seconds": seconds, "notes": notes})
        log.info("trained %s in %.1f s (test accuracy %.4f), saved to %s", key, seconds, acc, path)
    return model, {"key": key, "path": str(path), "cached": cached, "test_accuracy": acc, "train_seconds": seconds,
                   "notes": notes, "spec": spec.to_dict()}
