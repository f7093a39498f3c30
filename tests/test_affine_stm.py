"""Affine warp (``spatialadv.ops.affine``) against hand-computed transforms, and the
rotation-translation attack STM (``RotationTranslation``, ``worst_transform``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _contract import run_checked
from spatialadv.attacks import RotationTranslation, worst_transform
from spatialadv.attacks.rotation import MAX_CHUNK_BYTES, warp_bytes_per_image
from spatialadv.ops import affine_warp, identity_theta, rotation_translation_theta, theta_to_normalized, theta_to_pixels


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Content moved dx pixels right and dy down, zero fill (hand-computed reference)."""
    out = torch.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out


# ------------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("units", ["normalized", "pixels"])
def test_identity_is_exact(units):
    x = torch.rand(3, 2, 7, 5)
    assert torch.equal(affine_warp(x, identity_theta(3), units=units), x)


def test_integer_shift_and_quarter_turns_are_exact():
    x = torch.rand(4, 1, 6, 6)
    theta = rotation_translation_theta(torch.tensor([0.0, 0.0, 90.0, -90.0]), torch.tensor([2.0, -1.0, 0.0, 0.0]),
                                       torch.tensor([-1.0, 3.0, 0.0, 0.0]))
    y = affine_warp(x, theta, units="pixels")
    assert torch.equal(y[0], _shift(x[0], 2, -1))
    assert torch.equal(y[1], _shift(x[1], -1, 3))
    # positive angle = counter-clockwise as displayed, which is torch.rot90(k=1) on (H, W)
    assert torch.equal(y[2], torch.rot90(x[2], 1, dims=(1, 2)))
    assert torch.equal(y[3], torch.rot90(x[3], -1, dims=(1, 2)))


def test_rotate_then_translate_order():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6] = 1.0  # 2 px right of the centre (4, 4)
    # rotate 90° ccw: the dot goes 2 px *above* the centre -> (2, 4); then translate +1 right -> (2, 5)
    y = affine_warp(x, rotation_translation_theta(90.0, 1.0, 0.0), units="pixels")
    assert y[0, 0, 2, 5] == 1.0 and float(y.sum()) == 1.0


def test_matches_grid_sample_align_corners_and_units_round_trip():
    torch.manual_seed(0)
    x = torch.rand(3, 2, 7, 9, dtype=torch.float64)
    theta = identity_theta(3, dtype=torch.float64) + 0.3 * torch.randn(3, 2, 3, dtype=torch.float64)
    ref = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=True), align_corners=True, padding_mode="zeros")
    torch.testing.assert_close(affine_warp(x, theta), ref, rtol=0, atol=1e-12)
    pix = theta_to_pixels(theta, (7, 9))
    torch.testing.assert_close(theta_to_normalized(pix, (7, 9)), theta)
    torch.testing.assert_close(affine_warp(x, pix, units="pixels"), ref, rtol=0, atol=1e-12)


