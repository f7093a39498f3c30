"""Input filters, ``Defended`` models (adaptive and BPDA attacks through them) and the adversarial-training mechanism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from spatialadv.attacks import FGSM, JSMA, PGD, CarliniWagnerL2, RotationTranslation, SmoothPGDL2, StAdv
from spatialadv.data import DataSpec, load_dataset
from spatialadv.defenses import (
    BilateralFilter,
    Defended,
    MeanFilter,
    MedianFilter,
    attack_adversary,
    ensemble_adversary,
    ll_adversary,
)
from spatialadv.ops.filters import joint_bilateral
from spatialadv.training import (
    OBJECTIVES,
    ModelSpec,
    Objective,
    OptionSpec,
    TrainConfig,
    load_or_train,
    model_key,
    register_adversarial_objective,
)


def _images(seed=0, n=3, c=2, h=9, w=11):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------- filters
@pytest.mark.parametrize("size", [1, 3, 5])
def test_mean_and_median_filters_equal_scipy(size):
    x = _images()
    ref_mean = ndimage.uniform_filter(x.numpy(), size=(1, 1, size, size), mode="nearest")
    ref_median = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="nearest")
    np.testing.assert_allclose(MeanFilter(size)(x).numpy(), ref_mean, atol=1e-12)
    np.testing.assert_allclose(MedianFilter(size)(x).numpy(), ref_median, atol=0)


def test_bilateral_filter_is_the_papers_setting_and_matches_the_op():
    x = _images(c=1)
    f = BilateralFilter()
    assert (f.sigma_domain, f.sigma_range) == (0.5, 0.2)  # smooth-adv Table 3
    torch.testing.assert_close(f(x), joint_bilateral(x, sigma_spatial=0.5, sigma_range=0.2))
    assert not torch.allclose(f(x), x)


def test_filters_pass_gradients_and_keep_shape():
    x = _images().requires_grad_(True)
    for f in (MeanFilter(3), MedianFilter(3), BilateralFilter()):
        out = f(x)
        assert out.shape == x.shape
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda z: MeanFilter(3)(z), (_images(n=1, c=1, h=5, w=5).requires_grad_(True),))


@pytest.mark.parametrize("bad,exc", [(2, ValueError), (0, ValueError), (3.0, TypeError), (True, TypeError)])
def test_filter_sizes_are_checked(bad, exc):
    for cls in (MeanFilter, MedianFilter):
        with pytest.raises(exc, match="size"):
            cls(bad)


def test_filter_inputs_and_sigmas_are_checked():
    with pytest.raises(ValueError, match="sigma_range"):
        BilateralFilter(sigma_range=0.0)
    with pytest.raises(ValueError, match="sigma_domain"):
        BilateralFilter(sigma_domain=-1.0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        MeanFilter(3)(torch.rand(4, 4))
    with pytest.raises(TypeError, match="Tensor"):
        MedianFilter(3)(np.zeros((1, 1, 4, 4)))
    with pytest.raises(TypeError, match="model"):
        Defended(MeanFilter(3), lambda x: x)
    with pytest.raises(TypeError, match="bpda"):
        Defended(MeanFilter(3), nn.Identity(), bpda=1)


# ----------------------------------------------------------------------------------------- Defended
def test_defended_is_a_module_every_attack_accepts(digits_model):
    model, x, y = digits_model
    defended = Defended(MeanFilter(3), model).eval()
    assert isinstance(defended, nn.Module) and not defended.model.training
    x, y = x[:6], y[:6]
    torch.testing.assert_close(defended(x), model(MeanFilter(3)(x)))
    attacks = [FGSM(eps=0.2), PGD(eps=0.2, steps=5, step_size=0.05), CarliniWagnerL2(steps=10, binary_search_steps=1),
               StAdv(steps=5), RotationTranslation(max_rotation=10.0, max_translation=1.0, num_rotations=3, num_translations=3),
               SmoothPGDL2(eps=1.0, steps=3), JSMA(gamma=0.2)]
    for atk in attacks:
        res = atk(defended, x, y)
        assert res.x_adv.shape == x.shape and res.success.shape == (6,)
        pred = defended(res.x_adv).argmax(1)
        assert torch.equal(pred, res.pred)


def test_adaptive_attack_through_the_filter_is_at_least_as_strong_as_the_transfer(digits_model):
    model, x, y = digits_model
    defended = Defended(MeanFilter(3), model).eval()
    ok = defended(x).argmax(1) == y  # images the defended model gets right
    x, y = x[ok], y[ok]
    atk = PGD(eps=0.15, steps=20, step_size=0.02, random_start=False)
    transfer = atk(model, x, y).x_adv  # crafted on the model alone, then filtered (the non-adaptive evaluation)
    transfer_success = float((defended(transfer).argmax(1) != y).float().mean())
    adaptive_success = float(atk(defended, x, y).success.float().mean())
    assert adaptive_success >= transfer_success
    assert adaptive_success > 0.5  # and the adaptive attack breaks the filter defense


def test_bpda_keeps_the_forward_pass_and_takes_the_models_gradient_at_the_filtered_image(digits_model):
    model, x, y = digits_model
    x = x[:5].clone()
    f = MedianFilter(3)
    plain, bpda = Defended(f, model), Defended(f, model, bpda=True)
    torch.testing.assert_close(bpda(x), plain(x))
    xr = x.clone().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(nn.functional.cross_entropy(bpda(xr), y[:5]), xr)
    xf = f(x).requires_grad_(True)
    (g_model,) = torch.autograd.grad(nn.functional.cross_entropy(model(xf), y[:5]), xf)
    torch.testing.assert_close(g_bpda, g_model)


# ------------------------------------------------------------------------------ adversarial training
def test_ll_adversary_moves_towards_the_least_likely_class(digits_model):
    model, x, y = digits_model
    with torch.no_grad():
        logits = model(x)
        y_ll = logits.argmin(1)
    xa = ll_adversary(0.1)(model, x, y)
    assert xa.min() >= 0 and xa.max() <= 1 and (xa - x).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        new = model(xa)
    gain = (new.log_softmax(1) - logits.log_softmax(1)).gather(1, y_ll[:, None]).squeeze(1)
    assert float((gain > 0).float().mean()) > 0.9
    with pytest.raises(ValueError, match="eps"):
        ll_adversary(0.0)


def test_attack_adversary_restores_mode_and_parameter_gradients(digits_model):
    model, x, y = digits_model
    model.train()
    try:
        marker = [torch.full_like(p, 7.0) for p in model.parameters()]
        for p, m in zip(model.parameters(), marker):
            p.grad = m.clone()
        xa = attack_adversary(PGD(eps=0.2, steps=3, step_size=0.1))(model, x[:8], y[:8])
        assert model.training and xa.shape == x[:8].shape and not xa.requires_grad
        for p, m in zip(model.parameters(), marker):
            assert torch.equal(p.grad, m)
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    with pytest.raises(TypeError, match="Attack"):
        attack_adversary(lambda m, x, y: x)


def test_any_attack_registers_as_a_cached_adversarial_objective(tmp_path):
    name = "test-pgd-l2-at"
    OBJECTIVES.pop(name, None)
    try:
        register_adversarial_objective(name, lambda eps: PGD(norm="l2", eps=eps, steps=3, step_size=eps / 2),
                                       options={"eps": OptionSpec(1.0, float, 0.0, low_open=True)}, description="test")
        with pytest.raises(ValueError, match="already registered"):
            register_adversarial_objective(name, lambda: FGSM())
        with pytest.raises(ValueError, match="adv_weight"):
            register_adversarial_objective("test-other", lambda adv_weight: FGSM(), options={"adv_weight": OptionSpec(0.5, float)})
        assert Objective(name).options == {"eps": 1.0, "adv_weight": 0.5}
        with pytest.raises(ValueError, match="eps"):
            Objective(name, eps=-1.0)
        data, cfg = DataSpec("digits"), TrainConfig(epochs=2, batch_size=128)
        a = ModelSpec("fc-200", data, cfg, Objective(name, eps=1.0))
        b = ModelSpec("fc-200", data, cfg, Objective(name, eps=2.0))
        assert model_key(a) != model_key(b)
        model, info = load_or_train(a, directory=tmp_path, progress=False)
        again, info2 = load_or_train(a, directory=tmp_path, progress=False)
        assert not info["cached"] and info2["cached"] and info["test_accuracy"] > 0.5
        test = load_dataset("digits", "test")
        torch.testing.assert_close(model(test.x[:4]), again(test.x[:4]))
    finally:
        OBJECTIVES.pop(name, None)
        OBJECTIVES.pop("test-other", None)


# ------------------------------------------------------------------------------ ensemble adversarial training
class _Linear(nn.Module):
    """Logits ``(z, −z)`` with ``z = sum(w · x)``: the FGSM direction is ``±sign(w)``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        z = (x * self.w).flatten(1).sum(1, keepdim=True)
        return torch.cat([z, -z], 1)


