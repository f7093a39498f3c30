"""Tests of the LAN mask generator, the attention-based detector and the adaptive attack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _contract import run_checked
from spatialadv.attacks import LANAdaptivePGD
from spatialadv.data import load_dataset
from spatialadv.defenses import (
    LANConfig,
    LANDetector,
    MaskClassifier,
    MaskGenerator,
    corrupt,
    lan_loss,
    load_or_train_lan,
    train_lan,
)


class _Subset:
    def __init__(self, x, y):
        self.x, self.y, self.num_classes = x, y, 10


@pytest.fixture(scope="module")
def mnist_small():
    """A seeded linear classifier on 400 MNIST-5k training images (eval mode, frozen) and the data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = load_dataset("mnist", "train")
        x, y = train.x[:400], train.y[:400]
        torch.manual_seed(0)
        f1 = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        opt = torch.optim.Adam(f1.parameters(), lr=1e-2)
        for _ in range(60):
            loss = nn.functional.cross_entropy(f1(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        f1.eval()
        for p in f1.parameters():
            p.requires_grad_(False)
            p.grad = None
        yield f1, x, y
    finally:
        torch.set_num_threads(threads)


def test_corrupt_known_answer():
    x, eta = torch.full((1, 1, 2, 2), 0.2), torch.full((1, 1, 2, 2), 1.0)
    mask = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    torch.testing.assert_close(corrupt(x, mask, eta), torch.tensor([[[[0.2, 1.0], [0.6, 0.4]]]]))


def test_masks_in_unit_interval_and_loss_decreases(mnist_small):
    f1, x, _ = mnist_small
    torch.manual_seed(0)
    g = MaskGenerator(1, 28, hidden=32)
    with torch.no_grad():
        m = g(x[:8])
    assert m.shape == (8, 1, 28, 28) and float(m.min()) >= 0 and float(m.max()) <= 1
    hist = train_lan(g, f1, x, beta=1.0, epochs=6, lr=1e-3, batch_size=50)
    assert hist[-1] < hist[0] - 0.05
    assert not g.training and all(p.grad is None for p in f1.parameters())
    with torch.no_grad():
        m = g(x)
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    # the loss is the formula: mean soft cross-entropy minus beta * mean mask
    eta = x.flip(0)
    loss, lf = lan_loss(f1, g, x, eta, 0.5)
    with torch.no_grad():
        ref = f1(x).softmax(1)
        xt = g(x) * eta + (1 - g(x)) * x
        hand = -(ref * f1(xt).log_softmax(1)).sum(1)
    torch.testing.assert_close(lf, hand)
    torch.testing.assert_close(loss.detach(), hand.mean() - 0.5 * g(x).mean().detach())
    with pytest.raises(ValueError, match="eval mode"):
        train_lan(g, f1.train(), x[:10])
    f1.eval()


class _Identity(nn.Module):
    def forward(self, x):
        return x


class _Permuted(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x).roll(1, dims=1)


def test_detector_flags_nothing_when_f2_agrees_by_construction(mnist_small):
    f1, x, _ = mnist_small
    agree = LANDetector(f1, _Identity(), f1).predict(x)
    assert not bool(agree["flag"].any())
    assert torch.equal(agree["pred1"], agree["pred2"])
    disagree = LANDetector(f1, _Identity(), _Permuted(f1)).predict(x)
    assert bool(disagree["flag"].all())


def test_load_or_train_lan_caches(mnist_small, tmp_path):
    f1, x, y = mnist_small
    cfg = LANConfig(hidden=16, lan_epochs=1, f2_epochs=1, max_train=200)
    det, info = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    assert not info["cached"] and len(info["lan_history"]) == 1
    det2, info2 = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    assert info2["cached"] and info2["key"] == info["key"]
    torch.testing.assert_close(det.g(x[:5]), det2.g(x[:5]))
    torch.testing.assert_close(det(x[:5]), det2(x[:5]))
    assert isinstance(det.f2, MaskClassifier) and not det.f2.training
    _, info3 = load_or_train_lan(f1, "linear-test", _Subset(x, y), LANConfig(hidden=16, lan_epochs=1, f2_epochs=1,
                                                                                max_train=200, beta=0.5),
                                 directory=tmp_path)
    assert info3["key"] != info["key"]


def test_adaptive_attack_contract(mnist_small, tmp_path):
    f1, x, y = mnist_small
    cfg = LANConfig(hidden=16, lan_epochs=1, f2_epochs=1, max_train=200)
    det, _ = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    with torch.no_grad():
        ok = f1(x).argmax(1) == y
    xs, ys = x[ok][:6], y[ok][:6]
    t = (ys + 1) % 10
    attack = LANAdaptivePGD(detector=det, eps=0.3, step_size=0.02, steps=40)
    res = run_checked(attack, f1, xs, ys, t)
    assert float((res.x_adv - xs).abs().max()) <= 0.3 + 1e-6
    assert res.success_rate > 0
    with pytest.raises(ValueError, match="targeted"):
        attack(f1, xs, ys)
    with pytest.raises(TypeError, match="detector must be an nn.Module"):
        LANAdaptivePGD(detector="lan")


def test_detection_rates_from_records():
    from spatialadv.experiments.lan_detection import _rates

    recs = [
        # successful, flagged, mask class retained, benign mask correct, recovered
        {"y": 1, "target": 2, "fools_f1": True, "pred1": 1, "pred2": 1, "pred1_adv": 2, "pred2_adv": 1},
        # successful, not flagged (mask follows the attack), benign mask wrong
        {"y": 3, "target": 4, "fools_f1": True, "pred1": 3, "pred2": 5, "pred1_adv": 4, "pred2_adv": 4},
        # failed attack: ignored
        {"y": 0, "target": 6, "fools_f1": True, "pred1": 0, "pred2": 0, "pred1_adv": 7, "pred2_adv": 0},
    ]
    r = _rates(recs)
    assert r["successes"] == 2 and r["n"] == 3 and r["filtered"] == 1
    assert (r["success"].k, r["success"].n) == (2, 3)
    for key, (k, n) in {"tpr": (1, 2), "tnr": (1, 2), "retention": (1, 2), "tpr_filtered": (1, 1),
                        "tnr_filtered": (1, 1), "recovery": (1, 1)}.items():
        est = r[key]
        assert (est.k, est.n, est.method) == (k, n, "clopper-pearson"), key
    # 1 of 2: the exact binomial interval [0.0126, 0.9874]; 1 of 1: [0.025, 1]
    assert r["tpr"].low == pytest.approx(0.012579, abs=1e-6) and r["tpr"].high == pytest.approx(0.987421, abs=1e-6)
    assert r["recovery"].low == pytest.approx(0.025) and r["recovery"].high == 1.0


def test_thesis_numbers_carry_their_table():
    from spatialadv.experiments.lan_detection import _paper

    p = _paper("table3", "C&W", 0, "Table 3")
    assert p.value == 0.917 and p.source == "Nguyen 2018, Table 3 (CIFAR-10, crafted on VGG-like)"
    assert _paper("table2", "JSMA", 1, "Table 2").value == 0.614
    assert _paper("table1_retention", "FGSM", None, "Table 1").value == 0.863
    assert _paper("table2", "stAdv", 0, "Table 2") is None  # the thesis does not attack with stAdv