def test_gradcheck_float64():
    torch.manual_seed(1)
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    theta = (identity_theta(2, dtype=torch.float64) + 0.1 * torch.randn(2, 2, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: affine_warp(a, b), (x, theta))


def test_affine_warp_errors():
    x = torch.rand(2, 1, 5, 5)
    with pytest.raises(ValueError, match="theta"):
        affine_warp(x, torch.zeros(3, 2, 3))
    with pytest.raises(ValueError, match="units"):
        affine_warp(x, identity_theta(2), units="degrees")
    with pytest.raises(TypeError, match="theta"):
        affine_warp(x, identity_theta(2).long())
    with pytest.raises(ValueError, match="NaN"):
        affine_warp(x, torch.full((2, 2, 3), float("nan")))


# ------------------------------------------------------------------------------------------------
# STM
# ------------------------------------------------------------------------------------------------
def test_stm_single_integer_shift_is_hand_computed(digits_model):
    model, x, y = digits_model
    # one candidate: linspace(-2, 2, 1) = [-2] -> content 2 px left and 2 px up, no rotation
    atk = RotationTranslation(max_rotation=0.0, num_rotations=1, max_translation=2.0, num_translations=1)
    res = run_checked(atk, model, x, y)
    s = res.success
    assert s.any() and (~s).any()
    ref = _shift(x, -2, -2)
    assert torch.equal(res.x_adv[s], ref[s])
    assert torch.equal(res.x_adv[~s], x[~s])
    with torch.no_grad():
        assert torch.equal(res.success, model(ref).argmax(1) != y)
    # θ in normalised units: translation (+2 px) / ((W − 1)/2)
    torch.testing.assert_close(res.theta[s][:, :, 2], torch.full((int(s.sum()), 2), 2.0 / 3.5))
    assert torch.equal(res.theta[~s], identity_theta(int((~s).sum())))
    # no gradients; one forward-only evaluation (the single candidate) per example
    assert torch.all(res.grad_evals == 0) and torch.all(res.forward_evals == 1)
    # the chosen transform in the threat's parameters: (−2, −2) px, 0°; zero where failed
    assert torch.equal(res.params["angle"], torch.zeros(len(x)))
    assert torch.equal(res.params["shift"][s], torch.full((int(s.sum()), 2), -2.0))
    assert torch.equal(res.params["shift"][~s], torch.zeros(int((~s).sum()), 2))
    # size: box norm max(|angle|/0 → 0, 2/2) = 1 where successful, 0 where failed
    assert res.unit == "rt_box"
    assert torch.equal(res.size, s.to(res.size.dtype))


def test_stm_single_quarter_turn_is_hand_computed(digits_model):
    model, x, y = digits_model
    atk = RotationTranslation(max_rotation=90.0, num_rotations=1, max_translation=0.0, num_translations=1)  # −90°: clockwise
    res = run_checked(atk, model, x, y)
    ref = torch.rot90(x, -1, dims=(2, 3))
    s = res.success
    assert s.sum() > len(x) // 2
    assert torch.equal(res.x_adv[s], ref[s])
    with torch.no_grad():
        assert torch.equal(res.success, model(ref).argmax(1) != y)


class _Scorer(nn.Module):
    """Logits from pixel sums in the 4 quadrants (a hand-made, fully known model)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        q = [x[..., : h // 2, : w // 2], x[..., : h // 2, w // 2 :], x[..., h // 2 :, : w // 2], x[..., h // 2 :, w // 2 :]]
        return torch.stack([t.sum((1, 2, 3)) for t in q], 1) * 3.0


def _brute_force(model, x, y, cands, target=None):
    """Per candidate, one image and one transform at a time: (success (N, T), loss (N, T))."""
    succ, loss = [], []
    for a, tx, ty in cands.tolist():
        xt = affine_warp(x, rotation_translation_theta(a, tx, ty).expand(len(x), 2, 3), units="pixels")
        z = model(xt)
        if target is None:
            succ.append(z.argmax(1) != y)
            loss.append(F.cross_entropy(z, y, reduction="none"))
        else:
            succ.append(z.argmax(1) == target)
            loss.append(-F.cross_entropy(z, target, reduction="none"))
    return torch.stack(succ, 1), torch.stack(loss, 1)


@pytest.mark.parametrize("targeted", [False, True])
def test_worst_transform_selection_rule(targeted):
    torch.manual_seed(0)
    model = _Scorer().eval()
    x = torch.rand(40, 1, 8, 8).round() * torch.rand(40, 1, 8, 8)  # random images: easy to break
    x[20:] *= 0.05
    for i in range(20, 40):  # a bright 2×2 block in a corner: no candidate moves it to another quadrant
        r, c = (i % 2) * 6, ((i // 2) % 2) * 6
        x[i, 0, r : r + 2, c : c + 2] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    target = (y + 1) % 4 if targeted else None
    cands = torch.tensor([[0.0, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 2], [30, 0, 0], [-30, 1, 1], [10, -1, 2]], dtype=torch.float64)
    with torch.no_grad():
        out = worst_transform(model, x, y, cands, target=target, max_batch=50)  # 50 // 40 = 1 candidate per chunk
        succ, loss = _brute_force(model, x, y, cands, target)
    for i in range(len(x)):
        if succ[i].any():
            j = int(torch.where(succ[i], loss[i], torch.tensor(float("-inf"))).argmax())
        else:
            j = int(loss[i].argmax())
        assert torch.equal(out["params"][i], cands[j]), (i, out["params"][i], cands[j])
        assert bool(out["success"][i]) == bool(succ[i].any())
        torch.testing.assert_close(out["loss"][i], loss[i, j])
    assert out["success"].any() and (~out["success"]).any()
    # one chunk for everything gives the same choice
    with torch.no_grad():
        out2 = worst_transform(model, x, y, cands, target=target, max_batch=10_000)
    assert torch.equal(out2["params"], out["params"]) and torch.equal(out2["x_t"], out["x_t"])


def test_stm_grid_contract_and_batch_independence(digits_model):
    model, x, y = digits_model
    atk = RotationTranslation(max_translation=1.0, max_batch=4096, early_stop=False)
    res = run_checked(atk, model, x, y)
    assert res.success_rate > 0.5
    assert torch.all(res.forward_evals == 5 * 5 * 31) and torch.all(res.grad_evals == 0)
    s = res.success
    torch.testing.assert_close(res.x_adv[s], affine_warp(x, res.theta)[s], rtol=0, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
    # the class is the function with its candidates (same choice, same images)
    with torch.no_grad():
        fn = worst_transform(model, x, y, atk.candidates(len(x)))
    assert torch.equal(fn["success"], res.success) and torch.equal(fn["x_t"][s], res.x_adv[s])
    sub = atk(model, x[5:9], y[5:9])
    assert torch.equal(sub.x_adv, res.x_adv[5:9]) and torch.equal(sub.theta, res.theta[5:9])
    # targeted mode: success means classified as the target
    t = (y + 3) % 10
    rt = run_checked(atk, model, x, y, t)
    with torch.no_grad():
        assert torch.equal(rt.success, model(rt.x_adv).argmax(1) == t)
    assert 0 < rt.success_rate < res.success_rate


def test_stm_random_worst_of_k(digits_model):
    model, x, y = digits_model
    atk = RotationTranslation(max_translation=1.0, grid=False, random_tries=10, seed=3, early_stop=False)
    res = run_checked(atk, model, x, y)
    assert torch.all(res.forward_evals == 10) and torch.all(res.grad_evals == 0)
    cands = atk.candidates(len(x))
    assert cands.shape == (len(x), 10, 3)
    assert float(cands[..., 0].abs().max()) <= 30 and float(cands[..., 1:].abs().max()) <= 1
    again = atk(model, x[10:20], y[10:20])  # per-example draws: position i in the sub-batch is a different draw
    assert again.x_adv.shape == (10, *x.shape[1:])
    assert torch.equal(atk.candidates(5), cands[:5])
    grid = RotationTranslation(max_translation=1.0)(model, x, y)
    assert res.success_rate <= grid.success_rate + 1e-9


def test_stm_early_stop_and_validation(digits_model):
    model, x, y = digits_model
    full = RotationTranslation(max_translation=1.0, early_stop=False)(model, x, y)
    fast = RotationTranslation(max_translation=1.0, max_batch=64 * 25)(model, x, y)  # the default: early stop
    assert fast.forward_evals.float().mean() < 100  # the default stops at the first chunk with a success
    assert RotationTranslation().early_stop and not RotationTranslation(selection="max_loss").early_stop
    assert torch.equal(fast.success, full.success)  # same candidates, only fewer evaluated
    assert fast.forward_evals.sum() < full.forward_evals.sum()
    # fixed chunk boundaries (1, 2, 4, ...): an image's chosen transform does not depend on its batch
    sub = RotationTranslation(max_translation=1.0, early_stop=True, max_batch=7)(model, x[20:30], y[20:30])
    assert torch.equal(sub.x_adv, fast.x_adv[20:30]) and torch.equal(sub.forward_evals, fast.forward_evals[20:30])
    with pytest.raises(ValueError, match="num_rotations"):
        RotationTranslation(num_rotations=0)
    with pytest.raises(ValueError, match="padding_mode"):
        RotationTranslation(padding_mode="reflect")
    with pytest.raises(TypeError, match="grid"):
        RotationTranslation(grid=1)


# ------------------------------------------------------------------------------------------------
# STM memory budget
# ------------------------------------------------------------------------------------------------
class _Recorder(nn.Module):
    """Wraps a model and records the batch size of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("early_stop", [False, True])
@pytest.mark.parametrize("targeted", [False, True])
def test_stm_result_does_not_depend_on_the_memory_budget(digits_model, dtype, early_stop, targeted):
    model, x, y = digits_model
    model = _Recorder(model if dtype == torch.float32 else copy.deepcopy(model).double()).eval()
    x, y = x[:12].to(dtype), y[:12]
    target = (y + 3) % 10 if targeted else None
    per_image = warp_bytes_per_image(1, 8, 8, x.element_size())
    tiny = RotationTranslation(max_translation=1.0, early_stop=early_stop, max_chunk_bytes=3 * per_image)
    large = RotationTranslation(max_translation=1.0, early_stop=early_stop, max_chunk_bytes=2**40)
    a = tiny(model, x, y, target=target)
    sizes_tiny = model.sizes[1:-2]  # drop the class probe and the success recomputation
    model.sizes = []
    b = large(model, x, y, target=target)
    assert max(sizes_tiny) <= 3 < max(model.sizes)
    for f in ("x_adv", "success", "pred", "size", "theta", "forward_evals"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert torch.equal(a.params["angle"], b.params["angle"]) and torch.equal(a.params["shift"], b.params["shift"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stm_default_budget_bounds_the_chunk_on_mnist_sized_images(dtype):
    # 12 MNIST-sized images × 775 grid transforms: before, 8184 warped images per call (4 GB peak in
    # float32 with a conv net); now at most 256 MiB of warped candidates and warp intermediates
    torch.manual_seed(0)
    model = _Recorder(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).to(dtype)).eval()
    x = torch.rand(12, 1, 28, 28, dtype=dtype)
    y = torch.arange(12) % 10
    RotationTranslation()(model, x, y)
    cap = MAX_CHUNK_BYTES // warp_bytes_per_image(1, 28, 28, x.element_size())
    assert max(model.sizes) <= max(cap, 12) and cap < 12 * 775
    assert cap * warp_bytes_per_image(1, 28, 28, x.element_size()) <= 256 * 2**20


def test_stm_budget_validation():
    for bad, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="max_chunk_bytes"):
            RotationTranslation(max_chunk_bytes=bad)


# ------------------------------------------------------------------------------------------------
# presets: CleverHans' grid (the SdpAdv paper's STM) and Engstrom's
# ------------------------------------------------------------------------------------------------
def test_cleverhans_preset_grid():
    atk = RotationTranslation.preset("cleverhans")
    c = atk.candidates(3)
    assert c.shape == (24, 3) and atk.selection == "max_loss" and not atk.early_stop
    assert atk.padding_mode == "zeros"
    torch.testing.assert_close(torch.unique(c[:, 0]), torch.tensor([-30.0, -18, -6, 6, 18, 30], dtype=torch.float64))
    for k in (1, 2):  # ±0.1 of the image size, in pixels
        torch.testing.assert_close(torch.unique(c[:, k]), torch.tensor([-2.8, 2.8], dtype=torch.float64))
    assert not (c == 0).all(1).any()  # no identity in this grid
    assert torch.unique(c, dim=0).shape[0] == 24
    big = RotationTranslation.preset("cleverhans", image_size=32)
    assert big.max_translation == pytest.approx(3.2)
    eng = RotationTranslation.preset("engstrom")
    assert eng.candidates(1).shape == (775, 3) and eng.selection == "success_first" and not eng.early_stop
    assert eng.max_translation == 3.0 and eng.max_rotation == 30.0
    assert RotationTranslation.preset("engstrom", early_stop=True).early_stop
    with pytest.raises(ValueError, match="preset name"):
        RotationTranslation.preset("foolbox")
    with pytest.raises(ValueError, match="early_stop"):
        RotationTranslation.preset("cleverhans", early_stop=True)
    with pytest.raises(ValueError, match="selection"):
        RotationTranslation(selection="first")
    with pytest.raises(ValueError, match="active_only_until_success"):
        worst_transform(_Scorer().eval(), torch.rand(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), c,
                        selection="max_loss", active_only_until_success=True)


@pytest.mark.parametrize("targeted", [False, True])
def test_max_loss_selection_is_the_argmax_of_the_loss(targeted):
    torch.manual_seed(1)
    model = _Scorer().eval()
    x = torch.rand(40, 1, 8, 8).round() * torch.rand(40, 1, 8, 8)
    x[20:] *= 0.05
    with torch.no_grad():
        y = model(x).argmax(1)
    target = (y + 1) % 4 if targeted else None
    cands = torch.tensor([[0.0, 0, 0], [0, 2, 0], [0, -2, 0], [0, 0, 2], [30, 0, 0], [-30, 1, 1], [10, -1, 2]], dtype=torch.float64)
    with torch.no_grad():
        out = worst_transform(model, x, y, cands, target=target, max_batch=50, selection="max_loss")
        first = worst_transform(model, x, y, cands, target=target, max_batch=50)
        succ, loss = _brute_force(model, x, y, cands, target)
    j = loss.argmax(1)
    assert torch.equal(out["params"], cands[j])
    assert torch.equal(out["success"], succ.gather(1, j[:, None]).squeeze(1))
    torch.testing.assert_close(out["loss"], loss.gather(1, j[:, None]).squeeze(1))
    # never stronger than success-first
    assert not (out["success"] & ~first["success"]).any()
    with torch.no_grad():
        out2 = worst_transform(model, x, y, cands, target=target, max_batch=10_000, selection="max_loss")
    assert torch.equal(out2["params"], out["params"]) and torch.equal(out2["x_t"], out["x_t"])


class _CodeReader(nn.Module):
    """Logits read off the centre pixel of a (1, 3, 5) image: a code value picks log-probabilities over 3 classes."""

    codes = {0.1: [0.40, 0.45, 0.15], 0.2: [0.35, 0.33, 0.32], 0.9: [0.90, 0.05, 0.05]}

    def forward(self, x):
        v = x[:, 0, 1, 2]
        out = torch.full((len(x), 3), -5.0, dtype=x.dtype)
        for code, p in self.codes.items():
            hit = (v - code).abs() < 1e-3
            out[hit] = torch.tensor(p, dtype=x.dtype).log()
        return out


def test_max_loss_can_miss_a_misclassifying_transform():
    # shifting by ±1 px shows the centre pixel 0.1 (misclassified, CE 0.92) or 0.2 (still correct, CE 1.05)
    x = torch.zeros(1, 1, 3, 5)
    x[0, 0, 1] = torch.tensor([0.0, 0.1, 0.9, 0.2, 0.0])
    y = torch.zeros(1, dtype=torch.long)
    cands = torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=torch.float64)
    model = _CodeReader().eval()
    with torch.no_grad():
        succ, loss = _brute_force(model, x, y, cands)
        first = worst_transform(model, x, y, cands)
        worst = worst_transform(model, x, y, cands, selection="max_loss")
    assert succ[0].tolist() == [False, True, False] or succ[0].tolist() == [False, False, True]
    j_succ, j_loss = int(succ[0].float().argmax()), int(loss[0].argmax())
    assert j_succ != j_loss and not succ[0, j_loss]
    assert bool(first["success"][0]) and torch.equal(first["params"][0], cands[j_succ])
    assert not bool(worst["success"][0]) and torch.equal(worst["params"][0], cands[j_loss])
    # the attack class with the CleverHans rule returns the input for the failed example (contract)
    atk = RotationTranslation(max_rotation=0.0, max_translation=1.0, num_rotations=1, num_translations=3,
                              selection="max_loss")
    res = atk(model, x, y)
    assert not bool(res.success[0]) and torch.equal(res.x_adv, x)


def test_cleverhans_preset_contract_and_batch_independence(digits_model):
    model, x, y = digits_model
    atk = RotationTranslation.preset("cleverhans", image_size=x.shape[-1])
    res = run_checked(atk, model, x, y)
    assert torch.all(res.forward_evals == 24)
    with torch.no_grad():
        assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
        _, loss = _brute_force(model, x, y, atk.candidates(len(x)))
    # a successful example holds the transform of highest cross-entropy
    s = res.success
    assert s.any()
    best = atk.candidates(len(x))[loss.argmax(1)].to(res.params["angle"].dtype)
    torch.testing.assert_close(res.params["angle"][s], best[s, 0])
    torch.testing.assert_close(res.params["shift"][s], best[s, 1:])
    sub = atk(model, x[3:7], y[3:7])
    assert torch.equal(sub.x_adv, res.x_adv[3:7]) and torch.equal(sub.success, res.success[3:7])


def test_stm_early_stop_searches_farthest_from_identity_first():
    attack = RotationTranslation()
    grid = attack.candidates(1)
    order = attack.search_order(grid)
    assert sorted(order.tolist()) == list(range(len(grid)))
    # the 8 corners (±30°, ±3 px, ±3 px) come first, in grid order; the identity comes last
    assert grid[order[:8]].abs().tolist() == [[30.0, 3.0, 3.0]] * 8
    assert grid[order[0]].tolist() == [-30.0, -3.0, -3.0] and grid[order[-1]].tolist() == [0.0, 0.0, 0.0]
    d = (grid / torch.tensor([30.0, 3.0, 3.0], dtype=grid.dtype)).pow(2).sum(1)[order]
    assert bool((d[:-1] >= d[1:]).all())

    class Fooled(nn.Module):  # misclassifies every image that is not exactly the original
        def __init__(self, x):
            super().__init__()
            self.register_buffer("x0", x[:1])

        def forward(self, x):
            moved = (x - self.x0).flatten(1).abs().amax(1) > 0
            return torch.stack([(~moved).float(), moved.float()], 1) * 5

    x = torch.rand(3, 1, 12, 12) * 0.5 + 0.25
    x = x[:1].expand(3, 1, 12, 12).clone()
    r = attack(Fooled(x).eval(), x, torch.zeros(3, dtype=torch.long))
    # early stop: one candidate per image, the first of the search order; the exhaustive scan agrees on success
    assert r.forward_evals.tolist() == [1, 1, 1] and r.params["angle"].tolist() == [-30.0] * 3
    assert r.params["shift"].tolist() == [[-3.0, -3.0]] * 3
    full = attack.replace(early_stop=False)(Fooled(x).eval(), x, torch.zeros(3, dtype=torch.long))
    assert torch.equal(full.success, r.success) and full.forward_evals.tolist() == [775] * 3
