"""sPGD2, sC&W, the target-distortion sweep, the protocol metrics and magnification
(Zhang et al. 2020), on a small MLP trained on real data (sklearn digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _contract import run_checked
from spatialadv.attacks import FGSM, PGD, CarliniWagnerL2, MinDistortionSweep, SmoothCarliniWagnerL2, SmoothPGDL2
from spatialadv.eval import edge_flat_energy, magnified_change, operating_characteristic, protocol_summary
from spatialadv.ops.filters import joint_bilateral, magnify
from spatialadv.ops.smoothing import smooth

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread

SPGD = SmoothPGDL2(eps=2.0, step_size=0.5, steps=20)
SCW = SmoothCarliniWagnerL2(binary_search_steps=3, steps=50, initial_const=1.0, kappa=0.0, lr=0.05)
MODES = ["untargeted", "targeted"]


def _target(y, mode):
    return (y + 1) % 10 if mode == "targeted" else None


def _check(attack, model, x, y, target, budget=None):
    res = run_checked(attack, model, x, y, target)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    crit = pred == target if target is not None else pred != y
    assert torch.equal(res.success, crit)
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    d = (res.x_adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close(res.size, d)
    assert res.unit == "l2" and torch.equal(res.delta, res.x_adv - x)
    if budget is not None:
        assert float(d.max()) <= budget + 1e-5
    return res


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("attack", [SPGD, SCW], ids=["spgd2", "scw"])
def test_contract_and_success(digits_model, attack, mode):
    model, x, y = digits_model
    res = _check(attack, model, x, y, _target(y, mode), getattr(attack, "eps", None))
    assert res.success_rate >= 0.9


def test_weak_configuration_leaves_failures(digits_model):
    model, x, y = digits_model
    res = _check(SmoothPGDL2(eps=0.2, step_size=0.1, steps=3), model, x, y, None, 0.2)
    assert bool((~res.success).any()) and bool(res.success.any())


@pytest.mark.parametrize("attack", [SPGD, SCW], ids=["spgd2", "scw"])
def test_batch_independence_fp64(digits_model, attack):
    model, x, y = digits_model
    model = __import__("copy").deepcopy(model).double()
    x, y = x[:12].double(), y[:12]
    full = attack(model, x, y)
    for i in (0, 5, 11):
        one = attack(model, x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(one.x_adv[0], full.x_adv[i], atol=1e-9, rtol=0)
        assert int(one.grad_evals[0]) == int(full.grad_evals[i])


def test_spgd2_step_is_the_smoothed_gradient(digits_model):
    """One sPGD2 step from x equals x + step · ŝ(g)/‖ŝ(g)‖ (Eq. 12), projected and clipped."""
    model, x, y = digits_model
    x, y = x[:8].double(), y[:8]
    model = __import__("copy").deepcopy(model).double()
    xr = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(xr), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xr)
    sg = smooth(g, x, alpha=0.95, sigma=0.1, tol=1e-5)
    step = 0.3 * sg / sg.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = (x + step).clamp(0, 1)
    res = SmoothPGDL2(eps=5.0, step_size=0.3, steps=1, early_stop=False)(model, x, y)
    got = torch.where(res.success.view(-1, 1, 1, 1), res.x_adv, expected)
    torch.testing.assert_close(got, expected)


def test_smoothed_perturbations_are_smooth_like_the_image(digits_model):
    """Within flat image regions sC&W's and sPGD2's perturbations are much smoother
    than those of their unsmoothed counterparts (the numerical check of 'smooth like
    the image'), while they still change across strong edges."""
    model, x, y = digits_model
    runs = {"cw": CarliniWagnerL2(binary_search_steps=3, steps=50, initial_const=1.0, lr=0.05), "scw": SCW,
            "pgd": PGD(norm="l2", eps=2.0, step_size=0.5, steps=20, random_start=False, early_stop=True),
            "spgd": SmoothPGDL2(eps=2.0, step_size=0.5, steps=20)}
    res = {k: a(model, x, y) for k, a in runs.items()}
    ok = torch.stack([r.success for r in res.values()]).all(0)
    assert int(ok.sum()) >= 40
    flat, edge = {}, {}
    for k, r in res.items():
        f, e = edge_flat_energy(r.x_adv[ok] - x[ok], x[ok], edge=0.5, flat=0.05)
        flat[k], edge[k] = float(f.nanmedian()), float(e.nanmedian())
    assert flat["scw"] < 0.5 * flat["cw"], flat
    assert flat["spgd"] < 0.5 * flat["pgd"], flat
    assert edge["scw"] > 2 * flat["scw"] and edge["spgd"] > 2 * flat["spgd"], (flat, edge)


def test_scw_reduces_to_cw_geometry_at_alpha_zero(digits_model):
    """At α = 0 the smoothing is the identity: sC&W is C&W on r = x_adv − x with clipping."""
    model, x, y = digits_model
    res = SmoothCarliniWagnerL2(alpha=0.0, binary_search_steps=2, steps=30, initial_const=1.0, kappa=0.0, lr=0.05)(model, x, y)
    assert res.success_rate >= 0.9


def test_sweep_keeps_the_smallest_successful_distortion(digits_model):
    model, x, y = digits_model
    runs = tuple(FGSM(eps=e) for e in (0.05, 0.1, 0.2, 0.3))
    sweep = _check(MinDistortionSweep(attacks=runs), model, x, y, None)
    singles = [a(model, x, y) for a in runs]
    d = torch.stack([torch.where(r.success, (r.x_adv - x).flatten(1).norm(dim=1), torch.full_like(r.size, float("inf")))
                     for r in singles])
    best = d.min(0).values
    assert torch.equal(sweep.success, torch.isfinite(best))
    torch.testing.assert_close(sweep.size[sweep.success], best[sweep.success])
    assert torch.equal(sweep.grad_evals, sum(r.grad_evals for r in singles))
    with pytest.raises(ValueError, match="at least one"):
        MinDistortionSweep(attacks=())
    with pytest.raises(TypeError, match="tuple of Attack"):
        MinDistortionSweep(attacks=[FGSM()])


@pytest.mark.parametrize("cls,kwargs,msg", [
    (SmoothPGDL2, {"alpha": 1.0}, "alpha"), (SmoothPGDL2, {"eps": 0}, "eps"), (SmoothPGDL2, {"sigma": -1.0}, "sigma"),
    (SmoothCarliniWagnerL2, {"kernel": "box"}, "kernel"), (SmoothCarliniWagnerL2, {"solver": "lu"}, "solver"),
    (SmoothCarliniWagnerL2, {"lr": 0}, "lr"), (SmoothCarliniWagnerL2, {"cg_max_iter": 0}, "cg_max_iter"),
    (SmoothPGDL2, {"cg_tol": 0.0}, "cg_tol"),
])
def test_invalid_hyperparameters(cls, kwargs, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        cls(**kwargs)


def test_protocol_known_answers():
    succ = np.array([True, False, True, True])
    dist = np.array([2.0, 9.0, 1.0, 3.0])
    s = protocol_summary(succ, dist)
    assert s == {"N": 4, "N_suc": 3, "P_suc": 0.75, "D_bar": 2.0, "D_max": 3.0}
    d, p = operating_characteristic(succ, dist)
    np.testing.assert_allclose(d, [0, 1, 2, 3])
    np.testing.assert_allclose(p, [0, 0.25, 0.5, 0.75])
    _, p2 = operating_characteristic(succ, dist, grid=np.array([0.5, 2.5, 100]))
    np.testing.assert_allclose(p2, [0, 0.5, 0.75])
    assert np.isnan(protocol_summary(np.array([False]), np.array([0.0]))["D_bar"])
    with pytest.raises(ValueError, match="no images: P_suc is undefined for N = 0"):
        protocol_summary(np.array([], dtype=bool), np.array([]))


def test_edge_flat_energy_separates_smooth_from_noise():
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    x[..., 8:] = 1.0
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f_n, e_n = edge_flat_energy(noise, x)
    smooth_like = torch.where(x > 0.5, 1.0, -1.0).to(torch.float64)  # constant on each flat half, jumps at the edge
    f_s, e_s = edge_flat_energy(smooth_like, x)
    assert 0.7 < float(f_n) < 1.3 and 0.5 < float(e_n) < 1.5
    assert float(f_s) == 0.0 and float(e_s) == pytest.approx(2.0)


def test_magnified_change_locates_the_change_and_checks_inputs():
    x = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
    x[..., 4:12, 4:12] = 1.0  # a bright square on a flat background
    change, share = magnified_change(x, x)
    assert torch.all(change == 0) and torch.all(torch.isnan(share))
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    bump = 0.05 * torch.exp(-((yy - 1.5) ** 2 + (xx - 13.5) ** 2) / 4.0).double()  # a smooth bump in a flat corner
    xa = x.clone()
    xa[0, 0] += bump
    xa[1, 0, 3:13, 3:13] += 0.05 * torch.randn(10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    change, share = magnified_change(xa.clamp(0, 1), x)
    assert float(change[0]) > 0.5 and float(share[0]) > 0.9  # small in amplitude, large once magnified, all on flat pixels
    assert float(share[1]) < float(share[0])  # noise around the square's edges is partly on non-flat pixels
    same = magnified_change(xa.clamp(0, 1).float(), x.float())
    assert torch.allclose(same[0], change, rtol=1e-4)
    with pytest.raises(ValueError, match="same shape"):
        magnified_change(xa[:1], x)
    with pytest.raises(ValueError, match="flat"):
        magnified_change(xa, x, flat=-1.0)


def _bilateral_reference(v, g, ss, sr):
    n, c, h, w = v.shape
    r = int(np.ceil(3 * ss))
    out = torch.zeros_like(v)
    for i in range(h):
        for j in range(w):
            num = torch.zeros(n, c, dtype=v.dtype)
            den = torch.zeros(n, dtype=v.dtype)
            for a in range(max(0, i - r), min(h, i + r + 1)):
                for b in range(max(0, j - r), min(w, j + r + 1)):
                    wgt = torch.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * ss**2)
                                    - (g[:, :, a, b] - g[:, :, i, j]).square().sum(1) / (2 * sr**2))
                    num += wgt[:, None] * v[:, :, a, b]
                    den += wgt
            out[:, :, i, j] = num / den[:, None]
    return out


def test_joint_bilateral_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(2, 2, 7, 6, generator=gen, dtype=torch.float64)
    g = torch.rand(2, 3, 7, 6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(joint_bilateral(v, g, sigma_spatial=1.0, sigma_range=0.3), _bilateral_reference(v, g, 1.0, 0.3))
    torch.testing.assert_close(joint_bilateral(v, sigma_spatial=0.7, sigma_range=0.2), _bilateral_reference(v, v, 0.7, 0.2))
    const = torch.full((1, 1, 5, 5), 0.3, dtype=torch.float64)
    torch.testing.assert_close(joint_bilateral(const), const)


def test_magnify_reveals_noise_and_validates():
    x = torch.zeros(1, 1, 20, 20, dtype=torch.float64)
    x[..., 10:] = 0.8
    noisy = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).clamp(0, 1)
    m_clean, m_noisy = magnify(x), magnify(noisy)
    assert float(m_clean.abs().max()) < 1e-6  # piecewise-constant image: nothing to magnify
    # the noise is amplified relative to the image's own scale
    assert float(m_noisy.std()) > 3 * float((noisy - x).std())
    with pytest.raises(ValueError, match="beta"):
        magnify(x, beta=1.5)
    with pytest.raises(ValueError, match="NaN"):
        magnify(torch.full((1, 1, 4, 4), float("nan")))
