"""Input validation shared by ops, attacks and the evaluation runner.

Every check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong
shape, range or value) with a message naming the argument and what is
accepted. None of them modify their input.
"""

from __future__ import annotations

import re
import warnings

import torch
from torch import Tensor, nn


def check_images(x: object, name: str = "x") -> Tensor:
    """Check a batch of images: float tensor ``(N, C, H, W)``, finite, in [0, 1].

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: wrong number of dimensions, empty batch, NaN/inf, or
            pixels outside [0, 1].
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with pixels in [0, 1], got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0)")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must have pixels in [0, 1], got range [{lo:.4g}, {hi:.4g}] "
            "(divide uint8 images by 255; keep normalisation inside the model)"
        )
    return x


def check_labels(y: object, n: int, num_classes: int | None, name: str = "y") -> Tensor:
    """Check integer class labels of shape ``(N,)`` in ``[0, num_classes)``.

    Raises:
        TypeError: ``y`` is not an integer tensor.
        ValueError: wrong shape or a label out of range.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N,), got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the images, got {tuple(y.shape)}")
    if num_classes is not None and n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must be in [0, {num_classes - 1}] for a {num_classes}-class model, got range [{lo}, {hi}]")
    return y.long()


def check_logits(logits: object, n: int, num_classes: int | None = None) -> Tensor:
    """Check a model's output: a float tensor ``(N, K)`` with K ≥ 2, finite.

    Raises:
        TypeError: the model did not return a floating-point tensor.
        ValueError: wrong shape, wrong number of classes, or NaN/inf logits.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"the model must return a floating-point logits tensor (N, K), got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"the model must return logits of shape ({n}, K), got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"the model must return at least 2 logits per image, got {logits.shape[1]}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"the model returned {logits.shape[1]} logits per image, expected {num_classes}")
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or infinite logits")
    return logits


def warn_if_training(model: nn.Module) -> None:
    """Warn (``UserWarning``) when ``model`` is in train mode.

    Dropout and batch norm would make the attack non-deterministic. The mode is
    never changed.
    """
    if isinstance(model, nn.Module) and model.training:
        warnings.warn(
            "the model is in train mode (dropout/batch-norm active); attacks do not change the mode — "
            "call model.eval() first for deterministic results",
            UserWarning,
            stacklevel=3,
        )


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (≥ 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_int(value: int, name: str, *, minimum: int = 1) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an int ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_bool(value: object, name: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``bool`` (``True`` or ``False``; ints are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__}")


def check_index(index: object, n: int, name: str = "index") -> Tensor:
    """Check per-example identities and return them as a CPU int64 tensor ``(N, k)``.

    Each row identifies one example (e.g. its dataset index, or the pair
    ``(dataset index, target)``); attacks seed every random draw of an example
    from its row only (see :func:`spatialadv.threats.example_generator`).

    Args:
        index: ``None`` (the default identities ``arange(N)``, i.e. rows
            ``[i]``), or an integer tensor of shape ``(N,)`` (one number per
            example) or ``(N, k)`` with ``k >= 1``. Any integer dtype is
            accepted (negative entries included) and converted to int64.
        n: the batch size N.
        name: the argument's name, used in error messages.

    Returns:
        ``(N, k)`` int64 tensor on the CPU (``k = 1`` for ``None`` or a 1-D index).

    Raises:
        TypeError: not a tensor, or a floating-point, complex or bool dtype
            (floats could hold NaN or non-integral values).
        ValueError: wrong shape (first dimension must be N, at most 2 dims,
            at least one column).
    """
    if index is None:
        return torch.arange(n, dtype=torch.long).view(n, 1)
    if not isinstance(index, Tensor):
        raise TypeError(f"{name} must be an integer torch.Tensor of shape ({n},) or ({n}, k), got {type(index).__name__}")
    if index.dtype.is_floating_point or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (torch.long), got dtype {index.dtype}")
    if index.dim() == 1:
        index = index.view(-1, 1)
    if index.dim() != 2 or index.shape[0] != n or index.shape[1] < 1:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k) with k >= 1 to match the images, got {tuple(index.shape)}")
    return index.detach().to(device="cpu", dtype=torch.long)


_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_name(value: object, name: str) -> str:
    """Check a name that becomes part of a file name (cache keys, checkpoint paths).

    Accepted: a non-empty ``str`` of ``[A-Za-z0-9._-]`` only, without ``..``
    (so no slash, backslash, spaces, or parent-directory tricks).

    Args:
        value: the name to check.
        name: the argument's name, used in error messages.

    Returns:
        ``value`` unchanged.

    Raises:
        TypeError: ``value`` is not a ``str``.
        ValueError: empty, a character outside ``[A-Za-z0-9._-]``, or ``..``.
    """
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{name} must be a non-empty name of letters, digits, '.', '_' and '-' without '..' "
                         f"(it becomes part of a file name), got {value!r}")
    return value
