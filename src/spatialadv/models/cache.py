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
from torch import Tensor, nn

from .. import distributed
from .._validation import check_name
from ..data import DataSpec
from .architectures import MODELS, build_model
from .training import Objective, TrainConfig, accuracy, train_model

log = logging.getLogger(__name__)

__all__ = ["ModelSpec", "model_key", "load_or_train", "cache_dir", "save_checkpoint", "load_checkpoint", "KEY_FORMAT",
           "CorruptCheckpointError", "state_checksum"]

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
        d = {"architecture": self.architecture, "data": self.data.to_dict(), "train": asdict(self.train),
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


def cache_dir() -> Path:
    """Checkpoint cache root: ``$SPATIALADV_CACHE`` or ``~/.cache/spatialadv`` (models under ``models/``)."""
    return Path(os.environ.get("SPATIALADV_CACHE", Path.home() / ".cache" / "spatialadv"))


#: Metadata key holding the SHA-256 of the tensors (:func:`state_checksum`); never returned by :func:`load_checkpoint`.
_CHECKSUM_KEY = "__spatialadv_sha256__"


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be used (a ``ValueError``).

    Raised for a file that is unreadable, not safetensors, has wrong keys or
    shapes, a checksum mismatch or non-finite weights; the message names the
    file and the problem.
    """


def state_checksum(state: dict[str, Tensor]) -> str:
    """SHA-256 (hex) of a state dict: every tensor's name, dtype, shape and raw bytes, in sorted key order.

    Args:
        state: name → tensor (any device; copied to the CPU to hash).

    Returns:
        64 hex digits; equal for equal tensors (bit for bit), different when any byte differs.
    """
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(json.dumps([k, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save the state dict as safetensors (no pickle), atomically, with a checksum.

    The SHA-256 of the tensors (:func:`state_checksum`) is stored in the
    metadata and verified by :func:`load_checkpoint`.

    Args:
        model: any module (its ``state_dict`` tensors are saved).
        path: target file; parent folders are created.
        metadata: JSON-able values, each stored as a JSON string under its key.

    Raises:
        ValueError: a metadata key collides with the reserved checksum key.
    """
    from safetensors.torch import save_file

    metadata = dict(metadata or {})
    if _CHECKSUM_KEY in metadata:
        raise ValueError(f"metadata key {_CHECKSUM_KEY!r} is reserved for the checkpoint checksum")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    meta[_CHECKSUM_KEY] = state_checksum(state)
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read tensors and raw metadata; any format error becomes :class:`CorruptCheckpointError`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # safetensors raises its own SafetensorError / OSError on a bad header
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"is not a readable safetensors file ({size} bytes; truncated or not a checkpoint)"
        raise CorruptCheckpointError(f"checkpoint {path} {what}: {type(e).__name__}: {e}") from e
    return state, raw


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Verify a safetensors checkpoint, then load its weights into ``model``; returns the decoded metadata.

    Checked before ``model`` is touched (a failed check leaves it unchanged):
    the file is readable safetensors; its metadata is JSON; its tensor names
    equal the model's ``state_dict`` keys exactly and every shape matches; the
    recorded SHA-256 (:func:`save_checkpoint`) equals the tensors' checksum;
    every floating-point tensor is finite. Checkpoints written before checksums
    were recorded (no checksum key) pass on the other checks.

    Args:
        model: the module to load into (its architecture must match the file).
        path: a file written by :func:`save_checkpoint`.

    Returns:
        The metadata passed to :func:`save_checkpoint` (values decoded from JSON),
        without the checksum.

    Raises:
        FileNotFoundError: missing file.
        CorruptCheckpointError: (a ``ValueError``) the file is empty, truncated, not
            safetensors (e.g. a pickle), has unreadable metadata, other keys or
            shapes than ``model`` (another model's weights), a checksum mismatch,
            or NaN/inf weights. The message names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state, raw = _read_checkpoint(path)
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != _CHECKSUM_KEY}
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"checkpoint {path} has metadata that is not JSON: {e}") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CorruptCheckpointError(
            f"checkpoint {path} holds other weights than this {type(model).__name__} "
            f"(missing keys {missing[:5]}, unexpected keys {unexpected[:5]}); is it another model's checkpoint?")
    wrong = [(k, tuple(state[k].shape), expected[k]) for k in sorted(expected) if tuple(state[k].shape) != expected[k]]
    if wrong:
        k, got, want = wrong[0]
        raise CorruptCheckpointError(f"checkpoint {path}: tensor {k!r} has shape {got}, the model expects {want} "
                                     f"({len(wrong)} shape mismatch(es)); is it another model's checkpoint?")
    recorded = raw.get(_CHECKSUM_KEY)
    if recorded is not None and recorded != state_checksum(state):
        raise CorruptCheckpointError(f"checkpoint {path}: checksum mismatch (the tensors were modified or corrupted "
                                     "after saving)")
    bad = [k for k in sorted(state) if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if bad:
        raise CorruptCheckpointError(f"checkpoint {path}: non-finite (NaN/inf) weights in {bad[:5]}")
    model.load_state_dict(state)
    return meta


def _move_aside(path: Path) -> Path:
    """Rename ``path`` to the first free ``<name>.corrupt-<n>`` (n = 1, 2, ...) and return the new path."""
    n = 1
    while (dest := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    os.replace(path, dest)
    return dest


def load_or_train(spec: ModelSpec, *, progress: bool = True, directory: str | os.PathLike | None = None,
                  device: str | torch.device | None = None) -> tuple[nn.Module, dict]:
    """Return the model ``spec`` describes, trained once and then loaded from the cache.

    The architecture is built under ``torch.manual_seed(spec.train.seed)`` in a
    forked RNG (the caller's RNG state is untouched) and, when no checkpoint
    exists, trained (from the weights of ``spec.init`` when set) on ``spec.data.train()`` with ``spec.objective``
    (:func:`~spatialadv.models.train_model`) in the same forked RNG — the same
    spec gives the same weights on one machine — then saved as
    ``<directory>/<model_key(spec)>.safetensors`` with the spec, test accuracy,
    training time and notes as metadata.

    A cached checkpoint that fails verification — unreadable or not
    safetensors, other keys/shapes, checksum mismatch, NaN/inf weights
    (:func:`load_checkpoint`), or metadata whose ``format``, ``key`` or ``spec``
    do not match — is never used and never fails the call forever: a
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
            a name in the key is not a safe file-name part, or the checkpoint
            path would leave ``directory``.
        FileNotFoundError: the dataset's files are missing.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError("load_or_train takes a ModelSpec, e.g. load_or_train(ModelSpec('c4', DataSpec('mnist'), "
                        f"TrainConfig(), Objective('standard'))); got {type(spec).__name__}")
    key = model_key(spec)
    folder = Path(directory or cache_dir() / "models")
    path = folder / f"{key}.safetensors"
    if not path.resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"the checkpoint path {path} of key {key!r} leaves the cache directory {folder}")
    train, test = spec.data.train(), spec.data.test()
    c, s = int(train.x.shape[1]), int(train.x.shape[2])

    def build() -> nn.Module:
        return build_model(spec.architecture, in_channels=c, image_size=s, num_classes=train.num_classes)

    model, notes, cached = None, {}, False
    # under torchrun, rank 0 checks (and moves aside a corrupt file) before the others look,
    # so every rank reaches the same decision; training is then data-parallel over all ranks
    with distributed.rank_zero_first():
        if path.is_file():
            with torch.random.fork_rng():
                torch.manual_seed(spec.train.seed)
                model = build()
            try:
                meta = load_checkpoint(model, path)
                problem = _metadata_problem(meta, key, spec)
                if problem:
                    raise CorruptCheckpointError(f"checkpoint {path}: {problem}")
            except CorruptCheckpointError as e:
                aside = _move_aside(path)
                warnings.warn(f"{e}; moved it to {aside.name} and retraining {key} from its spec", UserWarning, stacklevel=2)
                log.warning("corrupt checkpoint %s (%s) moved to %s; retraining", path, e, aside)
                model = None
            else:
                cached, notes = True, meta.get("notes", {})
                stored = meta.get("train_seconds")
                seconds = float(stored) if isinstance(stored, (int, float)) else None
                log.info("loaded %s from %s", key, path)
    if model is None:
        seconds = None
        start = None
        if spec.init is not None:  # fine-tuning: the starting weights, from the cache or trained first
            start, _ = load_or_train(spec.init, progress=progress, directory=directory, device=device)
        with torch.random.fork_rng():
            torch.manual_seed(spec.train.seed)
            model = build().to(device or "cpu")
            if start is not None:
                model.load_state_dict(start.state_dict())
                model.requires_grad_(True)
            t0 = time.perf_counter()
            notes = train_model(model, train, spec.train, objective=spec.objective, progress=progress)
            seconds = time.perf_counter() - t0
    model.to(device or "cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    acc = accuracy(model, test.x, test.y)
    if not cached and distributed.rank() == 0:
        save_checkpoint(model, path, {"format": KEY_FORMAT, "key": key, "spec": spec.to_dict(), "test_accuracy": acc,
                                      "train_seconds": seconds, "notes": notes})
        log.info("trained %s in %.1f s (test accuracy %.4f), saved to %s", key, seconds, acc, path)
    if not cached:
        distributed.barrier()  # the checkpoint exists for every rank from here on
    return model, {"key": key, "path": str(path), "cached": cached, "test_accuracy": acc, "train_seconds": seconds,
                   "notes": notes, "spec": spec.to_dict()}


def _metadata_problem(meta: dict, key: str, spec: ModelSpec) -> str | None:
    """What is wrong with a cached checkpoint's metadata for ``spec`` (None when it matches)."""
    if meta.get("format") != KEY_FORMAT:
        return f"metadata format {meta.get('format')!r} is not KEY_FORMAT={KEY_FORMAT}"
    if meta.get("key") != key:
        return f"metadata key {meta.get('key')!r} is not {key!r}"
    if meta.get("spec") != spec.to_dict():
        return f"metadata records spec {meta.get('spec')}, not {spec.to_dict()}"
    return None
