"""Image-guided Laplacian smoothing (Zhang et al. 2020, Eqs. 8-9): solvers, gradients, known answers."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from spatialadv.ops.smoothing import GuidedSmoothing, graph_weights, laplacian_matvec, smooth

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread


def _guide(n=3, c=2, h=9, w=7, seed=0, dtype=torch.float64):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _dense_laplacian(x, alpha, sigma):
    """L_α built entry by entry from its definition (§3) for one single-channel image."""
    h, w = x.shape
    n = h * w
    W = torch.zeros(n, n, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                a, b = i + di, j + dj
                if 0 <= a < h and 0 <= b < w:
                    W[i * w + j, a * w + b] = torch.exp(-(x[i, j] - x[a, b]).abs() / sigma)
    d = W.sum(1)
    S = W / torch.sqrt(d[:, None] * d[None, :])
    return (torch.eye(n, dtype=x.dtype) - alpha * S) / (1 - alpha)


def test_matvec_and_direct_solve_match_the_definition():
    x = _guide(1, 1, 5, 4)
    L = _dense_laplacian(x[0, 0], 0.9, 0.2)
    v = torch.randn(1, 1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(laplacian_matvec(v, x, alpha=0.9, sigma=0.2).flatten(), L @ v.flatten())
    s = torch.linalg.solve(L, v.flatten())
    s1 = torch.linalg.solve(L, torch.ones(20, dtype=torch.float64))
    for solver in ("direct", "cg"):
        out = smooth(v, x, alpha=0.9, sigma=0.2, solver=solver, tol=1e-12)
        torch.testing.assert_close(out.flatten(), s / s1)


@pytest.mark.parametrize("kernel", ["laplacian", "gaussian"])
def test_cg_equals_direct(kernel):
    x = _guide(4, 3, 12, 10)
    z = torch.randn_like(x)
    a = smooth(z, x, alpha=0.97, sigma=0.1, kernel=kernel, solver="direct")
    b = smooth(z, x, alpha=0.97, sigma=0.1, kernel=kernel, solver="cg", tol=1e-12)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_gradcheck_fp64(solver):
    x = _guide(2, 2, 5, 4)
    sm = GuidedSmoothing(x, alpha=0.95, solver=solver, tol=1e-13)
    z = torch.randn_like(x).requires_grad_(True)
    assert gradcheck(lambda t: sm(t), (z,))
    # with an index (rows of z belong to guide images 1, 0, 1)
    idx = torch.tensor([1, 0, 1])
    z3 = torch.randn(3, 2, 5, 4, dtype=torch.float64).requires_grad_(True)
    assert gradcheck(lambda t: sm(t, idx), (z3,))


def test_cg_backward_is_one_more_solve():
    x = _guide(2, 1, 16, 16)
    sm = GuidedSmoothing(x, solver="cg", tol=1e-10)
    z = torch.randn_like(x).requires_grad_(True)
    out = sm(z)
    fwd_iters = sm.cg_iterations
    g = torch.randn_like(out)
    (gz,) = torch.autograd.grad(out, z, g)
    assert 0 < sm.cg_iterations <= 2 * fwd_iters  # a single CG solve, not a differentiation of the iterations
    dense = GuidedSmoothing(x, solver="direct")
    (gd,) = torch.autograd.grad(dense(z), z, g)
    torch.testing.assert_close(gz, gd, atol=1e-7, rtol=0)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_normalised_smoothing_of_ones_is_ones(solver):
    x = _guide(2, 3, 11, 13, dtype=torch.float32)
    out = smooth(torch.ones_like(x), x, alpha=0.997, solver=solver, tol=1e-7, max_iter=5000)
    torch.testing.assert_close(out, torch.ones_like(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_alpha_zero_is_identity_and_small_alpha_is_close(solver):
    x = _guide()
    z = torch.randn_like(x)
    torch.testing.assert_close(smooth(z, x, alpha=0.0, solver=solver), z)
    assert float((smooth(z, x, alpha=1e-4, solver=solver) - z).abs().max()) < 1e-2


def test_linear_and_positive():
    x = _guide()
    sm = GuidedSmoothing(x, solver="cg", tol=1e-12)
    a, b = torch.randn_like(x), torch.randn_like(x)
    torch.testing.assert_close(sm(2 * a - 3 * b), 2 * sm(a) - 3 * sm(b))
    assert bool((sm(a.abs()) >= 0).all())  # L_α⁻¹ is entrywise positive (inverse M-matrix)


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_smooth_within_flat_regions_not_across_an_edge(solver):
    """An impulse left of a strong vertical edge spreads over the left half only."""
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    x[..., 8:] = 1.0  # flat left half (0) | flat right half (1)
    z = torch.zeros_like(x)
    z[0, 0, 8, 5] = 1.0
    r = smooth(z, x, alpha=0.95, sigma=0.1, solver=solver, tol=1e-12)[0, 0]
    left, right = r[:, :8], r[:, 8:]
    assert float(left.sum()) > 1e3 * float(right.abs().sum())
    # it really spread (not the identity) inside the flat half
    assert float(left[8, 3]) > 0.05 * float(left[8, 5]) and float(left[2, 5]) > 0
    # the signal reaches the edge but does not cross it
    assert float(r[8, 7]) > 1e3 * float(r[8, 8].abs())


def test_each_channel_uses_its_own_graph():
    x = torch.zeros(1, 2, 8, 8, dtype=torch.float64)
    x[0, 0, :, 4:] = 1.0  # edge only in channel 0
    z = torch.zeros_like(x)
    z[:, :, 4, 2] = 1.0
    r = smooth(z, x, solver="direct")
    assert float(r[0, 0, :, 4:].abs().sum()) < 1e-3 * float(r[0, 1, :, 4:].abs().sum())


def test_batch_independence():
    x = _guide(5, 1, 10, 10)
    z = torch.randn_like(x)
    full = smooth(z, x, solver="cg", tol=1e-10)
    for i in (0, 3):
        torch.testing.assert_close(smooth(z[i : i + 1], x[i : i + 1], solver="cg", tol=1e-10)[0], full[i])


def test_cg_zero_rhs_and_degenerate_weights_give_no_nan():
    x = torch.zeros(2, 1, 6, 6)
    x[0, :, ::2] = 1.0  # stripes: with a tiny σ every edge weight underflows
    sm = GuidedSmoothing(x, sigma=1e-3, solver="cg")
    out = sm(torch.zeros_like(x))
    assert torch.equal(out, torch.zeros_like(x))
    z = torch.randn_like(x)
    assert bool(torch.isfinite(sm(z)).all())
    assert bool(torch.isfinite(GuidedSmoothing(x, sigma=1e-3, solver="direct")(z)).all())


def test_cg_iteration_cap_warns():
    x = _guide(1, 1, 32, 32, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        GuidedSmoothing(x, alpha=0.997, solver="cg", tol=1e-8, max_iter=3)


def test_auto_solver_choice():
    assert GuidedSmoothing(_guide(1, 1, 8, 8), solver="auto").solver == "direct"
    assert GuidedSmoothing(_guide(1, 1, 28, 28), solver="auto").solver == "cg"


def test_graph_weights_shapes_and_values():
    x = torch.tensor([[[[0.0, 0.5], [0.0, 1.0]]]])
    w_h, w_v = graph_weights(x, sigma=0.5)
    assert w_h.shape == (1, 1, 2, 1) and w_v.shape == (1, 1, 1, 2)
    torch.testing.assert_close(w_h.flatten(), torch.exp(-torch.tensor([1.0, 2.0])))
    torch.testing.assert_close(w_v.flatten(), torch.exp(-torch.tensor([0.0, 1.0])))


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"alpha": 1.0}, ValueError, "alpha"), ({"alpha": -0.1}, ValueError, "alpha"), ({"alpha": True}, ValueError, "alpha"),
    ({"sigma": 0.0}, ValueError, "sigma"), ({"kernel": "box"}, ValueError, "kernel"), ({"solver": "lu"}, ValueError, "solver"),
    ({"tol": 0}, ValueError, "tol"), ({"max_iter": 0}, ValueError, "max_iter"),
])
def test_bad_hyperparameters(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        GuidedSmoothing(_guide(1, 1, 4, 4), **kwargs)


def test_bad_inputs():
    x = _guide(2, 1, 5, 5)
    with pytest.raises(ValueError, match="shape"):
        smooth(torch.zeros(2, 1, 5, 4, dtype=torch.float64), x)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        smooth(x[0], x[0])
    with pytest.raises(TypeError, match="dtype"):
        smooth(x.float(), x)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        smooth(x, bad)
    with pytest.raises(ValueError, match="rows"):
        GuidedSmoothing(x)(torch.zeros(3, 1, 5, 5, dtype=torch.float64))


def test_docstring_examples_run():
    import doctest

    import spatialadv.attacks.sweep as sweep_mod
    import spatialadv.ops.smoothing as smoothing_mod

    res = doctest.testmod(smoothing_mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted > 0
    assert doctest.testmod(sweep_mod).failed == 0


@pytest.mark.parametrize("solver", ["direct", "cg", "auto"])
def test_empty_batch_is_a_clear_error(solver):
    empty = torch.rand(0, 1, 8, 8)
    with pytest.raises(ValueError, match=r"guide is an empty batch \(N = 0\)"):
        smooth(empty, empty, solver=solver)
    with pytest.raises(ValueError, match=r"guide is an empty batch \(N = 0\)"):
        GuidedSmoothing(empty, solver=solver)
    s = GuidedSmoothing(torch.rand(2, 1, 8, 8), solver=solver)
    with pytest.raises(ValueError, match=r"z is an empty batch \(M = 0\)"):
        s(empty, index=torch.zeros(0, dtype=torch.long))
