"""Randomized smoothing: statistics, interpolation bounds (soundness on dense samples), certificates, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from spatialadv.certify import smoothing as S
from spatialadv.data import load_dataset
from spatialadv.models.architectures import build_model
from spatialadv.ops import affine_warp, flow_warp, rotation_translation_theta
from spatialadv.training import Objective, TrainConfig, train_model


@pytest.fixture(scope="module")
def mnist():
    d = load_dataset("mnist", "test")
    return d.x[:40], d.y[:40]


@pytest.fixture(scope="module")
def smooth_net():
    """fc-500 trained briefly on the smoothing distribution (σ = 0.25, ±10°)."""
    torch.manual_seed(0)
    tr = load_dataset("mnist", "train")
    net = build_model("fc-500")
    train_model(net, tr, TrainConfig(epochs=3, seed=0), objective=Objective("smoothing", sigma=0.25, rotation=10.0,
                                                                             translation=1.0), progress=False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


# ------------------------------------------------------------------------------------------------ statistics
def test_clopper_pearson_matches_scipy_interval():
    for k, n in [(0, 10), (3, 10), (95, 100), (100, 100), (990, 1000)]:
        lo = float(S.lower_confidence_bound(k, n, 0.01))
        # one-sided 1 − α bound = lower end of the two-sided 1 − 2α exact interval
        ref = binomtest(k, n).proportion_ci(confidence_level=0.98, method="exact").low
        assert lo == pytest.approx(ref, abs=1e-9)


def test_cohen_radius_values():
    assert float(S.cohen_radius(0.5, 0.5)) == 0.0
    assert float(S.cohen_radius(0.3, 0.5)) == 0.0
    assert float(S.cohen_radius(0.99, 0.25)) == pytest.approx(0.25 * norm.ppf(0.99))


@pytest.mark.parametrize("kwargs", [dict(sigma=0.0), dict(sigma=-1.0), dict(sigma=float("nan")), dict(num_classes=1),
                                    dict(batch_size=0)])
def test_smoothed_classifier_rejects_bad_settings(kwargs):
    args = dict(sigma=0.25, num_classes=10) | kwargs
    with pytest.raises(ValueError, match=f"^{next(iter(kwargs))} must be"):
        S.SmoothedClassifier(nn.Flatten(), **args)


def test_forward_batch_only_changes_the_chunking(mnist):
    """Forward passes in chunks of any size give the same counts (the noise draws do not depend on it)."""
    torch.manual_seed(0)
    net = build_model("cnn-small").eval()
    x = mnist[0][:3]
    ref = S.SmoothedClassifier(net, sigma=0.5, num_classes=10, forward_batch=10_000).counts(x, 300, seed=1)
    for fb in (None, 7, 256):
        got = S.SmoothedClassifier(net, sigma=0.5, num_classes=10, forward_batch=fb).counts(x, 300, seed=1)
        assert torch.equal(got, ref)
    assert int(ref.sum()) == 900 and int((ref > 0).sum()) > 3  # several classes: the comparison has teeth
    with pytest.raises(ValueError, match="forward_batch"):
        S.SmoothedClassifier(net, sigma=0.5, num_classes=10, forward_batch=0)


def test_certify_rejects_bad_inputs(mnist):
    g = S.SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), sigma=0.25, num_classes=10)
    x = mnist[0][:2]
    with pytest.raises(ValueError, match="alpha"):
        g.certify(x, n0=10, n=10, alpha=1.5)
    with pytest.raises(ValueError, match="n0"):
        g.certify(x, n0=0, n=10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        g.certify(x * 2, n0=10, n=10)
    with pytest.raises(ValueError, match="shape"):
        g.certify(x[0], n0=10, n=10)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        S.SmoothedClassifier("not a model", sigma=0.25, num_classes=10)


def test_certify_is_batch_independent_and_seeded(smooth_net, mnist):
    x = mnist[0][:6]
    g = S.SmoothedClassifier(smooth_net, sigma=0.25, num_classes=10, batch_size=128)
    full = g.certify(x, n0=32, n=300, index=torch.arange(6))
    one = g.certify(x[3:4], n0=32, n=300, index=torch.tensor([3]))
    assert int(one.prediction[0]) == int(full.prediction[3])
    assert float(one.p_lower[0]) == float(full.p_lower[3])
    other_seed = g.certify(x[3:4], n0=32, n=300, index=torch.tensor([3]), seed=1)
    torch.manual_seed(0)
    noisy = S.SmoothedClassifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), sigma=1.0, num_classes=10)
    counts = [noisy.counts(x[3:4], 300, index=torch.tensor([3]), seed=s, stream=(1,)) for s in (0, 0, 1)]
    assert torch.equal(counts[0], counts[1]) and not torch.equal(counts[0], counts[2])  # the seed reaches the draws
    assert other_seed.prediction.shape == (1,)


def test_certify_radius_and_predict_agree_with_counts(smooth_net, mnist):
    x, y = mnist[0][:8], mnist[1][:8]
    g = S.SmoothedClassifier(smooth_net, sigma=0.25, num_classes=10)
    cert = g.certify(x, n0=32, n=400, alpha=0.001)
    est = g.counts(x, 400, stream=(1,))
    for i in range(8):
        c = int(cert.prediction[i])
        if c >= 0:
            p = float(S.lower_confidence_bound(int(est[i, c]), 400, 0.001))
            assert float(cert.p_lower[i]) == pytest.approx(p)
            assert float(cert.radius[i]) == pytest.approx(0.25 * norm.ppf(p))
    pred = g.predict(x, 400, alpha=0.001)
    assert ((pred == y) | (pred == -1)).float().mean() > 0.7
    assert (cert.prediction == y).float().mean() >= 0.75


# ------------------------------------------------------------------------------------------------ bounds
def test_box_deviation_is_exact_on_dense_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 9, 9, generator=g, dtype=torch.float64)
    flow = (torch.rand(2, 2, 9, 9, generator=g, dtype=torch.float64) - 0.5) * 3
    w = 0.7
    dev = S.bilinear_box_deviation(x, flow, w)
    ref = flow_warp(x, flow)
    best = torch.zeros_like(dev)
    ticks = torch.linspace(-w, w, 29, dtype=torch.float64)
    for ox in ticks:
        for oy in ticks:
            d = flow_warp(x, flow + torch.stack([torch.full_like(flow[:, 0], ox), torch.full_like(flow[:, 0], oy)], 1))
            best = torch.maximum(best, (d - ref).abs())
    assert bool((best <= dev + 1e-12).all())  # a supremum: never exceeded
    # and exact: the dense samples (which miss the integer lines) come close to it everywhere
    assert float((dev - best).max()) < 0.1 * float(dev.max())


def test_rotation_bound_dominates_dense_rotations(mnist):
    """The key soundness test: ‖R_θ x − R_θk x‖₂ ≤ M_k for 0.005°-spaced θ in every tested cell, and M_k is not slack."""
    x = mnist[0][:3]
    centres, half = S.rotation_cells(30.0, 61)
    bounds = S.rotation_interpolation_bound(x, centres, half)
    worst = 0.0
    for k in (0, 17, 30, 44, 60):
        th = torch.linspace(float(centres[k]) - half, float(centres[k]) + half, 201, dtype=torch.float64)
        for i in range(3):
            ref = affine_warp(x[i : i + 1].double(), rotation_translation_theta(centres[k : k + 1], 0, 0, dtype=torch.float64),
                              units="pixels")
            imgs = affine_warp(x[i : i + 1].double().expand(len(th), -1, -1, -1),
                               rotation_translation_theta(th, 0, 0, dtype=torch.float64), units="pixels")
            # the float32 images the model receives
            imgs32 = affine_warp(x[i : i + 1].expand(len(th), -1, -1, -1), rotation_translation_theta(th, 0, 0), units="pixels")
            meas = max(float((imgs - ref).flatten(1).norm(dim=1).max()), float((imgs32.double() - ref).flatten(1).norm(dim=1).max()))
            assert meas <= float(bounds[i, k]), (k, i, meas, float(bounds[i, k]))
            worst = max(worst, meas / float(bounds[i, k]))
    assert worst > 0.5  # half the bound would be violated: the test can fail


def test_translation_and_flow_bounds_dominate_samples(mnist):
    x = mnist[0][:2]
    centres = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    bounds = S.translation_interpolation_bound(x, centres, 0.25)
    g = torch.Generator().manual_seed(1)
    for k in range(2):
        t = centres[k] + (torch.rand(300, 2, generator=g, dtype=torch.float64) * 2 - 1) * 0.25
        for i in range(2):
            ref = affine_warp(x[i : i + 1].double(), rotation_translation_theta(0, centres[k, 0], centres[k, 1], dtype=torch.float64),
                              units="pixels")
            imgs = affine_warp(x[i : i + 1].double().expand(300, -1, -1, -1),
                               rotation_translation_theta(0, t[:, 0], t[:, 1], dtype=torch.float64), units="pixels")
            assert float((imgs - ref).flatten(1).norm(dim=1).max()) <= float(bounds[i, k])
    for delta in (0.05, 0.3):
        m = S.flow_linf_bound(x, delta)
        for _ in range(20):
            r = (torch.rand(2, 2, 28, 28, generator=g, dtype=torch.float64) * 2 - 1) * delta
            assert bool(((flow_warp(x.double(), r) - x.double()).flatten(1).norm(dim=1) <= m).all())
        # the supremum is attained by choosing, per pixel, the worst corner of its box: the bound is tight
        best = torch.zeros_like(x, dtype=torch.float64)
        for sx in (-delta, 0.0, delta):
            for sy in (-delta, 0.0, delta):
                r = torch.stack([torch.full((2, 28, 28), sx), torch.full((2, 28, 28), sy)], 1).double()
                best = torch.maximum(best, (flow_warp(x.double(), r) - x.double()).abs())
        assert torch.allclose(best.flatten(1).norm(dim=1) + S.FP_SLACK, m, atol=1e-9)


def test_integer_translation_bound_is_slack_only(mnist):
    b = S.translation_interpolation_bound(mnist[0][:1], torch.tensor([[2.0, -1.0]]), 0.0)
    assert float(b[0, 0]) == S.FP_SLACK


# ------------------------------------------------------------------------------------------------ certificates
def test_grid_certificate_budget_semantics():
    c = S.GridCertificate(prediction=torch.tensor([3, 3, -1]), certified_below=torch.tensor([math.inf, 9.5, math.inf]),
                          max_budget=30.0, cells=torch.tensor([61] * 3), evaluated=torch.tensor([61, 20, 1]),
                          min_margin=torch.zeros(3), max_bound=torch.zeros(3), refined=torch.zeros(3, dtype=torch.int64))
    assert c.certified(30.0).tolist() == [True, False, False]
    assert c.certified(9.0).tolist() == [True, True, False]
    assert c.certified(31.0).tolist() == [False, False, False]


def test_rotation_certificate_not_broken_by_dense_angles_on_smoothed_prediction(smooth_net, mnist):
    """Soundness: a certified ±Θ example keeps its class under PREDICT of g at every 0.1° step within ±Θ."""
    x = mnist[0][:10]
    g = S.SmoothedClassifier(smooth_net, sigma=0.25, num_classes=10)
    cert = S.certify_rotation(g, x, max_angle=4.0, n0=32, n=300, alpha=0.001, index=torch.arange(10))
    ok = cert.certified(4.0) & (cert.prediction >= 0)
    assert int(ok.sum()) >= 3  # the check below has something to check
    angles = torch.arange(-40, 41, dtype=torch.float64) / 10  # 0.1° steps
    broken = 0
    for i in torch.nonzero(ok)[:, 0].tolist()[:4]:
        imgs = affine_warp(x[i : i + 1].expand(len(angles), -1, -1, -1), rotation_translation_theta(angles, 0, 0), units="pixels")
        pred = g.predict(imgs.clamp(0, 1), 300, alpha=1e-6, seed=5)
        broken += int(((pred >= 0) & (pred != cert.prediction[i])).sum())
    assert broken == 0


class _Constant(nn.Module):
    """Votes for class 0 unless the image's mean exceeds ``cut`` (then class 1): counts are all-or-nothing."""

    def __init__(self, cut: float = 10.0):
        super().__init__()
        self.cut = cut

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), (x.flatten(1).mean(1) > self.cut).float() * 2 - 1], 1)


