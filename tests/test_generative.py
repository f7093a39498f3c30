"""Amortized generators (SdpAdv / SdAdv / AdvGAN, ``spatialadv.attacks.generative``) and the
FGSM Adv-Train defense, on a small seeded MLP trained on real digits (``conftest.digits_model``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _contract import run_checked
from spatialadv.attacks import FGSM, SdpAdv, advgan, sdadv
from spatialadv.data import DataSpec, load_dataset
from spatialadv.defenses import fgsm_adversary
from spatialadv.ops import affine_warp, identity_theta
from spatialadv.training import ModelSpec, Objective, TrainConfig, load_or_train

FAST = dict(epochs=4, batch_size=64, alpha_every=1, seed=0)


@pytest.fixture(scope="module")
def fitted(digits_model):
    """SdpAdv (ε = 0.2), SdAdv and AdvGAN (ε = 0.2) fitted for a few epochs on digits train."""
    model, _, _ = digits_model
    train = load_dataset("digits", "train")
    torch.set_num_threads(1)
    return {
        "sdpadv": SdpAdv(eps=0.2, **FAST).fit(model, train, progress=False),
        "sdadv": sdadv(**FAST).fit(model, train, progress=False),
        "advgan": advgan(eps=0.2, **FAST).fit(model, train, progress=False),
    }


def _check_bounds(atk: SdpAdv, x: torch.Tensor) -> dict:
    out = atk.generate(x)
    eye = identity_theta(len(x))
    assert float((out["theta"] - eye).abs().max()) <= atk.gamma + 1e-7
    assert float(out["eta"].abs().max()) <= atk.eps + 1e-7
    torch.testing.assert_close(out["x_t"], affine_warp(x, out["theta"]))
    torch.testing.assert_close(out["x_a"], (out["x_t"] + out["eta"]).clamp(0, 1))
    return out


def test_theta_and_eta_bounds_and_contract(digits_model, fitted):
    model, x, y = digits_model
    atk = fitted["sdpadv"]
    assert atk.variant == "SdpAdv" and atk.fitted
    out = _check_bounds(atk, x)
    assert float((out["theta_raw"] - identity_theta(len(x))).abs().max()) > 0  # the localisation net moved
    res = run_checked(atk, model, x, y)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    s = res.success
    assert res.success_rate >= 0.5, res.success_rate
    torch.testing.assert_close(res.x_adv[s], out["x_a"][s])
    torch.testing.assert_close(res.theta[s], out["theta"][s])
    torch.testing.assert_close(res.x_adv[s], affine_warp(x, res.theta)[s] + res.eta[s], rtol=0, atol=1e-6)
    assert torch.equal(res.x_adv[~s], x[~s]) and torch.equal(res.theta[~s], identity_theta(int((~s).sum())))
    assert float(res.eta.abs().max()) <= atk.eps + 1e-6
    # threat parameters and size (AffineLinf box norm, unitless), no classifier evaluations
    assert torch.equal(res.params["theta"], res.theta)
    torch.testing.assert_close(res.params["eta_linf"], res.eta.flatten(1).abs().amax(1))
    assert res.unit == "affine_linf_box" and bool((res.size[s] <= 1 + 1e-6).all()) and bool((res.size[s] > 0).all())
    box = torch.maximum((res.theta - identity_theta(len(x))).flatten(1).abs().amax(1) / atk.gamma,
                        res.params["eta_linf"] / atk.eps)
    torch.testing.assert_close(res.size[s], box[s])
    assert torch.all(res.grad_evals == 0) and torch.all(res.forward_evals == 0)
    # one forward pass per image, no batch coupling
    sub = atk(model, x[3:7], y[3:7])
    torch.testing.assert_close(sub.x_adv, res.x_adv[3:7])
    assert all(p.grad is None for p in model.parameters())
    h = atk.history
    assert len(h["epochs"]) == FAST["epochs"] and 1 <= h["best_epoch"] <= FAST["epochs"]
    assert h["best_val_success"] == max(e["val_success"] for e in h["epochs"])


def test_gamma_zero_is_advgan(digits_model, fitted):
    model, x, y = digits_model
    atk = fitted["advgan"]
    assert atk.variant == "AdvGAN" and atk.gamma == 0
    out = _check_bounds(atk, x)
    assert torch.equal(out["theta"], identity_theta(len(x)))
    assert torch.equal(out["x_t"], x)  # x_T = x bit for bit: pure perturbation
    torch.testing.assert_close(out["x_a"], (x + out["eta"]).clamp(0, 1), rtol=0, atol=0)
    res = atk(model, x, y)
    assert float((res.x_adv - x).abs().max()) <= atk.eps + 1e-6
    assert res.success_rate > 0.2
    # the same generator through SdpAdv(gamma=0, ...) is the same object type and settings
    assert advgan(eps=0.2, **FAST) == SdpAdv(eps=0.2, gamma=0.0, **FAST)


def test_eps_zero_is_sdadv(digits_model, fitted):
    model, x, y = digits_model
    atk = fitted["sdadv"]
    assert atk.variant == "SdAdv"
    out = _check_bounds(atk, x)
    assert torch.equal(out["eta"], torch.zeros_like(x))
    assert torch.equal(out["x_a"], out["x_t"])
    res = atk(model, x, y)
    assert res.success_rate > 0.3, res.success_rate
    assert torch.equal(res.eta, torch.zeros_like(x))


def test_save_load_round_trip(tmp_path, digits_model, fitted):
    model, x, y = digits_model
    atk = fitted["sdpadv"]
    path = atk.save(tmp_path / "g.safetensors")
    back = SdpAdv.load(path)
    assert back == atk and back.history["best_epoch"] == atk.history["best_epoch"]
    torch.testing.assert_close(back.generate(x)["x_a"], atk.generate(x)["x_a"], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*missing.safetensors"):
        SdpAdv.load(tmp_path / "missing.safetensors")


def test_targeted_generator(digits_model):
    model, x, y = digits_model
    train = load_dataset("digits", "train")
    atk = SdpAdv(eps=0.3, target_class=3, **FAST).fit(model, train, progress=False)
    keep = y != 3
    t = torch.full_like(y[keep], 3)
    res = run_checked(atk, model, x[keep], y[keep], t)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) == 3)
    assert res.success_rate > 0.2
    with pytest.raises(ValueError, match="target_class"):
        atk(model, x[keep], y[keep], target=(y[keep] + 1) % 10 * 0 + 5 - (y[keep] == 5).long())


def test_errors(digits_model):
    model, x, y = digits_model
    with pytest.raises(ValueError, match="not fitted"):
        SdpAdv()(model, x, y)
    with pytest.raises(ValueError, match="gamma"):
        SdpAdv(gamma=-0.1)
    with pytest.raises(ValueError, match="val_fraction"):
        SdpAdv(val_fraction=1.0)
    with pytest.raises(TypeError, match="epochs"):
        SdpAdv(epochs=2.5)
    drop = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)).train()
    with pytest.raises(ValueError, match="train mode"):
        SdpAdv(epochs=1).fit(drop, (x, y), progress=False)


def test_fgsm_adv_train_is_cached_and_more_robust(tmp_path, one_thread):
    data = DataSpec("digits")
    test = data.test()
    cfg = TrainConfig(epochs=8, batch_size=64, lr=3e-3)
    plain, info_p = load_or_train(ModelSpec("fc-200", data, cfg), progress=False, directory=tmp_path)
    robust_spec = ModelSpec("fc-200", data, cfg, Objective("fgsm-at", eps=0.1))
    robust, info_r = load_or_train(robust_spec, progress=False, directory=tmp_path)
    assert info_r["key"] != info_p["key"] and info_r["key"].startswith("fc-200-fgsm-at-digits-")
    assert not robust.training and info_r["test_accuracy"] > 0.8
    fgsm = FGSM(eps=0.1)
    acc_p = 1 - fgsm(plain, test.x, test.y).success_rate
    acc_r = 1 - fgsm(robust, test.x, test.y).success_rate
    assert acc_r > acc_p + 0.1, (acc_p, acc_r)
    again, info2 = load_or_train(robust_spec, progress=False, directory=tmp_path)
    assert info2["cached"] and all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), robust.state_dict().values()))
    # the adversary leaves no gradient on the model (checked on trainable parameters)
    x = test.x[:8]
    plain.requires_grad_(True)
    xa = fgsm_adversary(0.1)(plain, x, test.y[:8])
    assert float((xa - x).abs().max()) <= 0.1 + 1e-6 and all(p.grad is None for p in plain.parameters())


def test_warm_start(digits_model, fitted):
    model, x, _ = digits_model
    train = load_dataset("digits", "train")
    start = fitted["sdadv"]
    before = {k: v.clone() for k, v in start.nets.state_dict().items()}
    warm = SdpAdv(eps=0.2, **{**FAST, "epochs": 2}).fit(model, train, progress=False, init=start)
    h = warm.history
    # the start is "epoch 0" of the model selection: the kept networks are never worse on validation
    assert h["init_val_success"] is not None and h["best_val_success"] >= h["init_val_success"]
    assert h["init"] == start.hyperparameters() and len(h["epochs"]) == 2
    assert all(torch.equal(v, start.nets.state_dict()[k]) for k, v in before.items())  # the start is untouched
    _check_bounds(warm, x)
    with pytest.raises(ValueError, match="fitted"):
        SdpAdv(eps=0.2, **FAST).fit(model, train, progress=False, init=SdpAdv(eps=0.1))
    with pytest.raises(TypeError, match="init"):
        SdpAdv(eps=0.2, **FAST).fit(model, train, progress=False, init="sdadv")
