"""Reliability of the public API: certificates check what they certify, smoothing never certifies garbage,
and the ops / attacks refuse bad arguments with errors naming them (issue "Reliability", item 2 and the API list).

Small seeded models built here; every case is cheap (no dataset, no training beyond one SdpAdv epoch).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from spatialadv.attacks import SdpAdv
from spatialadv.certify import SmoothedClassifier, certify, certify_flow, certify_rotation, certify_translation, pair_bounds
from spatialadv.certify.bounds import network_weights, reconstructed_logits, weights_fingerprint
from spatialadv.ops.affine import affine_warp, identity_theta
from spatialadv.ops.smoothing import GuidedSmoothing, smooth

SHAPE = (1, 6, 6)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (conftest's ``one_thread``)."""


def _mlp(seed: int = 0, hidden: int | None = 8, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    d = SHAPE[0] * SHAPE[1] * SHAPE[2]
    layers = [nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, k)] if hidden else [nn.Flatten(), nn.Linear(d, k)]
    return nn.Sequential(*layers).eval()


def _data(n: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=gen), torch.arange(n) % 3


class _Wrap(nn.Module):
    """A module holding a supported network whose ``forward`` does something else with it."""

    def __init__(self, net: nn.Module, how: str):
        super().__init__()
        self.net, self.how = net, how

    def forward(self, x):
        if self.how == "rescale":
            return self.net(2 * x)
        if self.how == "softmax":
            return self.net(x).softmax(1)
        if self.how == "nan":
            return self.net(x) * float("nan")
        if self.how == "inf":
            return self.net(x) + float("inf")
        if self.how == "tuple":
            return self.net(x), None
        return self.net(x)


@pytest.fixture(scope="module")
def q_spectral():
    return pair_bounds(_mlp(), SHAPE, method="spectral")


# ---------------------------------------------------------------------------------------------- spatial certificate
@pytest.mark.parametrize("plain_q", [False, True])
def test_certify_refuses_a_forward_that_rescales_its_input(q_spectral, plain_q):
    x, y = _data()
    model = _Wrap(_mlp(), "rescale").eval()
    q = q_spectral.as_subclass(torch.Tensor).clone() if plain_q else q_spectral
    with pytest.raises(ValueError, match=r"max abs logit difference [0-9.e+-]+ > tolerance"):
        certify(model, x, y, 0.01, q=q)


def test_pair_bounds_refuses_a_forward_that_rescales_its_input():
    with pytest.raises(ValueError, match="max abs logit difference"):
        pair_bounds(_Wrap(_mlp(), "rescale").eval(), SHAPE, method="spectral")


def test_certify_refuses_probabilities_nan_and_inf(q_spectral):
    x, y = _data()
    with pytest.raises(ValueError, match="looks like probabilities"):
        certify(_Wrap(_mlp(), "softmax").eval(), x, y, 0.01, q=q_spectral)
    for how in ("nan", "inf"):
        with pytest.raises(ValueError, match="NaN or infinite logits"):
            certify(_Wrap(_mlp(), how).eval(), x, y, 0.01, q=q_spectral)
    with pytest.raises(ValueError, match="looks like probabilities"):
        pair_bounds(_Wrap(_mlp(), "softmax").eval(), SHAPE, method="spectral")


def test_certify_refuses_a_final_softmax_layer():
    model = nn.Sequential(*_mlp(), nn.Softmax(dim=1)).eval()
    with pytest.raises(TypeError, match="remove the final Softmax"):
        network_weights(model)
    x, y = _data()
    with pytest.raises(TypeError, match="remove the final Softmax"):
        certify(model, x, y, 0.01, q=torch.zeros(3, 3, dtype=torch.float64))


def test_certify_refuses_layers_it_cannot_describe():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(32, 3)).eval()
    x, y = _data()
    q = torch.zeros(3, 3, dtype=torch.float64)  # a plain Q used to skip every check of the model
    for fn in (lambda: certify(conv, x, y, 0.01, q=q), lambda: pair_bounds(conv, SHAPE), lambda: weights_fingerprint(conv)):
        with pytest.raises(TypeError, match=r"supports nn.Flatten → nn.Linear → nn.ReLU → nn.Linear.*got layers \['Conv2d'"):
            fn()

    class Scaled(nn.Module):  # a parameter outside the supported layers
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(2.0))
            self.net = _mlp()

        def forward(self, x):
            return self.net(self.scale * x)

    with pytest.raises(TypeError, match=r"parameters outside these layers \(scale\)"):
        certify(Scaled().eval(), x, y, 0.01, q=q)


def test_certify_turns_torch_errors_into_clear_ones(q_spectral):
    x, y = _data()
    with pytest.raises(TypeError, match=r"^x has dtype torch.float64 but the model has torch.float32 weights"):
        certify(_mlp(), x.double(), y, 0.01, q=q_spectral)
    with pytest.raises(ValueError, match=r"^x has images of shape \(1, 5, 5\) \(25 values\) but the model's first layer takes 36"):
        certify(_mlp(), torch.rand(4, 1, 5, 5), y, 0.01, q=q_spectral)
    with pytest.raises(TypeError, match="must return a logits tensor.*got tuple"):
        certify(_Wrap(_mlp(), "tuple").eval(), x, y, 0.01, q=q_spectral)


