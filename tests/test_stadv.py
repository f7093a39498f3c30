"""stAdv (``spatialadv.attacks.StAdv``) on a small seeded MLP trained on real
digits (``conftest.digits_model``), and the per-example L-BFGS solver under it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from _contract import run_checked
from spatialadv.attacks import StAdv
from spatialadv.eval import run_key
from spatialadv.ops import flow_tv, flow_tv_loss, flow_warp
from spatialadv.ops.flow import flow_l2, neumann_smoother, to_normalized, to_pixels
from spatialadv.optim import lbfgs_per_example

FAST = StAdv(tau=0.05, steps=20)  # succeeds on almost every digit
MIXED = StAdv(tau=2.0, steps=20)  # about half of the examples fail
SEARCH = StAdv(tau_search=(0.005, 0.0005), steps=50)


def _targets(y: torch.Tensor, shift: int = 1) -> torch.Tensor:
    return (y + shift) % 10


def _check_invariants(attack: StAdv, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target=None):
    """Run ``attack`` and assert the attack contract on every example; return the result."""
    res = run_checked(attack, model, x, y, target)
    n, _, h, w = x.shape
    assert res.flow.shape == (n, 2, h, w) and res.flow.dtype == x.dtype
    # gradient evaluations: >= 1 per τ tried, <= 1 + steps × 10 line-search trials per τ
    n_tau = len(attack.tau_search or (attack.tau,))
    assert torch.all(res.grad_evals >= 1)
    assert torch.all(res.grad_evals <= (1 + attack.steps * 10) * n_tau)
    assert res.unit == "flow_tv" and res.delta is None
    assert res.targeted == (target is not None)
    if target is not None:
        assert torch.equal(res.target, target)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0

    # success is the attack criterion recomputed from the model on x_adv
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
        clean = model(x).argmax(1)
    crit = pred == target if target is not None else pred != y
    assert torch.equal(res.success, crit)
    assert torch.equal(res.pred, torch.where(res.success, pred, clean))

    s = res.success
    # successes: x_adv is the input warped by the returned flow, and size is its TV (Eq. 5)
    warped = flow_warp(x, res.flow, padding_mode=attack.padding_mode)
    torch.testing.assert_close(res.x_adv[s], warped[s], rtol=0, atol=1e-6)
    torch.testing.assert_close(res.size[s], flow_tv(res.flow)[s])
    assert torch.all(flow_tv(res.flow)[s] > 0)
    # failures: the input unchanged, zero flow, zero size
    assert torch.equal(res.x_adv[~s], x[~s])
    assert torch.equal(res.flow[~s], torch.zeros_like(res.flow[~s]))
    assert torch.all(res.size[~s] == 0)
    return res


# -- invariants -----------------------------------------------------------------------------


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("attack", [FAST, MIXED, StAdv(tau=0.05, steps=20, padding_mode="border")],
                         ids=["fast", "mixed", "border"])
def test_invariants(digits_model, attack, targeted):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    res = _check_invariants(attack, model, x, y, _targets(y) if targeted else None)
    if attack is MIXED:  # the configuration exercises both branches
        assert 0 < int(res.success.sum()) < len(y)


@pytest.mark.parametrize("attack", [StAdv(steps=1), StAdv(tau=1e4, steps=5)], ids=["steps=1", "huge_tau"])
def test_forced_failures_return_input(digits_model, attack):
    model, x, y = digits_model
    x, y = x[:16], y[:16]
    res = _check_invariants(attack, model, x, y, _targets(y, 4))
    assert not res.success.any()
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.pred, y)  # the fixture's images are classified correctly
    assert res.success_rate == 0.0


def test_failure_flow_zeroed_even_if_solver_returns_one(digits_model):
    """The contract is enforced after the solver: a flow whose warp does not fool
    the model is reported as a failure with zero flow and the input unchanged."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class TinyFlow(StAdv):
        def _run(self, model, x, y, target, index):
            flow = torch.full((x.shape[0], 2, *x.shape[2:]), 1e-3, dtype=x.dtype)
            return {"x_adv": flow_warp(x, flow), "flow": flow, "grad_evals": torch.ones(x.shape[0], dtype=torch.long)}

    model, x, y = digits_model
    res = _check_invariants(TinyFlow(), model, x[:8], y[:8], _targets(y[:8]))
    assert not res.success.any() and torch.equal(res.flow, torch.zeros_like(res.flow))


