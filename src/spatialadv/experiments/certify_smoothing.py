"""``spatialadv reproduce certify-smoothing``: randomized-smoothing certificates against rotations, translations, flows.

On MNIST-5k and Fashion-MNIST, a base classifier (the small CNN ``cnn-small``) trained
on the smoothing distribution (random rotation ±30°, translation ±4 px — one
pixel beyond the ±3 px budget, see :class:`Config` — Gaussian noise σ; the
``smoothing`` objective) is smoothed with Gaussian noise (Cohen,
Rosenfeld & Kolter, ICML 2019), and on the first N test images:

* **certified** accuracy of the smoothed classifier g against every rotation
  within ±Θ (:func:`~spatialadv.certify.certify_rotation`: a grid of angle
  cells, Cohen's radius at α/K per cell, exact bilinear interpolation bound —
  the interpolation-error construction of TSS, Li et al., CCS 2021), every
  integer shift within ±t px (:func:`~spatialadv.certify.certify_translation`),
  and every flow with ``‖r‖_∞ ≤ δ`` px (:func:`~spatialadv.certify.certify_flow`);
  beside the exact check of the base classifier f on all integer shifts;
* **empirical** robust accuracy within the same budgets on the same images:
  STM on a 0.1° grid and all integer shifts against f; a projected (sign-gradient)
  flow attack and stAdv clipped to the budget against f; the smoothed
  prediction (PREDICT) of g at a 1° angle grid, at f's adversarial angles, at
  every integer shift and at the flow attacks' images;
* **flow-space** certificates (:class:`~spatialadv.certify.FlowSmoothedClassifier`: smoothing over the flow as
  DeformRS does, Alfarra et al., AAAI 2022) of a second base model trained on Gaussian flows (the ``flow-noise``
  objective), beside the size of stAdv's flows on the same images and the smoothed prediction at them;
* on MNIST, **what limits the rotation figure**: every image not certified at ±Θ attributed to the smoothed
  classifier (wrong, or broken by an attack) or to the certificate, the latter re-certified with more samples per
  cell; and base models trained for fewer and more epochs on a subset.

Every record stores the seconds it took, so the report gives each part's cost. Every value is stored per example (:class:`~spatialadv.experiments.framework.TaskRun`), so the job resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from ..attacks import StAdv
from ..certify.smoothing import (
    FlowSmoothedClassifier,
    SmoothedClassifier,
    certify_flow,
    certify_rotation,
    certify_translation,
    exhaustive_translation,
)
from ..data import TRAIN_SIZES, DataSpec
from ..eval.compare import Cell, Comparison, Estimate, Metric, PaperValue, mean, rate
from ..ops import affine_warp, flow_warp, rotation_translation_theta
from ..training import ModelSpec, Objective, TrainConfig
from ..viz.curves import Curve, Panel, curve_panels
from .framework import MAX_THREADS, Experiment, Report, Table, TaskRun, option

__all__ = ["Config", "PAPER", "TSS", "plan", "report", "EXPERIMENTS", "flow_linf_pgd"]

#: TSS (Li et al., ACM CCS 2021), MNIST, rotation ±30°: certified and clean accuracy of the smoothed model (their
#: base model is trained on all 60 000 MNIST training images).
PAPER: dict[str, Any] = {"tss_mnist_rotation30_certified": 0.958, "tss_mnist_clean": 0.988,
         "source": "Li et al., TSS: Transformation-Specific Smoothing for Robustness Certification, ACM CCS 2021"}
#: The same as paper values with their source (the table number was not checked against the paper offline).
TSS = {"rotation30_certified": PaperValue(PAPER["tss_mnist_rotation30_certified"], "tss", "MNIST, rotation ±30°",
                                          "certified accuracy; the table number was not checked against the paper"),
       "clean": PaperValue(PAPER["tss_mnist_clean"], "tss", "MNIST, rotation ±30°",
                           "clean accuracy of the smoothed model; the table number was not checked against the paper")}

DATASETS = ("mnist", "fashion-mnist")


@dataclass(frozen=True)
class Config:
    """Settings of ``spatialadv reproduce certify-smoothing``."""

    n: int = option(500, "test images per dataset (the first N of the test split, correct or not)", minimum=1)
    datasets: tuple[str, ...] = option(DATASETS, "datasets", choices=DATASETS)
    architecture: str = option("cnn-small", "base classifier (the certificates cost K·n forward passes per image: a small "
                               "CNN is about 3× fc-500 and a tenth of c4 per pass, and far less sensitive to shifts than fc-500)")
    epochs: int = option(120, "training epochs on MNIST-5k (4 000 images; 120 rather than 60 lifts the base model's "
                         "robustness to ±30° rotations on the first 100 test images from 91 % to 96 %)", minimum=1)
    fashion_epochs: int = option(10, "training epochs on Fashion-MNIST", minimum=1)
    fashion_max_train: int = option(20000, "Fashion-MNIST training images (of 60 000)", minimum=10,
                                    maximum=TRAIN_SIZES["fashion-mnist"])
    sigma: float = option(0.25, "Gaussian noise σ of smoothing and training (pixels in [0, 1])", above=0.0,
                          maximum=10.0)
    n0: int = option(64, "CERTIFY selection samples (identity cell)", minimum=1, maximum=10**7)
    samples: int = option(250, "CERTIFY estimation samples per grid cell (and per flow certificate)", minimum=1,
                         maximum=10**7)
    alpha: float = option(0.001, "CERTIFY failure probability per image and threat (union over the grid cells)",
                          above=0.0, below=1.0)
    max_angle: float = option(30.0, "largest rotation budget Θ (degrees)", minimum=0.0, maximum=180.0)
    angle_budgets: tuple[float, ...] = option((0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0), "rotation budgets (degrees)",
                                              minimum=0.0, maximum=180.0)
    max_shift: int = option(3, "largest integer translation budget (pixels, ∞-norm)", minimum=0,
                         maximum=27)
    train_shift: float = option(4.0, "translation range of the training augmentation (pixels; one beyond --max-shift: "
                                "a base model trained on exactly ±3 px is weakest at the corner shifts (±3, ±3) it must certify)",
                                minimum=0.0, maximum=28.0)
    flow_deltas: tuple[float, ...] = option((0.0, 0.01, 0.02, 0.03, 0.05, 0.1), "flow budgets δ (pixels, ‖r‖_∞)",
                                            minimum=0.0, maximum=28.0)
    bound_fraction: float = option(0.5, "target of the per-image cell count: max bound ≤ this × the largest radius",
                                   above=0.0, maximum=1.0)
    refine: int = option(4, "sub-cells per failed rotation cell, certified with fresh samples at α/(2KS) each "
                         "(0: no refinement, α/K per cell)", minimum=0, maximum=1000,
                         check=lambda v: None if v != 1 else "0 (no refinement) or >= 2 (one sub-cell is the cell itself)")
    refine_samples: int = option(1000, "estimation samples per sub-cell (a failed cell's p_c is well below 1, where more "
                                 "samples tighten the bound most: on the first 100 MNIST test images, ±30° is certified on "
                                 "88 % without refinement, 89 % with 250 per sub-cell, 91 % with 1 000)", minimum=1,
                                 maximum=10**7)
    predict_samples: int = option(250, "PREDICT samples of the empirical checks of g", minimum=1, maximum=10**7)
    pgd_steps: int = option(20, "steps of the projected flow attack", minimum=1)
    stadv_tau: float = option(0.05, "stAdv's flow-smoothness weight τ (Xiao et al. 2018, Eq. 2) in every stAdv run",
                              minimum=0.0)
    stadv_steps: int = option(50, "stAdv's L-BFGS iterations in every stAdv run", minimum=1)
    flow_sigma: float = option(0.5, "flow noise σ of the flow-space smoothed classifier and its base model's training "
                               "(pixels per flow component; DeformRS, Alfarra et al. 2022)", above=0.0, maximum=28.0)
    flow_epochs: int = option(30, "training epochs of the flow-space base model on MNIST-5k (Fashion-MNIST: "
                              "--fashion-epochs)", minimum=1)
    flow_samples: int = option(1000, "CERTIFY estimation samples of the flow-space certificate (the largest radius is "
                               "σ Φ⁻¹(α^(1/n)): 2.46 σ at 1 000)", minimum=1, maximum=10**7)
    flow_radii: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0, 1.25), "flow-space L2 budgets of the certified "
                                           "curve (pixels, over all 2·H·W flow components)", minimum=0.0, maximum=1000.0)
    limit_samples: int = option(1000, "MNIST rotation limits: estimation samples per cell when re-certifying the images "
                                "certified at the clean image but not to ±max-angle (0: skip)", minimum=0,
                                maximum=10**7)
    limit_epochs: tuple[int, ...] = option((30, 60, 240), "MNIST rotation limits: epochs of the base models compared "
                                           "with --epochs on the first --limit-n images (fewer and more: where the "
                                           "base model stops improving)", minimum=1)
    limit_n: int = option(100, "MNIST rotation limits: images of the base-model comparison (the first N)", minimum=1)
    flow_sigma_sweep: tuple[float, ...] = option((1.0, 2.0, 4.0), "MNIST flow-space limits: σ_f of further flow-noise "
                                                 "base models (--flow-epochs each), certified with stAdv beside them on "
                                                 "the first --limit-n images (empty: skip)", above=0.0, maximum=28.0)
    seed: int = option(0, "seed of training and sampling", minimum=0)
    threads: int = option(2, "torch intra-op threads", minimum=1, maximum=MAX_THREADS)


# ------------------------------------------------------------------------------------------------ attacks
def flow_linf_pgd(model, x: torch.Tensor, y: torch.Tensor, delta: float, *, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected sign-gradient ascent of the cross-entropy over flows with ``‖r‖_∞ ≤ δ`` px (bilinear warp).

    Deterministic (zero start, step δ/4). Returns ``(x_adv (B, C, H, W), broken (B,) bool)``: the first
    misclassifying iterate per example (else the last), and whether one was found.
    """
    b, _, h, w = x.shape
    if delta == 0:
        with torch.no_grad():
            return x.clone(), model(x).argmax(1) != y
    r = torch.zeros(b, 2, h, w, dtype=x.dtype, requires_grad=True)
    best = x.clone()
    broken = torch.zeros(b, dtype=torch.bool)
    for _ in range(steps + 1):
        xa = flow_warp(x, r)
        logits = model(xa)
        wrong = logits.argmax(1) != y
        new = wrong & ~broken
        best[new] = xa.detach()[new]
        broken |= wrong
        loss = torch.nn.functional.cross_entropy(logits, y)
        (g,) = torch.autograd.grad(loss, r)
        with torch.no_grad():
            r += (delta / 4) * g.sign()
            r.clamp_(-delta, delta)
    best[~broken] = flow_warp(x, r.detach())[~broken]
    return best, broken


