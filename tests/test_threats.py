"""Threat models (spatialadv.threats) and per-example randomness keyed by ``index``."""

import copy
import math

import numpy as np
import pytest
import torch

from _contract import run_checked
from spatialadv._validation import check_index
from spatialadv.attacks import FGSM, PGD, MinDistortionSweep, RotationTranslation, SmoothFlowPGD
from spatialadv.certify import flow_smoothness
from spatialadv.ops import flow_tv, identity_theta
from spatialadv.threats import (
    AffineLinf,
    FlowSmoothnessBall,
    L0Pixels,
    L2Ball,
    LinfBall,
    PixelFlow,
    RotationTranslationBox,
    SmoothLikeX,
    example_generator,
)

X = torch.rand(5, 1, 6, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- generators
def test_example_generator_matches_seed_sequence_and_maps_negatives():
    g = example_generator(3, [7])
    state = np.random.SeedSequence([3, 7]).generate_state(2, dtype=np.uint32)
    ref = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))
    a = torch.rand(4, generator=example_generator(3, [7, -1]))
    b = torch.rand(4, generator=example_generator(3, [7, 2**64 - 1]))  # two's complement of −1
    c = torch.rand(4, generator=example_generator(3, [7, 1]))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="seed"):
        example_generator(-1, [0])


def test_check_index():
    assert torch.equal(check_index(None, 3), torch.tensor([[0], [1], [2]]))
    assert check_index(torch.tensor([4, 5, 6], dtype=torch.int32), 3).dtype == torch.int64
    assert check_index(torch.zeros(3, 2, dtype=torch.long), 3).shape == (3, 2)
    with pytest.raises(TypeError, match="index"):
        check_index(torch.tensor([0.0, 1.0, float("nan")]), 3)
    with pytest.raises(TypeError, match="index"):
        check_index(torch.ones(3, dtype=torch.bool), 3)
    with pytest.raises(TypeError, match="index"):
        check_index([0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        check_index(torch.arange(4), 3)
    with pytest.raises(ValueError, match="index"):
        check_index(torch.zeros(3, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="index"):
        check_index(torch.zeros(3, 2, 1, dtype=torch.long), 3)


# ---------------------------------------------------------------------------------------------- threats
@pytest.mark.parametrize("threat", [LinfBall(eps=0.1), L2Ball(eps=0.7), SmoothLikeX(eps=0.7, solver="direct")])
def test_additive_balls(threat):
    idx = torch.tensor([10, 11, 12, 13, 14])
    d = threat.random_start(X, 1, idx)
    assert d.shape == X.shape and d.dtype == X.dtype
    sz = threat.size(d)
    assert bool((sz <= threat.eps * (1 + 1e-12)).all()) and bool((sz > 0).all())
    # per example: the draw of a row does not depend on the other rows
    torch.testing.assert_close(threat.random_start(X[2:3], 1, idx[2:3])[0], d[2], rtol=0, atol=1e-12)
    assert not torch.allclose(threat.random_start(X, 2, idx), d)
    # projection: inside the ball and in [0, 1]; a no-op on points inside
    far = X + 5 * torch.randn(X.shape, generator=torch.Generator().manual_seed(1), dtype=X.dtype)
    p = threat.project(far, X)
    assert bool((threat.size(p - X) <= threat.eps * (1 + 1e-12)).all())
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    inside = (X + 0.01 * threat.eps * torch.sign(0.5 - X) / math.sqrt(X[0].numel())).clamp(0, 1)
    torch.testing.assert_close(threat.project(inside, X), inside)
    with pytest.raises(ValueError, match="eps"):
        type(threat)(eps=0.0)
    with pytest.raises(TypeError, match="eps"):
        type(threat)(eps="1")


def test_linf_l2_size_and_unbounded():
    d = torch.tensor([[3.0, -4.0]])
    assert float(LinfBall(eps=1).size(d)) == 4.0 and float(L2Ball(eps=1).size(d)) == 5.0
    assert LinfBall.unit == "linf" and L2Ball.unit == "l2" and SmoothLikeX.unit == "l2"
    with pytest.raises(ValueError, match="unbounded"):
        L2Ball(eps=math.inf).random_start(X, 0)


def test_smooth_like_x_start_is_smooth():
    t = SmoothLikeX(eps=1.0, alpha=0.95, solver="direct")
    d = t.random_start(X, 0)
    white = L2Ball(eps=1.0).random_start(X, 0)

    def roughness(v):
        return ((v[..., 1:] - v[..., :-1]).pow(2).sum() / v.pow(2).sum()).item()

    assert roughness(d) < 0.5 * roughness(white)
    with pytest.raises(ValueError, match="alpha"):
        SmoothLikeX(alpha=1.0)


def test_pixel_flow():
    t = PixelFlow(budget=0.2, start_radius=0.4)
    f = t.random_start(X, 0)
    assert f.shape == (5, 2, 6, 7)
    assert bool((t.size(f) <= 0.2 * (1 + 1e-12)).all())
    torch.testing.assert_close(t.size(f), flow_tv(f))
    big = 3 * f
    torch.testing.assert_close(t.size(t.project(big)), torch.full((5,), 0.2, dtype=X.dtype))
    free = PixelFlow()
    g = free.random_start(X, 0)
    assert torch.equal(free.project(g), g) and float(g.abs().max()) <= 0.5
    with pytest.raises(ValueError, match="budget"):
        PixelFlow(budget=0)


@pytest.mark.parametrize("border,ridge", [("zeros", 0.0), ("replicate", 1e-2)])
def test_flow_smoothness_ball(border, ridge):
    t = FlowSmoothnessBall(eps=0.5, border=border, ridge=ridge)
    f = t.random_start(X, 4, torch.arange(5) + 100)
    sz = t.size(f)
    torch.testing.assert_close(sz, flow_smoothness(f, border=border))
    assert bool((sz <= 0.5 * (1 + 1e-9)).all()) and bool((sz > 0).all())
    if ridge == 0:  # the latent unit sphere maps onto the boundary
        s = t.project_latent(t.random_latent(X, 4) * 1e3)
        basis = t.latent_basis(6, 7)
        torch.testing.assert_close(t.size(t.latent_to_flow(s, basis, 6, 7)), torch.full((5,), 0.5, dtype=X.dtype))
    p = t.project(10 * f)
    assert bool((t.size(p) <= 0.5).all())
    with pytest.raises(ValueError, match="border"):
        FlowSmoothnessBall(border="reflect")


def test_rotation_translation_box():
    t = RotationTranslationBox(max_rotation=10.0, max_translation=2.0)
    p = t.random_start(X, 0, num=7)
    assert p.shape == (5, 7, 3) and p.dtype == torch.float64
    assert float(p[..., 0].abs().max()) <= 10 and float(p[..., 1:].abs().max()) <= 2
    one = t.random_start(X, 0)
    assert one.shape == (5, 3)
    clipped = t.project(torch.tensor([[25.0, -3.0, 1.0]], dtype=torch.float64))
    assert clipped.tolist() == [[10.0, -2.0, 1.0]]
    sz = t.size(torch.tensor([5.0, -10.0, 0.0]), torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.0, -2.0]]))
    assert sz.tolist() == [0.5, 1.0, 1.0]
    no_rot = RotationTranslationBox(max_rotation=0.0, max_translation=2.0)
    assert no_rot.size(torch.tensor([0.0, 1.0]), torch.zeros(2, 2)).tolist() == [0.0, math.inf]