def test_grid_refinement_splits_alpha_and_rescues_failed_cells():
    """Refinement: α/(2K) per cell, α/(2KS) per sub-cell; a failed cell passes when all its sub-cells pass."""
    g = S.SmoothedClassifier(_Constant().eval(), sigma=0.25, num_classes=2, batch_size=500)
    k, n = 5, 200
    images = torch.zeros(k, 1, 4, 4)
    edges = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0])
    r_cell = g.max_radius(n, 0.001 / (2 * k))
    r_sub = g.max_radius(n, 0.001 / (2 * k * 4))
    assert r_sub < r_cell < g.max_radius(n, 0.001 / k)
    bounds = torch.tensor([0.0, 0.0, 0.0, r_cell, 0.0], dtype=torch.float64)  # cell 3 fails at the first level
    calls = []

    def sub(j, m):
        def refine(c):
            calls.append(c)
            return torch.zeros(4, 1, 4, 4), torch.full((4,), m, dtype=torch.float64)
        return refine

    common = dict(n0=20, n=n, alpha=0.001, seed=0, row=[0])
    plain = S.certify_grid(g, images, bounds, edges, **common)
    assert plain["certified_below"] == math.inf  # α/K: r > M
    failed = S.certify_grid(g, images, bounds, edges, **common, refine=sub(0, 0.0), splits=4)
    assert failed["certified_below"] == math.inf and failed["refined"] == 1 and calls == [3]
    assert failed["min_margin"] == pytest.approx(r_sub)  # the sub-cells' radius at α/(2KS)
    calls.clear()
    hopeless = S.certify_grid(g, images, bounds, edges, **common, refine=sub(0, r_sub), splits=4)
    assert hopeless["certified_below"] == 2.0 and hopeless["refined"] == 1 and calls == [3]
    with pytest.raises(ValueError, match="splits"):
        S.certify_grid(g, images, bounds, edges, **common, refine=sub(0, 0.0), splits=1)


