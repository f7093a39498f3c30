"""Defense-GAN: WGAN-GP generator training (cached), the seeded projection, and attacks through it (BPDA)."""

from __future__ import annotations

import pytest
import torch

from spatialadv.attacks import PGD
from spatialadv.data import DataSpec
from spatialadv.defenses import Defended
from spatialadv.defenses.defense_gan import (
    DefenseGANProjection,
    GANConfig,
    Generator,
    generator_key,
    load_or_train_generator,
)

TINY = GANConfig(z_dim=16, hidden=(64, 64), iterations=150, n_critic=2, batch_size=64)


@pytest.fixture(scope="module")
def digits_gan(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = DataSpec("digits")
        gen, info = load_or_train_generator(spec, TINY, directory=tmp_path_factory.mktemp("gan"), progress=False)
        yield spec, gen, info
    finally:
        torch.set_num_threads(threads)


def test_generator_is_cached_and_keyed_by_its_settings(digits_gan, tmp_path):
    spec, gen, info = digits_gan
    assert not info["cached"] and info["train_seconds"] > 0
    d = tmp_path / "g"
    g1, i1 = load_or_train_generator(spec, GANConfig(z_dim=8, hidden=(16,), iterations=3, n_critic=1), directory=d,
                                     progress=False)
    g2, i2 = load_or_train_generator(spec, GANConfig(z_dim=8, hidden=(16,), iterations=3, n_critic=1), directory=d,
                                     progress=False)
    assert i2["cached"] and i1["key"] == i2["key"]
    for a, b in zip(g1.parameters(), g2.parameters()):
        torch.testing.assert_close(a, b)
    assert generator_key(spec, TINY) != generator_key(spec, GANConfig(z_dim=16, hidden=(64, 64), iterations=151))
    out = gen(torch.randn(5, 16))
    assert out.shape == (5, 1, 8, 8) and out.min() >= 0 and out.max() <= 1


def test_projection_decreases_the_reconstruction_error_and_is_seeded_per_image(digits_gan):
    spec, gen, _ = digits_gan
    x = spec.test().x[:6]
    proj = DefenseGANProjection(gen, steps=30, restarts=3, lr=10.0)
    start = DefenseGANProjection(gen, steps=1, restarts=3, lr=1e-12)  # ≈ the best of the random starts
    _, err0 = start.project(x)
    z, err = proj.project(x)
    assert z.shape == (6, 16) and (err < err0).all()
    torch.testing.assert_close(proj(x)[2:4], proj(x[2:4]))  # the same image projects the same in any batch
    assert not torch.equal(proj.starts(x[:1]), DefenseGANProjection(gen, seed=1).starts(x[:1])[:, :3])


def test_bpda_attack_gets_a_gradient_through_the_projection(digits_gan, digits_model):
    spec, gen, _ = digits_gan
    model, x, y = digits_model
    proj = DefenseGANProjection(gen, steps=5, restarts=2)
    x, y = x[:4], y[:4]
    plain, bpda = Defended(proj, model).eval(), Defended(proj, model, bpda=True).eval()
    for net, nonzero in ((plain, False), (bpda, True)):
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(net(xg).logsumexp(1).sum(), xg, allow_unused=True)
        assert (g is not None and g.abs().sum() > 0) == nonzero  # without BPDA the projection hides the gradient
    res = PGD(norm="linf", eps=0.3, step_size=0.1, steps=3)(bpda, x, y)
    assert res.x_adv.shape == x.shape and (res.x_adv - x).abs().max() <= 0.3 + 1e-6


def test_bad_settings_and_inputs_raise(digits_gan):
    _, gen, _ = digits_gan
    for kw in ({"steps": 0}, {"restarts": 0}, {"lr": 0.0}, {"momentum": 1.0}, {"seed": -1}):
        with pytest.raises(ValueError, match=f"^{next(iter(kw))} must be"):
            DefenseGANProjection(gen, **kw)
    with pytest.raises(ValueError, match="z_dim"):
        DefenseGANProjection(torch.nn.Identity())
    proj = DefenseGANProjection(gen, steps=1, restarts=1)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        proj(torch.full((1, 1, 8, 8), 2.0))
    with pytest.raises(ValueError, match="shape"):
        proj(torch.zeros(1, 1, 28, 28))
    for kw in ({"z_dim": 0}, {"hidden": ()}, {"iterations": 0}, {"gp_weight": -1.0}):
        with pytest.raises((ValueError, TypeError), match=f"^{next(iter(kw))} must be"):
            GANConfig(**kw)
    assert isinstance(Generator((1, 8, 8), 4, (8,)), torch.nn.Module)