def test_affine_linf():
    t = AffineLinf(gamma=0.2, eps=0.1)
    theta, eta = t.random_start(X, 0)
    assert theta.shape == (5, 2, 3) and eta.shape == X.shape
    assert bool((t.size(theta, eta) <= 1).all())
    big_t = identity_theta(5, dtype=X.dtype) + 5 * (theta - identity_theta(5, dtype=X.dtype))
    pt, pe = t.project(big_t, 5 * eta)
    torch.testing.assert_close((pt - identity_theta(5, dtype=X.dtype)).abs().flatten(1).amax(1),
                               torch.full((5,), 0.2, dtype=X.dtype))
    assert float(pe.abs().max()) <= 0.1
    assert float(t.size(identity_theta(1, dtype=X.dtype), torch.tensor([0.05], dtype=X.dtype))) == 0.5
    with pytest.raises(ValueError, match="eps"):
        AffineLinf(eps=1.5)


# ---------------------------------------------------------------------------------------------- index
def _fp64(digits_model, n=12):
    model, x, y = digits_model
    return copy.deepcopy(model).double(), x[:n].double(), y[:n]


RANDOM_ATTACKS = {
    "pgd_linf": PGD(eps=0.1, step_size=0.02, steps=3, seed=5),
    "pgd_l2": PGD(norm="l2", eps=0.8, step_size=0.2, steps=3, seed=5),
    "stm_random": RotationTranslation(max_translation=1.0, grid=False, random_tries=4, seed=5),
    "smooth_flow_pgd": SmoothFlowPGD(eps=0.5, steps=3, step_size=0.2, seed=5),
    "sweep": MinDistortionSweep(attacks=(FGSM(eps=0.05), PGD(norm="l2", eps=0.8, step_size=0.2, steps=3, seed=5))),
}


def _start(attack, x, index):
    """The random draw of an attack (what index must key)."""
    if isinstance(attack, PGD):
        return attack.threat.random_start(x, attack.seed, index)
    if isinstance(attack, RotationTranslation):
        return attack.candidates(x.shape[0], index)
    if isinstance(attack, SmoothFlowPGD):
        return attack.threat.random_latent(x, attack.seed, index)
    return _start(attack.attacks[1], x, index)