def test_rotation_refinement_certifies_more_and_stays_sound(smooth_net, mnist):
    """A coarse grid (K = 3 over ±6°) fails; refinement into 8 sub-cells rescues examples, none broken at 0.1° steps."""
    x = mnist[0][:8]
    g = S.SmoothedClassifier(smooth_net, sigma=0.25, num_classes=10)
    kw = dict(max_angle=6.0, n0=32, n=200, alpha=0.001, index=torch.arange(8), cells=3)
    plain = S.certify_rotation(g, x, refine=0, **kw)
    fine = S.certify_rotation(g, x, refine=8, **kw)
    assert int(plain.refined.sum()) == 0 and int(fine.refined.sum()) > 0
    gained = fine.certified(6.0) & ~plain.certified(6.0)
    assert int(gained.sum()) >= 1
    angles = torch.arange(-60, 61, dtype=torch.float64) / 10
    for i in torch.nonzero(gained)[:, 0].tolist()[:2]:
        imgs = affine_warp(x[i : i + 1].expand(len(angles), -1, -1, -1), rotation_translation_theta(angles, 0, 0), units="pixels")
        pred = g.predict(imgs.clamp(0, 1), 300, alpha=1e-6, seed=5)
        assert int(((pred >= 0) & (pred != fine.prediction[i])).sum()) == 0