def test_certify_accepts_the_networks_it_describes(q_spectral):
    """Safe results: the supported networks (float32 / float64, linear, with dropout, wrapped) are certified as before."""
    x, y = _data()
    ref = certify(_mlp(), x, y, 0.01, q=q_spectral)
    assert torch.isfinite(ref.bound).all()
    net = network_weights(_mlp())
    torch.testing.assert_close(reconstructed_logits(net, x), _mlp()(x).double(), atol=1e-5, rtol=0)
    # a wrapper whose forward is the plain network, and an eval-mode dropout layer, are the same network
    same = certify(_Wrap(_mlp(), "plain").eval(), x, y, 0.01, q=q_spectral.as_subclass(torch.Tensor))
    torch.testing.assert_close(same.bound, ref.bound)
    drop = nn.Sequential(*list(_mlp())[:3], nn.Dropout(0.5), _mlp()[3]).eval()
    torch.testing.assert_close(certify(drop, x, y, 0.01, q=q_spectral.as_subclass(torch.Tensor)).bound, ref.bound)
    m64 = copy.deepcopy(_mlp()).double()
    c64 = certify(m64, x.double(), y, 0.01, method="spectral")
    torch.testing.assert_close(c64.bound, ref.bound, atol=1e-5, rtol=1e-5)
    lin = _mlp(hidden=None)
    assert certify(lin, x, y, 0.01, method="linear").bound.shape == (4,)


@pytest.mark.parametrize("steps", [-5, 0])
def test_pair_bounds_refuses_non_positive_dual_steps(steps):
    with pytest.raises(ValueError, match=f"^dual_steps must be >= 1, got {steps}"):
        pair_bounds(_mlp(), SHAPE, dual_steps=steps)
    with pytest.raises(TypeError, match="^dual_steps must be an int"):
        pair_bounds(_mlp(), SHAPE, dual_steps=2.5)


# ---------------------------------------------------------------------------------------------- randomized smoothing
def _smoothed(model=None, k: int = 3) -> SmoothedClassifier:
    return SmoothedClassifier(_mlp(hidden=None) if model is None else model, sigma=0.25, num_classes=k)


@pytest.mark.parametrize("how", ["nan", "inf"])
def test_smoothing_refuses_non_finite_logits(how):
    """A NaN row's argmax is class 0: refused instead of certified."""
    g = _smoothed(_Wrap(_mlp(hidden=None), how).eval())
    x, _ = _data(2)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        g.certify(x, n0=5, n=10)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        g.predict(x, n=10)
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        certify_rotation(g, x, max_angle=2.0, cells=3, n0=5, n=10)


def test_smoothing_refuses_nan_only_under_noise():
    class NanOnNoise(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp(hidden=None)

        def forward(self, x):
            out = self.net(x)
            return torch.where(((x < 0) | (x > 1)).flatten(1).any(1, keepdim=True), torch.full_like(out, float("nan")), out)

    x, _ = _data(2)
    with pytest.raises(ValueError, match="noisy copies"):
        _smoothed(NanOnNoise().eval()).certify(x, n0=5, n=10)


def test_smoothing_refuses_bad_images_and_num_classes():
    g = _smoothed()
    x, _ = _data(2)
    with pytest.raises(TypeError, match=r"^x has dtype torch.float64"):
        g.certify(x.double(), n0=5, n=10)
    with pytest.raises(TypeError, match=r"^x must be a floating-point tensor"):
        g.certify((x * 255).to(torch.uint8), n0=5, n=10)
    with pytest.raises(ValueError, match=r"failed on x of shape \(2, 3, 6, 6\)"):
        g.certify(torch.rand(2, 3, 6, 6), n0=5, n=10)
    for k in (2, 5):
        with pytest.raises(ValueError, match=f"^num_classes={k} but the model returns 3 logits"):
            _smoothed(k=k).certify(x, n0=5, n=10)


@pytest.mark.parametrize("fn", [lambda m, x: certify_rotation(m, x), lambda m, x: certify_translation(m, x),
                                lambda m, x: certify_flow(m, x, (0.1,))])
def test_spatial_certificates_need_a_smoothed_classifier(fn):
    x, _ = _data(1)
    with pytest.raises(TypeError, match="^smoothed must be a SmoothedClassifier.*got Sequential"):
        fn(_mlp(hidden=None), x)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(refine=1), ValueError, "refine"),
    (dict(refine=-1), ValueError, "refine"),
    (dict(max_angle=400), ValueError, "max_angle"),
    (dict(max_angle=-1.0), ValueError, "max_angle"),
    (dict(max_angle=float("nan")), ValueError, "max_angle"),
    (dict(max_angle="30"), TypeError, "max_angle"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=1.0), ValueError, "alpha"),
    (dict(cells=4), ValueError, "cells"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(stop_on_failure=1), TypeError, "stop_on_failure"),
])
def test_certify_rotation_checks_its_options(kwargs, exc, name):
    x, _ = _data(1)
    with pytest.raises(exc, match=f"^{name} must"):
        certify_rotation(_smoothed(), x, **kwargs)


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(max_shift=100), ValueError, "max_shift"),
    (dict(max_shift=-1), ValueError, "max_shift"),
    (dict(max_shift=float("inf")), ValueError, "max_shift"),
    (dict(max_shift=2, step=0.0), ValueError, "step"),
    (dict(max_shift=2, step=-0.5), ValueError, "step"),
    (dict(max_shift=2, step=5.0), ValueError, "step"),
    (dict(alpha=2.0), ValueError, "alpha"),
    (dict(n=0), ValueError, "n"),
])
def test_certify_translation_checks_its_options(kwargs, exc, name):
    x, _ = _data(1)
    with pytest.raises(exc, match=f"^{name} must"):
        certify_translation(_smoothed(), x, **kwargs)


