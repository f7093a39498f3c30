"""The threat-model interface and the per-example random generators shared by all threats."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._validation import check_index, check_int

__all__ = ["Threat", "example_generator", "per_example_draws"]

_UINT64 = (1 << 64) - 1


def example_generator(seed: int, row: Sequence[int]) -> torch.Generator:
    """A CPU ``torch.Generator`` whose state depends only on ``(seed, *row)``.

    The state is ``numpy.random.SeedSequence([seed, *row]).generate_state(2)``
    (two 32-bit words joined into one 64-bit seed). Negative entries of
    ``row`` are mapped to their 64-bit two's complement, so every int64 row
    gives a valid, distinct entropy; non-negative entries are used as they are
    (``row = [i]`` reproduces the generator of position ``i`` of earlier
    versions, which seeded by ``(seed, i)``).

    Args:
        seed: int ≥ 0.
        row: the example's identity, a sequence of ints (one row of an
            attack's ``index``).

    Raises:
        TypeError, ValueError: ``seed`` not an int ≥ 0.
    """
    check_int(seed, "seed", minimum=0)
    entropy = [int(seed), *(int(v) & _UINT64 for v in row)]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def per_example_draws(x: Tensor, seed: int, index: Tensor | None,
                      draw: Callable[[torch.Generator], Tensor]) -> Tensor:
    """Stack ``draw(generator)`` over the examples, one generator per index row.

    Args:
        x: the batch ``(N, …)``; gives N and the device of the result.
        seed: int ≥ 0.
        index: ``None`` (rows ``[i]``), ``(N,)`` or ``(N, k)`` integer tensor.
        draw: draws one example's tensor on the CPU from the given generator.

    Returns:
        ``(N, …)`` the stacked draws, moved to ``x.device``.

    Raises:
        TypeError, ValueError: invalid ``seed`` or ``index``
            (:func:`spatialadv._validation.check_index`).
    """
    rows = check_index(index, x.shape[0]).tolist()
    check_int(seed, "seed", minimum=0)
    return torch.stack([draw(example_generator(seed, row)) for row in rows]).to(x.device)


class Threat(ABC):
    """Abstract base class of the threat models: what a perturbation is and how big it is.

    Every threat is a frozen dataclass of its budget(s) with

    * ``name`` — the threat model (e.g. ``"linf"``, ``"rotation_translation"``);
    * ``unit`` — the name of the unit of :meth:`size` (what
      :attr:`~spatialadv.attacks.AttackResult.unit` reports; an attack's
      unit is always its ``threat.unit``);
    * ``project(...)`` — map a perturbation onto the threat set, per example;
    * ``random_start(x, seed, index)`` — a random point of the set per
      example, drawn from :func:`example_generator` ``(seed, index row)`` on
      the CPU and moved to ``x.device`` (independent of the batch);
    * ``size(...)`` — the perturbation's size in ``unit``, ``(N,)``;
    * ``measure(x, result)`` — ``size`` of an
      :class:`~spatialadv.attacks.AttackResult`'s perturbation (not masked by
      success).

    The arguments of ``project`` and ``size`` depend on the parametrisation
    (an additive δ, a flow, affine parameters); each subclass documents them.
    The four methods are abstract: a threat model that does not implement
    one of them cannot be instantiated (``TypeError``).
    """

    name: ClassVar[str] = ""
    unit: ClassVar[str] = ""

    @abstractmethod
    def project(self, *args: Any, **kwargs: Any) -> Any:
        """Map perturbations onto the threat set, per example (arguments and result: see the subclass).

        Each subclass has its own signature (a tensor ``δ``, a flow, affine parameters); the base class
        accepts any, so that every subclass's signature is a valid override.
        """

    @abstractmethod
    def random_start(self, x: Tensor, seed: int, index: Tensor | None = None) -> Any:
        """A random point of the set per example for the images ``x`` ``(N, C, H, W)``.

        Drawn from :func:`example_generator` ``(seed, index row)`` on the CPU
        and moved to ``x.device``, so it does not depend on the batch.
        """

    @abstractmethod
    def size(self, *args: Any, **kwargs: Any) -> Tensor:
        """The perturbation's size ``(N,)`` in ``unit`` (arguments: see the subclass)."""

    @abstractmethod
    def measure(self, x: Tensor, result: Any) -> Tensor:
        """Size ``(N,)`` of ``result``'s perturbation of ``x`` in this threat's ``unit`` (not masked by success).

        Args:
            x: the original images ``(N, C, H, W)`` in [0, 1].
            result: the attack's :class:`~spatialadv.attacks.AttackResult` on ``x``.
        """