def test_translation_and_flow_certificates(smooth_net, mnist):
    x = mnist[0][:6]
    net = smooth_net
    pred, below = S.exhaustive_translation(net, x, max_shift=2)
    for i in range(6):  # brute force
        for tx in range(-2, 3):
            for ty in range(-2, 3):
                xs = affine_warp(x[i : i + 1], rotation_translation_theta(0, tx, ty), units="pixels")
                if max(abs(tx), abs(ty)) < below[i]:
                    assert int(net(xs).argmax(1)) == int(pred[i])
    g = S.SmoothedClassifier(net, sigma=0.25, num_classes=10)
    tc = S.certify_translation(g, x, max_shift=1, n0=32, n=200)
    assert tc.cells.tolist() == [9] * 6
    with pytest.raises(ValueError, match="integer"):
        S.certify_translation(g, x, max_shift=1.5, n0=32, n=200)
    fc = S.certify_flow(g, x, (0.0, 0.02, 1.0), n0=32, n=200)
    assert fc.certified.shape == (6, 3)
    assert not bool(fc.certified[:, 2].any())  # 1 px flows move far more than any radius here
    assert bool((fc.certified[:, 1] <= fc.certified[:, 0]).all())  # monotone in δ
    # soundness of the flow certificate against random flows inside the budget, on g's prediction
    gen = torch.Generator().manual_seed(3)
    for i in torch.nonzero(fc.certified[:, 1])[:, 0].tolist()[:2]:
        r = (torch.rand(8, 2, 28, 28, generator=gen) * 2 - 1) * 0.02
        p = g.predict(flow_warp(x[i : i + 1].expand(8, -1, -1, -1), r).clamp(0, 1), 300, alpha=1e-6)
        assert bool(((p == -1) | (p == fc.prediction[i])).all())
    # and against the projected flow attack inside the budget (on f, checked on g's prediction)
    from spatialadv.experiments.certify_smoothing import flow_linf_pgd

    ok = torch.nonzero(fc.certified[:, 1])[:, 0]
    adv, _ = flow_linf_pgd(net, x[ok], fc.prediction[ok], 0.02, steps=10)
    assert bool(((adv - x[ok]).flatten(1).norm(dim=1) <= fc.bounds[ok, 1]).all())
    p = g.predict(adv.clamp(0, 1), 300, alpha=1e-6)
    assert bool(((p == -1) | (p == fc.prediction[ok])).all())


