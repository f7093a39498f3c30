"""Tests of the L_p baseline attacks (FGSM, I-FGSM, PGD L∞/L2, MIM, C&W L2) on a
small MLP trained on real data (sklearn digits, see ``conftest.digits_model``)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from _contract import run_checked
from spatialadv.attacks import FGSM, IFGSM, MIM, PGD, CarliniWagnerL2, SmoothCarliniWagnerL2
from spatialadv.attacks.base import margin

# Cheap but strong configurations (most examples succeed).
STRONG = {
    "fgsm": FGSM(eps=0.3),
    "ifgsm": IFGSM(eps=0.3, step_size=0.02, steps=20),
    "pgd_linf": PGD(eps=0.3, step_size=0.02, steps=20),
    "pgd_l2": PGD(norm="l2", eps=1.5, step_size=0.1, steps=20),
    "mim": MIM(eps=0.3, step_size=0.02, steps=20),
    "cw": CarliniWagnerL2(binary_search_steps=4, steps=50),
    "ifgsm_early": IFGSM(eps=0.3, step_size=0.02, steps=20, early_stop=True),
    "pgd_l2_early": PGD(norm="l2", eps=1.5, step_size=0.1, steps=20, early_stop=True),
    "mim_early": MIM(eps=0.3, step_size=0.02, steps=20, early_stop=True),
}
# Weak configurations: many examples fail, exercising the failure path.
WEAK = {
    "fgsm": FGSM(eps=0.05),
    "ifgsm": IFGSM(eps=0.05, step_size=0.01, steps=10),
    "pgd_linf": PGD(eps=0.05, step_size=0.01, steps=10),
    "pgd_l2": PGD(norm="l2", eps=0.3, step_size=0.05, steps=10),
    "mim": MIM(eps=0.05, step_size=0.01, steps=10),
    "cw": CarliniWagnerL2(binary_search_steps=1, steps=10, initial_const=0.1),
}
# Attacks without randomness: an example's result is the same alone or in a batch.
DETERMINISTIC = {
    **{k: v for k, v in STRONG.items() if not isinstance(v, PGD)},
    "pgd_linf_no_rs": PGD(eps=0.3, step_size=0.02, steps=20, random_start=False),
    "pgd_l2_no_rs": PGD(norm="l2", eps=1.5, step_size=0.1, steps=20, random_start=False),
}
MODES = ["untargeted", "targeted"]


def _target(y: torch.Tensor, mode: str) -> torch.Tensor | None:
    return (y + 1) % 10 if mode == "targeted" else None


def _check_invariants(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target):
    """Run ``attack`` and assert the contract's invariants; return the result."""
    res = run_checked(attack, model, x, y, target)
    assert res.targeted == (target is not None)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0

    # success is the criterion recomputed from the model on x_adv
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    crit = pred == target if target is not None else pred != y
    assert torch.equal(res.success, crit)
    assert torch.equal(res.pred[res.success], pred[res.success])

    # failed examples are returned unchanged with size 0
    fail = ~res.success
    assert torch.equal(res.x_adv[fail], x[fail])
    assert torch.all(res.size[fail] == 0)
    assert torch.all(res.grad_evals >= 1)

    # size, norm and budget
    delta = (res.x_adv - x).flatten(1)
    assert torch.equal(res.delta, res.x_adv - x)
    expected_unit = "l2" if isinstance(attack, CarliniWagnerL2) else getattr(attack, "norm", "linf")
    assert res.unit == expected_unit == attack.threat.unit
    measured = delta.abs().amax(1) if res.unit == "linf" else delta.norm(dim=1)
    torch.testing.assert_close(res.size, measured)
    if not isinstance(attack, CarliniWagnerL2):
        tol = 1e-6 if res.unit == "linf" else 1e-5
        assert float(measured.max()) <= attack.eps + tol
        assert int(res.grad_evals.max()) <= getattr(attack, "steps", 1)
    else:
        assert int(res.grad_evals.max()) <= attack.binary_search_steps * attack.steps
    return res


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(STRONG))
def test_invariants_strong(digits_model, name, mode):
    model, x, y = digits_model
    res = _check_invariants(STRONG[name], model, x, y, _target(y, mode))
    assert res.success_rate >= 0.5  # the attacks work (thresholds below are stricter)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(WEAK))
