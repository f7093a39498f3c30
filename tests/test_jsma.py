"""Tests of JSMA (Papernot et al. 2016) on the seeded digits MLP (``conftest.digits_model``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from _contract import run_checked
from spatialadv.attacks import JSMA, make_attack
from spatialadv.attacks.jsma import pair_saliency
from spatialadv.threats import L0Pixels


def _target(y, mode):
    return (y + 3) % 10 if mode == "targeted" else None


@pytest.mark.parametrize("mode", ["untargeted", "targeted"])
@pytest.mark.parametrize("theta,gamma", [(1.0, 0.3), (-1.0, 0.3), (0.5, 0.2), (1.0, 0.05)])
def test_contract_and_l0_budget(digits_model, mode, theta, gamma):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    t = _target(y, mode)
    attack = JSMA(theta=theta, gamma=gamma)
    res = run_checked(attack, model, x, y, t)
    changed = (res.x_adv != x).flatten(1).sum(1)
    assert int(changed.max()) <= math.floor(gamma * 64)
    torch.testing.assert_close(res.size, changed.to(x.dtype))
    assert res.unit == "l0"
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == t if t is not None else pred != y)
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert bool((res.grad_evals >= 1).all())
    # theta > 0 only increases, theta < 0 only decreases intensities
    delta = res.x_adv - x
    assert bool((delta * theta >= 0).all())


@pytest.mark.parametrize("mode", ["untargeted", "targeted"])
def test_succeeds_on_small_model(digits_model, mode):
    model, x, y = digits_model
    res = JSMA(theta=1.0, gamma=0.3)(model, x, y, target=_target(y, mode))
    assert res.success_rate >= (0.95 if mode == "untargeted" else 0.7)
    # few features change: far below the budget on average
    assert float(res.size[res.success].mean()) < 0.2 * 64


def test_tiny_budget_fails_somewhere(digits_model):
    model, x, y = digits_model
    res = JSMA(theta=1.0, gamma=2 / 64)(model, x, y, target=(y + 3) % 10)
    assert bool((~res.success).any())
    assert int(res.size.max()) <= 2


@pytest.mark.parametrize("mode", ["untargeted", "targeted"])
def test_batch_independence(digits_model, mode):
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    t = _target(y, mode)
    attack = JSMA(theta=1.0, gamma=0.3, batch_chunk=3)
    full = attack(model, x, y, target=t)
    for i in (0, 11, 19):
        one = attack(model, x[i:i + 1], y[i:i + 1], target=None if t is None else t[i:i + 1])
        torch.testing.assert_close(one.x_adv[0], full.x_adv[i], atol=1e-6, rtol=0)
        assert int(one.grad_evals[0]) == int(full.grad_evals[i])
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    shuf = JSMA(theta=1.0, gamma=0.3)(model, x[perm], y[perm], target=None if t is None else t[perm])
    torch.testing.assert_close(shuf.x_adv, full.x_adv[perm], atol=1e-6, rtol=0)
    assert torch.equal(shuf.grad_evals, full.grad_evals[perm])


def test_pair_saliency_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    alpha, beta = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    domain = torch.rand(3, 7, generator=gen) > 0.2
    p, q, found = pair_saliency(alpha, beta, domain)
    for k in range(3):
        best, arg = -math.inf, None
        for i, j in itertools.product(range(7), range(7)):
            a, b = float(alpha[k, i] + alpha[k, j]), float(beta[k, i] + beta[k, j])
            if i != j and domain[k, i] and domain[k, j] and a > 0 and b < 0 and a * -b > best:
                best, arg = a * -b, (i, j)
        assert bool(found[k]) == (arg is not None)
        if arg is not None:
            assert (int(p[k]), int(q[k])) == arg
    # no admissible pair: alpha all negative
    _, _, none = pair_saliency(-alpha.abs(), beta, domain)
    assert not bool(none.any())


def test_linear_model_known_pair():
    # logits Z = W x with W chosen so that features 0 and 1 raise class 1 and lower class 0
    w = torch.zeros(2, 4)
    w[1, 0], w[1, 1], w[0, 0], w[0, 1] = 2.0, 1.5, -1.0, -1.0
    w[0, 2] = 0.5
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(w)
    x = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]])  # class 0 (Z0 = 0.5, Z1 = 0)
    res = JSMA(theta=1.0, gamma=0.5)(model, x, torch.tensor([0]), target=torch.tensor([1]))
    assert bool(res.success[0])
    torch.testing.assert_close(res.x_adv.flatten(), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert int(res.size[0]) == 2 and int(res.grad_evals[0]) == 2


@pytest.mark.parametrize("kwargs,exc", [({"theta": 0.0}, ValueError), ({"theta": 1.5}, ValueError),
                                        ({"theta": "1"}, TypeError), ({"gamma": 0.0}, ValueError),
                                        ({"gamma": 1.2}, ValueError), ({"batch_chunk": 0}, ValueError)])
def test_invalid_hyperparameters(kwargs, exc):
    with pytest.raises(exc, match=f"^{next(iter(kwargs))} must be"):
        JSMA(**kwargs)


def test_registered_and_threat():
    assert isinstance(make_attack("jsma", gamma=0.1), JSMA)
    assert L0Pixels(gamma=0.1).budget(torch.zeros(1, 1, 28, 28)) == 78
