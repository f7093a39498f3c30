"""Users' models and data for :mod:`spatialadv.audit`: factories, safetensors weights, TorchScript, image folders.

Nothing here unpickles: weights are read from safetensors only (a pickle or a
``torch.save`` archive offered as weights is refused), a TorchScript file is
read by :func:`torch.jit.load`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import DATASETS, DataError, Dataset, _to_images, _to_labels, load_dataset, load_npz, read_idx
from ..models import load_checkpoint, state_checksum

__all__ = ["AuditInputError", "ModelError", "GuardedModel", "Normalize", "SelectLogits", "load_user_model", "load_user_data", "load_image_folder",
           "IMAGE_SUFFIXES"]

#: File suffixes read from an image folder (Pillow formats).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")


class AuditInputError(ValueError):
    """A model, weights file or dataset that the audit cannot use; the message names it and says what is accepted."""


class ModelError(AuditInputError):
    """The user's model failed, or returned non-finite logits, while it was audited (the message names the error)."""


class GuardedModel(nn.Module):
    """The user's model behind a guard: what it raises, and non-finite logits, become one :class:`ModelError`.

    An attack calls the model on perturbed images the user never tried; an exception there (or inf / NaN
    logits, which would surface later as a NaN flow or loss inside the attack) is the model's problem, reported
    in one line naming the model and its error instead of a traceback through the attack.

    Args:
        model: the classifier (returning logits ``(N, K)``).
        name: how the user named it (``--model``), for the messages.
    """

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model = model
        self.name = name
        self.train(model.training)  # the guard is in the model's mode (eval for an audited model)

    def forward(self, x: Tensor) -> Tensor:
        """``model(x)``, checked."""
        try:
            out = self.model(x)
        except ModelError:
            raise
        except Exception as e:
            msg = " ".join(str(e).split())
            msg = msg if len(msg) <= 300 else msg[:297] + "..."
            raise ModelError(f"--model {self.name} failed on a batch of {x.shape[0]} image(s) of shape "
                             f"{tuple(x.shape[1:])}: {type(e).__name__}: {msg}") from e
        if isinstance(out, Tensor) and out.is_floating_point():
            bad = ~torch.isfinite(out.detach())
            if bool(bad.any()):
                rows = int(bad.reshape(out.shape[0], -1).any(1).sum()) if out.dim() else 1
                raise ModelError(f"--model {self.name} returned non-finite logits (inf or NaN) for {rows} of "
                                 f"{x.shape[0]} image(s) during the audit: the attacks need finite logits (check for "
                                 "overflow, log(0) or division by zero in the model)")
        return out


class Normalize(nn.Module):
    """``model((x − mean) / std)``: the input normalisation a model was trained with, kept inside the model.

    Args:
        model: the wrapped classifier.
        mean, std: one value per channel (or one for all), in [0, 1] pixel units; ``std`` > 0.

    Raises:
        AuditInputError: empty, non-finite or non-positive ``std`` values.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if not mean or not std:
            raise AuditInputError("--mean and --std need at least one value each")
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        if not bool(torch.isfinite(m).all() and torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise AuditInputError(f"--mean must be finite and --std finite and > 0, got mean {list(mean)}, std {list(std)}")
        self.model = model
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` ``(N, C, H, W)`` in [0, 1] and apply the model."""
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


