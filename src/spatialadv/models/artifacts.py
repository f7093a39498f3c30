"""The one cached-artifact helper: a name → built once → a verified safetensors file, loaded ever after.

Every cached network of the library — trained classifiers
(:func:`spatialadv.training.load_or_train`), LAN detectors
(:func:`spatialadv.defenses.load_or_train_lan`), Defense-GAN generators
(:func:`spatialadv.defenses.load_or_train_generator`) and fitted SdpAdv
generators (:func:`spatialadv.experiments.sdpadv.fit_or_load_generator`) —
goes through :func:`load_or_build`, which gives each the same guarantees:

* **one gate for names** — the file is ``<cache_dir()>/<kind>/<name>.safetensors``
  and :func:`artifact_path` refuses any ``name`` (or ``kind``) that is empty,
  absolute, holds a path separator or ``..``, or any other character than
  ``[A-Za-z0-9._-]``, and checks that the path stays inside its folder;
* safetensors (no pickle) with JSON metadata and the SHA-256 of the tensors
  (:func:`save_checkpoint`), written atomically (a temporary file renamed
  over the target), verified on every load (:func:`load_checkpoint`);
* a file that fails verification is never used and never fails the call
  forever: it is moved aside to ``<name>.corrupt-<n>`` with a warning and the
  artifact is rebuilt;
* under ``torchrun`` rank 0 looks (and builds, unless the build is itself
  data-parallel) first while the other ranks wait, then they load its file.

Example:
    >>> artifact_path("c4-standard-mnist-seed0-0123456789", kind="models", directory="/cache/models").name
    'c4-standard-mnist-seed0-0123456789.safetensors'
    >>> artifact_path("../elsewhere", kind="models")
    Traceback (most recent call last):
    ...
    ValueError: artifact name must be a non-empty name of letters, digits, '.', '_' and '-' without '..' (it becomes part of a file name), got '../elsewhere'
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .. import distributed
from .._paths import check_file
from .._validation import check_name

log = logging.getLogger(__name__)

__all__ = ["cache_dir", "artifact_path", "load_or_build", "Artifact", "save_checkpoint", "load_checkpoint",
           "checkpoint_metadata", "CorruptCheckpointError", "state_checksum"]


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


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of a checkpoint written by :func:`save_checkpoint` (without the checksum), weights unread.

    For artifacts whose architecture is described by their metadata (e.g. a
    generator's image shape): read it, build the module, then
    :func:`load_checkpoint` it, which verifies the file.

    Raises:
        FileNotFoundError: missing file.
        CorruptCheckpointError: not a readable safetensors file, or metadata that is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError / OSError on a bad header
        raise CorruptCheckpointError(f"checkpoint {path} is not a readable safetensors file: {type(e).__name__}: {e}") from e
    try:
        return {k: json.loads(v) for k, v in raw.items() if k != _CHECKSUM_KEY}
    except json.JSONDecodeError as e:
        raise CorruptCheckpointError(f"checkpoint {path} has metadata that is not JSON: {e}") from e


def artifact_path(name: str, *, kind: str, directory: str | os.PathLike | None = None, suffix: str = ".safetensors") -> Path:
    r"""The one gate for cache file names: ``<directory>/<name><suffix>``, ``directory`` defaulting to ``cache_dir() / kind``.

    Every cache path built from a user-influenced string (a model key, a
    classifier key inside a detector's key, a dataset name) goes through
    here.

    Args:
        name: the artifact's name (its cache key): a non-empty ``str`` of
            ``[A-Za-z0-9._-]`` without ``..`` — so no path separator (``/``,
            ``\\``), no absolute path, no parent-directory step.
        kind: the cache's sub-folder (``"models"``, ``"generators"``, ``"defense-gan"``); the same rule.
        directory: the folder instead of ``cache_dir() / kind`` (any path the caller chooses).
        suffix: the file-name suffix.

    Returns:
        The path, inside ``directory``.

    Raises:
        TypeError: ``name`` or ``kind`` is not a str.
        ValueError: ``name`` or ``kind`` is empty, absolute, holds a separator, ``..`` or another
            character than ``[A-Za-z0-9._-]``; or the path would leave the folder.
    """
    check_name(name, "artifact name")
    check_name(kind, "artifact kind")
    folder = Path(directory) if directory is not None else cache_dir() / kind
    path = folder / f"{name}{suffix}"
    if not path.resolve().is_relative_to(folder.resolve()):  # a second line of defence (e.g. a symlinked name)
        raise ValueError(f"the artifact path {path} of name {name!r} leaves the cache directory {folder}")
    return path


class Artifact(NamedTuple):
    """What :func:`load_or_build` returns."""

    #: the module, loaded from the file or just built (its mode and ``requires_grad`` as ``make``/``build`` left them).
    module: nn.Module
    #: the metadata stored with it (decoded JSON), without the checksum.
    meta: dict
    #: the file.
    path: Path
    #: True when loaded rather than built.
    cached: bool


def load_or_build(name: str, make: Callable[[], nn.Module], build: Callable[[], tuple[nn.Module, dict]], *, kind: str,
                  directory: str | os.PathLike | None = None, check: Callable[[dict], str | None] | None = None,
                  parallel_build: bool = False, what: str = "artifact") -> Artifact:
    """Load the artifact ``name`` from its verified file, else build it once and save it.

    The file is :func:`artifact_path` ``(name, kind=kind, directory=directory)``.
    When it exists, ``make()`` builds an empty module of the right architecture
    and :func:`load_checkpoint` verifies and loads the file into it; then
    ``check(meta)`` may name a problem with the metadata (a foreign file: other
    key, spec or hyper-parameters). A file that fails either check is moved to
    ``<file>.corrupt-<n>`` (the first free n ≥ 1) with a ``UserWarning`` (also
    logged) naming the file and the problem, and the artifact is rebuilt
    exactly as on a miss. ``build()`` returns the module and its JSON-able
    metadata, saved atomically with a checksum (:func:`save_checkpoint`).

    Under ``torchrun`` (:mod:`spatialadv.distributed`) rank 0 looks at the
    file (and moves a corrupt one aside) before the other ranks, so all reach
    the same decision. With ``parallel_build=False`` rank 0 alone builds and
    saves while the others wait, then they load its file; with
    ``parallel_build=True`` (a data-parallel training) every rank calls
    ``build()``, rank 0 saves, and all wait until the file exists.

    Args:
        name: the artifact's cache key (see :func:`artifact_path`).
        make: ``() -> nn.Module`` of the architecture the file holds (weights are overwritten).
        build: ``() -> (module, metadata)``: builds (trains, fits) the artifact.
        kind: the cache's sub-folder.
        directory: the folder instead of ``cache_dir() / kind``.
        check: ``(metadata) -> problem or None``.
        parallel_build: whether ``build()`` is collective under ``torchrun``.
        what: the artifact in words, for the warning.

    Returns:
        An :class:`Artifact` ``(module, meta, path, cached)``.

    Raises:
        TypeError, ValueError: an unsafe ``name`` or ``kind`` (:func:`artifact_path`); whatever ``make`` or ``build`` raise.
        PathError: the checkpoint path is a folder or lies under a file (checked before anything is built).
    """
    path = artifact_path(name, kind=kind, directory=directory)
    check_file(path, f"{what} checkpoint")  # before training: a folder in its place would fail only at the save
    module, meta = None, {}
    with distributed.rank_zero_first():
        if path.is_file():
            candidate = make()
            try:
                meta = load_checkpoint(candidate, path)
                problem = check(meta) if check is not None else None
                if problem:
                    raise CorruptCheckpointError(f"checkpoint {path}: {problem}")
            except CorruptCheckpointError as e:
                aside = _move_aside(path)
                warnings.warn(f"{e}; moved it to {aside.name} and rebuilding the {what} {name}", UserWarning, stacklevel=3)
                log.warning("corrupt %s %s (%s) moved to %s; rebuilding", what, path, e, aside)
            else:
                log.info("loaded %s %s from %s", what, name, path)
                return Artifact(candidate, meta, path, True)
        if not parallel_build:
            module, meta = build()
            save_checkpoint(module, path, meta)
            log.info("built %s %s, saved to %s", what, name, path)
    if module is None:  # a collective build: every rank builds, rank 0 saves, the others wait for the file
        module, meta = build()
        if distributed.rank() == 0:
            save_checkpoint(module, path, meta)
            log.info("built %s %s, saved to %s", what, name, path)
        distributed.barrier()
    return Artifact(module, meta, path, False)
