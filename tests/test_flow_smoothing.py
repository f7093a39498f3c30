"""Flow-space randomized smoothing (DeformRS-VF): soundness against a flow-space attack, known answers, bad inputs,
the ``flow-noise`` objective and the certify-smoothing options that drive it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spatialadv.certify import FlowSmoothedClassifier, SmoothingAugmentation
from spatialadv.certify.smoothing import cohen_radius, lower_confidence_bound
from spatialadv.data import load_dataset
from spatialadv.experiments import certify_smoothing as cs
from spatialadv.experiments.framework import validate_config
from spatialadv.ops import flow_warp
from spatialadv.training import Objective

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMA = 0.3


@pytest.fixture(scope="module")
def flow_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-64-10 MLP trained on digits warped by Gaussian flows (σ = 0.3 px), and 40 test images."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        aug = SmoothingAugmentation(sigma=0.0, flow_sigma=SIGMA, seed=0)
        gen = torch.Generator().manual_seed(0)
        for _ in range(25):
            perm = torch.randperm(len(train), generator=gen)
            for i in range(0, len(perm), 64):
                b = perm[i : i + 64]
                loss = nn.functional.cross_entropy(model(aug(model, train.x[b], train.y[b])), train.y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model, test.x[:40].clone(), test.y[:40].clone()
    finally:
        torch.set_num_threads(threads)


def _smoothed_flow_attack(model, x, c, radius, *, steps=40, draws=64, seed=1):
    """PGD on ψ within ‖ψ‖₂ ≤ radius (per image) against G_x: maximise the CE of the mean softmax over fixed draws φ."""
    b, _, h, w = x.shape
    phi = torch.randn(draws, 2, h, w, generator=torch.Generator().manual_seed(seed))
    psi = torch.zeros(b, 2, h, w, requires_grad=True)
    r = radius.view(b, 1, 1, 1).to(x.dtype)
    for _ in range(steps):
        xs = flow_warp(x.repeat_interleave(draws, 0), (psi[:, None] + SIGMA * phi[None]).reshape(b * draws, 2, h, w))
        prob = model(xs).softmax(1).view(b, draws, -1).mean(1)
        loss = nn.functional.nll_loss(prob.clamp_min(1e-12).log(), c)
        (grad,) = torch.autograd.grad(loss, psi)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(b, 1, 1, 1)
            psi += 0.25 * r * g
            norm = psi.flatten(1).norm(dim=1).view(b, 1, 1, 1)
            psi *= torch.where(norm > r, r / norm.clamp_min(1e-12), torch.ones_like(norm))
    return psi.detach()


def test_no_certified_example_is_broken_within_its_flow_radius(flow_model):
    model, x, y = flow_model
    g = FlowSmoothedClassifier(model, sigma=SIGMA, num_classes=10)
    cert = g.certify(x, n0=32, n=500, alpha=0.001, seed=0)
    ok = cert.prediction >= 0
    assert int(ok.sum()) >= 25  # enough certified examples for the check to mean something
    c = cert.prediction[ok]
    xs = x[ok]
    inside = _smoothed_flow_attack(model, xs, c, 0.99 * cert.radius[ok])
    assert bool((inside.flatten(1).norm(dim=1) <= cert.radius[ok].to(inside.dtype) + 1e-6).all())
    pred = g.predict(xs, 500, 0.001, flow=inside, seed=3)
    assert bool(((pred == c) | (pred == -1)).all()), "an example certified at radius R was broken within R"
    # the same attack has teeth: at 8 R it changes the smoothed prediction of some certified examples
    outside = _smoothed_flow_attack(model, xs, c, 8 * cert.radius[ok])
    far = g.predict(xs, 500, 0.001, flow=outside, seed=3)
    assert int(((far != c) & (far >= 0)).sum()) >= 1


def test_constant_classifier_gets_the_largest_radius_n_samples_allow():
    class Const(nn.Module):
        def forward(self, z):
            out = torch.zeros(z.shape[0], 3, dtype=z.dtype)
            out[:, 2] = 1.0
            return out

    g = FlowSmoothedClassifier(Const().eval(), sigma=0.7, num_classes=3)
    cert = g.certify(torch.rand(2, 1, 5, 5), n0=10, n=200, alpha=0.01)
    assert cert.prediction.tolist() == [2, 2]
    expected = float(cohen_radius(lower_confidence_bound(200, 200, 0.01), 0.7))
    assert cert.radius.tolist() == pytest.approx([expected, expected], abs=1e-12)
    assert g.max_radius(200, 0.01) == pytest.approx(expected)


def test_counts_are_the_base_model_on_warps_of_x_at_psi_plus_noise_and_batch_independent(flow_model):
    model, x, _ = flow_model
    g = FlowSmoothedClassifier(model, sigma=SIGMA, num_classes=10, batch_size=64)
    psi = 0.2 * torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    both = g.counts(x[:3], 100, flow=psi, seed=4, index=torch.tensor([7, 8, 9]))
    alone = g.counts(x[1:2], 100, flow=psi[1:2], seed=4, index=torch.tensor([8]))
    assert torch.equal(both[1], alone[0])
    assert both.sum(1).tolist() == [100, 100, 100]
    # σ → 0: G_x(ψ) is f(warp(x, ψ))
    tiny = FlowSmoothedClassifier(model, sigma=1e-9, num_classes=10)
    with torch.no_grad():
        f = model(flow_warp(x[:3], psi)).argmax(1)
    assert tiny.counts(x[:3], 5, flow=psi).argmax(1).tolist() == f.tolist()


def test_bad_inputs_are_refused(flow_model):
    model, x, _ = flow_model
    g = FlowSmoothedClassifier(model, sigma=SIGMA, num_classes=10)
    with pytest.raises(ValueError, match=r"flow must have shape \(B, 2, H, W\)"):
        g.certify(x[:2], flow=torch.zeros(2, 1, 8, 8), n0=4, n=4)
    with pytest.raises(TypeError, match="flow has dtype"):
        g.predict(x[:2], 4, flow=torch.zeros(2, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="flow must be finite"):
        g.counts(x[:1], 4, flow=torch.full((1, 2, 8, 8), math.nan))
    with pytest.raises(TypeError, match="flow must be a float tensor"):
        g.counts(x[:1], 4, flow=torch.zeros(1, 2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="sigma must be a finite float > 0"):
        FlowSmoothedClassifier(model, sigma=0.0, num_classes=10)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        FlowSmoothedClassifier(lambda z: z, sigma=0.5, num_classes=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n0"):
        g.certify(x[:1], n0=0, n=10)
    with pytest.raises(ValueError, match="alpha"):
        g.certify(x[:1], n0=4, n=10, alpha=1.5)
    with pytest.raises(ValueError, match="flow_sigma must be a finite number"):
        SmoothingAugmentation(sigma=0.0, flow_sigma=-0.1)
    with pytest.raises(ValueError, match="sigma"):
        Objective("flow-noise", sigma=0.0)


def test_flow_noise_augmentation_warps_by_a_gaussian_flow_and_leaves_other_streams_alone():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = SmoothingAugmentation(sigma=0.1, rotation=10.0, seed=3)(None, x, None)
    same = SmoothingAugmentation(sigma=0.1, rotation=10.0, seed=3, flow_sigma=0.0)(None, x, None)
    assert torch.equal(plain, same)
    # only a flow: the draw is the generator's first randn after the three uniforms
    aug = SmoothingAugmentation(sigma=0.0, flow_sigma=0.4, seed=3)
    gen = torch.Generator().manual_seed(3 + 7919)
    torch.rand(3, 4, generator=gen, dtype=torch.float64)
    phi = 0.4 * torch.randn((4, 2, 8, 8), generator=gen)
    torch.testing.assert_close(aug(None, x, None), flow_warp(x, phi))


def test_config_options_of_the_flow_certificate_and_the_limits():
    with pytest.raises(ValueError, match="--flow-sigma must be"):
        validate_config(cs.Config(flow_sigma=0.0))
    with pytest.raises(ValueError, match="--limit-samples must be"):
        validate_config(cs.Config(limit_samples=-1))
    with pytest.raises(ValueError, match="--flow-radii"):
        validate_config(cs.Config(flow_radii=(0.5, -1.0)))
    cfg = cs.Config(flow_sigma=0.8, flow_epochs=7, epochs=9)
    spec = cs._spec(cfg, "mnist", flow=True)
    assert (spec.objective.name, spec.objective.options["sigma"], spec.train.epochs) == ("flow-noise", 0.8, 7)
    assert cs._spec(cfg, "mnist").train.epochs == 9
    assert cs._spec(cfg, "mnist", epochs=3).train.epochs == 3
    assert cs._spec(cfg, "fashion-mnist", flow=True).train.epochs == cfg.fashion_epochs
    rot = {"0": {"prediction": 1, "label": 1, "certified_below": None},   # certified everywhere
           "1": {"prediction": 2, "label": 2, "certified_below": 12.0},   # lost at 12°: re-certify
           "2": {"prediction": 3, "label": 4, "certified_below": None},   # wrong class: no
           "3": {"prediction": -1, "label": 4, "certified_below": 0.0}}   # abstained: no
    assert cs._rescue_items(rot, 30.0) == ["1"]


class _Run:
    def __init__(self, items: dict, tags: dict | None = None):
        self._items = items
        self.tags = tags or {}

    def items(self) -> dict:
        return self._items


class _Results:
    """The few parts of the framework's Results that the MNIST limits section reads."""

    def __init__(self, rot: dict, emp: dict, epochs: list | None = None):
        self.runs = {("mnist", "certify rotation"): _Run(rot), ("mnist", "empirical"): _Run(emp)}
        self.models: dict = {}
        self.epochs = epochs or []

    def get(self, model, attack):
        return self.runs.get((model, attack))

    def find(self, attack=None):
        return self.epochs if attack == "limits epochs" else []


