"""Known answers, gradchecks, exceptions and a reference check for ``spatialadv.ops``."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

import spatialadv.ops.flow as flow_mod
import spatialadv.ops.warp as warp_mod
from spatialadv.ops import flow_l2, flow_tv, flow_tv_loss, flow_warp

DTYPES = [torch.float32, torch.float64]
MODES = ["zeros", "border"]


def _rand(*shape, dtype=torch.float64, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _const_flow(n, h, w, du, dv, dtype=torch.float64):
    f = torch.zeros(n, 2, h, w, dtype=dtype)
    f[:, 0] = du
    f[:, 1] = dv
    return f


def _fractional_flow(n, h, w, *, seed=1, scale=2.0):
    """Flow with every component at least 0.1 px away from an integer (floor is
    locally constant there, so finite differences see a smooth function)."""
    g = torch.Generator().manual_seed(seed)
    whole = torch.randint(-int(scale), int(scale) + 1, (n, 2, h, w), generator=g).double()
    frac = 0.1 + 0.8 * torch.rand(n, 2, h, w, generator=g, dtype=torch.float64)
    return whole + frac


# -- flow_warp: known answers ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_zero_flow_is_identity_bit_exact(dtype, mode):
    x = _rand(3, 2, 5, 7, dtype=dtype)
    out = flow_warp(x, torch.zeros(3, 2, 5, 7, dtype=dtype), padding_mode=mode)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_horizontal_shift(dtype):
    x = _rand(2, 3, 4, 6, dtype=dtype, seed=3) + 0.1  # no zeros in x: a 0 in the output means padding
    f = _const_flow(2, 4, 6, 1.0, 0.0, dtype)
    z = flow_warp(x, f, padding_mode="zeros")
    assert torch.equal(z[..., :-1], x[..., 1:])  # Δu = +1: content moves one pixel left
    assert torch.equal(z[..., -1], torch.zeros_like(z[..., -1]))
    b = flow_warp(x, f, padding_mode="border")
    assert torch.equal(b[..., :-1], x[..., 1:])
    assert torch.equal(b[..., -1], x[..., -1])  # replicated last column

    f = _const_flow(2, 4, 6, -2.0, 0.0, dtype)
    z = flow_warp(x, f, padding_mode="zeros")
    assert torch.equal(z[..., 2:], x[..., :-2])
    assert torch.equal(z[..., :2], torch.zeros_like(z[..., :2]))
    b = flow_warp(x, f, padding_mode="border")
    assert torch.equal(b[..., 2:], x[..., :-2])
    assert torch.equal(b[..., :2], x[..., :1].expand_as(b[..., :2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_vertical_shift(dtype):
    x = _rand(2, 1, 5, 4, dtype=dtype, seed=4) + 0.1
    f = _const_flow(2, 5, 4, 0.0, -1.0, dtype)  # Δv = −1: out row i = x row i−1 (content moves down)
    z = flow_warp(x, f, padding_mode="zeros")
    assert torch.equal(z[:, :, 1:], x[:, :, :-1])
    assert torch.equal(z[:, :, 0], torch.zeros_like(z[:, :, 0]))
    b = flow_warp(x, f, padding_mode="border")
    assert torch.equal(b[:, :, 1:], x[:, :, :-1])
    assert torch.equal(b[:, :, 0], x[:, :, 0])

    f = _const_flow(2, 5, 4, 0.0, 2.0, dtype)
    z = flow_warp(x, f, padding_mode="zeros")
    assert torch.equal(z[:, :, :-2], x[:, :, 2:])
    assert torch.equal(z[:, :, -2:], torch.zeros_like(z[:, :, -2:]))


def test_integer_diagonal_shift_and_per_example_flow():
    x = _rand(2, 1, 4, 4, seed=5) + 0.1
    f = torch.zeros(2, 2, 4, 4, dtype=torch.float64)
    f[0, 0], f[0, 1] = 1.0, 1.0  # example 0: diagonal shift; example 1: identity
    z = flow_warp(x, f)
    assert torch.equal(z[0, :, :-1, :-1], x[0, :, 1:, 1:])
    assert torch.equal(z[0, :, -1], torch.zeros(1, 4, dtype=torch.float64))
    assert torch.equal(z[0, :, :, -1], torch.zeros(1, 4, dtype=torch.float64))
    assert torch.equal(z[1], x[1])


def test_half_pixel_flow_averages_neighbours():
    x = _rand(1, 1, 3, 5, seed=6)
    z = flow_warp(x, _const_flow(1, 3, 5, 0.5, 0.0))
    torch.testing.assert_close(z[..., :-1], (x[..., :-1] + x[..., 1:]) / 2, rtol=0, atol=1e-15)
    torch.testing.assert_close(z[..., -1], x[..., -1] / 2, rtol=0, atol=1e-15)  # right neighbour is outside


def test_flow_dtype_follows_x():
    x = _rand(1, 1, 4, 4, dtype=torch.float32)
    out = flow_warp(x, _const_flow(1, 4, 4, 0.25, -0.5, torch.float64))
    assert out.dtype == torch.float32


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_grid_sample_align_corners(seed):
    n, c, h, w = 2, 3, 6, 9
    x = _rand(n, c, h, w, seed=seed)
    flow = (torch.rand(n, 2, h, w, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64) - 0.5) * 3
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    sx, sy = gx + flow[:, 0], gy + flow[:, 1]
    grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)  # (N, H, W, 2), (x, y) order
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(flow_warp(x, flow), ref, rtol=0, atol=1e-12)
    ref_b = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)
    torch.testing.assert_close(flow_warp(x, flow, padding_mode="border"), ref_b, rtol=0, atol=1e-12)

    # and the gradients w.r.t. the flow agree (zeros mode)
    f1 = flow.clone().requires_grad_(True)
    g1 = torch.autograd.grad(flow_warp(x, f1).square().sum(), f1)[0]
    f2 = flow.clone().requires_grad_(True)
    grid2 = torch.stack([2 * (gx + f2[:, 0]) / (w - 1) - 1, 2 * (gy + f2[:, 1]) / (h - 1) - 1], dim=-1)
    g2 = torch.autograd.grad(F.grid_sample(x, grid2, padding_mode="zeros", align_corners=True).square().sum(), f2)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)


# -- gradcheck -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_flow_warp_gradcheck(mode):
    x = _rand(2, 2, 4, 5, seed=7).requires_grad_(True)
    # every sampling coordinate is >= 0.1 px from an integer, so neither floor nor the
    # border clamp (at 0 and W-1 / H-1) has a kink within reach of the finite differences;
    # positions outside the image probe the zero padding / the flat clamped region
    flow = _fractional_flow(2, 4, 5, seed=8)
    flow.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: flow_warp(a, b, padding_mode=mode), (x, flow), eps=1e-6, atol=1e-5)


def test_flow_tv_loss_gradcheck():
    f = (_rand(2, 2, 4, 3, seed=9) - 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: flow_tv_loss(t, eps=1e-3), (f,), eps=1e-6, atol=1e-5)
    # also with the tiny default eps at a flow whose differences are all non-zero
    assert torch.autograd.gradcheck(lambda t: flow_tv_loss(t), (f,), eps=1e-7, atol=1e-5)


def test_flow_metrics_gradcheck():
    f = (_rand(1, 2, 3, 3, seed=10) - 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(flow_tv, (f,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(flow_l2, (f,), eps=1e-6, atol=1e-5)


# -- TV and flow metrics: known answers --------------------------------------------------------


def test_docstring_examples_run():
    for mod in (warp_mod, flow_mod):
        res = doctest.testmod(mod, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
        assert res.failed == 0 and res.attempted > 0, mod.__name__


def test_flow_tv_loss_step_known_answer():
    f = torch.zeros(1, 2, 3, 3)
    f[0, 0, :, 2] = 1.0
    assert float(flow_tv_loss(f, eps=0.0)) == 6.0
    # eps > 0 only perturbs by O(eps): sqrt(1 + eps) − sqrt(eps) per crossing pair
    eps = 1e-4
    expected = 6 * ((1 + eps) ** 0.5 - eps**0.5)
    assert float(flow_tv_loss(f.double(), eps=eps)) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("eps", [0.0, 1e-8, 1e-2])
def test_constant_flow_has_zero_tv(eps):
    f = _const_flow(3, 4, 5, 0.7, -1.3)
    assert torch.equal(flow_tv_loss(f, eps=eps), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(flow_tv(f), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(flow_l2(f), torch.full((3,), (0.7**2 + 1.3**2) ** 0.5, dtype=torch.float64))


def test_hand_computed_tv_and_l2():
    # u = [[0, 1], [0, 0]], v = [[0, 0], [2, 0]]
    f = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    f[0, 0, 0, 1] = 1.0
    f[0, 1, 1, 0] = 2.0
    # undirected pairs: (0,0)-(0,1): 1; (1,0)-(1,1): 4; (0,0)-(1,0): 4; (0,1)-(1,1): 1
    # L_flow (eps=0) = 2 · (1 + 2 + 2 + 1) = 12;  TV = sqrt(2 · 10 / 4);  L2 = sqrt((1 + 4) / 4)
    torch.testing.assert_close(flow_tv_loss(f, eps=0.0), torch.tensor([12.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(flow_tv(f), torch.tensor([5.0**0.5, 0.0], dtype=torch.float64))
    torch.testing.assert_close(flow_l2(f), torch.tensor([1.25**0.5, 0.0], dtype=torch.float64))


def test_tv_is_per_example():
    a = _rand(1, 2, 4, 4, seed=11)
    b = _rand(1, 2, 4, 4, seed=12)
    both = torch.cat([a, b])
    for fn in (flow_tv_loss, flow_tv, flow_l2):
        out = fn(both)
        assert out.shape == (2,)
        torch.testing.assert_close(out, torch.cat([fn(a), fn(b)]), rtol=0, atol=1e-14)


# -- exceptions -------------------------------------------------------------------------------


def test_flow_warp_rejects_bad_inputs():
    x = torch.rand(2, 1, 4, 4)
    f = torch.zeros(2, 2, 4, 4)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, H, W\), got \(1, 4, 4\)"):
        flow_warp(x[0], f[0])  # 3-D
    with pytest.raises(ValueError, match=r"flow must have shape \(N, 2, H, W\) = \(2, 2, 4, 4\), got \(2, 2, 4, 5\)"):
        flow_warp(x, torch.zeros(2, 2, 4, 5))
    with pytest.raises(ValueError, match=r"flow must have shape \(N, 2, H, W\) = \(2, 2, 4, 4\), got \(1, 2, 4, 4\)"):
        flow_warp(x, torch.zeros(1, 2, 4, 4))  # batch mismatch
    with pytest.raises(ValueError, match=r"flow must have shape \(N, 2, H, W\) = \(2, 2, 4, 4\), got \(2, 3, 4, 4\)"):
        flow_warp(x, torch.zeros(2, 3, 4, 4))  # 3 flow channels
    with pytest.raises(TypeError, match="x and flow must be floating point, got torch.uint8 and torch.float32"):
        flow_warp((x * 255).to(torch.uint8), f)
    with pytest.raises(TypeError, match="x and flow must be floating point, got torch.float32 and torch.int64"):
        flow_warp(x, f.long())
    with pytest.raises(TypeError, match="x and flow must be torch tensors"):
        flow_warp(x.numpy(), f)
    with pytest.raises(ValueError, match="padding_mode"):
        flow_warp(x, f, padding_mode="reflection")


def test_flow_metrics_reject_bad_inputs():
    for fn in (flow_tv_loss, flow_tv, flow_l2):
        with pytest.raises(TypeError, match=r"flow must be a floating-point torch.Tensor of shape \(N, 2, H, W\)"):
            fn(torch.zeros(1, 2, 3, 3, dtype=torch.long))
        with pytest.raises(TypeError, match=r"flow must be a floating-point torch.Tensor of shape \(N, 2, H, W\)"):
            fn([[0.0]])
        with pytest.raises(ValueError, match=r"flow must have shape \(N, 2, H, W\), got \(1, 3, 3, 3\)"):
            fn(torch.zeros(1, 3, 3, 3))
        with pytest.raises(ValueError, match=r"flow must have shape \(N, 2, H, W\), got \(2, 3, 3\)"):
            fn(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="eps"):
        flow_tv_loss(torch.zeros(1, 2, 3, 3), eps=-1e-3)


# ------------------------------------------------------------------------------- NaN / Inf flows
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("fn", ["flow_warp", "flow_tv", "flow_l2", "flow_tv_loss"])
def test_non_finite_flow_is_refused(fn, bad):
    flow = torch.zeros(2, 2, 5, 5, dtype=torch.float64)
    flow[1, 0, 2, 3] = bad
    call = {"flow_warp": lambda f: flow_warp(torch.rand(2, 1, 5, 5, dtype=torch.float64), f), "flow_tv": flow_tv,
            "flow_l2": flow_l2, "flow_tv_loss": flow_tv_loss}[fn]
    with pytest.raises(ValueError, match="flow contains NaN or infinite"):
        call(flow)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1e-3])
def test_flow_tv_loss_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        flow_tv_loss(torch.zeros(1, 2, 3, 3), eps=eps)
    with pytest.raises(TypeError, match="eps must be a number"):
        flow_tv_loss(torch.zeros(1, 2, 3, 3), eps="1e-8")


def test_flow_warp_flow_on_another_device():
    with pytest.raises(ValueError, match="flow must be on x's device"):
        flow_warp(torch.rand(1, 1, 3, 3), torch.zeros(1, 2, 3, 3, device="meta"))


def _textbook_flow_warp(x, flow, padding_mode):
    """Reference: the four-corner bilinear formula with per-corner validity masks (stAdv Eq. 1)."""
    n, c, h, w = x.shape
    sx = torch.arange(w, dtype=x.dtype).view(1, 1, w) + flow[:, 0]
    sy = torch.arange(h, dtype=x.dtype).view(1, h, 1) + flow[:, 1]
    if padding_mode == "border":
        sx, sy = sx.clamp(0, w - 1), sy.clamp(0, h - 1)
    x0, y0 = torch.floor(sx), torch.floor(sy)
    wx1, wy1 = sx - x0, sy - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    flat = x.reshape(n, c, h * w)
    out = None
    for dy, wy in ((0, wy0), (1, wy1)):
        for dx, wx in ((0, wx0), (1, wx1)):
            xi, yi = x0.long() + dx, y0.long() + dy
            valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
            term = (wy * wx * valid.to(x.dtype)).unsqueeze(1) * torch.gather(flat, 2, idx).view(n, c, h, w)
            out = term if out is None else out + term
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_flow_warp_equals_textbook_formula_bit_for_bit(dtype, padding_mode):
    # the zero-frame gather must not change a single bit of the warp or of its gradients (flow and image):
    # committed reports were computed with the textbook formula
    g = torch.Generator().manual_seed(3)
    for trial in range(24):
        n, c = 1 + trial % 3, (1, 3)[trial % 2]
        h, w = 2 + trial % 7, 2 + (trial * 5) % 9
        x = torch.rand(n, c, h, w, dtype=dtype, generator=g)
        flow = torch.randn(n, 2, h, w, dtype=dtype, generator=g) * (0.3, 3.0, 40.0, 1.0)[trial % 4]
        if trial % 4 == 3:
            flow = flow.round()  # integer flows: exact shifts, sampling on the kinks
        xa, fa = x.clone().requires_grad_(True), flow.clone().requires_grad_(True)
        xb, fb = x.clone().requires_grad_(True), flow.clone().requires_grad_(True)
        ours = flow_warp(xa, fa, padding_mode=padding_mode)
        ref = _textbook_flow_warp(xb, fb, padding_mode)
        assert torch.equal(ours, ref)
        up = torch.randn(ours.shape, dtype=dtype, generator=g)
        for a, b in zip(torch.autograd.grad(ours, (fa, xa), up), torch.autograd.grad(ref, (fb, xb), up)):
            assert torch.equal(a, b)
