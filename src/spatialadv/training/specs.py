"""One model specification, one cache key, one load-or-train: :class:`ModelSpec`, :func:`model_key`, :func:`load_or_train`.

A trained model is fully described by a :class:`ModelSpec` — architecture
(:data:`~spatialadv.models.MODELS`), data (:class:`~spatialadv.data.DataSpec`),
training hyper-parameters (:class:`~spatialadv.training.TrainConfig`, whose
``seed`` seeds initialisation and training) and objective
(:class:`~spatialadv.training.Objective`). Its checkpoint lives at
``<cache>/models/<model_key(spec)>.safetensors`` (no pickle) with the spec in
the metadata, through the one cached-artifact helper
(:func:`spatialadv.models.load_or_build`).

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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from .._validation import check_name
from ..data import DataSpec
from ..models import MODELS, build_model, cache_dir, load_or_build
from .config import TrainConfig
from .loop import accuracy, train_model
from .objectives import Objective

log = logging.getLogger(__name__)

__all__ = ["ModelSpec", "model_key", "load_or_train", "KEY_FORMAT"]

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
        init: None (train from the seeded initialisation) or the spec of a model of the same
            architecture whose trained weights training starts from (fine-tuning, e.g.
            adversarial fine-tuning of a plain model); it is part of the cache key, and
            :func:`load_or_train` gets it (from the cache or by training it) first.

    Raises:
        ValueError: unknown architecture; ``init`` of another architecture.
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
    init: ModelSpec | None = None

    def __post_init__(self) -> None:
        check_name(self.architecture, "ModelSpec.architecture")
        if self.architecture not in MODELS:
            raise ValueError(f"ModelSpec.architecture must be one of {sorted(MODELS)}, got {self.architecture!r}")
        for name, kind in (("data", DataSpec), ("train", TrainConfig), ("objective", Objective)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"ModelSpec.{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if self.init is not None:
            if not isinstance(self.init, ModelSpec):
                raise TypeError(f"ModelSpec.init must be a ModelSpec or None, got {type(self.init).__name__}")
            if self.init.architecture != self.architecture:
                raise ValueError(f"ModelSpec.init must have the architecture {self.architecture!r}, "
                                 f"got {self.init.architecture!r}")

    def to_dict(self) -> dict:
        """JSON-able ``{"architecture", "data", "train", "objective"}`` (nested dicts), plus ``"init"`` when set."""
        d = {"architecture": self.architecture, "data": self.data.to_dict(), "train": self.train.to_dict(),
             "objective": self.objective.to_dict()}
        if self.init is not None:
            d["init"] = self.init.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Inverse of :meth:`to_dict`."""
        init = cls.from_dict(d["init"]) if d.get("init") is not None else None
        return cls(d["architecture"], DataSpec(**d["data"]), TrainConfig(**d["train"]), Objective.from_dict(d["objective"]),
                   init)