def _rot(x1: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    return affine_warp(x1.expand(len(angles), -1, -1, -1), rotation_translation_theta(angles, 0.0, 0.0), units="pixels").clamp(0, 1)


def _inf(v: float):
    return None if math.isinf(v) else float(v)


def _breaks(pred: torch.Tensor, c: int, budgets: torch.Tensor) -> float:
    """Smallest budget at which a prediction differs from ``c`` (abstentions of PREDICT do not count); inf if none."""
    bad = (pred >= 0) & (pred != c)
    return float(budgets[bad].min()) if bool(bad.any()) else math.inf


# ------------------------------------------------------------------------------------------------ tasks
def _timed(task):
    """Wrap a task's compute function: each record gets ``seconds``, its share of the batch's wall time."""
    @functools.wraps(task)
    def run(*args, **kwargs):
        items = args[-1] if args else kwargs["items"]
        t0 = time.perf_counter()
        out = task(*args, **kwargs)
        per = (time.perf_counter() - t0) / max(len(items), 1)
        return {k: {**v, "seconds": per} for k, v in out.items()}
    return run


def _certify_task(kind: str, g: SmoothedClassifier, model, x, y, cfg: Config, items: list[str]) -> dict:
    idx = torch.tensor([int(i) for i in items])
    xs, ys = x[idx], y[idx]
    out = {}
    if kind == "rotation":
        c = certify_rotation(g, xs, max_angle=cfg.max_angle, n0=cfg.n0, n=cfg.samples, alpha=cfg.alpha, seed=cfg.seed,
                             index=idx, bound_fraction=cfg.bound_fraction, refine=cfg.refine,
                             refine_samples=cfg.refine_samples)
    elif kind == "translation":
        c = certify_translation(g, xs, max_shift=cfg.max_shift, n0=cfg.n0, n=cfg.samples, alpha=cfg.alpha, seed=cfg.seed,
                                index=idx)
    elif kind == "flow":
        fc = certify_flow(g, xs, cfg.flow_deltas, n0=cfg.n0, n=cfg.samples, alpha=cfg.alpha, seed=cfg.seed, index=idx)
        for j, i in enumerate(items):
            out[i] = {"label": int(ys[j]), "prediction": int(fc.prediction[j]), "radius": float(fc.radius[j]),
                      "bounds": [float(v) for v in fc.bounds[j]], "certified": [bool(v) for v in fc.certified[j]]}
        return out
    elif kind == "base-shifts":
        pred, below = exhaustive_translation(model, xs, max_shift=cfg.max_shift)
        return {i: {"label": int(ys[j]), "prediction": int(pred[j]), "certified_below": _inf(float(below[j]))}
                for j, i in enumerate(items)}
    else:
        raise ValueError(kind)
    for j, i in enumerate(items):
        out[i] = {"label": int(ys[j]), "prediction": int(c.prediction[j]), "certified_below": _inf(float(c.certified_below[j])),
                  "cells": int(c.cells[j]), "evaluated": int(c.evaluated[j]), "min_margin": _inf(float(c.min_margin[j])),
                  "max_bound": float(c.max_bound[j]), "refined": int(c.refined[j])}
    return out


def _empirical_task(g: SmoothedClassifier, model, x, y, cfg: Config, items: list[str]) -> dict:
    """Per image: the smallest budget at which f (attacks) and g (PREDICT at attack points) are broken."""
    out = {}
    ps = cfg.predict_samples
    fine = torch.round(torch.linspace(-cfg.max_angle, cfg.max_angle, int(round(2 * cfg.max_angle / 0.1)) + 1) * 10) / 10
    coarse = torch.round(torch.linspace(-cfg.max_angle, cfg.max_angle, int(round(2 * cfg.max_angle)) + 1))
    t = cfg.max_shift
    shifts = torch.tensor([(a, b) for a in range(-t, t + 1) for b in range(-t, t + 1)], dtype=torch.float32)
    idx = torch.tensor([int(i) for i in items])
    xs, ys = x[idx], y[idx]
    stadv = StAdv(tau=cfg.stadv_tau, steps=cfg.stadv_steps)(model, xs, ys)
    for j, item in enumerate(items):
        xi, yi, row = xs[j : j + 1], int(ys[j]), [int(item)]
        with torch.no_grad():
            f_clean = int(model(xi).argmax(1))
            f_rot = model(_rot(xi, fine)).argmax(1)
        f_rot_break = _breaks(f_rot, yi, fine.abs())
        g_clean = int(g.predict(xi, ps, seed=cfg.seed, index=torch.tensor([row]))[0])
        # g at the 1° grid and at f's misclassifying angles nearest the identity (one per sign)
        extra = [a for a in (fine[(f_rot != yi) & (fine > 0)][:1].tolist() + fine[(f_rot != yi) & (fine < 0)][-1:].tolist())]
        angles = torch.cat([coarse, torch.tensor(extra, dtype=coarse.dtype)])
        g_rot = g.predict(_rot(xi, angles), ps, seed=cfg.seed, index=torch.tensor([[*row, k] for k in range(len(angles))]))
        g_rot_break = _breaks(g_rot, yi, angles.abs())
        sh = affine_warp(xi.expand(len(shifts), -1, -1, -1), rotation_translation_theta(0.0, shifts[:, 0], shifts[:, 1]),
                         units="pixels").clamp(0, 1)
        with torch.no_grad():
            f_sh = model(sh).argmax(1)
        smax = shifts.abs().amax(1)
        g_sh = g.predict(sh, ps, seed=cfg.seed, index=torch.tensor([[*row, 1000 + k] for k in range(len(shifts))]))
        flows = []
        for d_i, delta in enumerate(cfg.flow_deltas):
            adv, broken = flow_linf_pgd(model, xi, ys[j : j + 1], float(delta), steps=cfg.pgd_steps)
            assert stadv.flow is not None  # a flow attack's result
            clipped = stadv.flow[j : j + 1].clamp(-delta, delta)
            sadv = flow_warp(xi, clipped).clamp(0, 1)
            with torch.no_grad():
                s_broken = bool(model(sadv).argmax(1)[0] != yi)
            gp = g.predict(torch.cat([adv.clamp(0, 1), sadv]), ps, seed=cfg.seed,
                           index=torch.tensor([[*row, 2000 + 2 * d_i], [*row, 2001 + 2 * d_i]]))
            flows.append({"f_pgd": bool(broken[0]), "f_stadv": s_broken,
                          "g_broken": bool(((gp >= 0) & (gp != yi)).any()), "g_pred": gp.tolist()})
        out[item] = {"label": yi, "f_clean": f_clean, "g_clean": g_clean,
                     "f_rotation_break": _inf(f_rot_break), "g_rotation_break": _inf(g_rot_break),
                     "f_shift_break": _inf(_breaks(f_sh, yi, smax)), "g_shift_break": _inf(_breaks(g_sh, yi, smax)),
                     "flows": flows}
    return out


def _flow_space_task(gf: FlowSmoothedClassifier, model, x, y, cfg: Config, items: list[str]) -> dict:
    """Per image: the flow-space certificate of G (radius, L2 px), stAdv's flow on G's base model and G at it."""
    idx = torch.tensor([int(i) for i in items])
    xs, ys = x[idx], y[idx]
    cert = gf.certify(xs, n0=cfg.n0, n=cfg.flow_samples, alpha=cfg.alpha, seed=cfg.seed, index=idx)
    adv = StAdv(tau=cfg.stadv_tau, steps=cfg.stadv_steps)(model, xs, ys)
    assert adv.flow is not None  # a flow attack's result
    flow = adv.flow.detach().to(xs.dtype)
    with torch.no_grad():
        f_clean = model(xs).argmax(1)
    # G_x at stAdv's flow (what the certificate speaks about) and G applied to the received image warp(x, ψ)
    # (smoothing around it: not covered); common noise draws, so a difference is the composition's alone
    g_at = gf.predict(xs, cfg.predict_samples, flow=flow, seed=cfg.seed, index=idx)
    g_recv = gf.predict(flow_warp(xs, flow), cfg.predict_samples, seed=cfg.seed, index=idx)
    out = {}
    for j, i in enumerate(items):
        fj = flow[j].flatten()
        out[i] = {"label": int(ys[j]), "prediction": int(cert.prediction[j]), "radius": float(cert.radius[j]),
                  "p_lower": float(cert.p_lower[j]), "f_clean": int(f_clean[j]),
                  "stadv_success": bool(adv.success[j]), "stadv_l2": float(fj.norm()),
                  "stadv_linf": float(fj.abs().max()),
                  "stadv_pixel_max": float(flow[j].norm(dim=0).max()),
                  "g_at_stadv": int(g_at[j]), "g_received": int(g_recv[j])}
    return out


def _rescue_task(g: SmoothedClassifier, x, y, cfg: Config, items: list[str]) -> dict:
    """Re-certify ±max_angle with ``limit_samples`` per cell (fresh draws: the index gains a 1)."""
    idx = torch.tensor([int(i) for i in items])
    c = certify_rotation(g, x[idx], max_angle=cfg.max_angle, n0=cfg.n0, n=cfg.limit_samples, alpha=cfg.alpha,
                         seed=cfg.seed, index=torch.stack([idx, torch.ones_like(idx)], 1),
                         bound_fraction=cfg.bound_fraction, refine=cfg.refine,
                         refine_samples=max(cfg.refine_samples, cfg.limit_samples))
    return {i: {"label": int(y[int(i)]), "prediction": int(c.prediction[j]),
                "certified_below": _inf(float(c.certified_below[j])), "cells": int(c.cells[j]),
                "refined": int(c.refined[j])} for j, i in enumerate(items)}


def _epochs_task(g: SmoothedClassifier, model, x, y, cfg: Config, items: list[str]) -> dict:
    """Per image: the rotation certificate of g (as the main task) and STM on f at the 0.1° grid."""
    rec = _certify_task("rotation", g, model, x, y, cfg, items)
    fine = torch.round(torch.linspace(-cfg.max_angle, cfg.max_angle, int(round(2 * cfg.max_angle / 0.1)) + 1) * 10) / 10
    for i in items:
        xi, yi = x[int(i) : int(i) + 1], int(y[int(i)])
        with torch.no_grad():
            rec[i]["f_clean"] = int(model(xi).argmax(1))
            rec[i]["f_rotation_break"] = _inf(_breaks(model(_rot(xi, fine)).argmax(1), yi, fine.abs()))
    return rec


def _spec(cfg: Config, dataset: str, *, flow: bool = False, epochs: int | None = None) -> ModelSpec:
    """The base model: pixel-space smoothing distribution (default) or the flow-noise one (``flow``)."""
    obj = (Objective("flow-noise", sigma=cfg.flow_sigma) if flow else
           Objective("smoothing", sigma=cfg.sigma, rotation=float(cfg.max_angle), translation=float(cfg.train_shift)))
    if dataset == "mnist":
        e = epochs if epochs is not None else cfg.flow_epochs if flow else cfg.epochs
        return ModelSpec(cfg.architecture, DataSpec("mnist", seed=cfg.seed), TrainConfig(epochs=e, seed=cfg.seed), obj)
    return ModelSpec(cfg.architecture, DataSpec(dataset, seed=cfg.seed, max_train=cfg.fashion_max_train),
                     TrainConfig(epochs=cfg.fashion_epochs, seed=cfg.seed), obj)


def _flow_space_conf(cfg: Config, data: str) -> dict:
    """Everything that changes a flow-space record (hashed into its run key)."""
    return {"flow_sigma": cfg.flow_sigma, "n0": cfg.n0, "samples": cfg.flow_samples, "alpha": cfg.alpha, "seed": cfg.seed,
            "stadv_tau": cfg.stadv_tau, "stadv_steps": cfg.stadv_steps, "predict_samples": cfg.predict_samples,
            "data": data}


def _rescue_items(rot: dict, max_angle: float) -> list[str]:
    """Images whose identity cell certified the label but whose rotation certificate stops before ±max_angle."""
    return [i for i, r in rot.items() if r["prediction"] == r["label"] and not _cert_at(r, max_angle, max_angle)]


def plan(cfg: Config, ctx):
    """Per dataset: train (or load) the base models, then the certificate, empirical and limit tasks, per example.

    Order (MNIST): flow-space certificate (the cheapest), rotation certificate, empirical checks, the rotation
    limits (re-certification with more samples; base models trained for other numbers of epochs), integer shifts, pixel-space
    flow certificate, exact shifts of f. An interrupted job keeps what it stored and resumes.
    """
    common = {"sigma": cfg.sigma, "n0": cfg.n0, "samples": cfg.samples, "alpha": cfg.alpha, "seed": cfg.seed}
    rot_conf = {"max_angle": cfg.max_angle, "bound_fraction": cfg.bound_fraction, "refine": cfg.refine,
                "refine_samples": cfg.refine_samples}
    for ds in cfg.datasets:
        test = ctx.data(ds, "test", cfg.seed)
        data = f"{ds}-test-seed{cfg.seed}"
        n = min(cfg.n, len(test))
        items = [str(i) for i in range(n)]
        fmodel, finfo = ctx.model(f"{ds}/flow-noise", _spec(cfg, ds, flow=True))
        gf = FlowSmoothedClassifier(fmodel, sigma=cfg.flow_sigma, num_classes=test.num_classes)
        yield TaskRun(ds, "certify flow-space", _flow_space_conf(cfg, data), finfo["key"], items,
                      _timed(functools.partial(_flow_space_task, gf, fmodel, test.x, test.y, cfg)),
                      tags={"kind": "flow-space"}, batch_size=50)
        model, info = ctx.model(ds, _spec(cfg, ds))
        g = SmoothedClassifier(model, sigma=cfg.sigma, num_classes=test.num_classes)

        def certify(kind: str, extra: dict):
            return TaskRun(ds, f"certify {kind}", {**common, **extra, "data": data}, info["key"], items,
                           _timed(functools.partial(_certify_task, kind, g, model, test.x, test.y, cfg)),
                           tags={"kind": kind}, batch_size=10)

        rotation = certify("rotation", rot_conf)
        yield rotation
        conf = {**common, "max_angle": cfg.max_angle, "max_shift": cfg.max_shift, "deltas": list(cfg.flow_deltas),
                "predict_samples": cfg.predict_samples, "pgd_steps": cfg.pgd_steps, "stadv_tau": cfg.stadv_tau,
                "stadv_steps": cfg.stadv_steps, "data": data}
        yield TaskRun(ds, "empirical", conf, info["key"], items,
                      _timed(functools.partial(_empirical_task, g, model, test.x, test.y, cfg)), tags={"kind": "empirical"},
                      batch_size=10)
        if ds == "mnist":
            yield from _limit_runs(cfg, ctx, ds, test, g, info, rotation, common, rot_conf, data)
        yield certify("translation", {"max_shift": cfg.max_shift})
        yield certify("flow", {"deltas": list(cfg.flow_deltas)})
        yield certify("base-shifts", {"max_shift": cfg.max_shift})


def _limit_runs(cfg: Config, ctx, ds, test, g, info, rotation: TaskRun, common, rot_conf, data):
    """What limits MNIST's rotation figure: more samples per cell on the images the certificate lost; fewer and more epochs."""
    if cfg.limit_samples > 0:
        rescue = _rescue_items(ctx.store.items(rotation.key()), cfg.max_angle)
        rescue.sort(key=int)
        yield TaskRun(ds, "limits samples", {**common, **rot_conf, "limit_samples": cfg.limit_samples, "data": data},
                      info["key"], rescue, _timed(functools.partial(_rescue_task, g, test.x, test.y, cfg)),
                      tags={"kind": "limits-samples"}, batch_size=5)
    sub = [str(i) for i in range(min(cfg.limit_n, len(test), cfg.n))]
    for e in sorted(set(cfg.limit_epochs) - {cfg.epochs}):
        m_e, info_e = ctx.model(f"{ds}/{e} epochs", _spec(cfg, ds, epochs=e))
        g_e = SmoothedClassifier(m_e, sigma=cfg.sigma, num_classes=test.num_classes)
        yield TaskRun(f"{ds}/{e} epochs", "limits epochs", {**common, **rot_conf, "data": data}, info_e["key"], sub,
                      _timed(functools.partial(_epochs_task, g_e, m_e, test.x, test.y, cfg)),
                      tags={"kind": "limits-epochs", "epochs": e}, batch_size=10)
    for s in sorted(set(cfg.flow_sigma_sweep) - {cfg.flow_sigma}):
        cfg_s = dataclasses.replace(cfg, flow_sigma=float(s))
        m_s, info_s = ctx.model(f"{ds}/flow-noise σ_f {s:g}", _spec(cfg_s, ds, flow=True))
        gf_s = FlowSmoothedClassifier(m_s, sigma=float(s), num_classes=test.num_classes)
        yield TaskRun(f"{ds}/flow-noise σ_f {s:g}", "limits flow sigma", _flow_space_conf(cfg_s, data), info_s["key"], sub,
                      _timed(functools.partial(_flow_space_task, gf_s, m_s, test.x, test.y, cfg_s)),
                      tags={"kind": "limits-flow-sigma", "flow_sigma": float(s)}, batch_size=25)


# ------------------------------------------------------------------------------------------------ report
def _acc(values: list[bool]) -> Estimate:
    """The fraction of ``values`` that hold, with its Clopper–Pearson interval (NaN with no values)."""
    return rate([bool(v) for v in values])


def _cert_at(rec: dict, budget: float, max_budget: float) -> bool:
    below = math.inf if rec["certified_below"] is None else rec["certified_below"]
    return rec["prediction"] == rec["label"] and budget < below and budget <= max_budget + 1e-12


def _emp_at(clean_ok: bool, brk, budget: float) -> bool:
    return clean_ok and (brk is None or budget < brk)


def _g_ok(rec: dict) -> bool:
    """True when the clean image does not refute g: PREDICT returned the label or abstained.

    Empirical accuracy of g is an upper bound for the certified one only if an abstention of PREDICT (its binomial
    test at α) counts as "not wrong", at the clean image as at the attacks' points: CERTIFY can certify a class with
    p_c slightly above 1/2 where PREDICT, testing the top two counts, abstains.
    """
    return rec["g_clean"] in (rec["label"], -1)


def _point(budget, **rates: Estimate) -> dict:
    """One curve point: each rate's value under its name, its JSON under ``name + "_estimate"``."""
    out = {"budget": budget}
    for k, e in rates.items():
        out[k] = e.value
        out[f"{k}_estimate"] = e.to_json()
    return out


def _curves(cfg: Config, results, ds: str) -> dict | None:
    runs = {k: results.get(ds, f"certify {k}") for k in ("rotation", "translation", "flow", "base-shifts")}
    emp_run = results.get(ds, "empirical")
    if any(r is None for r in runs.values()) or emp_run is None:
        return None
    rot, tr, fl, bs = (runs[k].items() for k in ("rotation", "translation", "flow", "base-shifts"))
    emp = emp_run.items()
    keys = [k for k in emp if k in rot and k in tr and k in fl and k in bs]
    if not keys:
        return None
    out: dict[str, Any] = {"n": len(keys), "rotation": [], "translation": [], "flow": []}
    for b in cfg.angle_budgets:
        out["rotation"].append(_point(
            b, certified_g=_acc([_cert_at(rot[k], b, cfg.max_angle) for k in keys]),
            empirical_g=_acc([_emp_at(_g_ok(emp[k]), emp[k]["g_rotation_break"], b) for k in keys]),
            empirical_f_stm=_acc([_emp_at(emp[k]["f_clean"] == emp[k]["label"], emp[k]["f_rotation_break"], b) for k in keys])))
    for b in range(cfg.max_shift + 1):
        out["translation"].append(_point(
            b, certified_g=_acc([_cert_at(tr[k], b, cfg.max_shift) for k in keys]),
            exact_f=_acc([_cert_at(bs[k], b, cfg.max_shift) for k in keys]),
            empirical_g=_acc([_emp_at(_g_ok(emp[k]), emp[k]["g_shift_break"], b) for k in keys]),
            empirical_f=_acc([_emp_at(emp[k]["f_clean"] == emp[k]["label"], emp[k]["f_shift_break"], b) for k in keys])))
    for j, d in enumerate(cfg.flow_deltas):
        out["flow"].append({**_point(
            d, certified_g=_acc([fl[k]["certified"][j] and fl[k]["prediction"] == fl[k]["label"] for k in keys]),
            empirical_g=_acc([_g_ok(emp[k]) and not emp[k]["flows"][j]["g_broken"] for k in keys]),
            empirical_f=_acc([emp[k]["f_clean"] == emp[k]["label"] and not emp[k]["flows"][j]["f_pgd"]
                              and not emp[k]["flows"][j]["f_stadv"] for k in keys])),
            "median_bound": float(np.median([fl[k]["bounds"][j] for k in keys]))})
    out["median_radius"] = float(np.median([fl[k]["radius"] for k in keys]))
    out["median_cells"] = float(np.median([rot[k]["cells"] for k in keys]))
    cells = mean([rot[k]["evaluated"] for k in keys])
    out["mean_cells_evaluated"] = cells.value
    out["mean_cells_evaluated_estimate"] = cells.to_json()
    out["clean_abstentions"] = sum(1 for k in keys if emp[k]["g_clean"] == -1)
    out["refined_images"] = sum(1 for k in keys if rot[k]["refined"] > 0)
    out["refined_cells"] = sum(rot[k]["refined"] for k in keys)
    out["violations"] = [f"{t}@{p['budget']}" for t in ("rotation", "translation", "flow") for p in out[t]
                         if p["certified_g"] > p["empirical_g"] + 1e-12]
    return out


def _f_ok(rec: dict) -> bool:
    """True when the flow-space record's base model classified the clean image correctly (where stAdv is an attack)."""
    return rec["f_clean"] == rec["label"]


def _fooled(rec: dict) -> bool:
    """True when stAdv fooled a base model that classified the clean image correctly (its flow is an attack, not a no-op)."""
    return bool(rec["stadv_success"]) and _f_ok(rec)


def _flow_space(cfg: Config, results, ds: str) -> dict | None:
    """The flow-space certificate's curve and stAdv's flows beside it, from the per-image records."""
    run = results.get(ds, "certify flow-space")
    if run is None or not run.items():
        return None
    recs = [r for _, r in sorted(run.items().items(), key=lambda kv: int(kv[0]))]
    hw = results.data(ds, "test", cfg.seed).x.shape
    dim = 2 * hw[2] * hw[3]
    ok = [r["prediction"] == r["label"] for r in recs]
    out: dict[str, Any] = {"n": len(recs), "flow_dim": dim, "points": []}
    for b in cfg.flow_radii:
        out["points"].append(_point(b, certified_g=_acc([o and r["radius"] > b for o, r in zip(ok, recs)])))
    succ = [r for r in recs if _fooled(r)]
    cert = [r for o, r in zip(ok, recs) if o]
    both = [r for o, r in zip(ok, recs) if o and _fooled(r)]
    est = {"stadv_success": rate([r["stadv_success"] for r in recs if _f_ok(r)]),
           "stadv_l2": mean([r["stadv_l2"] for r in succ]) if succ else None,
           "stadv_linf": mean([r["stadv_linf"] for r in succ]) if succ else None,
           "radius": mean([r["radius"] for r in cert]) if cert else None,
           "reach": rate([o and _fooled(r) and r["radius"] > r["stadv_l2"] for o, r in zip(ok, recs)]),
           "g_at_stadv_ok": rate([r["g_at_stadv"] in (r["label"], -1) for r in recs]),
           "composition_agree": rate([r["g_at_stadv"] == r["g_received"] for r in recs])}
    out["estimates"] = {k: (None if v is None else v.to_json()) for k, v in est.items()}
    med = (lambda v: float(np.median(v)) if v else math.nan)
    out["median"] = {"stadv_l2": med([r["stadv_l2"] for r in succ]), "stadv_linf": med([r["stadv_linf"] for r in succ]),
                     "stadv_pixel_max": med([r["stadv_pixel_max"] for r in succ]), "radius": med([r["radius"] for r in cert]),
                     "ratio": med([r["stadv_l2"] / r["radius"] for r in both])}
    out["clean_f"] = _acc([r["f_clean"] == r["label"] for r in recs]).to_json()
    return out


def _flow_space_blocks(cfg: Config, fs: dict, ds: str) -> list:
    e = {k: (None if v is None else _est(v)) for k, v in fs["estimates"].items()}
    med = fs["median"]
    dim = fs["flow_dim"]
    blocks: list = [f"## {ds}: flow-space smoothing (DeformRS-VF)", f"{fs['n']} test images, σ_f = {cfg.flow_sigma} px, "
                    f"n0 = {cfg.n0}, n = {cfg.flow_samples}, α = {cfg.alpha}",
                    "Convention: G_x(ψ) = argmax_c P_φ(f(warp(x, ψ + φ)) = c), φ ~ N(0, σ_f² I) over the "
                    f"{dim} flow components (pixels), f trained on warp(x, φ) (the `flow-noise` objective); warp is our "
                    "bilinear flow_warp with zero padding, output pixel p sampling p + flow(p). A certificate of radius R "
                    "(Cohen et al.'s Thm. 1 in flow space, L2 over all components, pixels) proves, with probability "
                    "≥ 1 − α: for every flow ψ with ‖ψ‖₂ < R, the image the base model receives is warp(x, ψ + φ) "
                    "and G_x(ψ) is the certified class — the defender smooths around the clean x in flow space and is "
                    "given the attack as a flow. It does **not** cover the received image smoothed on its own, "
                    "G_z(0) with z = warp(x, ψ): warp(warp(x, ψ), φ) ≠ warp(x, ψ + φ), and no bound on that "
                    "composition error is claimed (its effect at stAdv's flows is measured below); nor pixel "
                    "perturbations; nor flows with ‖ψ‖₂ ≥ R however small their ‖ψ‖∞ (the L∞ radius implied is "
                    f"R/√{dim} = R/{math.sqrt(dim):.1f})."]
    blocks.append(Table(["flow budget ‖ψ‖₂ ≤ ε (px)", "certified G (%)"],
                        [[f"{p['budget']:g}", _est(p["certified_g_estimate"])] for p in fs["points"]],
                        "Correct and certified with radius R > ε, over all images.", formats=[(0, False), (1, True)]))
    def f(k: str, d: int = 2, pct: bool = False) -> str:
        v = e[k]
        return "–" if v is None else v.format(d, pct=pct)

    z = _max_z(cfg.flow_samples, cfg.alpha)
    cap, need = cfg.flow_sigma * z, med["stadv_l2"] / z
    rows = [["accuracy of G's base model f on the clean images (%)", _est(fs["clean_f"]).format(1, pct=True)],
            ["stAdv (τ = %g, %d iterations) on f: success (%% of the images f classifies correctly)"
             % (cfg.stadv_tau, cfg.stadv_steps),
             f("stadv_success", 1, True)],
            ["stAdv's flow ‖ψ‖₂ (px, successes on correctly classified images): mean; median", f"{f('stadv_l2')}; {med['stadv_l2']:.2f}"],
            ["stAdv's flow ‖ψ‖∞ (px, the same successes): mean; median", f"{f('stadv_linf')}; {med['stadv_linf']:.2f}"],
            ["stAdv's largest per-pixel displacement (px, median)", f"{med['stadv_pixel_max']:.2f}"],
            ["certified radius R (px, L2; correct certified images): mean; median", f"{f('radius', 3)}; {med['radius']:.3f}"],
            [f"L∞ radius implied, median R/√{dim} (px)", f"{med['radius'] / math.sqrt(dim):.4f}"],
            ["median ‖ψ_stAdv‖₂ / R (images certified correct and attacked)", f"{med['ratio']:.1f}"],
            [f"largest R that n = {cfg.flow_samples} samples allow, σ_f Φ⁻¹(α^(1/n)) (px)", f"{cap:.3f}"],
            [f"σ_f at which that cap reaches the median ‖ψ_stAdv‖₂ (px per component, n = {cfg.flow_samples})",
             f"{need:.1f}"],
            ["R > ‖ψ_stAdv‖₂: a successful stAdv flow inside the certified ball (% of all images)",
             f("reach", 1, True)],
            ["G_x(ψ_stAdv) correct or abstains (% of all images)", f("g_at_stadv_ok", 1, True)],
            ["G_x(ψ_stAdv) = G_z(0), z = warp(x, ψ_stAdv): composition agrees (%)",
             f("composition_agree", 1, True)]]
    blocks.append(Table(["stAdv's flows against the certified radius", "value"], rows,
                        "stAdv attacks G's base model f (unclipped flows, pixels); G by PREDICT with "
                        f"{cfg.predict_samples} samples, the same noise draws at ψ and at z. Means with their 95 % "
                        "bootstrap intervals; medians without."))
    return blocks


def _limits(cfg: Config, results) -> list:
    """MNIST's rotation figure taken apart: what each image not certified at ±max_angle lacks, and two levers."""
    rot_run, emp_run = results.get("mnist", "certify rotation"), results.get("mnist", "empirical")
    if rot_run is None or emp_run is None:
        return []
    rot, emp = rot_run.items(), emp_run.items()
    keys = sorted((k for k in rot if k in emp), key=int)
    if not keys:
        return []
    th = cfg.max_angle
    emp_g = _acc([_emp_at(_g_ok(emp[k]), emp[k]["g_rotation_break"], th) for k in keys])
    resc_run = results.get("mnist", "limits samples")
    resc = resc_run.items() if resc_run is not None else {}
    cert = [_cert_at(rot[k], th, th) for k in keys]
    wrong = [not a and rot[k]["prediction"] != rot[k]["label"] for a, k in zip(cert, keys)]
    broken = [not a and not w and not _emp_at(_g_ok(emp[k]), emp[k]["g_rotation_break"], th)
              for a, w, k in zip(cert, wrong, keys)]
    loose = [not (a or w or b) for a, w, b in zip(cert, wrong, broken)]
    rescued = [lo and k in resc and _cert_at(resc[k], th, th) for lo, k in zip(loose, keys)]
    rescued_any = [k in resc and _cert_at(resc[k], th, th) for k in keys]
    tried = sum(1 for k in keys if k in resc)
    n = len(keys)
    rows = [[f"certified (n = {cfg.samples} per cell)", _acc(cert)],
            ["not certified: g's identity cell abstains or is wrong", _acc(wrong)],
            [f"not certified: g broken within ±{th:g}° (PREDICT at the 1° grid and f's adversarial angles)", _acc(broken)],
            ["not certified, not broken: the certificate's share", _acc(loose)],
            [f"… of which certified with n = {cfg.limit_samples} per cell", _acc(rescued)],
            [f"certified with n = {cfg.samples} or, failing that, {cfg.limit_samples} per cell (each at α: ≤ 2α per image)",
             _acc([a or r for a, r in zip(cert, rescued_any)])],
            [f"empirical g at ±{th:g}° (an upper bound of any certificate of g)", emp_g]]
    blocks: list = ["## What limits the MNIST rotation figure",
                    Table([f"the first {n} MNIST test images at ±{th:g}°", "% of all images"], rows,
                          f"TSS (Li et al., ACM CCS 2021) certifies {100 * TSS['rotation30_certified'].value:.1f} % at "
                          f"±30° with a base model trained on 60 000 images. {tried} images (identity cell certified "
                          f"correct, rotation certificate short of ±{th:g}°) were re-certified with "
                          f"{cfg.limit_samples} samples per cell and fresh draws.", formats=[(0, False), (1, True)])]
    if th == 30:
        tss = TSS["rotation30_certified"].value
        if emp_g.high < tss:
            verdict = (f"Every certificate of this g is capped by its empirical robustness at ±30°, "
                       f"{emp_g.format(1, pct=True)} %, whose whole interval lies below TSS's {100 * tss:.1f} %: on these "
                       "images the smoothed classifier itself, not the certificate, keeps the figure below TSS's "
                       "(its base model is the lever: the epochs table below).")
        else:
            verdict = (f"The empirical robustness of g at ±30°, {emp_g.format(1, pct=True)} %, does not rule out TSS's "
                       f"{100 * tss:.1f} %: the gap to it lies at least partly in the certificate (its share above).")
        blocks.append(verdict)
    sub = [str(i) for i in range(min(cfg.limit_n, n))]
    ep_rows = []
    rows_by_e: dict[int, list] = {}
    if all(k in rot and k in emp for k in sub):
        rows_by_e[cfg.epochs] = [cfg.epochs, results.models.get("mnist", {}).get("test_accuracy"),
                                 _acc([_emp_at(emp[k]["f_clean"] == emp[k]["label"], emp[k]["f_rotation_break"], th) for k in sub]),
                                 _acc([_cert_at(rot[k], th, th) for k in sub])]
    for run in results.find(attack="limits epochs"):
        it = run.items()
        if not all(k in it for k in sub):
            continue
        e = int(run.tags["epochs"])
        rows_by_e[e] = [e, results.models.get(f"mnist/{e} epochs", {}).get("test_accuracy"),
                        _acc([_emp_at(it[k]["f_clean"] == it[k]["label"], it[k]["f_rotation_break"], th) for k in sub]),
                        _acc([_cert_at(it[k], th, th) for k in sub])]
    for e in sorted(rows_by_e):
        r = rows_by_e[e]
        ep_rows.append([f"{e}", "–" if r[1] is None else f"{100 * r[1]:.1f}", r[2], r[3]])
    if len(ep_rows) > 1:
        blocks.append(Table(["training epochs (MNIST-5k)", "clean accuracy of f, test split (%)",
                             f"f robust to ±{th:g}° (STM 0.1°, %)", f"certified g at ±{th:g}° (%)"], ep_rows,
                            f"The base model trained for other numbers of epochs, everything else equal; the first "
                            f"{len(sub)} test images.", formats=[(0, False), (0, False), (1, True), (1, True)]))
        more = [e for e in rows_by_e if e > cfg.epochs]
        if cfg.epochs in rows_by_e and more:
            base, longest = rows_by_e[cfg.epochs][3], rows_by_e[max(more)][3]
            order = longest.order(base)
            blocks.append(f"Training {max(more)} epochs instead of {cfg.epochs}: certified "
                          f"{longest.format(1, pct=True)} % against {base.format(1, pct=True)} % on these images, "
                          + ("higher (the intervals are disjoint): more epochs are a lever left."
                             if order == "higher" else "not higher (" + ("the intervals overlap" if order.startswith("tie")
                                                                           else "lower") +
                             f"): the base model's epochs have plateaued at {cfg.epochs}."))
    return blocks


def _flow_sigma_limits(cfg: Config, results) -> list:
    """MNIST flow-space certificates at larger σ_f: how far the certified radius moves toward stAdv's flows, and at what cost."""
    main = results.get("mnist", "certify flow-space")
    sweep = results.find(attack="limits flow sigma")
    if main is None or not sweep:
        return []
    sub = [str(i) for i in range(min(cfg.limit_n, cfg.n, len(results.data("mnist", "test", cfg.seed))))]
    runs = [(cfg.flow_sigma, "mnist/flow-noise", main)] + sorted(
        ((float(r.tags["flow_sigma"]), r.model, r) for r in sweep), key=lambda t: t[0])
    rows, reach_by, ratios, accs = [], {}, [], []
    for s, label, run in runs:
        it = run.items()
        if not all(k in it for k in sub):
            continue  # not finished: no row rather than a row over other images
        recs = [it[k] for k in sub]
        ok = [r["prediction"] == r["label"] for r in recs]
        cert_r = [r["radius"] for o, r in zip(ok, recs) if o]
        succ = [r["stadv_l2"] for r in recs if _fooled(r)]
        reach = _acc([o and _fooled(r) and r["radius"] > r["stadv_l2"] for o, r in zip(ok, recs)])
        reach_by[s] = reach
        acc = results.models.get(label, {}).get("test_accuracy")
        med = (lambda v: f"{float(np.median(v)):.2f}" if v else "–")
        if succ and cert_r:
            ratios.append(float(np.median(succ)) / max(float(np.median(cert_r)), 1e-12))
        if acc is not None:
            accs.append((s, 100 * acc))
        rows.append([f"{s:g}", "–" if acc is None else f"{100 * acc:.1f}", _acc(ok), med(cert_r),
                     f"{s * _max_z(cfg.flow_samples, cfg.alpha):.2f}", _acc([r["stadv_success"] for r in recs if _f_ok(r)]), med(succ),
                     reach])
    if len(rows) < 2:
        return []
    best = max(reach_by, key=lambda k: reach_by[k].value)
    return ["## What limits the flow-space certificate",
            Table(["σ_f (px)", "clean accuracy of f, test split (%)", "G correct, certified (R > 0) (%)",
                   "median R (px, L2)", f"largest R at n = {cfg.flow_samples} (px)", "stAdv success on f (%)",
                   "median ‖ψ_stAdv‖₂ (px)", "a successful stAdv flow inside the certified ball (%)"], rows,
                  f"The first {len(sub)} MNIST test images; a flow-noise base model per σ_f (the same recipe, "
                  f"{cfg.flow_epochs} epochs), the same certificate (n0 = {cfg.n0}, n = {cfg.flow_samples}, α = "
                  f"{cfg.alpha}) and stAdv (τ = {cfg.stadv_tau}, {cfg.stadv_steps} iterations) on each base model; stAdv's "
                  "success and flows count the images that base model classifies correctly (elsewhere its flow is "
                  "no attack). "
                  "The radius cap grows linearly with σ_f"
                  + (f"; the median successful stAdv flow stays {min(ratios):.0f}× to {max(ratios):.0f}× the median "
                     "certified radius at every σ_f" if ratios else "")
                  + (f"; the base model's clean accuracy goes from {accs[0][1]:.1f} % (σ_f = {accs[0][0]:g}) to "
                     f"{accs[-1][1]:.1f} % (σ_f = {accs[-1][0]:g})" if len(accs) > 1 else "")
                  + f". The share of images with a successful stAdv flow inside the certified ball is highest at σ_f = "
                  f"{best:g}: {reach_by[best].format(1, pct=True)} %.",
                  formats=[(0, False), (0, False), (1, True), (0, False), (0, False), (1, True), (0, False), (1, True)])]


def _costs(cfg: Config, results) -> list:
    """Wall time of each part, from the seconds stored with every record, and of each model's training."""
    rows = []
    for run in results.runs:
        it = run.items()
        secs = [v["seconds"] for v in it.values() if isinstance(v, dict) and "seconds" in v]
        if secs:
            rows.append([run.model, run.attack, len(secs), f"{sum(secs):.0f}", f"{sum(secs) / len(secs):.2f}"])
    for label, m in results.models.items():
        if m.get("train_seconds") is not None and not m.get("cached"):
            rows.append([label, "training", "–", f"{m['train_seconds']:.0f}", "–"])
    if not rows:
        return []
    return ["## Cost of each part",
            Table(["model", "part", "images", "seconds", "seconds per image"], rows,
                  f"Wall time of this run's computations ({cfg.threads} torch threads; cores shared with any other job "
                  "running on the machine); models loaded from the cache show no training row.")]


#: The curves of each threat: (key, label, matplotlib style).
CURVES = (("certified_g", "certified (g)", "o-"), ("empirical_g", "empirical (g, PREDICT)", "s--"),
          ("empirical_f_stm", "empirical (f, STM 0.1°)", "^:"), ("empirical_f", "empirical (f)", "^:"),
          ("exact_f", "exact (f, all integer shifts)", "d-."))
THREATS = (("rotation", "rotation budget Θ (°)"), ("translation", "integer shift budget t (px)"),
           ("flow", "flow budget δ (px, ‖r‖∞)"))


def _figure(curves: dict, out_dir) -> str:
    """Certified and empirical accuracy (%) per dataset and threat, with their 95 % intervals."""
    panels = []
    for ds, c in curves.items():
        for kind, xlabel in THREATS:
            pts = c[kind]
            lines = []
            for key, label, style in CURVES:
                if key in pts[0]:
                    ci = [p[f"{key}_estimate"]["ci95"] for p in pts]
                    pct = (lambda v: math.nan if v is None else 100 * v)
                    lines.append(Curve([p["budget"] for p in pts], [100 * p[key] for p in pts], label, style,
                                       [pct(lo) for lo, _ in ci], [pct(hi) for _, hi in ci]))
            panels.append(Panel(f"{ds}: {kind}", xlabel, "accuracy (%)", lines, ylim=(0, 101)))
    name = "certify_smoothing_curves.png"
    curve_panels(panels, out_dir / name, columns=3)
    return name


def _est(j: dict) -> Estimate:
    return Estimate.from_json(j)


def _rotation_table(c: dict, ds: str, max_angle: float) -> Comparison:
    """Certified and empirical accuracy per rotation budget, beside TSS's values.

    On MNIST certified up to ±30° (TSS's setting): TSS's certified accuracy at 30°, its clean accuracy at 0°.
    """
    comp = Comparison(["rotation budget Θ"], [Metric(n, pct=True, digits=1) for n in
                                               ("certified g (%)", "empirical g (%)", "empirical f, STM 0.1° (%)")],
                      "Accuracy (%) over all images: correct and certified / not broken for every angle in [−Θ, Θ]."
                      + (" TSS's base model is trained on all 60 000 MNIST training images; its clean accuracy is that "
                         "of its smoothed model, beside our empirical g at 0°." if ds == "mnist" and max_angle == 30 else ""))
    for p in c["rotation"]:
        tss = ds == "mnist" and max_angle == 30
        comp.add([f"{p['budget']:g}°"],
                 Cell(_est(p["certified_g_estimate"]), TSS["rotation30_certified"] if tss and p["budget"] == 30 else None),
                 Cell(_est(p["empirical_g_estimate"]), TSS["clean"] if tss and p["budget"] == 0 else None),
                 _est(p["empirical_f_stm_estimate"]))
    return comp


def report(cfg: Config, results) -> Report:
    """Certified vs empirical accuracy curves per dataset and threat, from the per-example records."""
    curves = {ds: c for ds in cfg.datasets if (c := _curves(cfg, results, ds)) is not None}
    blocks: list = [
        "Certified accuracy of the Gaussian-smoothed classifier g (Cohen et al. 2019) against rotations, integer "
        "translations and flows, stated for the image the model receives (bilinear warp, zero padding; the "
        "interpolation error is bounded exactly per pixel and folded into Cohen's L2 radius, with a Bonferroni union "
        "over the grid cells: the construction of TSS, Li et al. 2021, for the interpolation error, without smoothing "
        "over the angle). Beside it: empirical robust accuracy on the same images — of g (PREDICT at a 1° angle grid "
        "plus f's adversarial angles, at every integer shift, at the flow attacks' images; abstentions are not counted "
        "as errors, at the clean image too) and of the base classifier f (STM on a 0.1° grid, all integer shifts, projected sign-gradient flow "
        "attack and stAdv clipped to the budget). Certified ≤ empirical(g) must hold on every point. Then flow-space "
        "smoothing (DeformRS, Alfarra et al. 2022: the noise is a flow, the radius an L2 norm of flows) beside "
        "stAdv's flows, what limits the MNIST rotation figure (measured), and each part's cost."]
    pct = [(0, False)] + [(1, True)] * 4
    for ds, c in curves.items():
        acc = results.models.get(ds, {}).get("test_accuracy")
        n_test = len(results.data(ds, "test", cfg.seed))
        acc = "–" if acc is None else rate(int(round(acc * n_test)), n_test).format(3)
        blocks.append(f"## {ds}")
        blocks.append(f"{c['n']} test images; base classifier {cfg.architecture} (clean accuracy of f on the {n_test} "
                      f"test images: {acc}); σ = {cfg.sigma}, n0 = {cfg.n0}, n = {cfg.samples} per cell, "
                      f"α = {cfg.alpha}; median rotation cells K = {c['median_cells']:.0f} (mean evaluated "
                      f"{_est(c['mean_cells_evaluated_estimate']).format(0)}; {c['refined_cells']} failed cells of "
                      f"{c['refined_images']} images refined); median flow-certificate radius {c['median_radius']:.3f}; "
                      f"PREDICT ({cfg.predict_samples} samples) abstained on {c['clean_abstentions']} clean images, counted "
                      "as not wrong in 'empirical g'. Brackets: 95 % intervals.")
        blocks.append(_rotation_table(c, ds, cfg.max_angle))
        rows = [[f"{p['budget']}", *[_est(p[f"{k}_estimate"]) for k in ("certified_g", "exact_f", "empirical_g",
                                                                          "empirical_f")]] for p in c["translation"]]
        blocks.append(Table(["integer shifts ≤ t px", "certified g (%)", "exact f (%)", "empirical g (%)", "empirical f (%)"],
                            rows, "Integer shifts only (|tx|, |ty| ≤ t); 'exact f' enumerates all of them on the base "
                            "classifier (a proof, no probability), so it equals 'empirical f'.", formats=pct))
        rows = [[f"{p['budget']:g}", *[_est(p[f"{k}_estimate"]) for k in ("certified_g", "empirical_g", "empirical_f")],
                 f"{p['median_bound']:.3f}"] for p in c["flow"]]
        blocks.append(Table(["flow budget δ (px)", "certified g (%)", "empirical g (%)", "empirical f (%)",
                             "median bound ‖warp(x,r) − x‖₂"], rows,
                            "Flows with every component |r| ≤ δ px; certified iff Cohen's radius > the exact per-image "
                            "bound (median: no interval).", formats=pct[:4] + [(0, False)]))
        if c["violations"]:
            blocks.append(f"**Certified above empirical** at {', '.join(c['violations'])} — a soundness problem or a "
                          "PREDICT error of probability ≤ α; investigate.")
        else:
            blocks.append("Certified ≤ empirical(g) on every curve point.")
    split = 2 if cfg.refine >= 2 else 1
    conf = "α/(2K)" if split == 2 else "α/K"
    refinement = (f" A rotation cell whose radius does not exceed its bound is split once into {cfg.refine} sub-cells "
                  f"(bounds about {cfg.refine}× smaller), each certified with {cfg.refine_samples} fresh samples; the confidence is split in "
                  f"advance, α/(2K) per cell and α/(2K·{cfg.refine}) per possible sub-cell." if split == 2 else
                  " Failed cells are not refined.")
    blocks.append(
        f"Radius resolution: with n = {cfg.samples} estimation samples and {conf} per cell, "
        f"the largest certifiable radius is σ Φ⁻¹(({conf})^(1/n)) ≈ "
        f"{cfg.sigma * _max_z(cfg.samples, cfg.alpha / (split * 200)):.2f} at K = 200 cells "
        f"({cfg.sigma * _max_z(cfg.samples, cfg.alpha):.2f} for one flow certificate); the grid is refined per image "
        f"until the interpolation bound is ≤ {cfg.bound_fraction} of it." + refinement)
    flow_space = {ds: fs for ds in cfg.datasets if (fs := _flow_space(cfg, results, ds)) is not None}
    for ds, fs in flow_space.items():
        blocks.extend(_flow_space_blocks(cfg, fs, ds))
    if "mnist" in cfg.datasets:
        blocks.extend(_flow_sigma_limits(cfg, results))
        blocks.extend(_limits(cfg, results))
    blocks.extend(_costs(cfg, results))
    figures = [_figure(curves, results.out)] if curves else []
    return Report("Randomized-smoothing certificates for rotations, translations and flows", blocks,
                  {"paper": PAPER, "curves": curves, "flow_space": flow_space}, figures)


def _max_z(n: int, alpha: float) -> float:
    return float(norm.ppf(alpha ** (1.0 / n)))


EXPERIMENTS = [
    Experiment("certify-smoothing", "randomized-smoothing certificates against rotations, translations and flows "
               "(Cohen et al. 2019; TSS, Li et al. 2021) beside STM / stAdv / projected-flow attacks", Config(), plan, report,
               papers=("cohen-smoothing", "tss", "deformrs", "engstrom", "stadv")),
]