def test_invariants_weak_with_failures(digits_model, name, mode):
    model, x, y = digits_model
    res = _check_invariants(WEAK[name], model, x, y, _target(y, mode))
    assert bool((~res.success).any()), "weak configuration should leave failures to check"
    assert bool(res.success.any())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_batch_independence(digits_model, name, mode):
    attack = DETERMINISTIC[name]
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    t = _target(y, mode)
    full = attack(model, x, y, target=t)
    # alone vs in the batch
    for i in (0, 7, 23):
        one = attack(model, x[i : i + 1], y[i : i + 1], target=None if t is None else t[i : i + 1])
        torch.testing.assert_close(one.x_adv[0], full.x_adv[i], atol=1e-5, rtol=0)
        assert bool(one.success[0]) == bool(full.success[i])
        assert int(one.grad_evals[0]) == int(full.grad_evals[i])
    # a permuted batch gives the permuted results
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    shuf = attack(model, x[perm], y[perm], target=None if t is None else t[perm])
    torch.testing.assert_close(shuf.x_adv, full.x_adv[perm], atol=1e-5, rtol=0)
    assert torch.equal(shuf.success, full.success[perm])
    assert torch.equal(shuf.grad_evals, full.grad_evals[perm])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_random_start_depends_only_on_seed_and_position(digits_model, norm):
    """The noise of example i depends on (seed, i) only, never on its batch-mates."""
    model, x, y = digits_model
    x, y = x[:24], y[:24]
    eps = 0.3 if norm == "linf" else 1.5
    attack = PGD(norm=norm, eps=eps, step_size=0.1 * eps, steps=5, seed=3)
    full = attack(model, x, y)
    # a prefix sub-batch reproduces the prefix results
    head = attack(model, x[:8], y[:8])
    torch.testing.assert_close(head.x_adv, full.x_adv[:8], atol=1e-5, rtol=0)
    # replacing the odd-position images does not change the even-position results
    x2, y2 = x.clone(), y.clone()
    x2[1::2], y2[1::2] = x[1::2].flip(0), y[1::2].flip(0)
    mixed = attack(model, x2, y2)
    torch.testing.assert_close(mixed.x_adv[0::2], full.x_adv[0::2], atol=1e-5, rtol=0)
    assert torch.equal(mixed.success[0::2], full.success[0::2])
    # same seed reproduces exactly; another seed gives another random start
    again = attack(model, x, y)
    assert torch.equal(again.x_adv, full.x_adv)
    delta0 = attack.threat.random_start(x, attack.seed)
    delta1 = attack.replace(seed=4).threat.random_start(x, 4)
    assert not torch.allclose(delta0, delta1)
    size = delta0.flatten(1).abs().amax(1) if norm == "linf" else delta0.flatten(1).norm(dim=1)
    assert float(size.max()) <= eps + 1e-6
    assert float(size.min()) > 0


def test_pgd_norm_field():
    assert {f.name for f in dataclasses.fields(PGD)} >= {"norm", "eps", "seed"}
    assert PGD().norm == "linf" and PGD(norm="l2").norm == "l2"
    assert PGD(norm="l2").replace(eps=1.0).norm == "l2" == PGD(norm="l2").threat.unit
    # the other attacks have no ``norm``: their unit is their threat's
    assert FGSM().threat.unit == IFGSM().threat.unit == MIM().threat.unit == "linf"
    assert CarliniWagnerL2().threat.unit == "l2"
    assert not any(hasattr(a, "norm") for a in (FGSM, IFGSM, MIM, CarliniWagnerL2))


