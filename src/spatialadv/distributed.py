"""Exact sharding of evaluations and training over ``torch.distributed`` processes.

Every command runs unchanged under ``torchrun``::

    torchrun --nproc-per-node=2 -m spatialadv attack --model mnist-a --attack pgd --n 40 --store S
    torchrun --nproc-per-node=2 -m spatialadv reproduce stadv-mnist
    torchrun --nnodes=2 --node-rank=R --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --nproc-per-node=8 -m spatialadv attack ...
    # multi-node: the store (--store / --out) must be on a file system every node shares

How the work is split (and why nothing is lost or duplicated):

* Attacks are per example and batch-independent, and every record is keyed by
  its ``(image index, target)`` pair, so the planned pairs are cut into
  batches of ``batch_size`` and batch ``b`` goes to rank ``b mod world_size``
  (:func:`shard`): a partition of the planned pairs, the remainder included.
  Each rank commits each finished batch to the one SQLite store, so a rank
  killed mid-run loses only its unfinished batch; the rerun's ranks skip what
  is stored. With the single-process command's ``--batch-size``, the batches
  are the same, so the records are the same bit for bit.
* Anything cached on disk (checkpoints, fitted generators) is produced by rank
  0 first while the others wait (:func:`rank_zero_first`), then loaded by the
  others; training itself is data-parallel
  (:class:`torch.nn.parallel.DistributedDataParallel`, see
  :func:`spatialadv.training.train_model`), saved by rank 0 under the same cache
  key as a single-process run.
* Rank 0 alone writes the store's metadata and the report.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) every helper
here is a no-op: rank 0 of a world of 1.

Backends: gloo on CPU, NCCL when the device is CUDA (each process then uses
``cuda:LOCAL_RANK``). Sources: PyTorch's ``torch.distributed`` and
``torchrun`` (elastic launch) documentation.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["init", "is_distributed", "rank", "world_size", "barrier", "shard", "rank_zero_first", "all_reduce_mean",
           "default_device"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def init(device: str | torch.device | None = None) -> bool:
    """Join the process group ``torchrun`` describes in the environment, once.

    Args:
        device: where the process computes; ``"cuda"`` (or a CUDA device)
            selects NCCL and ``cuda:LOCAL_RANK``, anything else gloo.

    Returns:
        True when running with more than one process.

    Raises:
        ValueError: ``WORLD_SIZE`` or ``RANK`` in the environment is not an integer.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        int(os.environ.get("RANK", "0"))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE / RANK must be integers (set by torchrun): {e}") from e
    if world <= 1:
        return False
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # generous timeout: rank 0 may train a model while the others wait at a barrier
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=6))
    log.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())
    return True


def is_distributed() -> bool:
    """Whether this process belongs to an initialised group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait until every process gets here (no-op outside a process group)."""
    if is_distributed():
        dist.barrier()


def default_device() -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(items: Sequence[T], batch_size: int, *, rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items``: batches ``b`` with ``b mod world == rank``.

    The shares of all ranks partition ``items`` (every item in exactly one
    share, the remainder included) and keep their order; a rank's batches are
    the single-process batches, so batch-dependent arithmetic is the same too.

    Args:
        items: what is planned, in order (pairs or item names).
        batch_size: items per batch (≥ 1): the unit of work and of commit.
        rank_: override of :func:`rank` (tests).
        world: override of :func:`world_size` (tests).

    Returns:
        The items of this rank's batches, in order.

    Raises:
        ValueError: ``batch_size`` < 1 or a rank outside ``[0, world)``.

    Example:
        >>> shard(list(range(7)), 2, rank_=0, world=2), shard(list(range(7)), 2, rank_=1, world=2)
        ([0, 1, 4, 5], [2, 3, 6])
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= r < w:
        raise ValueError(f"rank {r} outside [0, {w})")
    if w == 1:
        return list(items)
    out: list[T] = []
    for b, s in enumerate(range(0, len(items), batch_size)):
        if b % w == r:
            out.extend(items[s : s + batch_size])
    return out


@contextlib.contextmanager
def rank_zero_first() -> Iterator[bool]:
    """Run the block on rank 0 first, then on the other ranks (which find rank 0's cache files).

    Use around code that creates a cached file (a checkpoint, a fitted
    generator): rank 0 creates it while the others wait, then the others load
    it instead of creating it again. Yields whether this is rank 0.
    """
    first = rank() == 0
    if not first:
        barrier()
    try:
        yield first
    finally:
        if first:
            barrier()


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    """Average tensors (e.g. gradients) over the processes, in place (no-op outside a process group)."""
    if not is_distributed():
        return
    w = dist.get_world_size()
    for t in tensors:
        dist.all_reduce(t)
        t.div_(w)