@pytest.mark.parametrize("deltas, kwargs, exc, name", [
    ((-0.1,), {}, ValueError, "deltas"),
    ((float("nan"),), {}, ValueError, "deltas"),
    (0.1, {}, TypeError, "deltas"),
    ((0.1,), dict(alpha=0.0), ValueError, "alpha"),
    ((0.1,), dict(n0=0), ValueError, "n0"),
])
def test_certify_flow_checks_its_options(deltas, kwargs, exc, name):
    x, _ = _data(1)
    with pytest.raises(exc, match=f"^{name} must"):
        certify_flow(_smoothed(), x, deltas, **kwargs)


def test_smoothing_still_certifies_a_finite_model():
    """Safe result: a confident finite model is certified, with the same counts as before the checks."""
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).eval()
    with torch.no_grad():
        lin[1].weight.zero_()
        lin[1].bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    g = _smoothed(lin)
    x, _ = _data(2)
    cert = g.certify(x, n0=10, n=50)
    assert cert.prediction.tolist() == [1, 1] and bool((cert.radius > 0).all())
    rot = certify_rotation(g, x, max_angle=2.0, cells=3, n0=10, n=50, refine=0)
    assert rot.prediction.tolist() == [1, 1]


# ---------------------------------------------------------------------------------------------- ops and attacks
def test_guided_smoothing_refuses_indices_outside_the_guide():
    x, _ = _data(2)
    gs = GuidedSmoothing(x.double())
    z = torch.randn(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^index must be in \[0, 2\).*got range \[-1, 0\]"):
        gs(z, index=torch.tensor([0, -1]))
    with pytest.raises(ValueError, match=r"^index must be in \[0, 2\)"):
        gs(z, index=torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="^index must be an integer tensor"):
        gs(z, index=torch.tensor([0.0, 1.0]))
    # safe: a valid index picks the named guide image
    torch.testing.assert_close(gs(z, index=torch.tensor([1, 1]))[0], GuidedSmoothing(x[1:].double())(z[:1])[0])


def test_smooth_refuses_a_guide_outside_unit_range_and_non_finite_z():
    x, _ = _data(2)
    with pytest.raises(ValueError, match=r"^guide must have pixels in \[0, 1\]"):
        smooth(torch.randn_like(x), x * 255)
    with pytest.raises(ValueError, match=r"^guide must have pixels in \[0, 1\]"):
        GuidedSmoothing(x - 0.5)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^z contains NaN or infinite values"):
            smooth(torch.full_like(x, bad), x)


def test_affine_warp_names_x_for_integer_images():
    x, _ = _data(2)
    for dtype in (torch.uint8, torch.int64):
        with pytest.raises(TypeError, match="^x must be a floating-point tensor"):
            affine_warp((x * 255).to(dtype), identity_theta(2))


def test_sdpadv_accepts_float64_images():
    """A float32 generator on float64 images: same outputs (to float32 rounding), in float64."""
    torch.manual_seed(0)
    x, _ = _data(40)
    model = _mlp(hidden=None)
    y = model(x).argmax(1)
    atk = SdpAdv(eps=0.1, epochs=1, batch_size=16, seed=0).fit(model, (x, y), progress=False)
    a, b = atk.generate(x[:4].double()), atk.generate(x[:4])
    for key in a:
        assert a[key].dtype == torch.float64
        torch.testing.assert_close(a[key].float(), b[key], atol=1e-5, rtol=0)
    res = atk(copy.deepcopy(model).double(), x[:4].double(), y[:4])
    assert res.x_adv.dtype == torch.float64
    with pytest.raises(TypeError, match="^x has dtype torch.float64 but the model"):
        atk(model, x[:4].double(), y[:4])