def model_key(spec: ModelSpec) -> str:
    """The cache key of a model: ``<architecture>-<objective>-<data>-seed<train.seed>-<hash>``.

    ``<hash>`` is the first 10 hex digits of the SHA-256 of the sorted JSON of
    ``spec.to_dict()`` and :data:`KEY_FORMAT`, so the key changes when any field
    of the spec changes (including defaults-filled objective options and
    ``data.max_train``) and not otherwise.

    Raises:
        TypeError: ``spec`` is not a :class:`ModelSpec`.
        ValueError: a name in the key (architecture, objective, dataset) is
            not a safe file-name part (:func:`~spatialadv._validation.check_name`).
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"model_key takes a ModelSpec, got {type(spec).__name__}")
    check_name(spec.architecture, "ModelSpec.architecture")
    check_name(spec.objective.name, "Objective.name")
    check_name(spec.data.name, "DataSpec.name")
    blob = json.dumps({"format": KEY_FORMAT, "spec": spec.to_dict()}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{spec.architecture}-{spec.objective.name}-{spec.data.name}-seed{spec.train.seed}-{digest}"


def load_or_train(spec: ModelSpec, *, progress: bool = True, directory: str | os.PathLike | None = None,
                  device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Return the model ``spec`` describes, trained once and then loaded from the cache.

    The architecture is built under ``torch.manual_seed(spec.train.seed)`` in a
    forked RNG (the caller's RNG state is untouched) and, when no checkpoint
    exists, trained (from the weights of ``spec.init`` when set) on ``spec.data.train()`` with ``spec.objective``
    (:func:`~spatialadv.training.train_model`) in the same forked RNG — the same
    spec gives the same weights on one machine — then saved as
    ``<directory>/<model_key(spec)>.safetensors`` with the spec, test accuracy,
    training time and notes as metadata.

    Training is resumable: after every epoch its state is written to
    ``<directory>/<model_key(spec)>.resume.pt`` (for the objectives that allow
    it, :attr:`~spatialadv.training.TrainingParts.resumable`), so a run that
    is killed or crashes continues after its last completed epoch when the
    same spec is asked for again, with the same final weights as an
    uninterrupted run; the file is deleted once the model is saved, and
    ``train_seconds`` adds up the time of every process that trained it.

    The cache is the one cached-artifact helper's
    (:func:`spatialadv.models.load_or_build`): a cached checkpoint that fails
    verification — unreadable or not safetensors, other keys/shapes, checksum
    mismatch, NaN/inf weights (:func:`~spatialadv.models.load_checkpoint`), or
    metadata whose ``format``, ``key`` or ``spec`` do not match — is never used and never fails the call forever: a
    ``UserWarning`` (also logged) names the file and the problem, the file is
    renamed to ``<name>.corrupt-<n>`` (the first free n ≥ 1), and the model is
    retrained from ``spec`` exactly as on a cache miss (same weights).

    Args:
        spec: the model to get.
        progress: show a training progress bar.
        directory: checkpoint folder (default ``cache_dir() / "models"``).
        device: where the model is trained and returned (default: the CPU);
            the checkpoint is the same whatever the device.

    Returns:
        ``(model, info)``. The model is in **eval mode with every parameter
        frozen** (``requires_grad=False``): attacks still get input gradients;
        call ``requires_grad_(True)`` on it to fine-tune. ``info`` has

        * ``"key"``: :func:`model_key` of the spec;
        * ``"path"``: the checkpoint path (str);
        * ``"cached"``: True when loaded rather than trained;
        * ``"test_accuracy"``: top-1 accuracy in [0, 1] on the whole test split of ``spec.data``;
        * ``"train_seconds"``: wall-clock training time (float); when cached, the time recorded at
            training (None if the checkpoint has none);
        * ``"notes"``: the objective's notes (dict, e.g. ``pool_success_rates`` of ``stadv-at``);
        * ``"spec"``: ``spec.to_dict()``.

    Raises:
        TypeError: ``spec`` is not a :class:`ModelSpec` (the pre-2 signature
            ``load_or_train(name, train, test, ...)`` is gone).
        ValueError: the architecture does not accept the data's image size;
            a name in the key is not a safe file-name part
            (:func:`~spatialadv.models.artifact_path`).
        FileNotFoundError: the dataset's files are missing.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError("load_or_train takes a ModelSpec, e.g. load_or_train(ModelSpec('c4', DataSpec('mnist'), "
                        f"TrainConfig(), Objective('standard'))); got {type(spec).__name__}")
    key = model_key(spec)
    folder = Path(directory) if directory is not None else cache_dir() / "models"
    resume = folder / f"{key}.resume.pt"  # per-epoch training state: an interrupted run continues from it
    train, test = spec.data.train(), spec.data.test()
    c, s = int(train.x.shape[1]), int(train.x.shape[2])

    def make() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(spec.train.seed)
            return build_model(spec.architecture, in_channels=c, image_size=s, num_classes=train.num_classes)

    def build() -> tuple[nn.Module, dict]:
        start = None
        if spec.init is not None:  # fine-tuning: the starting weights, from the cache or trained first
            start, _ = load_or_train(spec.init, progress=progress, directory=directory, device=device)
        with torch.random.fork_rng():
            torch.manual_seed(spec.train.seed)
            model = build_model(spec.architecture, in_channels=c, image_size=s, num_classes=train.num_classes)
            model = model.to(device or "cpu")
            if start is not None:
                model.load_state_dict(start.state_dict())
                model.requires_grad_(True)
            t0 = time.perf_counter()
            notes = train_model(model, train, spec.train, objective=spec.objective, progress=progress, checkpoint=resume)
            seconds = time.perf_counter() - t0 + float(notes.get("seconds_before_resume", 0.0))
        _freeze(model.to(device or "cpu"))
        acc = accuracy(model, test.x, test.y)
        log.info("trained %s in %.1f s (test accuracy %.4f)", key, seconds, acc)
        return model, {"format": KEY_FORMAT, "key": key, "spec": spec.to_dict(), "test_accuracy": acc,
                       "train_seconds": seconds, "notes": notes}

    # under torchrun rank 0 checks (and moves aside a corrupt file) before the others look, so every rank
    # reaches the same decision; training is then data-parallel over all ranks and rank 0 saves
    art = load_or_build(key, make, build, kind="models", directory=folder, check=lambda meta: _metadata_problem(meta, key, spec),
                        parallel_build=True, what="model")
    if not art.cached and distributed.rank() == 0:
        resume.unlink(missing_ok=True)  # the model is saved: its resume file has served
    model = _freeze(art.module.to(device or "cpu"))
    stored = art.meta.get("train_seconds")
    seconds = float(stored) if isinstance(stored, (int, float)) else None
    acc = art.meta["test_accuracy"] if not art.cached else accuracy(model, test.x, test.y)
    return model, {"key": key, "path": str(art.path), "cached": art.cached, "test_accuracy": acc, "train_seconds": seconds,
                   "notes": art.meta.get("notes", {}), "spec": spec.to_dict()}


def _freeze(model: nn.Module) -> nn.Module:
    """Eval mode, every parameter frozen and without a gradient; returns ``model``."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


def _metadata_problem(meta: dict, key: str, spec: ModelSpec) -> str | None:
    """What is wrong with a cached checkpoint's metadata for ``spec`` (None when it matches)."""
    if meta.get("format") != KEY_FORMAT:
        return f"metadata format {meta.get('format')!r} is not KEY_FORMAT={KEY_FORMAT}"
    if meta.get("key") != key:
        return f"metadata key {meta.get('key')!r} is not {key!r}"
    if meta.get("spec") != spec.to_dict():
        return f"metadata records spec {meta.get('spec')}, not {spec.to_dict()}"
    return None