@pytest.mark.parametrize("name", list(RANDOM_ATTACKS))
def test_result_follows_index_not_position(digits_model, name, one_thread):
    attack = RANDOM_ATTACKS[name]
    model, x, y = _fp64(digits_model)
    n = x.shape[0]
    index = torch.stack([torch.arange(n) + 1000, (y + 1) % 10], 1)  # e.g. (dataset index, target)
    full = run_checked(attack, model, x, y, index=index)
    # example 7 alone (position 0) with its row: bit-identical in float64
    alone = attack(model, x[7:8], y[7:8], index=index[7:8])
    assert torch.equal(alone.x_adv[0], full.x_adv[7])
    assert torch.equal(alone.size[0], full.size[7]) and bool(alone.success[0]) == bool(full.success[7])
    # reversed batch with the reversed rows: the same per-example results
    rev = torch.arange(n - 1, -1, -1)
    back = attack(model, x[rev], y[rev], index=index[rev])
    assert torch.equal(back.x_adv, full.x_adv[rev])
    assert torch.equal(back.grad_evals, full.grad_evals[rev]) and torch.equal(back.forward_evals, full.forward_evals[rev])
    # the random draw depends on the row: another row gives another draw
    s0 = _start(attack, x[7:8], index[7:8])
    s1 = _start(attack, x[7:8], index[7:8] + torch.tensor([[1, 0]]))
    assert s0.shape == s1.shape and not torch.equal(s0, s1)
    # ... and, with the default index (rows [i]), an example at another position gets another draw
    default = attack(model, x, y)
    alone_default = attack(model, x[7:8], y[7:8], index=torch.tensor([7]))
    assert torch.equal(alone_default.x_adv[0], default.x_adv[7])
    assert not torch.equal(_start(attack, x[7:8], None), _start(attack, x[7:8], torch.tensor([7])))


def test_index_changes_the_result(digits_model, one_thread):
    model, x, y = _fp64(digits_model)
    attack = PGD(eps=0.1, step_size=0.02, steps=2, seed=5)
    a = attack(model, x, y, index=torch.arange(12))
    b = attack(model, x, y, index=torch.arange(12) + 50)
    assert not torch.equal(a.x_adv, b.x_adv)


def test_index_validated_on_call(digits_model):
    model, x, y = digits_model
    attack = PGD(eps=0.1, steps=1)
    with pytest.raises(ValueError, match="index"):
        attack(model, x[:4], y[:4], index=torch.arange(5))
    with pytest.raises(TypeError, match="index"):
        attack(model, x[:4], y[:4], index=torch.arange(4).double())


def test_smooth_flow_pgd_start_no_longer_depends_on_batch_size(digits_model, one_thread):
    model, x, y = _fp64(digits_model)
    attack = RANDOM_ATTACKS["smooth_flow_pgd"]
    full = attack(model, x, y)
    head = attack(model, x[:3], y[:3])
    assert torch.equal(head.flow, full.flow[:3])
    assert full.unit == "flow_smoothness"
    assert bool((full.size <= 0.5 * (1 + 1e-9)).all())


# ---------------------------------------------------------------------------------- the abstract interface
def test_threat_is_abstract_and_every_threat_implements_it():
    import inspect

    import spatialadv.threats as T
    from spatialadv.threats import Threat

    with pytest.raises(TypeError, match="abstract methods measure, project, random_start, size"):
        Threat()

    class Partial(Threat):
        def size(self, delta):
            return delta

    with pytest.raises(TypeError, match="abstract methods measure, project, random_start"):
        Partial()
    threats = [c for _, c in inspect.getmembers(T, inspect.isclass) if issubclass(c, Threat) and c is not Threat]
    assert len(threats) == 8
    for cls in threats:
        t = cls()  # every exported threat is concrete, with a name and a unit
        assert not inspect.isabstract(cls) and t.name and t.unit


def test_l0_project_keeps_the_largest_changes_and_random_start_is_per_example():
    t = L0Pixels(gamma=0.25)  # 4 of 16 features
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    delta = torch.arange(1, 17, dtype=torch.float64).view(1, 1, 4, 4).repeat(2, 1, 1, 1) / 100
    delta[1] = -delta[1]
    p = t.project(x + delta, x)
    kept = (p - x).flatten(1)
    expected = torch.zeros(2, 16, dtype=torch.float64)
    expected[0, 12:] = torch.arange(13, 17, dtype=torch.float64) / 100
    expected[1, 12:] = -torch.arange(13, 17, dtype=torch.float64) / 100
    torch.testing.assert_close(kept, expected, rtol=0, atol=1e-15)
    assert torch.equal(t.project(x + delta * 100, x).clamp(0, 1), t.project(x + delta * 100, x))  # in [0, 1]
    assert torch.equal(t.size(t.project(x + delta * 100, x) - x), torch.full((2,), 4.0, dtype=torch.float64))
    idx = torch.tensor([[3], [8]])
    d0 = t.random_start(x, 7, idx)
    assert d0.shape == x.shape and torch.equal(t.size(d0), torch.full((2,), 4.0, dtype=torch.float64))
    assert bool((d0.abs() <= 1).all())
    torch.testing.assert_close(t.random_start(x[1:], 7, idx[1:])[0], d0[1], rtol=0, atol=0)  # batch-independent