def test_pgd_l2_reports_l2_size(digits_model):
    model, x, y = digits_model
    res = PGD(norm="l2", eps=1.0, step_size=0.1, steps=10)(model, x, y)
    assert res.unit == "l2"
    ok = res.success
    assert ok.any()
    d = (res.x_adv - x)[ok].flatten(1)
    torch.testing.assert_close(res.size[ok], d.norm(dim=1))
    assert bool((res.size[ok] > d.abs().amax(1) + 1e-3).all())  # not the L∞ norm


def test_fgsm_single_step(digits_model):
    model, x, y = digits_model
    res = FGSM(eps=0.1)(model, x, y)
    assert torch.all(res.grad_evals == 1)
    # every successful pixel moved by exactly ±eps unless clipped to [0, 1]
    d = (res.x_adv - x)[res.success]
    xa = res.x_adv[res.success]
    moved = (d.abs() - 0.1).abs() < 1e-6
    clipped = (xa == 0) | (xa == 1)
    assert bool((moved | clipped).all())


def _reference(attack, model, x, y, target):
    """Plain full-batch re-implementation from the papers' update rules."""
    sign = 1.0 if target is None else -1.0
    lab = y if target is None else target
    eps, a = attack.eps, getattr(attack, "step_size", attack.eps)
    l2 = attack.threat.unit == "l2"
    xa = x.clone()
    if isinstance(attack, PGD) and attack.random_start:
        xa = (x + attack.threat.random_start(x, attack.seed)).clamp(0, 1)
    mom = torch.zeros_like(x)
    for _ in range(getattr(attack, "steps", 1)):
        xr = xa.clone().requires_grad_(True)
        loss = sign * nn.functional.cross_entropy(model(xr), lab, reduction="sum")
        (g,) = torch.autograd.grad(loss, xr)
        if isinstance(attack, MIM):
            mom = attack.decay * mom + g / g.abs().sum((1, 2, 3), keepdim=True)
            g = mom
        if l2:
            xa = xa + a * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            d = xa - x
            d = d * (eps / d.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
        else:
            d = (xa + a * g.sign() - x).clamp(-eps, eps)
        xa = (x + d).clamp(0, 1).detach()
    return xa


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "attack",
    [
        FGSM(eps=0.1),
        IFGSM(eps=0.1, step_size=0.02, steps=10),
        MIM(eps=0.1, step_size=0.02, steps=10, decay=0.8),
        PGD(eps=0.1, step_size=0.02, steps=10),
        PGD(norm="l2", eps=0.8, step_size=0.15, steps=10),
        PGD(norm="l2", eps=0.8, step_size=0.15, steps=10, random_start=False),
    ],
    ids=["fgsm", "ifgsm", "mim", "pgd_linf", "pgd_l2", "pgd_l2_no_rs"],
)
def test_matches_reference_update_rules(digits_model, attack, mode):
    model, x, y = digits_model
    t = _target(y, mode)
    res = attack(model, x, y, target=t)
    ref = _reference(attack, model, x, y, t)
    ok = res.success
    torch.testing.assert_close(res.x_adv[ok], ref[ok], atol=1e-5, rtol=0)


def test_pgd_linf_success_threshold(digits_model):
    model, x, y = digits_model
    assert PGD(eps=0.3)(model, x, y).success_rate >= 0.9
    assert PGD(eps=0.3)(model, x, y, target=(y + 1) % 10).success_rate >= 0.9


def test_iterative_linf_success_and_small_eps_fails(digits_model):
    model, x, y = digits_model
    assert IFGSM(eps=0.3)(model, x, y).success_rate >= 0.95
    assert MIM(eps=0.3)(model, x, y).success_rate >= 0.95
    # a tiny budget cannot flip most predictions: the success above is not trivial
    assert PGD(eps=0.01, step_size=0.002, steps=10)(model, x, y).success_rate <= 0.2


