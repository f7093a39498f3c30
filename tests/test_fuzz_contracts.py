"""Property-based tests (hypothesis) of the attack contract and the ops.

Every attack of the registry that the command line can build (plus the sweep and the LAN-adaptive PGD, built
with their objects) is called on inputs drawn by hypothesis:

* valid batches (1-3 images, 1 or 3 channels, 6-10 px, float32 or float64 pixels in [0, 1], labels and
  targets in range): the result keeps the contract of :class:`spatialadv.attacks.AttackResult` (shapes,
  dtypes, range, success recomputed from the model, the input where the attack failed, inputs untouched);
* invalid batches (NaN/inf pixels, pixels outside [0, 1], integer images, wrong rank, empty batch, labels or
  targets out of range, of the wrong dtype or shape, a target equal to its label): a ``TypeError`` or
  ``ValueError`` and the inputs untouched — never another exception.

The ops (flow warp, affine warp, flow TV/L2, the smooth-perturbation solve) get the same treatment. Example
counts are kept small so the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from spatialadv import attacks as A
from spatialadv import ops
from spatialadv.ops.smoothing import smooth

FUZZ = settings(max_examples=6, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

K = 3


def tiny_model(channels: int, size: int, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(channels * 100 + size)
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, K)).to(dtype)
    return model.eval()


def fast_attacks(model: nn.Module) -> dict[str, A.Attack]:
    """One cheap instance of every attack the contract covers (sdpadv needs a fitted generator: not here)."""
    made = {
        "stadv": A.StAdv(steps=3),
        "stadv-tau-search": A.StAdvTauBinarySearch(steps=3, search_steps=2),
        "fgsm": A.FGSM(eps=0.2),
        "ifgsm": A.IFGSM(eps=0.2, step_size=0.1, steps=2),
        "pgd": A.PGD(eps=0.2, step_size=0.1, steps=2),
        "pgd-l2": A.PGD(norm="l2", eps=1.0, step_size=0.5, steps=2),
        "mim": A.MIM(eps=0.2, step_size=0.1, steps=2),
        "cw": A.CarliniWagnerL2(binary_search_steps=1, steps=3),
        "spgd2": A.SmoothPGDL2(steps=2, cg_max_iter=30),
        "scw": A.SmoothCarliniWagnerL2(binary_search_steps=1, steps=2, cg_max_iter=30),
        "stm": A.RotationTranslation(num_rotations=3, num_translations=3),
        "jsma": A.JSMA(gamma=0.2),
        "random-search": A.RandomSearch(tries=2),
        "smooth-flow-pgd": A.SmoothFlowPGD(steps=2),
        "sweep": A.MinDistortionSweep(attacks=(A.FGSM(eps=0.1), A.FGSM(eps=0.3))),
        "lan-pgd": A.LANAdaptivePGD(detector=model, steps=2),
    }
    missing = set(A.ATTACKS) - {n.removesuffix("-l2") for n in made} - set(A.NEEDS_OBJECTS)
    assert not missing, f"attacks without a fuzz instance: {missing}"
    return made


TARGETED_ONLY = {"lan-pgd"}
NAMES = ["stadv", "stadv-tau-search", "fgsm", "ifgsm", "pgd", "pgd-l2", "mim", "cw", "spgd2", "scw", "stm", "jsma",
         "random-search", "smooth-flow-pgd", "sweep", "lan-pgd"]


def test_every_registry_attack_is_fuzzed():
    fast_attacks(tiny_model(1, 8))  # raises when the registry gains an attack this file does not build


@st.composite
def batches(draw):
    """A valid batch: ``(x, y, target)`` with its model; target is None for about half the draws."""
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 3]))
    s = draw(st.integers(6, 10))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["uniform", "binary", "constant"]))
    if kind == "uniform":
        x = torch.rand(n, c, s, s, generator=g)
    elif kind == "binary":
        x = (torch.rand(n, c, s, s, generator=g) > 0.5).float()
    else:
        x = torch.full((n, c, s, s), draw(st.sampled_from([0.0, 0.5, 1.0])))
    x = x.to(dtype)
    y = torch.randint(0, K, (n,), generator=g)
    target = None
    if draw(st.booleans()):
        target = (y + torch.randint(1, K, (n,), generator=g)) % K
    return x, y, target, tiny_model(c, s, dtype)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(batch=batches())
def test_valid_batches_keep_the_contract(name, batch):
    torch.set_num_threads(1)
    x, y, target, model = batch
    attack = fast_attacks(model)[name]
    x0, y0 = x.clone(), y.clone()
    t0 = None if target is None else target.clone()
    if name in TARGETED_ONLY and target is None:
        with pytest.raises(ValueError, match="target"):
            attack(model, x, y)
        return
    r = attack(model, x, y, target=target)
    n = x.shape[0]
    assert torch.equal(x, x0) and torch.equal(y, y0), "the attack modified its inputs"
    if target is not None:
        assert torch.equal(target, t0)
    assert r.x_adv.shape == x.shape and r.x_adv.dtype == x.dtype
    assert torch.isfinite(r.x_adv).all() and float(r.x_adv.min()) >= 0.0 and float(r.x_adv.max()) <= 1.0
    assert r.success.shape == (n,) and r.success.dtype == torch.bool
    assert r.pred.shape == (n,) and r.pred.dtype == torch.long
    with torch.no_grad():
        pred = model(r.x_adv).argmax(1)
    assert torch.equal(r.pred, pred)
    want = pred == target if target is not None else pred != y
    assert torch.equal(r.success, want)
    assert r.targeted == (target is not None)
    assert torch.equal(r.x_adv[~r.success], x[~r.success]), "x_adv must equal x where the attack failed"
    assert r.size.shape == (n,) and torch.isfinite(r.size).all() and bool((r.size >= 0).all())
    assert bool((r.size[~r.success] == 0).all())
    assert r.grad_evals.shape == (n,) and r.grad_evals.dtype == torch.long and bool((r.grad_evals >= 0).all())
    assert isinstance(r.unit, str) and r.unit
    assert r.time_s >= 0 and math.isfinite(r.time_s)


BAD = ["nan", "inf", "above_one", "below_zero", "int_images", "three_dims", "five_dims", "empty", "numpy",
       "label_high", "label_negative", "label_float", "label_shape", "target_equal", "target_high", "target_float",
       "index_float", "index_shape"]


def corrupt(kind: str, x, y, target):
    """Turn a valid batch into an invalid one of the given kind: ``(x, y, target, index)``."""
    index = None
    x, y = x.clone(), y.clone()
    n = x.shape[0]
    if kind == "nan":
        x[0, 0, 0, 0] = float("nan")
    elif kind == "inf":
        x[-1, -1, -1, -1] = float("inf")
    elif kind == "above_one":
        x[0, -1, 0, -1] = 1.25
    elif kind == "below_zero":
        x[-1, 0, -1, 0] = -0.25
    elif kind == "int_images":
        x = (x * 255).to(torch.uint8)
    elif kind == "three_dims":
        x = x[0]
    elif kind == "five_dims":
        x = x.unsqueeze(0)
    elif kind == "empty":
        x, y = x[:0], y[:0]
    elif kind == "numpy":
        x = x.numpy()
    elif kind == "label_high":
        y[0] = K
    elif kind == "label_negative":
        y[-1] = -1
    elif kind == "label_float":
        y = y.float()
    elif kind == "label_shape":
        y = y.view(n, 1)
    elif kind == "target_equal":
        target = y.clone()
    elif kind == "target_high":
        target = torch.full((n,), K + 2)
    elif kind == "target_float":
        target = ((y + 1) % K).float()
    elif kind == "index_float":
        index = torch.zeros(n)
    elif kind == "index_shape":
        index = torch.zeros(n + 1, dtype=torch.long)
    return x, y, target, index


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(batch=batches(), kind=st.sampled_from(BAD))
def test_invalid_batches_get_a_clear_error_and_lose_nothing(name, batch, kind):
    torch.set_num_threads(1)
    x, y, target, model = batch
    x, y, target, index = corrupt(kind, x, y, target)
    before = [v.clone() if isinstance(v, torch.Tensor) else v for v in (x, y, target)]
    attack = fast_attacks(model)[name]
    with pytest.raises((TypeError, ValueError)) as err:
        attack(model, x, y, target=target, index=index)
    assert str(err.value).strip(), "the error needs a message"
    for b, v in zip(before, (x, y, target)):
        if isinstance(v, torch.Tensor):
            assert torch.equal(b, v) or (b.isnan().any() and torch.equal(b.nan_to_num(), v.nan_to_num()))


@pytest.mark.parametrize("name", ["fgsm", "pgd", "stadv", "stm", "cw"])
@FUZZ
@given(bad=st.sampled_from(["nan_logits", "inf_logits", "one_logit", "wrong_rows", "tuple"]))
def test_a_broken_model_gets_a_clear_error(name, bad):
    torch.set_num_threads(1)
    base = tiny_model(1, 8)

    class Broken(nn.Module):
        def forward(self, x):
            out = base(x)
            if bad == "nan_logits":
                return out * float("nan")
            if bad == "inf_logits":
                return out + float("inf")
            if bad == "one_logit":
                return out[:, :1]
            if bad == "wrong_rows":
                return out[:1].expand(x.shape[0] + 1, K)
            return (out, out)

    x = torch.rand(2, 1, 8, 8)
    y = torch.tensor([0, 1])
    with pytest.raises((TypeError, ValueError)):
        fast_attacks(base)[name](Broken().eval(), x, y)


# ------------------------------------------------------------------------------------------------ ops
@st.composite
def images_and_flows(draw):
    n = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.rand(n, c, h, w, generator=g)
    scale = draw(st.sampled_from([0.0, 0.3, 2.0, 50.0]))
    flow = torch.randn(n, 2, h, w, generator=g) * scale
    return x, flow


@FUZZ
@given(data=images_and_flows(), padding=st.sampled_from(["zeros", "border"]))
def test_flow_warp_stays_in_range_and_zero_flow_is_the_identity(data, padding):
    x, flow = data
    out = ops.flow_warp(x, flow, padding_mode=padding)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6
    assert torch.allclose(ops.flow_warp(x, torch.zeros_like(flow), padding_mode=padding), x, atol=1e-6)
    tv, l2 = ops.flow_tv(flow), ops.flow_l2(flow)
    assert tv.shape == (x.shape[0],) and l2.shape == (x.shape[0],)
    assert bool((tv >= 0).all()) and bool((l2 >= 0).all()) and torch.isfinite(tv).all()


@FUZZ
@given(data=images_and_flows(), bad=st.sampled_from(["nan", "inf", "shape", "channels", "int", "numpy"]))
def test_flow_warp_refuses_bad_flows(data, bad):
    x, flow = data
    if bad == "nan":
        flow[0, 0, 0, 0] = float("nan")
    elif bad == "inf":
        flow[0, 1, -1, -1] = float("inf")
    elif bad == "shape":
        flow = flow[..., :-1]
    elif bad == "channels":
        flow = torch.cat([flow, flow[:, :1]], 1)
    elif bad == "int":
        flow = flow.long()
    else:
        flow = flow.numpy()
    with pytest.raises((TypeError, ValueError)):
        ops.flow_warp(x, flow)


@FUZZ
@given(data=images_and_flows(), units=st.sampled_from(["normalized", "pixels"]))
def test_affine_warp_identity_and_range(data, units):
    x, _ = data
    n = x.shape[0]
    theta = ops.identity_theta(n)
    assert torch.allclose(ops.affine_warp(x, theta, units=units), x, atol=1e-5)
    rnd = theta + 0.3 * torch.randn(n, 2, 3, generator=torch.Generator().manual_seed(n))
    out = ops.affine_warp(x, rnd, units=units)
    assert out.shape == x.shape and float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


@FUZZ
@given(data=images_and_flows(), bad=st.sampled_from(["nan_theta", "theta_shape", "int_x", "five_dims"]))
def test_affine_warp_refuses_bad_inputs(data, bad):
    x, _ = data
    theta = ops.identity_theta(x.shape[0])
    if bad == "nan_theta":
        theta[0, 0, 0] = float("nan")
    elif bad == "theta_shape":
        theta = theta[:, :1]
    elif bad == "int_x":
        x = (x * 255).to(torch.uint8)
    else:
        x = x.unsqueeze(0)
    with pytest.raises((TypeError, ValueError)):
        ops.affine_warp(x, theta)


@FUZZ
@given(data=images_and_flows(), alpha=st.sampled_from([0.5, 0.95]), sigma=st.sampled_from([0.05, 0.1, 1.0]))
def test_smooth_is_linear_and_finite(data, alpha, sigma):
    guide, _ = data
    g = torch.Generator().manual_seed(1)
    z = torch.randn(guide.shape, generator=g)
    s1 = smooth(z, guide, alpha=alpha, sigma=sigma)
    s2 = smooth(2 * z, guide, alpha=alpha, sigma=sigma)
    assert s1.shape == z.shape and torch.isfinite(s1).all()
    assert torch.allclose(s2, 2 * s1, atol=1e-3 * (1 + float(s1.abs().max())))


@FUZZ
@given(data=images_and_flows(), bad=st.sampled_from(["nan_z", "guide_255", "guide_nan", "shape"]))
def test_smooth_refuses_bad_inputs(data, bad):
    guide, _ = data
    z = torch.randn(guide.shape)
    if bad == "nan_z":
        z[0, 0, 0, 0] = float("nan")
    elif bad == "guide_255":
        guide = guide * 255
    elif bad == "guide_nan":
        guide = guide.clone()
        guide[0, 0, 0, 0] = float("nan")
    else:
        z = z[..., :-1]
    with pytest.raises((TypeError, ValueError)):
        smooth(z, guide)
