"""``spatialadv reproduce attention-maps``: Grad-CAM attention on benign and adversarial images.

Xiao et al., *Spatially Transformed Adversarial Examples*, ICLR 2018, §4.5 and
Figs. 8-9 (CAM on ImageNet inception_v3, naturally and adversarially
trained), on MNIST-5k and Fashion-MNIST: a plain and an FGSM-adversarially-trained
model A (Tramèr et al.), Grad-CAM (Selvaraju et al. 2017; CAM generalised to
networks without global average pooling) at the last convolution. FGSM, C&W
and stAdv examples are crafted on the plain model (targeted, random targets)
and shown on both models, as in Fig. 9; Fig. 8's analogue shows stAdv
examples of one image towards three targets. Besides the figures, the report
measures how far each attack moves the attention: the mean Pearson
correlation between the Grad-CAM map of the benign image and of its
adversarial example (each for its predicted class), per attack and model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..attacks import StAdv
from ..attention import grad_cam
from ..data import DataSpec
from ..training import ModelSpec, Objective, TrainConfig
from ..viz import image_map_figure
from .framework import Experiment, Report, Table, TaskRun, fmt, option, random_targets
from .lan_detection import lan_attacks

__all__ = ["Config", "plan", "report", "EXPERIMENTS", "map_attacks"]

NAMES = {"mnist": "MNIST-5k", "fashion-mnist": "Fashion-MNIST"}
ATTACK_NAMES = ("FGSM", "C&W", "stAdv")


def map_attacks(data: str, *, cw_steps: int = 100) -> dict:
    """FGSM (ε = 0.3 MNIST / 0.1 Fashion-MNIST), C&W L2 (3 × ``cw_steps``) and stAdv (defaults), by label."""
    return {k: a for k, a in lan_attacks(data, cw_steps=cw_steps, cw_search=3).items() if k != "JSMA"}


@dataclass(frozen=True)
class Config:
    """Settings of ``spatialadv reproduce attention-maps``."""

    datasets: tuple[str, ...] = option(("mnist", "fashion-mnist"), "datasets", choices=("mnist", "fashion-mnist"))
    n: int = option(50, "test images attacked per dataset for the attention-shift table", minimum=1)
    figure_images: int = option(3, "images per Fig. 9 analogue", minimum=1)
    seed: int = option(0, "seed of the data split, training and targets", minimum=0)
    epochs: int = option(6, "training epochs (plain and FGSM-AT) when not cached", minimum=1)
    max_train: int = option(4000, "train on at most this many training images (MNIST-5k has 4000)", minimum=100)
    cw_steps: int = option(100, "C&W Adam steps per binary-search step", minimum=1)
    threads: int = option(2, "torch intra-op threads", minimum=1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def _shift(plain, robust, attack, x, y, t, items: list[str]) -> dict:
    idx = torch.tensor([int(i) for i in items])
    xb, yb, tb = x[idx], y[idx], t[idx]
    res = attack(plain, xb, yb, target=tb)
    out = {i: {"success": bool(res.success[j]), "y": int(yb[j]), "target": int(tb[j])} for j, i in enumerate(items)}
    for name, net in (("plain", plain), ("robust", robust)):
        with torch.no_grad():
            p0, p1 = net(xb).argmax(1), net(res.x_adv).argmax(1)
        corr = _corr(grad_cam(net, xb), grad_cam(net, res.x_adv))
        for j, i in enumerate(items):
            out[i].update({f"{name}_pred": int(p0[j]), f"{name}_pred_adv": int(p1[j]), f"{name}_corr": float(corr[j])})
    return out


def plan(cfg: Config, ctx):
    """Per dataset: plain and FGSM-AT model A, per-example attention shifts, and the Figs. 8-9 analogues."""
    for data in cfg.datasets:
        train_full = ctx.data(data, "train", cfg.seed)
        test = ctx.data(data, "test", cfg.seed)
        max_train = min(cfg.max_train, len(train_full))
        dspec = DataSpec(data, seed=cfg.seed, max_train=None if max_train >= len(train_full) else max_train)
        tc = TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
        eps = 0.3 if data == "mnist" else 0.1
        plain, info_p = ctx.model(f"{data}/plain", ModelSpec("mnist-a", dspec, tc))
        robust, info_r = ctx.model(f"{data}/fgsm-at", ModelSpec("mnist-a", dspec, tc, Objective("fgsm-at", eps=eps)))
        idx = ctx.first_correct(plain, test.x, test.y, cfg.n)
        items = [str(int(i)) for i in idx]
        t = random_targets(test.y, cfg.seed + 777, test.num_classes)
        attacks = map_attacks(data, cw_steps=cfg.cw_steps)
        for label, attack in attacks.items():
            conf = {"attack": repr(attack), "robust": info_r["key"], "targets": cfg.seed + 777, "cam": "grad-cam"}
            yield TaskRun(f"{data}", label, conf, info_p["key"], items,
                          functools.partial(_shift, plain, robust, attack, test.x, test.y, t),
                          tags={"data": data, "attack": label}, batch_size=len(items))
        _figures(ctx, data, plain, robust, test, idx[: cfg.figure_images], t, attacks)


def _figures(ctx, data, plain, robust, test, idx, t, attacks) -> None:
    name = NAMES[data]
    x, y, tt = test.x[idx], test.y[idx], t[idx]
    advs = {label: a(plain, x, y, target=tt).x_adv for label, a in attacks.items()}
    for j in range(len(idx)):
        imgs = [x[j]] + [advs[k][j] for k in ATTACK_NAMES]
        batch = torch.stack(imgs)
        with torch.no_grad():
            pp, pr = plain(batch).argmax(1), robust(batch).argmax(1)
        maps_p, maps_r = grad_cam(plain, batch), grad_cam(robust, batch)
        titles = [f"{lab} plain→{int(pp[i])} AT→{int(pr[i])}" for i, lab in enumerate(("benign",) + ATTACK_NAMES)]
        image_map_figure([im.numpy() for im in imgs], [[maps_p[i].numpy(), maps_r[i].numpy()] for i in range(len(imgs))],
                         titles, ctx.out / f"attention_fig9_{data}_{j}.png", map_titles=["plain", "FGSM-AT"],
                         suptitle=f"{name}: Grad-CAM of the plain (row 2) and the FGSM-trained model (row 3), "
                                  f"y={int(y[j])}, target={int(tt[j])} (stAdv Fig. 9)")
    x0, y0 = x[:1], y[:1]
    targets = [int(c) for c in range(test.num_classes) if c != int(y0)][:3]
    imgs = [x0[0]] + [StAdv()(plain, x0, y0, target=torch.tensor([c])).x_adv[0] for c in targets]
    batch = torch.stack(imgs)
    with torch.no_grad():
        pp = plain(batch).argmax(1)
    maps = grad_cam(plain, batch)
    image_map_figure([im.numpy() for im in imgs], [m.numpy() for m in maps],
                     [f"original →{int(pp[0])}"] + [f"stAdv t={c} →{int(pp[i + 1])}" for i, c in enumerate(targets)],
                     ctx.out / f"attention_fig8_{data}.png",
                     suptitle=f"{name}: Grad-CAM of stAdv examples towards three targets (stAdv Fig. 8)")


def report(cfg: Config, results) -> Report:
    """The attention-shift table per dataset and the figures."""
    blocks, out, figures = [], {"datasets": {}}, []
    blocks.append(
        "stAdv §4.5 shows CAM maps of inception_v3 on ImageNet; here Grad-CAM (Selvaraju et al. 2017, equal to CAM up "
        "to a constant on GAP networks; computed with captum's LayerGradCam) at the last convolution of Tramèr et al.'s "
        "model A, plain and FGSM-adversarially trained, on MNIST-5k and Fashion-MNIST (ImageNet is not available "
        "offline). Adversarial examples are crafted on the plain model, targeted (random targets), and shown on both "
        "models (the paper's Fig. 9 protocol). Each map explains the model's predicted class. 'corr' = mean Pearson "
        "correlation between the benign image's map and its adversarial example's map over the successful examples "
        "(1 = attention unchanged).")
    for data in cfg.datasets:
        rows, d = [], {}
        for label in ATTACK_NAMES:
            run = results.get(data, label)
            if run is None:
                continue
            recs = list(run.items().values())
            succ = [r for r in recs if r["success"]]

            def mean(v):
                return float(np.mean(v)) if v else float("nan")

            d[label] = {"n": len(recs), "success": len(succ) / max(len(recs), 1),
                        "plain_corr": mean([r["plain_corr"] for r in succ]),
                        "robust_corr": mean([r["robust_corr"] for r in succ]),
                        "robust_fooled_to_target": mean([r["robust_pred_adv"] == r["target"] for r in succ]),
                        "robust_correct": mean([r["robust_pred_adv"] == r["y"] for r in succ])}
            v = d[label]
            rows.append([label, f"{fmt(v['success'], 1, pct=True)} %", fmt(v["plain_corr"], 3), fmt(v["robust_corr"], 3),
                         f"{fmt(v['robust_fooled_to_target'], 1, pct=True)} %", f"{fmt(v['robust_correct'], 1, pct=True)} %"])
        models = results.models if hasattr(results, "models") else {}
        acc_p = models.get(f"{data}/plain", {}).get("test_accuracy")
        acc_r = models.get(f"{data}/fgsm-at", {}).get("test_accuracy")
        blocks.append(f"# {NAMES[data]}")
        blocks.append(f"Clean test accuracy: plain {fmt(acc_p, 4)}, FGSM-AT {fmt(acc_r, 4)}.")
        blocks.append(Table(["attack (on plain)", "success (plain)", "corr plain", "corr FGSM-AT",
                             "FGSM-AT → target", "FGSM-AT correct"], rows,
                            f"{NAMES[data]}: attention shift of successful targeted examples crafted on the plain model; "
                            "the last two columns evaluate the same examples on the FGSM-trained model (transfer)."))
        out["datasets"][data] = d
        for f in sorted(results.out.glob(f"attention_fig*_{data}*.png")):
            figures.append(f.name)
    blocks.append(
        "Deviations: MNIST-5k / Fashion-MNIST and model A instead of ImageNet inception_v3; Grad-CAM instead of CAM "
        "(model A has no global-average-pooling head; the two coincide up to a constant on such heads); the robust "
        "model is FGSM-adversarially trained by us (ε = 0.3 MNIST, 0.1 Fashion-MNIST), not the public ensemble-"
        "adversarially trained inception_v3; the attention-shift table is ours (the paper shows figures only).")
    return Report("Attention of plain and adversarially trained networks on adversarial examples (stAdv §4.5, Figs. 8-9)",
                  blocks, out, figures)


EXPERIMENTS = [
    Experiment("attention-maps", "Grad-CAM attention on benign, FGSM, C&W and stAdv images, plain vs FGSM-trained "
               "model (Xiao et al., stAdv, ICLR 2018, §4.5, Figs. 8-9) on MNIST-5k and Fashion-MNIST", Config(), plan,
               report, papers=("stadv", "cam", "grad-cam", "captum", "fgsm", "cw", "ensemble")),
]