def test_carlini_wagner_minimal_l2(digits_model):
    """C&W finds smaller L2 perturbations than PGD-L2 at the same success rate."""
    model, x, y = digits_model
    cw = CarliniWagnerL2()(model, x, y)
    assert cw.success_rate >= 0.95
    cw_mean = float(cw.size[cw.success].mean())
    for eps in (0.5, 1.0, 1.5, 2.0, 3.0):
        pgd = PGD(norm="l2", eps=eps, step_size=eps / 10, steps=40)(model, x, y)
        if pgd.success_rate >= cw.success_rate:
            break
    else:
        pytest.fail("PGD-L2 never reached the C&W success rate")
    pgd_mean = float(pgd.size[pgd.success].mean())
    assert cw_mean < pgd_mean, (cw_mean, pgd_mean, eps)
    # binary search works: most examples need far less than the PGD budget
    assert float(cw.size[cw.success].median()) < eps / 2


def test_carlini_wagner_binary_search_keeps_the_smallest(digits_model):
    """The first binary-search step is the same for any number of steps and the
    smallest successful L2 over all steps is kept, so more search never hurts an
    example; on average it helps. C&W results also lie close to the boundary."""
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    one = CarliniWagnerL2(binary_search_steps=1, steps=100)(model, x, y)
    six = CarliniWagnerL2(binary_search_steps=6, steps=100)(model, x, y)
    assert bool((six.success | ~one.success).all())
    both = one.success & six.success
    assert int(both.sum()) >= 24
    assert bool((six.size[both] <= one.size[both] + 1e-5).all())
    assert float(six.size[both].mean()) < 0.8 * float(one.size[both].mean())
    # shrinking a minimal perturbation by 30 % mostly undoes the attack
    with torch.no_grad():
        shrunk = model(x + 0.7 * (six.x_adv - x)).argmax(1)
    still = (shrunk != y)[six.success]
    assert float(still.float().mean()) <= 0.25


def test_carlini_wagner_search_update_known_answers():
    found = torch.tensor([True, False, False, True])
    c = torch.tensor([1.0, 1.0, 4.0, 4.0])
    lower = torch.tensor([0.0, 0.0, 2.0, 2.0])
    upper = torch.tensor([1e10, 1e10, 8.0, 8.0])
    c2, lo2, up2 = CarliniWagnerL2._search_update(found, c, lower, upper)
    # success: upper = c, bisect; failure without upper bound: c x 10; failure with one: bisect up
    torch.testing.assert_close(up2, torch.tensor([1.0, 1e10, 8.0, 4.0]))
    torch.testing.assert_close(lo2, torch.tensor([0.0, 1.0, 4.0, 2.0]))
    torch.testing.assert_close(c2, torch.tensor([0.5, 10.0, 6.0, 3.0]))