def test_ensemble_adversary_crafts_on_the_current_and_each_static_model_in_turn():
    torch.manual_seed(0)
    shape = (1, 4, 4)
    current, s1, s2 = (_Linear(torch.randn(shape)) for _ in range(3))
    x, y = torch.full((2, *shape), 0.5), torch.zeros(2, dtype=torch.long)  # class 0: FGSM moves against sign(w)
    adv = ensemble_adversary([s1, s2], eps=0.1)
    for turn in range(6):
        src = (current, s1, s2)[turn % 3]
        expected = (x - 0.1 * src.w.detach().sign()).clamp(0, 1)
        torch.testing.assert_close(adv(current, x, y), expected)
    assert current.w.grad is None and s1.w.grad is None  # input gradients only
    with pytest.raises(ValueError, match="static"):
        ensemble_adversary([])
    with pytest.raises(TypeError, match="nn.Module"):
        ensemble_adversary([lambda z: z])
    with pytest.raises(ValueError, match="eps"):
        ensemble_adversary([s1], eps=0.0)


def _test_accuracy(model, data) -> float:
    """Top-1 accuracy of ``model`` on ``data``'s whole test split, recomputed here (the figure ``load_or_train`` reports)."""
    test = data.test()
    with torch.no_grad():
        correct = sum(int((model(test.x[i : i + 500]).argmax(1) == test.y[i : i + 500]).sum()) for i in range(0, len(test), 500))
    return correct / len(test)