def test_float64_follows_input(digits_model):
    model, x, y = digits_model
    m64 = copy.deepcopy(model).double()
    res = _check_invariants(FAST, m64, x[:8].double(), y[:8], _targets(y[:8]))
    assert res.x_adv.dtype == res.flow.dtype == res.size.dtype == torch.float64


def test_model_mode_and_parameters_untouched(digits_model):
    model, x, y = digits_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FAST(model, x[:8], y[:8])
    assert not model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_train_mode_warns_and_is_kept(digits_model):
    model, x, y = digits_model
    m = copy.deepcopy(model).train()
    with pytest.warns(UserWarning, match="train mode"):
        StAdv(steps=2)(m, x[:4], y[:4])
    assert m.training


# -- quality ----------------------------------------------------------------------------------


def test_targeted_success_rate_all_targets(digits_model):
    """Every (image, target ≠ label) pair for 20 digits: measured 100 % on this model
    (0.5 s); the threshold leaves room for platform differences."""
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    xs, ys = x.repeat_interleave(9, 0), y.repeat_interleave(9)
    ts = torch.tensor([t for label in y.tolist() for t in range(10) if t != label])
    res = _check_invariants(SEARCH, model, xs, ys, ts)
    assert res.success_rate >= 0.95
    # the flows are small: on average well under a pixel of displacement (RMS, Eq. 6)
    rms = res.flow[res.success].pow(2).mean((1, 2, 3)).sqrt()
    assert float(rms.mean()) < 1.0


def test_untargeted_success_rate_paper_tau(digits_model):
    model, x, y = digits_model
    res = StAdv(tau=0.05, steps=50)(model, x, y)
    assert res.success_rate >= 0.9  # measured 0.98