def _linear_problem():
    """A 2-class linear model on (N, 1, 4, 4) images near 0.5, where the minimal
    adversarial L2 / L∞ distances are known in closed form (the box [0, 1] is
    never active at these distances): d = |z_0 − z_1| / ‖w_0 − w_1‖_{2 or 1}."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.normal_()
        lin.bias.copy_(-lin.weight.sum(1) * 0.5)
    model = nn.Sequential(nn.Flatten(), lin).double().eval()
    x = 0.5 + 0.2 * (torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5)
    with torch.no_grad():
        z = model(x)
    wd = (lin.weight[1] - lin.weight[0]).detach().double()
    gap = (z[:, 0] - z[:, 1]).abs()
    return model, x, z.argmax(1), gap / wd.norm(), gap / wd.abs().sum()


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd_linf", "mim", "pgd_l2"])
def test_linear_model_exact_budget_boundary(name):
    """On a linear model an attack within budget eps succeeds exactly on the
    examples whose minimal distance is below eps (sound: never more; strong:
    never fewer), away from a 5 % band around eps."""
    model, x, y, d2, dinf = _linear_problem()
    d = d2 if name == "pgd_l2" else dinf
    eps = float(d.median())
    attack = {
        "fgsm": FGSM(eps=eps),
        "ifgsm": IFGSM(eps=eps, step_size=eps / 10, steps=20),
        "pgd_linf": PGD(eps=eps, step_size=eps / 10, steps=20),
        "mim": MIM(eps=eps, step_size=eps / 10, steps=20),
        "pgd_l2": PGD(norm="l2", eps=eps, step_size=eps / 10, steps=40),
    }[name]
    res = attack(model, x, y)
    clear = ((d / eps) - 1).abs() > 0.05
    assert int(clear.sum()) >= 50
    assert torch.equal(res.success[clear], (d < eps)[clear])


def test_carlini_wagner_linear_model_near_optimal():
    model, x, y, d2, _ = _linear_problem()
    res = CarliniWagnerL2()(model, x, y)
    assert bool(res.success.all())
    ratio = res.size / d2
    assert float(ratio.min()) >= 1 - 1e-6  # cannot beat the exact minimum
    # Adam's step (lr in tanh space) limits resolution for tiny distances
    far = d2 >= 0.04
    assert int(far.sum()) >= 30
    assert float(ratio[far].max()) <= 1.15


def test_carlini_wagner_kappa_confidence(digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    t = (y + 1) % 10
    res = CarliniWagnerL2(kappa=2.0, binary_search_steps=4, steps=50)(model, x, y, target=t)
    assert res.success.any()
    with torch.no_grad():
        m = margin(model(res.x_adv), y, t, kappa=float("inf"))  # unclamped margin
    assert float(m[res.success].max()) <= -2.0 + 1e-4


def test_early_stop_is_per_example(digits_model):
    model, x, y = digits_model
    full = IFGSM(eps=0.3, step_size=0.02, steps=20)(model, x, y)
    early = IFGSM(eps=0.3, step_size=0.02, steps=20, early_stop=True)(model, x, y)
    # identical trajectories until the first success: early stopping never loses one
    assert bool((early.success | ~full.success).all())
    # examples stop at different times, and before the budget is used up
    assert len(set(early.grad_evals.tolist())) > 1
    assert float(early.grad_evals.float().mean()) < 20
    assert float(early.size[early.success].mean()) < float(full.size[full.success].mean())


def test_float64_and_dtype_follow_input(digits_model):
    model, x, y = digits_model
    model64 = copy.deepcopy(model).double()
    x64 = x[:8].double()
    for attack in (FGSM(), PGD(norm="l2", eps=1.0, steps=5), CarliniWagnerL2(binary_search_steps=2, steps=20)):
        res = attack(model64, x64, y[:8])
        assert res.x_adv.dtype == torch.float64 and res.size.dtype == torch.float64
        assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


def test_cw_handles_saturated_pixels(digits_model):
    """Pixels at exactly 0 and 1 (common in digits) keep atanh finite and x_adv in [0, 1]."""
    model, x, y = digits_model
    assert bool((x == 0).any()) and bool((x == 1).any())
    res = CarliniWagnerL2(binary_search_steps=2, steps=20)(model, x[:16], y[:16])
    assert torch.isfinite(res.x_adv).all()
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


@pytest.mark.parametrize(
    "cls, kwargs, exc, name",
    [
        (FGSM, {"eps": -0.1}, ValueError, "eps"),
        (FGSM, {"eps": 0.0}, ValueError, "eps"),
        (FGSM, {"eps": float("nan")}, ValueError, "eps"),
        (FGSM, {"eps": "0.3"}, TypeError, "eps"),
        (IFGSM, {"steps": 0}, ValueError, "steps"),
        (IFGSM, {"steps": 2.5}, TypeError, "steps"),
        (IFGSM, {"step_size": 0}, ValueError, "step_size"),
        (IFGSM, {"early_stop": 1}, TypeError, "early_stop"),
        (PGD, {"norm": "l3"}, ValueError, "norm"),
        (PGD, {"norm": 2}, TypeError, "norm"),
        (PGD, {"eps": -1.0}, ValueError, "eps"),
        (PGD, {"steps": 0}, ValueError, "steps"),
        (PGD, {"seed": -1}, ValueError, "seed"),
        (PGD, {"random_start": "yes"}, TypeError, "random_start"),
        (MIM, {"decay": -0.5}, ValueError, "decay"),
        (MIM, {"eps": -0.1}, ValueError, "eps"),
        (CarliniWagnerL2, {"kappa": -1.0}, ValueError, "kappa"),
        (CarliniWagnerL2, {"initial_const": 0.0}, ValueError, "initial_const"),
        (CarliniWagnerL2, {"binary_search_steps": 0}, ValueError, "binary_search_steps"),
        (CarliniWagnerL2, {"steps": 0}, ValueError, "steps"),
        (CarliniWagnerL2, {"lr": 0.0}, ValueError, "lr"),
        (CarliniWagnerL2, {"early_stop": None}, TypeError, "early_stop"),
    ],
)
def test_invalid_hyperparameters(cls, kwargs, exc, name):
    with pytest.raises(exc, match=name):
        cls(**kwargs)


def test_abort_early_is_a_deprecated_alias_of_early_stop():
    """C&W's ``abort_early`` (named in committed reports) still works, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match=r"CarliniWagnerL2\(abort_early=\.\.\.\) is deprecated; use early_stop"):
        old = CarliniWagnerL2(abort_early=False)
    assert old == CarliniWagnerL2(early_stop=False) and old.early_stop is False
    with pytest.warns(DeprecationWarning, match=r"SmoothCarliniWagnerL2\(abort_early"):
        assert SmoothCarliniWagnerL2(abort_early=False).early_stop is False
    assert old.replace(lr=0.1).early_stop is False