class SelectLogits(nn.Module):
    """Make a model that returns a tuple, a list, a dict or an object with ``.logits`` return its logits ``(N, K)``.

    Args:
        model: the wrapped classifier.
        select: which output holds the logits: an index for a tuple/list (default 0), a key for a
            dict (default ``"logits"``); a model returning a tensor is passed through.

    Raises (on call):
        ValueError: the selected output does not exist (the message lists what the model returned).
    """

    def __init__(self, model: nn.Module, select: str | None = None):
        super().__init__()
        self.model = model
        self.select = select

    def forward(self, x: Tensor) -> Tensor:
        """The logits of ``model(x)``."""
        out = self.model(x)
        if isinstance(out, Tensor):
            return out
        if isinstance(out, (tuple, list)):
            try:
                i = 0 if self.select is None else int(self.select)
                return out[i]
            except (ValueError, IndexError) as e:
                raise ValueError(f"--output {self.select!r}: the model returns a {type(out).__name__} of {len(out)} "
                                 "outputs; give the position of the logits (0, 1, ...)") from e
        if isinstance(out, Mapping):
            key = "logits" if self.select is None else self.select
            if key not in out:
                raise ValueError(f"the model returns a dict with keys {sorted(map(str, out))} and no {key!r}: "
                                 "name the logits with --output KEY")
            return out[key]
        if hasattr(out, "logits"):
            return out.logits
        raise ValueError(f"the model returns a {type(out).__name__}; expected logits (N, K), a tuple, a dict or an "
                         "object with .logits")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_factory(spec: str) -> tuple[Callable[[], Any], str, str]:
    """``(factory, source description, source sha256)`` of ``FILE.py:NAME`` or ``package.module:NAME``."""
    if ":" not in spec:
        raise AuditInputError(f"--model {spec!r}: expected FILE.py:FACTORY, package.module:FACTORY or a TorchScript file")
    where, name = spec.rsplit(":", 1)
    if not name.isidentifier():
        raise AuditInputError(f"--model {spec!r}: {name!r} is not a Python function name")
    path = Path(where)
    if where.endswith(".py") or "/" in where or path.exists():
        if not path.is_file():
            raise AuditInputError(f"--model {spec!r}: no such file {where}")
        digest = _sha256(path)
        mod_name = f"spatialadv_user_model_{digest[:16]}"
        if mod_name in sys.modules:
            module = sys.modules[mod_name]
        else:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise AuditInputError(f"--model {spec!r}: cannot import {where} as Python")
            module = importlib.util.module_from_spec(loader_spec)
            folder = str(path.resolve().parent)
            sys.path.insert(0, folder)  # the model file may import its neighbours
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise AuditInputError(f"--model {spec!r}: importing {where} failed: {type(e).__name__}: {e}") from e
            finally:
                sys.path.remove(folder)
        source = str(path.resolve())
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise AuditInputError(f"--model {spec!r}: cannot import module {where!r}: {e}") from e
        file = getattr(module, "__file__", None)
        digest = _sha256(Path(file)) if file and Path(file).is_file() else ""
        source = where
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        known = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise AuditInputError(f"--model {spec!r}: {where} defines no function {name!r} (callables there: {known[:10]})")
    return factory, source, digest


def _refuse_pickle(path: Path) -> None:
    """Raise when ``path`` is not a safetensors file, naming what it looks like (pickle, torch.save zip)."""
    head = path.read_bytes()[:16] if path.stat().st_size else b""
    what = None
    if head[:2] == b"PK":
        what = "a zip archive (torch.save format, with a pickle inside)"
    elif head[:1] == b"\x80":
        what = "a pickle file"
    elif len(head) < 9 or head[8:9] != b"{":
        what = "not a safetensors file"
    if what:
        raise AuditInputError(
            f"--weights {path}: {what}. Weights are read from safetensors only, never from pickle (unpickling runs "
            "arbitrary code): save them with `safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`")