def test_ens_at_trains_against_static_models_of_other_architectures(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path))
    data, cfg = DataSpec("mnist", max_train=64), TrainConfig(epochs=1, batch_size=32)
    spec = ModelSpec("mnist-b", data, cfg, Objective("ens-at", static_epochs=1))
    model, info = load_or_train(spec, progress=False)
    assert not info["cached"] and info["test_accuracy"] == _test_accuracy(model, data)
    static = sorted(p.name.split("-standard-")[0] for p in (tmp_path / "models").glob("*-standard-*.safetensors"))
    assert static == ["mnist-a", "mnist-c"]  # Tramèr et al.: the static models are other architectures
    with pytest.raises(ValueError, match="static_seed"):  # static models must see the same training images
        load_or_train(ModelSpec("mnist-b", DataSpec("mnist", seed=1, max_train=64), cfg,
                                Objective("ens-at", static_epochs=1)), progress=False)


def test_fine_tuning_starts_from_the_init_models_weights(tmp_path, one_thread):
    data = DataSpec("digits", max_train=128)
    plain = ModelSpec("fc-200", data, TrainConfig(epochs=2, batch_size=64))
    copy = ModelSpec("fc-200", data, TrainConfig(epochs=1), Objective("random"), init=plain)  # no training: the init
    tuned = ModelSpec("fc-200", data, TrainConfig(epochs=1, batch_size=64), Objective("fgsm-at", eps=0.1), init=plain)
    assert len({model_key(plain), model_key(copy), model_key(tuned)}) == 3
    assert ModelSpec.from_dict(tuned.to_dict()) == tuned and "init" not in plain.to_dict()
    base, _ = load_or_train(plain, directory=tmp_path, progress=False)
    same, _ = load_or_train(copy, directory=tmp_path, progress=False)
    ft, info = load_or_train(tuned, directory=tmp_path, progress=False)
    for a, b in zip(base.parameters(), same.parameters()):
        torch.testing.assert_close(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), ft.parameters()))
    assert not info["cached"] and info["train_seconds"] > 0
    with pytest.raises(ValueError, match="architecture"):
        ModelSpec("fc-500", data, init=plain)
    with pytest.raises(TypeError, match="init"):
        ModelSpec("fc-200", data, init="fc-200")


# ------------------------------------------------------------------------------------------------ Adv-Critic
def test_closest_boundary_target_is_deepfools_choice_on_a_linear_model():
    from spatialadv.defenses.adv_critic import closest_boundary_target

    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    x = torch.rand(6, 1, 4, 4)
    w, b = lin[1].weight.detach(), lin[1].bias.detach()
    f = x.flatten(1) @ w.T + b
    lab = f.argmax(1)
    expected = []
    for i in range(6):
        d = [abs(f[i, k] - f[i, lab[i]]) / (w[k] - w[lab[i]]).norm() if k != lab[i] else float("inf") for k in range(4)]
        expected.append(int(torch.tensor(d).argmin()))
    assert closest_boundary_target(lin, x).tolist() == expected


def test_unrolled_attack_moves_towards_the_target_and_is_differentiable_in_the_parameters(digits_model):
    from spatialadv.defenses.adv_critic import unrolled_attack

    model, x, y = digits_model
    x = x[:8]
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 10
    rows = torch.arange(8)
    x_adv = unrolled_attack(model, x, target, torch.full((8,), 0.9), steps=5)
    with torch.no_grad():
        p0, p1 = (model(z).softmax(1)[rows, target] for z in (x, x_adv))
    assert (p1 > p0).all()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(x_adv.sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # double back-propagation reaches the weights
    model.zero_grad(set_to_none=True)


def test_adv_critic_fine_tunes_a_cached_model_and_checks_its_options(tmp_path, one_thread):
    data = DataSpec("digits", max_train=256)
    plain = ModelSpec("fc-200", data, TrainConfig(epochs=3, batch_size=64))
    spec = ModelSpec("fc-200", data, TrainConfig(epochs=1, batch_size=64), Objective("adv-critic", steps=2), init=plain)
    model, info = load_or_train(spec, directory=tmp_path, progress=False)
    assert info["test_accuracy"] > 0.5 and set(info["notes"]) == {"critic_loss", "train_attack_success"}
    # the mean over the last epoch's 4 batches of 64 images; the critic's 2-step attack breaks a good share of a
    # plain model's training images (0.58 here)
    assert (256 * info["notes"]["train_attack_success"]).is_integer() and info["notes"]["train_attack_success"] > 0.25
    for bad in ({"lam": -1.0}, {"steps": 0}, {"overshoot": -0.1}):
        with pytest.raises(ValueError, match=f"objective 'adv-critic': option '{next(iter(bad))}' must be"):
            Objective("adv-critic", **bad)