def test_replace_revalidates_and_objects_are_frozen():
    with pytest.raises(ValueError, match="norm"):
        PGD().replace(norm="l3")
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'eps'"):
        PGD().eps = 0.1  # type: ignore[misc]
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        PGD(0.3)  # keyword-only


def test_cw_counts_gradient_and_forward_evaluations(digits_model):
    """grad_evals = gradient evaluations; forward_evals = the forward-only check of each
    binary-search step's last iterate (every example stays active without early_stop)."""
    model, x, y = digits_model
    res = run_checked(CarliniWagnerL2(binary_search_steps=3, steps=7, early_stop=False), model, x[:8], y[:8])
    assert torch.all(res.grad_evals == 21) and torch.all(res.forward_evals == 3)
    early = run_checked(CarliniWagnerL2(binary_search_steps=3, steps=40), model, x[:8], y[:8])
    assert torch.all(early.forward_evals <= 3) and bool((early.grad_evals < 120).any())
    pgd = run_checked(PGD(eps=0.1, steps=4), model, x[:8], y[:8])
    assert torch.all(pgd.grad_evals == 4) and torch.all(pgd.forward_evals == 0)


def test_carlini_wagner_linf_box(digits_model):
    """With ``linf`` every returned image stays within ε of x in L∞ (and in [0, 1]); the unboxed attack exceeds it."""
    model, x, y = digits_model
    x, y = x[:16], y[:16]
    t = (y + 1) % 10
    free = CarliniWagnerL2(initial_const=1.0, binary_search_steps=3, steps=60, lr=0.05)(model, x, y, target=t)
    eps = 0.5 * float((free.x_adv - x).flatten(1).abs().amax(1)[free.success].median())
    boxed = CarliniWagnerL2(initial_const=1.0, binary_search_steps=3, steps=60, lr=0.05, linf=eps)(model, x, y, target=t)
    dist = (boxed.x_adv - x).flatten(1).abs().amax(1)
    assert float(dist.max()) <= eps + 1e-6 and float(boxed.x_adv.min()) >= 0 and float(boxed.x_adv.max()) <= 1
    assert bool(boxed.success.any())  # the box still leaves room to succeed on some images
    assert bool(((free.x_adv - x).flatten(1).abs().amax(1) > eps + 1e-3)[free.success].any())
    with pytest.raises(ValueError, match="linf"):
        CarliniWagnerL2(linf=1.5)
    with pytest.raises(ValueError, match="linf"):
        SmoothCarliniWagnerL2(linf=0.3)