def load_user_model(spec: str, *, weights: str | None = None, mean: tuple[float, ...] | None = None,
                    std: tuple[float, ...] | None = None, output: str | None = None) -> tuple[nn.Module, dict]:
    """Build a user's classifier for an audit: frozen, eval mode, returning logits.

    Args:
        spec: ``FILE.py:FACTORY`` (a function in a Python file, imported with the file's folder on
            ``sys.path``), ``package.module:FACTORY`` (importable), or a TorchScript file
            (``torch.jit.save``). A factory is called without arguments and must return an ``nn.Module``.
        weights: optional ``.safetensors`` state dict loaded into the model (exact keys and shapes;
            :func:`spatialadv.models.load_checkpoint`). Never pickle.
        mean: optional per-channel mean of the input normalisation (:class:`Normalize`), [0, 1] pixel units.
        std: its per-channel standard deviation (with ``mean``), > 0.
        output: which output holds the logits when the model returns a tuple or dict (:class:`SelectLogits`).

    Returns:
        ``(model, info)``; ``model`` maps images ``(N, C, H, W)`` in [0, 1] to its output's logits;
        ``info`` holds ``spec``, ``source``, ``weights``, ``key`` (a SHA-256 prefix of the source file,
        the weights' tensors and the wrappers: it keys the stored records) and ``parameters``.

    Raises:
        AuditInputError: missing file or factory, a factory that fails or returns no ``nn.Module``,
            weights that are not safetensors (pickle) or do not match the model, an unreadable TorchScript file.
        FileNotFoundError: a missing weights file.
    """
    path = Path(spec)
    if ":" not in spec and path.is_file():
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError / ValueError on a non-TorchScript file
            raise AuditInputError(f"--model {spec}: not a TorchScript file (torch.jit.save); for a Python model give "
                                  f"FILE.py:FACTORY ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        source, digest = str(path.resolve()), _sha256(path)
    else:
        factory, source, digest = _import_factory(spec)
        try:
            model = factory()
        except Exception as e:
            raise AuditInputError(f"--model {spec}: calling the factory failed: {type(e).__name__}: {e}") from e
        if not isinstance(model, nn.Module):
            raise AuditInputError(f"--model {spec}: the factory returned a {type(model).__name__}, expected a torch.nn.Module")
    if weights is not None:
        wpath = Path(weights)
        if not wpath.is_file():
            raise FileNotFoundError(f"--weights {weights}: no such file")
        _refuse_pickle(wpath)
        try:
            load_checkpoint(model, wpath)
        except ValueError as e:
            raise AuditInputError(f"--weights {weights} do not fit --model {spec}: {e}") from e
    if (mean is None) != (std is None):
        raise AuditInputError("--mean and --std go together: give both or neither")
    net: nn.Module = SelectLogits(model, output)
    if mean is not None:
        net = Normalize(net, tuple(mean), tuple(std or ()))
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    state = {k: v for k, v in net.state_dict().items()}
    blob = "|".join([source, digest, state_checksum(state), repr(output), repr(mean), repr(std)])
    info = {"spec": spec, "source": source, "weights": None if weights is None else str(Path(weights).resolve()),
            "key": hashlib.sha256(blob.encode()).hexdigest()[:16], "parameters": int(sum(p.numel() for p in net.parameters())),
            "mean": None if mean is None else list(mean), "std": None if std is None else list(std), "output": output}
    return net, info


def _gray(mode: str) -> bool:
    return mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def load_image_folder(root: str | Path) -> Dataset:
    """Images in one sub-folder per class, read with Pillow (classes = sub-folder names, sorted).

    Every image must have the same size. The channels are 1 when every image is greyscale
    (Pillow modes ``1``, ``L``, ``I``, ``F``, ``LA``) and 3 (RGB; alpha dropped) otherwise.

    Args:
        root: the folder; files with other suffixes than :data:`IMAGE_SUFFIXES` are ignored.

    Returns:
        A :class:`~spatialadv.data.Dataset` with split ``"all"``: images float32 ``(N, C, H, W)`` in [0, 1]
        (8-bit values / 255), labels the class's position in the sorted sub-folder names.

    Raises:
        DataError: no class sub-folder, an empty class folder, an unreadable image or images of different sizes
            (the message names the file).
    """
    from PIL import Image, UnidentifiedImageError  # lazy: Pillow only for folders of images

    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: an image folder needs one sub-folder per class (e.g. {root}/cat/1.png), found none")
    files: list[tuple[Path, int]] = []
    for k, c in enumerate(classes):
        fs = sorted(f for f in (root / c).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not fs:
            raise DataError(f"{root / c}: no images ({', '.join(IMAGE_SUFFIXES)})")
        files += [(f, k) for f in fs]
    images, modes = [], []
    size = None
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                img = im.copy()
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{f}: not a readable image ({e})") from e
        if size is None:
            size = img.size
        elif img.size != size:
            raise DataError(f"{f}: image size {img.size[0]}×{img.size[1]} differs from the first image's "
                            f"{size[0]}×{size[1]}; every image of a folder must have the same size")
        images.append(img)
        modes.append(img.mode)
    gray = all(_gray(m) for m in modes)
    arrs = []
    for img in images:
        a = np.asarray(img.convert("L") if gray else img.convert("RGB"), dtype=np.float32) / 255.0
        arrs.append(a[None] if gray else a.transpose(2, 0, 1))
    x = torch.from_numpy(np.ascontiguousarray(np.stack(arrs)))
    y = torch.tensor([k for _, k in files], dtype=torch.long)
    return Dataset(root.name, "all", x, y, tuple(classes))


def load_user_data(name: str, *, labels: str | None = None, seed: int = 0) -> Dataset:
    """The examples of an audit: a built-in test split, a ``.npz``, IDX files or an image folder.

    Args:
        name: a built-in dataset (:data:`spatialadv.data.DATASETS`; its test split with ``seed``), a ``.npz``
            file (arrays ``x``, ``y``; :func:`spatialadv.data.load_npz`), an IDX images file (MNIST format,
            gzipped or not) with ``labels``, or a folder of images with one sub-folder per class
            (:func:`load_image_folder`).
        labels: the IDX labels file (IDX images only).
        seed: the built-in sets' split seed.

    Returns:
        A :class:`~spatialadv.data.Dataset`, images ``(N, C, H, W)`` in [0, 1].

    Raises:
        FileNotFoundError: neither a built-in name nor an existing file or folder.
        DataError: an unreadable or unsupported file (the message lists the accepted formats),
            IDX images without ``labels`` or with a labels file of another length.
    """
    accepted = (f"a built-in dataset ({', '.join(sorted(DATASETS))}), a .npz file (arrays x, y), IDX images with "
                "--labels IDX, or a folder of images with one sub-folder per class")
    if name in DATASETS:
        if labels is not None:
            raise DataError(f"--labels is only for IDX images, not for the built-in {name!r}")
        return load_dataset(name, "test", seed=seed)
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(f"--data {name}: no such file or folder, and not {accepted}")
    if path.is_dir():
        return load_image_folder(path)
    if path.suffix.lower() == ".npz":
        try:
            return load_npz(path)
        except KeyError as e:
            raise DataError(str(e.args[0])) from e
        except DataError:
            raise  # its message already names the file
        except (ValueError, TypeError, OSError) as e:
            raise DataError(f"{path}: {e}") from e
    head = path.read_bytes()[:4]
    if head[:2] == b"\x1f\x8b" or (len(head) == 4 and head[:2] == b"\x00\x00"):
        if labels is None:
            raise DataError(f"--data {name}: IDX images need their labels: add --labels LABELS-IDX-FILE")
        x = read_idx(path)
        if x.ndim not in (3, 4):
            raise DataError(f"{path}: IDX images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
        y = read_idx(labels)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{labels}: {len(y) if y.ndim == 1 else y.shape} labels for {len(x)} images")

        xt = _to_images(x, str(path))
        yt = _to_labels(y, xt.shape[0], str(labels))
        k = int(yt.max()) + 1 if len(yt) else 0
        return Dataset(path.name, "all", xt, yt, tuple(str(i) for i in range(k)))
    raise DataError(f"--data {name}: unsupported format; give {accepted}")