def test_larger_tau_gives_smoother_flows(digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    t = _targets(y, 5)
    small, large = StAdv(tau=0.02, steps=20)(model, x, y, target=t), StAdv(tau=2.0, steps=20)(model, x, y, target=t)
    both = small.success & large.success
    assert int(both.sum()) >= 5
    assert small.success_rate > large.success_rate
    assert float(flow_tv(large.flow[both]).mean()) < float(flow_tv(small.flow[both]).mean())


def test_best_iterate_is_kept(digits_model):
    """Trajectories do not depend on steps, and the smoothest successful iterate is
    returned: running longer never loses a success nor increases L_flow."""
    model, x, y = digits_model
    x, y, t = x[:32].double(), y[:32], _targets(y[:32], 2)
    m = copy.deepcopy(model).double()
    short = StAdv(tau=0.05, steps=4)(m, x, y, target=t)
    long = StAdv(tau=0.05, steps=30)(m, x, y, target=t)
    s = short.success
    assert int(s.sum()) >= 5 and torch.all(long.success[s])
    eps = StAdv().tv_smoothing
    assert torch.all(flow_tv_loss(long.flow[s], eps=eps) <= flow_tv_loss(short.flow[s], eps=eps) + 1e-9)
    assert torch.all(long.grad_evals >= short.grad_evals)


def test_tau_search_keeps_first_successful_tau(digits_model):
    model, x, y = digits_model
    x, y, t = x[:32].double(), y[:32], _targets(y[:32], 3)
    m = copy.deepcopy(model).double()
    first = StAdv(tau=0.5, steps=20)(m, x, y, target=t)
    search = StAdv(tau_search=(0.5, 0.005), steps=20)(m, x, y, target=t)
    s = first.success
    assert 0 < int(s.sum()) < len(y)
    assert torch.all(search.success[s])
    torch.testing.assert_close(search.flow[s], first.flow[s], rtol=0, atol=1e-9)
    assert torch.equal(search.grad_evals[s], first.grad_evals[s])
    assert torch.all(search.grad_evals[~s] > first.grad_evals[~s])  # a second τ was tried
    assert search.success_rate > first.success_rate
    # the per-example τ of the returned flow; 0 where failed
    assert torch.all(search.params["tau"][s] == 0.5)
    late = search.success & ~s
    assert late.any() and torch.all(search.params["tau"][late] == 0.005)
    assert torch.all(search.params["tau"][~search.success] == 0)
    assert torch.all(first.params["tau"][s] == 0.5) and torch.all(search.forward_evals == 0)


def _spy_lbfgs(monkeypatch):
    """Record every call of the L-BFGS solver made by StAdv: its start, its result,
    and every accepted iterate with the aux ``(ok, L_flow)`` seen by the callback."""
    import spatialadv.attacks.stadv as stadv_mod

    calls = []
    real = stadv_mod.lbfgs_per_example

    def spy(fun, z0, *, callback=None, **kw):
        rec = {"z0": z0.clone(), "steps": []}

        def cb(idx, z, loss, aux):
            rec["steps"].append((idx.clone(), z.clone(), aux[0].clone(), aux[1].clone()))
            return callback(idx, z, loss, aux)

        out = real(fun, z0, callback=cb, **kw)
        rec["z"] = out[0].clone()
        calls.append(rec)
        return out

    monkeypatch.setattr(stadv_mod, "lbfgs_per_example", spy)
    return calls


def test_returned_flow_is_smoothest_successful_iterate(digits_model, monkeypatch):
    model, x, y = digits_model
    m = copy.deepcopy(model).double()
    x, y, t = x[:16].double(), y[:16], _targets(y[:16], 4)
    calls = _spy_lbfgs(monkeypatch)
    res = StAdv(tau=0.05, steps=30)(m, x, y, target=t)
    assert len(calls) == 1
    n = len(y)
    best = torch.full((n,), float("inf"), dtype=torch.float64)
    best_z = torch.zeros(n, 2 * 8 * 8, dtype=torch.float64)
    for idx, z, ok, l_flow in calls[0]["steps"]:
        for k, i in enumerate(idx.tolist()):
            if ok[k] and l_flow[k] < best[i]:
                best[i], best_z[i] = l_flow[k], z[k]
    found = torch.isfinite(best)
    assert int(found.sum()) >= 10
    assert torch.equal(res.success, found)
    torch.testing.assert_close(res.flow.flatten(1)[found], best_z[found], rtol=0, atol=0)
    torch.testing.assert_close(flow_tv_loss(to_normalized(res.flow[found]), eps=StAdv().tv_smoothing), best[found])


def test_tau_search_warm_starts_failures(digits_model, monkeypatch):
    model, x, y = digits_model
    m = copy.deepcopy(model).double()
    x, y, t = x[:16].double(), y[:16], _targets(y[:16], 3)
    calls = _spy_lbfgs(monkeypatch)
    res = StAdv(tau_search=(0.5, 0.005), steps=20)(m, x, y, target=t)
    assert len(calls) == 2
    assert torch.equal(calls[0]["z0"], torch.full_like(calls[0]["z0"], StAdv().init_offset))  # constant start, zero L_flow
    first_ok = torch.zeros(len(y), dtype=torch.bool)
    for idx, _, ok, _ in calls[0]["steps"]:
        first_ok[idx[ok]] = True
    fail = (~first_ok).nonzero().squeeze(1)
    assert 0 < len(fail) < len(y) and calls[1]["z0"].shape[0] == len(fail)
    # the second τ starts where the first left the still-failing images
    assert torch.equal(calls[1]["z0"], calls[0]["z"][fail])
    assert bool(calls[1]["z0"].abs().sum() > 0)
    assert torch.all(res.success[first_ok])


# -- batch independence ---------------------------------------------------------------------


@pytest.mark.parametrize("targeted", [False, True])
def test_batch_independence(digits_model, targeted):
    """An image's flow is the same alone, in a batch, and in a shuffled batch (float64,
    so that only the batch — not float32 rounding of batched kernels — could matter)."""
    model, x, y = digits_model
    m = copy.deepcopy(model).double()
    x, y = x[:24].double(), y[:24]
    t = _targets(y, 7) if targeted else None
    batch = MIXED.replace(tau=0.05)(m, x, y, target=t)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    shuffled = MIXED.replace(tau=0.05)(m, x[perm], y[perm], target=None if t is None else t[perm])
    assert torch.equal(shuffled.success, batch.success[perm])
    torch.testing.assert_close(shuffled.flow, batch.flow[perm], rtol=0, atol=1e-7)
    torch.testing.assert_close(shuffled.x_adv, batch.x_adv[perm], rtol=0, atol=1e-7)
    for i in (0, 5, 11, 23):
        alone = MIXED.replace(tau=0.05)(m, x[i : i + 1], y[i : i + 1], target=None if t is None else t[i : i + 1])
        assert bool(alone.success[0]) == bool(batch.success[i])
        torch.testing.assert_close(alone.flow[0], batch.flow[i], rtol=0, atol=1e-7)
        assert int(alone.grad_evals[0]) == int(batch.grad_evals[i])


def test_batch_independence_float32(digits_model):
    model, x, y = digits_model
    x, y, t = x[:16], y[:16], _targets(y[:16], 2)
    batch = FAST(model, x, y, target=t)
    for i in (3, 9):
        alone = FAST(model, x[i : i + 1], y[i : i + 1], target=t[i : i + 1])
        assert bool(alone.success[0]) == bool(batch.success[i])
        # float32 matrix products round differently for different batch sizes; L-BFGS amplifies
        # that rounding a little (the README's float32 promise is looser still)
        torch.testing.assert_close(alone.flow[0], batch.flow[i], rtol=0, atol=1e-3)


# -- input validation -----------------------------------------------------------------------


class _Wrap(nn.Module):
    def __init__(self, model: nn.Module, fn):
        super().__init__()
        self.model, self.fn = model, fn
        self.eval()

    def forward(self, x):
        return self.fn(self.model(x))


def test_bad_inputs(digits_model):
    model, x, y = digits_model
    x, y = x[:4], y[:4]
    atk = StAdv(steps=2)
    with pytest.raises(ValueError, match="shape"):
        atk(model, x[:, 0], y)  # (N, H, W)
    with pytest.raises(ValueError, match="empty"):
        atk(model, x[:0], y[:0])
    with pytest.raises(TypeError, match="floating"):
        atk(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor of shape \(N, C, H, W\), got ndarray"):
        atk(model, x.numpy(), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(model, x * 255, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        atk(model, x - 0.5, y)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        atk(model, nan, y)
    with pytest.raises(ValueError, match="range"):
        atk(model, x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="range"):
        atk(model, x, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        atk(model, x, y.float())
    with pytest.raises(ValueError, match="shape"):
        atk(model, x, y[:3])
    with pytest.raises(ValueError, match="differ"):
        atk(model, x, y, target=torch.where(torch.arange(4) == 2, y, (y + 1) % 10))
    with pytest.raises(ValueError, match="range"):
        atk(model, x, y, target=torch.full((4,), 10))
    with pytest.raises(ValueError, match="shape"):
        atk(model, x, y, target=(y[:2] + 1) % 10)
    assert torch.equal(x, digits_model[1][:4])


@pytest.mark.parametrize("fn, exc, match", [
    (lambda z: z[:, :1], ValueError, "at least 2 logits"),                # (N, 1)
    (lambda z: z[:, :, None], ValueError, r"logits of shape \(4, K\)"),   # (N, K, 1)
    (lambda z: z[0], ValueError, r"logits of shape \(4, K\)"),            # (K,)
    (lambda z: z[:2], ValueError, r"logits of shape \(4, K\)"),           # wrong batch size
    (lambda z: z.argmax(1, keepdim=True).expand(-1, 10), TypeError, "floating-point logits"),
    (lambda z: (z, z), TypeError, "floating-point logits"),              # not a tensor
    (lambda z: z * float("nan"), ValueError, "NaN or infinite logits"),
], ids=["one-logit", "3d", "1d", "batch", "int", "tuple", "nan"])
def test_bad_model_output(digits_model, fn, exc, match):
    model, x, y = digits_model
    with pytest.raises(exc, match=match):
        StAdv(steps=2)(_Wrap(model, fn), x[:4], y[:4])


def test_labels_checked_against_model_classes(digits_model):
    model, x, y = digits_model
    five = _Wrap(model, lambda z: z[:, :5])  # a 5-class model
    x5, y5 = x[y < 5][:4], y[y < 5][:4]
    res = StAdv(steps=2)(five, x5, y5)
    assert res.success.shape == (4,)
    with pytest.raises(ValueError, match="5-class"):
        StAdv(steps=2)(five, x5, torch.tensor([0, 1, 2, 7]))


@pytest.mark.parametrize("kwargs, exc", [
    (dict(tau=-0.1), ValueError),
    (dict(tau=float("nan")), ValueError),
    (dict(tau="0.05"), TypeError),
    (dict(kappa=-1.0), ValueError),
    (dict(steps=0), ValueError),
    (dict(steps=2.5), TypeError),
    (dict(steps=True), TypeError),
    (dict(history=0), ValueError),
    (dict(patience=0), ValueError),
    (dict(tv_smoothing=0.0), ValueError),
    (dict(rel_improvement=-1e-3), ValueError),
    (dict(padding_mode="reflect"), ValueError),
    (dict(tau_search=(0.0005, 0.005)), ValueError),
    (dict(tau_search=(0.05, -0.01)), ValueError),
    (dict(tau_search=[0.05, 0.005]), TypeError),
    (dict(tau_search=()), TypeError),
])
def test_invalid_hyper_parameters(kwargs, exc):
    with pytest.raises(exc, match=f"^{next(iter(kwargs))} (must|entries must)"):
        StAdv(**kwargs)
    with pytest.raises(exc, match=f"^{next(iter(kwargs))} (must|entries must)"):
        StAdv().replace(**kwargs)  # replace() validates again


def test_max_iter_is_a_deprecated_alias_of_steps():
    """``max_iter`` (committed reports, earlier command lines) still works, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match=r"max_iter=\.\.\.\) is deprecated; use steps"):
        old = StAdv(max_iter=7)
    assert old == StAdv(steps=7) and old.steps == 7
    assert run_key("m", old, "d", "all") == run_key("m", StAdv(steps=7), "d", "all")
    assert old.replace(tau=0.5).steps == 7  # replace() knows only steps (and does not warn again)
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="pass steps only"):
        StAdv(steps=5, max_iter=7)
    with pytest.raises(TypeError, match="unexpected keyword argument 'eps'"):
        StAdv(eps=1e-6)  # renamed tv_smoothing: the budget is eps everywhere, this is no budget


def test_attack_is_immutable():
    a = StAdv(tau=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'tau'"):
        a.tau = 0.2  # frozen dataclass
    assert a.replace(tau=0.2).tau == 0.2 and a.tau == 0.1
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        StAdv(0.1)  # keyword-only


# -- per-example L-BFGS ---------------------------------------------------------------------


def _quadratics(n=5, d=6, seed=0):
    """``f_i(z) = ½ Σ_j a_ij (z_j − c_ij)²`` with curvatures spread over 4 decades."""
    g = torch.Generator().manual_seed(seed)
    a = 10.0 ** (torch.rand(n, d, generator=g, dtype=torch.float64) * 3 - 1)
    a = a * torch.logspace(-1, 1, n, dtype=torch.float64)[:, None]
    c = torch.randn(n, d, generator=g, dtype=torch.float64)
    return a, c


def _objective(a, c, rows, trace):
    def fun(z, idx):
        r = z - c[rows[idx]]
        for k, i in enumerate(rows[idx].tolist()):
            trace.setdefault(i, []).append(z[k].clone())
        return 0.5 * (a[rows[idx]] * r * r).sum(1), a[rows[idx]] * r, None

    return fun


def test_lbfgs_per_example_reaches_minimisers():
    a, c = _quadratics()
    n, d = a.shape
    z, iters, evals = lbfgs_per_example(_objective(a, c, torch.arange(n), {}), torch.zeros(n, d, dtype=torch.float64),
                                        max_iter=200, ftol=0.0, gtol=1e-10)
    torch.testing.assert_close(z, c, rtol=0, atol=1e-8)
    assert torch.all(iters < 200)  # each stopped on its own gradient test
    assert len(set(iters.tolist())) > 1  # different curvatures, different iteration counts
    assert torch.all(evals >= iters + 1)


def test_lbfgs_per_example_trajectories_independent():
    a, c = _quadratics(seed=1)
    n, d = a.shape
    z0 = torch.randn(n, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batch_trace: dict = {}
    zb, ib, eb = lbfgs_per_example(_objective(a, c, torch.arange(n), batch_trace), z0, max_iter=200, ftol=0.0, gtol=1e-10)
    perm = torch.tensor([3, 0, 4, 1, 2])
    perm_trace: dict = {}
    zp, ip, ep = lbfgs_per_example(_objective(a, c, perm, perm_trace), z0[perm], max_iter=200, ftol=0.0, gtol=1e-10)
    assert torch.equal(zp, zb[perm]) and torch.equal(ip, ib[perm]) and torch.equal(ep, eb[perm])
    for i in range(n):
        alone_trace: dict = {}
        za, ia, ea = lbfgs_per_example(_objective(a, c, torch.tensor([i]), alone_trace), z0[i : i + 1],
                                       max_iter=200, ftol=0.0, gtol=1e-10)
        assert torch.equal(za[0], zb[i]) and int(ia[0]) == int(ib[i]) and int(ea[0]) == int(eb[i])
        # every point evaluated for example i is the same, in the same order
        assert len(alone_trace[i]) == len(batch_trace[i]) == len(perm_trace[i])
        assert all(torch.equal(p, q) for p, q in zip(alone_trace[i], batch_trace[i]))


def test_lbfgs_callback_stops_single_examples():
    a, c = _quadratics()
    n, d = a.shape
    z0 = torch.zeros(n, d, dtype=torch.float64)

    def stop_first(idx, z, loss, aux):
        return idx == 0

    z, iters, _ = lbfgs_per_example(_objective(a, c, torch.arange(n), {}), z0, max_iter=200, ftol=0.0, gtol=1e-10,
                                    callback=stop_first)
    assert int(iters[0]) == 0 and torch.equal(z[0], z0[0])
    torch.testing.assert_close(z[1:], c[1:], rtol=0, atol=1e-8)
    z, iters, _ = lbfgs_per_example(_objective(a, c, torch.arange(n), {}), z0, max_iter=3)
    assert torch.all(iters == 3)


def test_restarts_only_touch_failures(digits_model):
    """restart_offsets re-attacks only still-failing images; earlier successes are kept as they were."""
    model, x, y = digits_model
    m = copy.deepcopy(model).double()
    x, y = x[:24].double(), y[:24]
    t = _targets(y, 3)
    base = MIXED.replace(tau=2.0)(m, x, y, target=t)
    more = MIXED.replace(tau=2.0, restart_offsets=(0.01, -0.01))(m, x, y, target=t)
    ok, bad = base.success, ~base.success
    assert 0 < int(bad.sum())
    torch.testing.assert_close(more.flow[ok], base.flow[ok], rtol=0, atol=0)
    assert torch.all(more.success[ok])
    assert torch.all(more.grad_evals[bad] > base.grad_evals[bad])  # restarts ran on the failures
    assert torch.equal(more.grad_evals[ok], base.grad_evals[ok])
    with pytest.raises(ValueError, match=r"init_offset and restart_offsets must be numbers in \(-0.5, 0.5\) pixel, got 0.7"):
        StAdv(restart_offsets=(0.7,))
    with pytest.raises(TypeError, match=r"restart_offsets must be a tuple of floats, e.g. \(0.01, -0.01\)"):
        StAdv(restart_offsets=[0.01])


# -- the paper's units, the preconditioner, the solver's budget ----------------------------------


def test_flow_unit_conversion_round_trips():
    f = torch.randn(3, 2, 8, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    n = to_normalized(f)
    torch.testing.assert_close(n[:, 0], f[:, 0] * 2 / 11)  # Δu along W
    torch.testing.assert_close(n[:, 1], f[:, 1] * 2 / 7)  # Δv along H
    torch.testing.assert_close(to_pixels(n), f)


def test_neumann_smoother_matches_dense_inverse_and_is_row_independent():
    h, w, lam, spacing = 5, 7, 3.0, (0.5, 2.0)
    n = h * w
    lap = torch.zeros(n, n, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for dr, dc, s in ((0, 1, spacing[1]), (1, 0, spacing[0])):
                if r + dr < h and c + dc < w:
                    a, b = r * w + c, (r + dr) * w + c + dc
                    wgt = 1.0 / s**2
                    lap[a, b] -= wgt
                    lap[b, a] -= wgt
                    lap[a, a] += wgt
                    lap[b, b] += wgt
    k = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + lam * lap)
    op = neumann_smoother(h, w, lam, spacing=spacing)
    v = torch.randn(6, 2 * n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op(v), (v.view(6, 2, n) @ k).view(6, -1))
    v32 = v.float()
    assert torch.equal(op(v32), torch.cat([op(v32[i : i + 1]) for i in range(6)]))  # float32: each row alone
    assert torch.equal(neumann_smoother(h, w, 0.0)(v), v)
    with pytest.raises(ValueError, match="lam"):
        neumann_smoother(h, w, -1.0)
    with pytest.raises(ValueError, match="spacing"):
        neumann_smoother(h, w, 1.0, spacing=(0.0, 1.0))


def test_normalized_tau_is_pixel_tau_rescaled(digits_model):
    """τ on normalised flows equals τ·2/(W−1) on pixel flows (L_flow is 1-homogeneous; eps and λ rescale)."""
    model, x, y = digits_model
    m = copy.deepcopy(model).double()
    x, y, t = x[:12].double(), y[:12], _targets(y[:12], 3)
    s = 2 / 7  # 8 × 8 digits
    norm = StAdv(tau=0.5, tv_smoothing=1e-6, precondition=0.5, steps=15)(m, x, y, target=t)
    pix = StAdv(tau=0.5 * s, tv_smoothing=1e-6 / s**2, precondition=0.5 / s**2, flow_units="pixels", steps=15)(m, x, y, target=t)
    assert torch.equal(norm.success, pix.success)
    torch.testing.assert_close(norm.flow, pix.flow, rtol=0, atol=1e-6)


def test_preconditioner_reaches_smoother_flows(digits_model):
    """Same objective, same success, lower L_flow and lower TV/L2 than plain L-BFGS (measured on MNIST too)."""
    model, x, y = digits_model
    x, y, t = x[:32], y[:32], _targets(y[:32], 4)
    pre, plain = StAdv()(model, x, y, target=t), StAdv(precondition=0.0)(model, x, y, target=t)
    both = pre.success & plain.success
    assert int(both.sum()) >= 28
    l_pre = flow_tv_loss(to_normalized(pre.flow[both]), eps=0.0).mean()
    l_plain = flow_tv_loss(to_normalized(plain.flow[both]), eps=0.0).mean()
    assert float(l_pre) < float(l_plain)
    ratio = (lambda r: (flow_tv(r.flow[both]) / flow_l2(r.flow[both])).mean())
    assert float(ratio(pre)) < float(ratio(plain))


def test_failing_images_continue_while_objective_decreases(digits_model):
    """Without abandon_after an unsuccessful image runs until L-BFGS converges or the cap; steps are reported."""
    model, x, y = digits_model
    x, y, t = x[:16], y[:16], _targets(y[:16], 5)
    keep = StAdv(tau=2.0, steps=25)(model, x, y, target=t)
    drop = StAdv(tau=2.0, steps=25, abandon_after=2)(model, x, y, target=t)
    fail = ~keep.success & ~drop.success
    assert int(fail.sum()) >= 4
    steps_keep, steps_drop = keep.params["steps"], drop.params["steps"]
    assert torch.all(steps_keep <= 25) and bool((steps_keep[fail] == 25).any())  # failures ran to the cap
    assert torch.all(steps_drop[fail] <= steps_keep[fail]) and bool((steps_drop[fail] < steps_keep[fail]).any())
    assert torch.all(keep.params["steps"] <= keep.grad_evals)  # every step costs at least one evaluation


def test_lbfgs_per_example_line_search_limits_and_preconditioner():
    a, c = _quadratics()
    n, d = a.shape
    z0 = torch.zeros(n, d, dtype=torch.float64)
    # a preconditioner changes the path, not the minimiser
    k = torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    z, _, _ = lbfgs_per_example(_objective(a, c, torch.arange(n), {}), z0, max_iter=300, ftol=0.0, gtol=1e-10,
                                precondition=lambda v: v * k)
    torch.testing.assert_close(z, c, rtol=0, atol=1e-8)
    # a per-example trial limit: 1 trial per line search stops example 0's first failing search
    limits = torch.full((n,), 10, dtype=torch.long)
    limits[0] = 1
    _, _, e_lim = lbfgs_per_example(_objective(a, c, torch.arange(n), {}), z0, max_iter=50, max_ls=limits)
    _, _, e_all = lbfgs_per_example(_objective(a, c, torch.arange(n), {}), z0, max_iter=50, max_ls=10)
    assert torch.equal(e_lim[1:], e_all[1:])  # the others are untouched
    assert int(e_lim[0]) <= int(e_all[0])
