"""Attacks whose first gradient is at x reuse the input check's forward: one model pass fewer, same result bit for bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from spatialadv.attacks import FGSM, IFGSM, MIM, PGD, SmoothPGDL2


class Counting(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def _without_reuse(attack):
    """The same attack with the reuse switched off (a subclass that only flips the class flag)."""

    @dataclass(frozen=True, kw_only=True)
    class Plain(type(attack)):  # type: ignore[misc, valid-type]
        reuses_check_forward: ClassVar[bool] = False

    from dataclasses import fields

    return Plain(**{f.name: getattr(attack, f.name) for f in fields(attack) if f.init})


@pytest.mark.parametrize("attack", [FGSM(eps=0.2), IFGSM(eps=0.2, step_size=0.05, steps=3),
                                    IFGSM(eps=0.2, step_size=0.05, steps=3, early_stop=True),
                                    MIM(eps=0.2, step_size=0.05, steps=3), SmoothPGDL2(eps=2.0, step_size=1.0, steps=3)],
                         ids=["fgsm", "ifgsm", "ifgsm-early", "mim", "spgd2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_reuse_saves_one_forward_and_changes_nothing(digits_model, attack, targeted):
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    target = (y + 1) % 10 if targeted else None
    counted = Counting(model).eval()
    new = attack(counted, x, y, target=target)
    calls_new, counted.calls = counted.calls, 0
    old = _without_reuse(attack)(counted, x, y, target=target)
    assert calls_new == counted.calls - 1
    assert torch.equal(new.x_adv, old.x_adv) and torch.equal(new.success, old.success)
    assert torch.equal(new.grad_evals, old.grad_evals)
    assert all(p.grad is None for p in model.parameters())


def test_random_start_attacks_do_not_reuse(digits_model):
    model, x, y = digits_model
    counted = Counting(model).eval()
    res = PGD(eps=0.2, step_size=0.05, steps=2)(counted, x[:8], y[:8])
    assert counted.calls == 1 + 2 + 1 and int(res.grad_evals[0]) == 2  # check, two gradients, success