@pytest.mark.parametrize("broken, below", [(40, True), (2, False)])
def test_the_rotation_limits_say_whether_g_itself_caps_the_figure_below_tss(broken, below):
    """With g broken empirically on many images no certificate of g can reach TSS's 95.8 %: the report says so,
    and only when the empirical interval lies wholly below it."""
    n = 200
    rot = {str(i): {"label": 1, "prediction": 1, "certified_below": None if i >= broken else 12.0} for i in range(n)}
    emp = {str(i): {"label": 1, "g_clean": 1, "g_rotation_break": 12.0 if i < broken else None, "f_clean": 1,
                    "f_rotation_break": None} for i in range(n)}
    text = " ".join(b for b in cs._limits(cs.Config(), _Results(rot, emp)) if isinstance(b, str))
    capped = "whose whole interval lies below TSS's 95.8 %" in text
    assert capped == below and ("does not rule out TSS's 95.8 %" in text) == (not below)
    assert f"{100 * (n - broken) / n:.1f} [" in text


@pytest.mark.parametrize("certified_240, verdict", [(100, "more epochs are a lever left"),
                                                    (60, "the base model's epochs have plateaued at 120")])
def test_the_epochs_table_says_whether_more_epochs_still_help(certified_240, verdict):
    n = 100
    rot = {str(i): {"label": 1, "prediction": 1, "certified_below": None if i < 70 else 12.0} for i in range(n)}
    emp = {str(i): {"label": 1, "g_clean": 1, "g_rotation_break": None, "f_clean": 1, "f_rotation_break": None}
           for i in range(n)}
    longer = {str(i): {"label": 1, "prediction": 1, "certified_below": None if i < certified_240 else 12.0, "f_clean": 1,
                       "f_rotation_break": None} for i in range(n)}
    res = _Results(rot, emp, [_Run(longer, {"epochs": 240})])
    text = " ".join(b for b in cs._limits(cs.Config(), res) if isinstance(b, str))
    assert f"Training 240 epochs instead of 120: certified {certified_240:.1f} [" in text and verdict in text