# ------------------------------------------------------------------------------------------------ training
def test_smoothing_objective_and_augmentation():
    o = Objective("smoothing")
    assert o.options == {"aug_weight": 1.0, "rotation": 30.0, "sigma": 0.25, "translation": 3.0}
    with pytest.raises(ValueError, match="sigma"):
        Objective("smoothing", sigma=-0.1)
    x = torch.rand(4, 1, 28, 28)
    a1 = S.SmoothingAugmentation(sigma=0.0, rotation=0.0, translation=0.0)(None, x, None)
    assert torch.equal(a1, x)
    b1 = S.SmoothingAugmentation(sigma=0.5, rotation=30.0, seed=2)(None, x, None)
    b2 = S.SmoothingAugmentation(sigma=0.5, rotation=30.0, seed=2)(None, x, None)
    assert torch.equal(b1, b2) and not torch.equal(b1, x)
    noise = S.SmoothingAugmentation(sigma=0.5, seed=3)(None, x, None) - x  # no warp: pure noise
    assert abs(float(noise.std()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="rotation"):
        S.SmoothingAugmentation(sigma=0.1, rotation=-1.0)
    assert np.isfinite(float(b1.sum()))


# ------------------------------------------------------------------------------------------------ min over the bounds
def test_min_bound_is_entrywise_minimum_and_certifies_at_least_as_much():
    from spatialadv.certify import certify, pair_bounds

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    te = load_dataset("digits", "test")
    qs = {m: pair_bounds(mlp, (1, 8, 8), method=m, dual_steps=50) for m in ("sdp", "spectral", "frobenius", "min")}
    plain = {m: q.as_subclass(torch.Tensor) for m, q in qs.items()}
    assert torch.equal(plain["min"], torch.minimum(torch.minimum(plain["sdp"], plain["spectral"]), plain["frobenius"]))
    assert bool((plain["min"] <= plain["spectral"]).all()) and bool((plain["min"] <= plain["sdp"]).all())
    assert qs["min"].method == "min"
    x, y = te.x[:50], mlp(te.x[:50]).argmax(1)
    for eps in (0.001, 0.01):
        c_min = certify(mlp, x, y, eps, q=qs["min"])
        for m in ("sdp", "spectral", "frobenius"):
            c = certify(mlp, x, y, eps, q=qs[m])
            assert bool((c_min.bound <= c.bound + 1e-12).all())
            assert bool((c_min.certified | ~c.certified).all())
