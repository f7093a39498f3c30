"""Shared fixtures: a small seeded classifier trained on real data (sklearn digits)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from spatialadv.data import load_dataset


def _train_digits_mlp() -> tuple[nn.Module, float]:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(train.x[b]), train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        acc = float((model(test.x).argmax(1) == test.y).float().mean())
    return model, acc


@pytest.fixture(scope="module")
def digits_model() -> Iterator[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """``(model, x, y)``: a seeded 64-64-10 MLP (eval mode, parameters still
    require grad, ``.grad`` is None) trained on the digits train split, and the
    first 64 *correctly classified* digits test images ``(64, 1, 8, 8)`` in
    [0, 1] with their labels ``(64,)``.

    While the fixture is alive torch uses one intra-op thread: the tensors are
    tiny, and on a busy 2-core machine OpenMP's spinning threads made these
    tests ~50x slower (the previous setting is restored afterwards).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, acc = _train_digits_mlp()
        assert acc > 0.9, f"digits MLP test accuracy {acc:.3f} too low for the attack tests"
        test = load_dataset("digits", "test")
        with torch.no_grad():
            ok = model(test.x).argmax(1) == test.y
        yield model, test.x[ok][:64].clone(), test.y[ok][:64].clone()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """The sklearn digits training split (8 × 8, 10 classes) as a :class:`~spatialadv.data.Dataset`."""
    from spatialadv.data import DataSpec

    return DataSpec("digits").train()


def fc200_digits(seed: int = 0) -> nn.Module:
    """A freshly initialised ``fc-200`` for 8 × 8 digits, built under ``torch.manual_seed(seed)``."""
    from spatialadv.models import build_model

    torch.manual_seed(seed)
    return build_model("fc-200", image_size=8)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test with one intra-op torch thread (tiny tensors: OpenMP's
    spinning threads only slow them down on a busy machine); restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reproduce_tiny(tmp_path_factory, name: str, options: list[str]):
    """Run ``spatialadv reproduce NAME`` with ``options`` into a fresh folder (own model cache, one thread); its path."""
    from spatialadv.cli import main

    out = tmp_path_factory.mktemp(name) / "rep"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPATIALADV_CACHE", str(out.parent / "cache"))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main(["reproduce", name, "--out", str(out), *options, "--quiet"]) == 0
        finally:
            torch.set_num_threads(threads)
    return out
