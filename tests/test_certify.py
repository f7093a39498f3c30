"""Spatial certificate (seed 002): smoothness operator, bounds, lower-bound attack, soundness."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from _contract import run_checked
from spatialadv.attacks import SmoothFlowPGD, StAdv
from spatialadv.certify import (
    PairBounds,
    attained_margin_range,
    box_half_widths,
    brute_force_max,
    certify,
    dual_objective,
    ellipsoid_constraints,
    flow_smoothness,
    neighbour_matrices,
    network_weights,
    optimize_dual,
    pair_bounds,
    ritz_top_eigen,
    sdp_dual_bound,
    sdp_exact,
    smoothness_gram,
    spectral_start,
    weights_fingerprint,
)
from spatialadv.certify.lower_bound import (
    lower_bound_attack,
    pair_margin_change,
    rescale_to_budget,
    warp_derivative,
)
from spatialadv.data import load_dataset
from spatialadv.ops.flow import flow_tv
from spatialadv.ops.warp import flow_warp
from spatialadv.training import certify_spec


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(hidden: int | None, seed: int = 0, epochs: int = 25):
    tr = load_dataset("digits", "train")
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)] if hidden else [nn.Flatten(), nn.Linear(64, 10)]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(tr), generator=gen)
        for i in range(0, len(tr), 64):
            b = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(tr.x[b]), tr.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def nets():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mlp, lin = _train(16), _train(None)
        te = load_dataset("digits", "test")
        with torch.no_grad():
            ok = (mlp(te.x).argmax(1) == te.y) & (lin(te.x).argmax(1) == te.y)
        assert float((mlp(te.x).argmax(1) == te.y).float().mean()) > 0.9
        x, y = te.x[ok][:40].clone(), te.y[ok][:40].clone()
        q = {m: pair_bounds(mlp, (1, 8, 8), method=m, dual_steps=200) for m in ("sdp", "sdp-box", "spectral", "frobenius")}
        yield {"mlp": mlp, "lin": lin, "x": x, "y": y, "q": q}
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- smoothness
@pytest.mark.parametrize("border", ["zeros", "replicate"])
def test_gram_is_sum_of_neighbour_terms_and_matches_eq2(border):
    h, w = 5, 7
    ms = neighbour_matrices(h, w, border=border)
    eye = np.eye(h * w)
    g = smoothness_gram(h, w, border=border).toarray()
    assert np.allclose(g, sum((eye - m.toarray()).T @ (eye - m.toarray()) for m in ms.values()))
    # each row of a neighbour matrix is one-hot (or zero at the border with border='zeros')
    for m in ms.values():
        rows = np.asarray(m.sum(1)).ravel()
        assert set(rows.tolist()) <= ({0.0, 1.0} if border == "zeros" else {1.0})
    gen = torch.Generator().manual_seed(0)
    flow = torch.randn(3, 2, h, w, generator=gen, dtype=torch.float64)
    # Eq. 2 written out: Σ_p Σ_{q∈N(p)} (Δu_p−Δu_q)² + (Δv_p−Δv_q)², outside flow = 0 or = own flow
    ref = torch.zeros(3, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc = r + dr, c + dc
                inside = 0 <= rr < h and 0 <= cc < w
                other = flow[:, :, rr, cc] if inside else (torch.zeros_like(flow[:, :, 0, 0]) if border == "zeros" else flow[:, :, r, c])
                ref += (flow[:, :, r, c] - other).pow(2).sum(1)
    m_norm = np.sqrt(np.einsum("ncp,pq,ncq->n", flow.flatten(2).numpy(), g, flow.flatten(2).numpy()))
    assert torch.allclose(flow_smoothness(flow, border=border), ref.sqrt())
    assert np.allclose(m_norm, ref.sqrt().numpy())
    if border == "replicate":  # same neighbourhood as stAdv's flow metrics
        assert torch.allclose(flow_smoothness(flow, border="replicate"), math.sqrt(h * w) * flow_tv(flow))


def test_box_half_widths_finite_and_tight():
    h, w = 6, 5
    lam = box_half_widths(h, w)
    assert lam.shape == (h * w,) and np.all(np.isfinite(lam)) and np.all(lam > 0)
    g = smoothness_gram(h, w).toarray()
    ginv = np.linalg.inv(g)
    for p in (0, 7, 14):  # Prop. 2: max r_p on the ellipsoid ‖M r‖ ≤ 1 is λ_p, attained by G⁻¹e_p/λ_p
        r = ginv[:, p] / lam[p]
        assert np.isclose(r @ g @ r, 1.0) and np.isclose(r[p], lam[p])
        rnd = np.random.default_rng(p).standard_normal((200, h * w))
        rnd /= np.sqrt(np.einsum("np,pq,nq->n", rnd, g, rnd))[:, None]
        assert np.all(np.abs(rnd[:, p]) <= lam[p] + 1e-12)
    # λ larger in the centre than at the Dirichlet border
    assert lam.reshape(h, w)[h // 2, w // 2] > lam.reshape(h, w)[0, 0]
    assert np.all(np.isfinite(box_half_widths(h, w, border="replicate", ridge=0.1)))


def test_smoothness_bad_inputs():
    with pytest.raises(ValueError, match="singular"):
        box_half_widths(4, 4, border="replicate")
    with pytest.raises(ValueError, match="border"):
        neighbour_matrices(4, 4, border="reflect")
    with pytest.raises(ValueError, match="h must"):
        smoothness_gram(0, 4)
    with pytest.raises(ValueError, match="ridge"):
        smoothness_gram(3, 3, ridge=-1.0)
    with pytest.raises(ValueError, match="shape"):
        flow_smoothness(torch.zeros(1, 3, 4, 4))
    with pytest.raises(TypeError, match=r"flow must be a floating-point torch.Tensor of shape \(N, 2, H, W\)"):
        flow_smoothness(torch.zeros(1, 2, 4, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------- warp Jacobian
def test_warp_derivative_matches_finite_differences():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    flow = (torch.rand(2, 2, 6, 6, generator=gen, dtype=torch.float64) - 0.5) * 1.6
    flow = flow + 0.013  # off the integer kinks
    gu, gv = warp_derivative(x, flow)
    h = 1e-6
    for ch, g in ((0, gu), (1, gv)):
        d = torch.zeros_like(flow)
        d[:, ch] = h
        fd = (flow_warp(x, flow + d) - flow_warp(x, flow - d)) / (2 * h)
        assert torch.allclose(g, fd, atol=1e-6)
    assert gu.abs().max() <= 1 and gv.abs().max() <= 1  # the |Dg| ≤ ρ fact the bound uses


# ---------------------------------------------------------------------------------- SDP
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_sdp_vs_brute_force_and_dual(seed):
    gen = torch.Generator().manual_seed(seed)
    m, d = 4, 9
    b = torch.randn(m, d, generator=gen, dtype=torch.float64)
    brute = brute_force_max(b)
    # brute force over z ∈ {±1}ⁿ equals the closed form 2·max_s ‖Bᵀs‖₁ over s ∈ {±1}ᵐ
    s = torch.tensor([[1 if (k >> i) & 1 else -1 for i in range(m)] for k in range(2 ** m)], dtype=torch.float64)
    assert math.isclose(brute, float(2 * (s @ b).abs().sum(1).max()), rel_tol=1e-12)
    exact = sdp_exact(b)
    assert exact >= brute - 1e-6 * abs(brute)          # a relaxation
    assert exact <= 1.7822 * brute                      # Grothendieck: the bipartite SDP is within K_G
    assert math.isclose(sdp_exact(b, solver="SCS", eps=1e-7), exact, rel_tol=1e-3)
    # rank-one B: the relaxation is tight, so the SDP equals the brute force maximum
    a, c = torch.randn(m, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    b1 = a[:, None] * c[None, :]
    assert math.isclose(sdp_exact(b1), brute_force_max(b1), rel_tol=1e-5)
    # dual bounds: any c gives an upper bound; the optimised one is close to the SDP
    lam = torch.ones(d, dtype=torch.float64)
    bound, cvec = optimize_dual(b, torch.ones(1, m, dtype=torch.float64), lam, steps=300)
    assert float(bound[0]) >= exact - 1e-6 * exact
    assert float(bound[0]) <= 1.05 * exact
    for _ in range(3):
        rnd = torch.randn(m + d, generator=gen, dtype=torch.float64) * 3
        assert float(sdp_dual_bound(b, rnd)) >= exact - 1e-6 * exact


def test_ritz_and_dual_objective_gradient():
    gen = torch.Generator().manual_seed(3)
    m, d = 5, 7
    w = torch.randn(m, d, generator=gen, dtype=torch.float64)
    dv = torch.randn(2, m, generator=gen, dtype=torch.float64)
    lam = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    c = torch.randn(2, m + d, generator=gen, dtype=torch.float64)
    theta, u = ritz_top_eigen(w, dv, lam, c, iters=60, generator=gen)
    for k in range(2):
        b = dv[k][:, None] * w * lam[None]
        a = torch.zeros(m + d, m + d, dtype=torch.float64)
        a[:m, m:], a[m:, :m] = b, b.T
        a -= torch.diag(c[k])
        assert math.isclose(float(theta[k]), float(torch.linalg.eigvalsh(a)[-1]), rel_tol=1e-8)
    # gradient of the surrogate in (W, v, c) with the eigenvector held fixed
    wq, dq, cq = (t.clone().requires_grad_(True) for t in (w, dv, c))
    torch.autograd.gradcheck(lambda w_, d_, c_: dual_objective(w_, d_, lam, c_, u), (wq, dq, cq))


# ---------------------------------------------------------------------------------- SDP with the ellipsoid's constraints
def _random_net(seed: int, m: int, k: int, shape=(1, 6, 6)) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), m), nn.ReLU(), nn.Linear(m, k)).double()
    return net.eval()


@pytest.mark.parametrize("h, w, border, ridge", [(5, 7, "zeros", 0.0), (8, 8, "zeros", 0.3), (1, 4, "zeros", 0.0),
                                                 (6, 5, "replicate", 0.1), (3, 3, "replicate", 2.0)])
def test_ellipsoid_constraints_are_valid(h, w, border, ridge):
    cons = ellipsoid_constraints((2, h, w), border=border, ridge=ridge)
    g = smoothness_gram(h, w, border=border, ridge=ridge).toarray()
    lam2 = box_half_widths(h, w, border=border, ridge=ridge) ** 2
    # zeros: the min-eigenvalue and the torsion rows per channel; replicate: φ = 1/ridge is constant, only the first
    kinds = ("min-eigenvalue", "torsion") if border == "zeros" and h * w > 1 else ("min-eigenvalue",)
    assert cons.kind == kinds * 2 and cons.channel == tuple(c for c in (0, 1) for _ in kinds) and len(cons) == 2 * len(kinds)
    assert torch.all(cons.level == 0.5)
    for row, n, c in zip(cons.a.numpy(), cons.weights.numpy(), cons.channel):
        # diag(n) ⪯ MᵀM: the torsion vector n = 1/φ (φ = (MᵀM)⁻¹1) and n = μ_min·1
        assert np.all(n > 0) and np.linalg.eigvalsh(g - np.diag(n))[0] >= -1e-12 * np.abs(g).max()
        assert np.allclose(row[c * h * w:(c + 1) * h * w], n * lam2) and not row[(1 - c) * h * w:(2 - c) * h * w].any()
    if "torsion" in kinds:
        n_t = cons.weights[1].numpy()
        assert np.allclose(n_t, 1 / np.linalg.solve(g, np.ones(h * w)), rtol=1e-9)
        assert not np.allclose(n_t, cons.weights[0].numpy())  # it adds information
    # the constraint itself: Σ_p n_p (r_u,p² + r_v,p²) ≤ ‖M r‖² for random flows
    rng = np.random.default_rng(0)
    r = rng.standard_normal((50, 2, h * w)) * rng.uniform(0.1, 3, (50, 1, h * w))
    quad = np.einsum("ncp,pq,ncq->n", r, g, r)
    for n in cons.weights.numpy():
        assert np.all((n * (r**2).sum(1)).sum(1) <= quad * (1 + 1e-12))
    with pytest.raises(ValueError, match="border"):
        ellipsoid_constraints((1, 4, 4), border="reflect")
    with pytest.raises(ValueError, match="singular"):
        ellipsoid_constraints((1, 4, 4), border="replicate")


@pytest.mark.parametrize("seed, m, k, shape, border, ridge", [(0, 8, 3, (1, 6, 6), "zeros", 0.0),
                                                              (1, 20, 10, (1, 6, 6), "zeros", 0.0),
                                                              (2, 12, 5, (2, 4, 5), "zeros", 0.2),
                                                              (3, 16, 4, (1, 6, 6), "replicate", 0.1)])
def test_sdp_at_most_spectral_and_frobenius_on_random_nets(seed, m, k, shape, border, ridge):
    net = _random_net(seed, m, k, shape)
    kw = {"border": border, "ridge": ridge}
    q = {meth: pair_bounds(net, shape, method=meth, dual_steps=40, **kw) for meth in ("sdp", "sdp-box", "spectral", "frobenius")}
    off = ~torch.eye(k, dtype=torch.bool)
    assert torch.all(q["sdp"] <= q["spectral"] * (1 + 1e-9)) and torch.all(q["sdp"] <= q["frobenius"] * (1 + 1e-9))
    assert float((q["sdp"][off] / q["spectral"][off]).mean()) < 0.97  # strictly tighter on random nets
    assert torch.all(q["sdp"][off] > 0) and torch.equal(q["sdp"], q["sdp"].T) and torch.all(q["sdp"].diagonal() == 0)
    assert q["sdp"].method == "sdp" and q["sdp-box"].method == "sdp-box"
    qmin = pair_bounds(net, shape, method="min", dual_steps=40, **kw)
    assert torch.all(qmin <= q["sdp"]) and torch.all(qmin <= q["spectral"]) and torch.all(qmin >= q["sdp"] * (1 - 1e-9))
    # the starting dual point alone is the spectral bound (min-eigenvalue branch), certified up to rounding
    ch, h, w = shape
    lam = torch.tensor(box_half_widths(h, w, border=border, ridge=ridge)).repeat(ch)
    cons = ellipsoid_constraints(shape, **kw)
    wd, v = net[1].weight.detach(), net[3].weight.detach()
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    dv = torch.stack([v[i] - v[j] for i, j in pairs])
    c0, mu0, val0 = spectral_start(wd, dv, lam, cons)
    bm = dv[:, :, None] * wd[None] * lam[None, None, :]
    cert0 = sdp_dual_bound(bm, c0, mu=mu0, constraints=cons)
    spec = torch.tensor([float(q["spectral"][i, j]) for i, j in pairs], dtype=torch.float64)
    assert torch.all(cert0 <= spec * (1 + 1e-9)) and torch.all(val0 <= spec * (1 + 1e-9))
    assert torch.all(cert0 >= val0 * (1 - 1e-9))


def test_sdp_at_most_spectral_on_a_trained_net(nets):
    q = nets["q"]
    off = ~torch.eye(10, dtype=torch.bool)
    for other in ("spectral", "frobenius"):
        assert torch.all(q["sdp"] <= q[other] * (1 + 1e-9)), other
    assert float((q["sdp"][off] / q["spectral"][off]).mean()) < 0.95
    # the box alone is looser than the spectral bound on this net: why "sdp" adds the ellipsoid's constraints
    assert float(q["sdp-box"][off].mean()) > float(q["spectral"][off].mean()) > float(q["sdp"][off].mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_sdp_with_constraints_vs_dual_and_feasible_points(seed):
    shape, m = (1, 6, 6), 8
    net = _random_net(10 + seed, m, 3, shape)
    cons = ellipsoid_constraints(shape)
    lam = torch.tensor(box_half_widths(6, 6))
    wd, v = net[1].weight.detach(), net[3].weight.detach()
    dv = torch.stack([v[0] - v[1], v[1] - v[2]])
    bm = dv[:, :, None] * wd[None] * lam[None, None, :]
    bound, c, mu = optimize_dual(wd, dv, lam, steps=100, constraints=cons)
    assert c.shape == (2, m + 36) and mu.shape == (2, len(cons)) and torch.all(mu >= 0)
    assert torch.allclose(sdp_dual_bound(bm, c, mu=mu, constraints=cons), bound)  # the returned point certifies the bound
    gen = torch.Generator().manual_seed(seed)
    a, level = cons.a.double(), cons.level.double()
    for p in range(2):
        exact = sdp_exact(bm[p], constraints=cons)
        box = sdp_exact(bm[p])
        assert exact <= box * (1 + 1e-6)                      # more constraints never increase the value
        assert exact <= float(bound[p]) * (1 + 1e-6)          # the dual is an upper bound of the primal
        assert float(bound[p]) <= exact * 1.03                # and a close one
        # any dual point (c, μ ≥ 0) bounds the optimum from above
        for _ in range(3):
            rc = torch.randn(m + 36, generator=gen, dtype=torch.float64) * 3
            rmu = torch.rand(len(cons), generator=gen, dtype=torch.float64) * 50
            assert float(sdp_dual_bound(bm[p], rc, mu=rmu, constraints=cons)) >= exact * (1 - 1e-6)
        # feasible points z = [s; α·sign(Bᵀs)], α the largest scale meeting the box and every constraint
        best = -math.inf
        for _ in range(200):
            s = torch.randint(0, 2, (m,), generator=gen, dtype=torch.float64) * 2 - 1
            t = torch.sign(bm[p].T @ s)
            alpha = min(1.0, float(torch.sqrt(level / (a @ t**2)).min()))
            z = torch.cat([s, alpha * t])
            assert bool(torch.all(a @ z[m:] ** 2 <= level * (1 + 1e-12)))
            best = max(best, 2 * float(s @ bm[p] @ (alpha * t)))
        assert 0 < best <= exact * (1 + 1e-6)
    with pytest.raises(ValueError, match="mu needs constraints"):
        sdp_dual_bound(bm, c, mu=mu)
    with pytest.raises(ValueError, match="mu must be finite and >= 0"):
        sdp_dual_bound(bm, c, mu=-mu - 1, constraints=cons)
    with pytest.raises(ValueError, match="mu must have shape"):
        sdp_dual_bound(bm, c, mu=mu[:, :1], constraints=cons)
    with pytest.raises(ValueError, match=r"constraints must have a \(k, 25\)"):
        sdp_dual_bound(bm[:, :, :25], c[:, :m + 25], mu=mu, constraints=cons)
    with pytest.raises(TypeError, match="EllipsoidConstraints"):
        sdp_exact(bm[0], constraints=(cons.a, cons.level))


def test_linear_model_sdp_with_constraints(nets):
    lin = nets["lin"]
    q = {meth: pair_bounds(lin, (1, 8, 8), method=meth) for meth in ("sdp", "sdp-box", "linear", "spectral", "frobenius")}
    assert torch.equal(q["sdp-box"], q["linear"])  # the box SDP of a linear model is Eq. 16
    for other in ("linear", "spectral", "frobenius"):
        assert torch.all(q["sdp"] <= q[other] * (1 + 1e-9)), other
    # a feasible point of the convex problem: x = α·1 scaled into the constraints, value 2ρΣ|v|λx ≤ Q
    cons = ellipsoid_constraints((1, 8, 8))
    lam = torch.tensor(box_half_widths(8, 8))
    v = (lin[1].weight[3] - lin[1].weight[5]).detach().double()
    b = v.abs() * lam
    x = b / b.max()
    x = x * min(1.0, float(torch.sqrt(cons.level / (cons.a @ x**2)).min()))
    assert 0 < 2 * float((b * x).sum()) <= float(q["sdp"][3, 5])


# ---------------------------------------------------------------------------------- bounds vs attacks
def test_linear_bound_eq16_and_lower_bound_attack(nets):
    lin = nets["lin"]
    q = pair_bounds(lin, (1, 8, 8), method="linear", input_range=(-1, 1))
    lam = torch.tensor(box_half_widths(8, 8))
    v = (lin[1].weight[3] - lin[1].weight[5]).detach().double()
    assert math.isclose(float(q[3, 5]), 2 * 2 * float((v * lam).abs().sum()), rel_tol=1e-6)  # ρ = 2 on [-1, 1]
    assert torch.equal(q, q.T) and torch.all(q.diagonal() == 0)
    for eps in (0.5, 4.0):
        res = lower_bound_attack(lin, (1, 8, 8), eps, pair=(3, 5), iters=10)
        assert float(flow_smoothness(res.flow.double())) <= eps * (1 + 1e-6)
        assert res.x.min() >= -1 and res.x.max() <= 1
        assert float(pair_margin_change(lin, res.x.double(), res.flow.double(), 3, 5)) == pytest.approx(res.margin, rel=1e-4)
        assert 0 < res.margin <= eps * float(q[3, 5])
        assert res.margin >= res.history[0]  # refinement never loses the best
    with pytest.raises(ValueError, match="linear"):
        pair_bounds(nets["mlp"], (1, 8, 8), method="linear")


def test_attained_margin_range_exact_on_linear_nets_and_attained_on_hidden(nets):
    lin, mlp = nets["lin"], nets["mlp"]
    v = (lin[1].weight[3] - lin[1].weight[5]).detach().double()
    c = float(lin[1].bias[3] - lin[1].bias[5])
    low, high = attained_margin_range(lin, (1, 8, 8), pair=(3, 5))
    # a linear margin's range over [-1, 1]^D is ±‖v‖₁ around its bias, reached at the vertex sign(±v)
    assert low == pytest.approx(c - float(v.abs().sum()), rel=1e-9) and high == pytest.approx(c + float(v.abs().sum()), rel=1e-9)
    low, high = attained_margin_range(mlp, (1, 8, 8), pair=(1, 0), restarts=4)
    gen = torch.Generator().manual_seed(1)
    x = torch.where(torch.rand(2000, 1, 8, 8, generator=gen) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        z = mlp(x)
    m = (z[:, 1] - z[:, 0]).double()
    assert low <= float(m.min()) and high >= float(m.max())  # better than random vertices
    # the values are attained (below the interval bound of the hidden net's range) and the lower bounds stay inside them
    net = network_weights(mlp)
    vv, W, b = (net.V[1] - net.V[0]).double(), net.W.double(), net.b.double()
    l1 = W.abs().sum(1)
    c = float(net.c[1] - net.c[0])
    sup = float((vv.clamp_min(0) * (l1 + b).clamp_min(0)).sum() - (vv.clamp_max(0).abs() * (b - l1).clamp_min(0)).sum()) + c
    inf = float((vv.clamp_min(0) * (b - l1).clamp_min(0)).sum() - (vv.clamp_max(0).abs() * (l1 + b).clamp_min(0)).sum()) + c
    assert inf - 1e-9 <= low <= high <= sup + 1e-9
    for eps in (0.5, 50.0):  # a flow of any size stays under the margin's range (interval bound) over the box
        assert lower_bound_attack(mlp, (1, 8, 8), eps, pair=(1, 0), iters=5).margin <= sup - inf
    with pytest.raises(ValueError, match="pair"):
        attained_margin_range(mlp, (1, 8, 8), pair=(1, 1))


def test_warps_keep_the_box_so_the_margin_range_caps_every_flow():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 9, 9, generator=gen, dtype=torch.float64) * 2 - 1
    flow = torch.randn(4, 2, 9, 9, generator=gen, dtype=torch.float64) * 5
    y = flow_warp(x, flow)
    assert y.min() >= -1 and y.max() <= 1


def test_lower_bound_result_keeps_thm1_exact_value(nets):
    res = lower_bound_attack(nets["mlp"], (1, 8, 8), 1.0, pair=(1, 0), iters=3)
    assert res.margin_theorem_exact == res.history[0]
    assert len(res.history) == 4


@pytest.mark.parametrize("eps", [0.2, 2.0])
def test_lower_bound_attack_below_every_upper_bound(nets, eps):
    mlp = nets["mlp"]
    qs = {m: pair_bounds(mlp, (1, 8, 8), method=m, input_range=(-1, 1), dual_steps=100)
          for m in ("sdp", "sdp-box", "spectral", "frobenius")}
    for pair in ((1, 0), (7, 2)):
        res = lower_bound_attack(mlp, (1, 8, 8), eps, pair=pair, iters=15)
        assert float(flow_smoothness(res.flow.double())) <= eps * (1 + 1e-6)
        assert res.margin > 0
        assert res.margin > res.history[0] or res.margin == max(res.history)
        for q in qs.values():
            assert res.margin <= eps * float(q[pair])
        assert res.margin_midpoint <= eps * float(qs["sdp"][pair])  # every midpoint term obeys the bound too
        assert res.margin_theorem <= eps * float(qs["sdp"][pair])


def _attack_margins(mlp, x, y, flow):
    """Per example: max over j≠y of the exact change of z_j − z_y, and whether the prediction left y."""
    with torch.no_grad():
        z0, z1 = mlp(x).double(), mlp(flow_warp(x, flow)).double()
    d = (z1 - z1.gather(1, y[:, None])) - (z0 - z0.gather(1, y[:, None]))
    return d, z1.argmax(1) != y


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.5])
def test_soundness_on_every_example(nets, eps):
    mlp, x, y, q = nets["mlp"], nets["x"], nets["y"], nets["q"]
    pgd = run_checked(SmoothFlowPGD(eps=eps, steps=40, step_size=0.2), mlp, x, y)
    assert torch.all(pgd.size <= eps * (1 + 1e-5))
    st = run_checked(StAdv(tau=0.0005, steps=60), mlp, x, y)
    st_flow = rescale_to_budget(st.flow.double(), eps).to(x.dtype)  # stAdv restricted to the same budget
    assert torch.all(flow_smoothness(st_flow.double()) <= eps * (1 + 1e-6))
    for method, qm in q.items():
        cert = certify(mlp, x, y, eps, method=method, q=qm)
        for flow in (pgd.flow, st_flow):
            d, broken = _attack_margins(mlp, x, y, flow)
            # upper bound ≥ achieved margin change for every class pair (j, y), on every example
            assert torch.all(d <= eps * qm[:, y].T + 1e-6)
            # no certified example is broken
            assert not bool((cert.certified & broken).any())
            with torch.no_grad():
                z1 = mlp(flow_warp(x, flow)).double()
            worst = (z1 - z1.gather(1, y[:, None])).masked_fill(torch.nn.functional.one_hot(y, 10).bool(), -math.inf).amax(1)
            assert torch.all(worst <= cert.bound + 1e-6)
    # sanity: the bounds order as derived, and the attack breaks something at the large budget
    if eps == 1.5:
        assert bool(pgd.success.any())
    cert = certify(mlp, x, y, 1e-4, q=q["sdp"])
    assert bool(cert.certified.all())  # tiny budget: everything with a positive clean margin is certified


def test_certify_computes_bounds_itself(nets):
    mlp, x, y = nets["mlp"], nets["x"][:5], nets["y"][:5]
    cert = certify(mlp, x, y, 0.01, method="sdp", dual_steps=20)
    assert cert.bound.shape == (5,) and cert.certified.dtype == torch.bool
    assert torch.all(cert.pair_bounds >= nets["q"]["sdp"] * 0.5)  # a valid (if less searched) dual bound
    cert2 = certify(mlp, x, y, torch.full((5,), 0.01), method="spectral")
    assert torch.allclose(cert2.pair_bounds, nets["q"]["spectral"])
    assert torch.equal(cert2.clean_margin, cert.clean_margin)


def test_certify_bad_inputs(nets):
    mlp, x, y = nets["mlp"], nets["x"], nets["y"]
    with pytest.raises(ValueError, match="eps"):
        certify(mlp, x, y, -1.0, q=nets["q"]["sdp"])
    with pytest.raises(ValueError, match="method"):
        certify(mlp, x, y, 0.1, method="lp")
    with pytest.raises(ValueError, match="range"):
        certify(mlp, x * 2, y, 0.1, q=nets["q"]["sdp"])
    with pytest.raises(ValueError, match=r"y must have shape \(40,\) to match the images, got \(3,\)"):
        certify(mlp, x, y[:3], 0.1, q=nets["q"]["sdp"])
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10))
    with pytest.raises(TypeError, match="one hidden layer"):
        pair_bounds(conv, (1, 8, 8))
    with pytest.raises(ValueError, match="pixels"):
        pair_bounds(mlp, (1, 7, 7))
    with pytest.raises(ValueError, match="pair"):
        lower_bound_attack(mlp, (1, 8, 8), 1.0, pair=(2, 2))
    with pytest.raises(ValueError, match="eps"):
        SmoothFlowPGD(eps=0.0)


def test_flow_smoothness_gradcheck():
    gen = torch.Generator().manual_seed(4)
    flow = torch.randn(2, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    for border in ("zeros", "replicate"):
        torch.autograd.gradcheck(lambda f: flow_smoothness(f, border=border), (flow,))


# ---------------------------------------------------------------------------------- stAdv hinge and τ search
def test_stadv_hinge_and_tau_binary_search(digits_model):
    from spatialadv.attacks import StAdvTauBinarySearch
    from spatialadv.ops.flow import flow_tv_loss

    model, x, y = digits_model
    x, y = x[:12], y[:12]
    target = (y + 1) % 10
    with pytest.raises(ValueError, match="flow_hinge"):
        StAdv(flow_hinge=-1.0)
    with pytest.raises(ValueError, match="tau_high"):
        StAdvTauBinarySearch(tau_low=5.0, tau_high=1.0)
    assert StAdv().flow_hinge is None  # default keeps the plain L_flow
    budget = 45.0  # digits need L_flow ≈ 35-100 for a targeted flow
    attack = StAdvTauBinarySearch(tau_high=1000.0, search_steps=4, flow_hinge=budget, steps=40)
    res = run_checked(attack, model, x, y, target)
    assert res.success.any()
    lflow = flow_tv_loss(res.flow, eps=0.0)
    assert torch.all(lflow[res.success] <= budget + 1e-5)          # successes respect the hinge budget
    with torch.no_grad():
        assert torch.equal(model(flow_warp(x, res.flow)).argmax(1)[res.success], target[res.success])
    # batch independence: the first images alone give the same result
    res2 = attack(model, x[:3], y[:3], target=target[:3])
    assert torch.equal(res2.success, res.success[:3])
    assert torch.allclose(res2.flow, res.flow[:3], atol=1e-6)
    # a looser budget never succeeds less
    loose = StAdvTauBinarySearch(tau_high=1000.0, search_steps=4, flow_hinge=90.0, steps=40)(model, x, y, target=target)
    assert int(loose.success.sum()) >= int(res.success.sum())


# ---------------------------------------------------------------------------------- training hooks
def test_training_variants_hooks(tmp_path, one_thread):
    from spatialadv.data import DataSpec
    from spatialadv.training import VARIANTS, TrainConfig, load_or_train

    data = DataSpec("digits")
    cfg = TrainConfig(epochs=3, batch_size=128)
    nets = {v: load_or_train(certify_spec(v, data, cfg), directory=tmp_path, progress=False) for v in ("normal", "sdp", "frobenius")}
    assert nets["normal"][1]["test_accuracy"] > 0.85 and nets["sdp"][1]["test_accuracy"] > 0.7
    # the bounds need no weight gradients: they work on the frozen models load_or_train returns
    assert all(not p.requires_grad for m, _ in nets.values() for p in m.parameters())
    q = {v: pair_bounds(m, (1, 8, 8), method="sdp", dual_steps=60) for v, (m, _) in nets.items()}
    # the SDP penalty lowers the certified SDP bound; the Frobenius penalty lowers ‖W‖_F
    assert float(q["sdp"].sum()) < 0.9 * float(q["normal"].sum())
    fro = {v: float(m[1].weight.detach().norm()) for v, (m, _) in nets.items()}
    assert fro["frobenius"] < fro["normal"]
    again, info = load_or_train(certify_spec("sdp", data, cfg), directory=tmp_path, progress=False)
    assert info["cached"] and torch.equal(again[1].weight, nets["sdp"][0][1].weight)
    assert set(VARIANTS) == {"normal", "random", "frobenius", "spectral", "sdp", "stn", "stadv-at"}


def test_certify_spec_covers_the_seven_variants():
    from spatialadv.data import DataSpec
    from spatialadv.training import VARIANTS, ModelSpec, Objective, TrainConfig, model_key

    data, cfg = DataSpec("mnist"), TrainConfig(epochs=10, seed=2)
    expected = {"normal": ("fc-500", "standard"), "random": ("fc-500", "random"), "frobenius": ("fc-500", "frobenius"),
                "spectral": ("fc-500", "spectral"), "sdp": ("fc-500", "sdp"), "stn": ("stn-fc-500", "hinge"),
                "stadv-at": ("fc-500", "stadv-at")}
    assert tuple(VARIANTS) == tuple(expected)
    for v, (arch, obj) in expected.items():
        assert certify_spec(v, data, cfg) == ModelSpec(arch, data, cfg, Objective(obj))
    assert len({model_key(certify_spec(v, data, cfg)) for v in VARIANTS}) == 7
    assert certify_spec("sdp", data, cfg, eps_train=0.05).objective.options == {"eps_train": 0.05}
    assert certify_spec("frobenius", data, cfg).objective.options == {"lam": 0.08}
    assert certify_spec("spectral", data, cfg).objective.options == {"lam": 0.09}
    assert certify_spec("stadv-at", data, cfg).objective.options == {"lam_r": 0.3, "tau": 0.05, "refresh": 3, "pool_size": 1000}
    with pytest.raises(ValueError, match="variant must be one of"):
        certify_spec("madry", data, cfg)
    with pytest.raises(ValueError, match="option 'lam'"):
        certify_spec("sdp", data, cfg, lam=0.1)


def test_stn_variant_trains(tmp_path, one_thread):
    from spatialadv.data import DataSpec
    from spatialadv.models import STNClassifier
    from spatialadv.training import TrainConfig, load_or_train

    spec = certify_spec("stn", DataSpec("digits", max_train=128), TrainConfig(epochs=1, batch_size=64))
    model, info = load_or_train(spec, directory=tmp_path, progress=False)
    assert isinstance(model, STNClassifier) and info["key"].startswith("stn-fc-500-hinge-digits-seed0-")
    test = spec.data.test()
    with torch.no_grad():  # the reported accuracy is the returned model's on the whole test split
        assert not model.training and info["test_accuracy"] == int((model(test.x).argmax(1) == test.y).sum()) / len(test)


# ------------------------------------------------------------------------ certify checks its q
def test_pair_bounds_returns_fingerprinted_q(nets):
    mlp = nets["mlp"]
    q = nets["q"]["spectral"]
    assert isinstance(q, PairBounds) and isinstance(q, torch.Tensor)
    assert q.fingerprint == weights_fingerprint(mlp) and q.image_shape == (1, 8, 8) and q.input_range == (0.0, 1.0)
    assert q.method == "spectral" and q.border == "zeros" and q.ridge == 0.0
    # derived tensors are plain: a changed Q no longer claims to be the network's bound
    assert type(q * 2) is torch.Tensor and type(q[0]) is torch.Tensor and type(q.clone()) is torch.Tensor
    again = copy.deepcopy(q)
    assert isinstance(again, PairBounds) and again.fingerprint == q.fingerprint and torch.equal(again, q)


def test_certify_accepts_plain_and_fingerprinted_q(nets):
    mlp, x, y = nets["mlp"], nets["x"][:8], nets["y"][:8]
    q = nets["q"]["sdp"]
    a = certify(mlp, x, y, 0.05, q=q)
    b = certify(mlp, x, y, 0.05, q=torch.tensor(q.tolist(), dtype=torch.float64))  # read back from JSON
    assert torch.equal(a.bound, b.bound) and torch.equal(a.certified, b.certified)


def _bad_qs(q):
    k = q.shape[0]
    plain = q.as_subclass(torch.Tensor).clone()
    nan, neg, asym = plain.clone(), plain.clone(), plain.clone()
    nan[0, 1] = nan[1, 0] = float("nan")
    neg[0, 1] = neg[1, 0] = -1.0
    asym[0, 1] += 0.5
    inf = plain.clone()
    inf[2, 3] = inf[3, 2] = float("inf")
    return [
        (plain[: k - 1, : k - 1], ValueError, r"q must be \(10, 10\)"),
        (plain.flatten(), ValueError, r"q must be \(10, 10\)"),
        (nan, ValueError, "q contains NaN or infinite"),
        (inf, ValueError, "q contains NaN or infinite"),
        (neg, ValueError, "q must be >= 0"),
        (asym, ValueError, "q must be symmetric"),
        (plain.long(), TypeError, "q must be a floating-point"),
        (plain.tolist(), TypeError, "q must be a torch.Tensor"),
    ]


def test_certify_rejects_malformed_q(nets):
    mlp, x, y = nets["mlp"], nets["x"][:4], nets["y"][:4]
    for bad, exc, msg in _bad_qs(nets["q"]["sdp"]):
        with pytest.raises(exc, match=msg):
            certify(mlp, x, y, 0.05, q=bad)


def test_certify_rejects_q_of_another_network_shape_or_range(nets):
    mlp, x, y = nets["mlp"], nets["x"][:4], nets["y"][:4]
    q = nets["q"]["spectral"]
    other = copy.deepcopy(mlp)
    with torch.no_grad():
        other[1].weight[0, 0] += 1e-3  # fine-tuned after Q was computed
    with pytest.raises(ValueError, match="q was computed by pair_bounds for another network"):
        certify(other, x, y, 0.05, q=q)
    with pytest.raises(ValueError, match="q was computed by pair_bounds for another network"):
        certify(nets["lin"], x, y, 0.05, q=q)
    wrong_range = PairBounds(q.as_subclass(torch.Tensor), **{**q.provenance(), "input_range": (-1.0, 1.0)})
    with pytest.raises(ValueError, match=r"q was computed for input_range \(-1.0, 1.0\)"):
        certify(mlp, x, y, 0.05, q=wrong_range)
    wrong_shape = PairBounds(q.as_subclass(torch.Tensor), **{**q.provenance(), "image_shape": (1, 4, 16)})
    with pytest.raises(ValueError, match=r"q was computed for images of shape \(1, 4, 16\)"):
        certify(mlp, x, y, 0.05, q=wrong_shape)


def test_certify_warns_in_train_mode_and_keeps_the_mode(nets):
    mlp, x, y = nets["mlp"], nets["x"][:4], nets["y"][:4]
    m = copy.deepcopy(mlp).train()
    q = pair_bounds(m, (1, 8, 8), method="spectral")
    with pytest.warns(UserWarning, match="certify: the model is in train mode"):
        certify(m, x, y, 0.05, q=q)
    assert m.training
