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
adversarial example (each for its predicted class), per attack and model,
with 95 % intervals (bootstrap for means, Clopper–Pearson for rates).

The attacks are attack runs (their records hold every ``x_adv``); the
attention shifts and the Grad-CAM maps the figures show (image, both maps,
both classes) are stored as items of tasks reading those records, so the
report draws every figure from the store alone (``spatialadv report DIR``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..attention import grad_cam
from ..data import DataSpec
from ..eval.compare import Cell, Comparison, Estimate, Metric, PaperValue, mean, rate
from ..eval.store import array_from_text, array_to_text
from ..training import ModelSpec, Objective, TrainConfig
from ..viz import image_map_figure
from .framework import MAX_THREADS, AttackRun, Experiment, Report, TaskRun, option, random_targets
from .lan_detection import lan_attacks

__all__ = ["Config", "plan", "report", "EXPERIMENTS", "map_attacks"]

NAMES = {"mnist": "MNIST-5k", "fashion-mnist": "Fashion-MNIST"}
ATTACK_NAMES = ("FGSM", "C&W", "stAdv")
#: Label of the Fig. 8 run: stAdv on the first figure image towards three targets.
FIG8 = "stAdv (Fig. 8)"


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
    max_train: int = option(4000, "train on at most this many training images (MNIST-5k has 4000)", minimum=100,
                             maximum=60000)
    cw_steps: int = option(100, "C&W Adam steps per binary-search step", minimum=1)
    threads: int = option(2, "torch intra-op threads", minimum=1, maximum=MAX_THREADS)


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.flatten(1), b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def _stored_adv(store, key: str, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, list[dict]]:
    """The stored ``x_adv`` ``(M, C, H, W)`` and records of the attack run ``key`` for ``pairs``, in their order."""
    recs = {(r["idx"], r["target"]): r for r in store.records(key, arrays=True)}
    rows = [recs[p] for p in pairs]
    return torch.from_numpy(np.stack([r["x_adv"] for r in rows])), rows


def _shift(store, key: str, plain, robust, x, y, t, items: list[str]) -> dict:
    """Attention shift of the adversarial examples stored by the attack run ``key`` (crafted on ``plain``).

    Per item: the attack's success, both models' classes on the benign and the adversarial image, and the
    Pearson correlation of their Grad-CAM maps (each for the model's predicted class). No attack is re-run.
    """
    idx = torch.tensor([int(i) for i in items])
    xb, yb, tb = x[idx], y[idx], t[idx]
    x_adv, rows = _stored_adv(store, key, [(int(i), int(t[int(i)])) for i in items])
    out = {i: {"success": bool(r["success"]), "y": int(yb[j]), "target": int(tb[j])}
           for j, (i, r) in enumerate(zip(items, rows))}
    for name, net in (("plain", plain), ("robust", robust)):
        with torch.no_grad():
            p0, p1 = net(xb).argmax(1), net(x_adv).argmax(1)
        corr = _corr(grad_cam(net, xb), grad_cam(net, x_adv))
        for j, i in enumerate(items):
            upd: dict[str, Any] = {f"{name}_pred": int(p0[j]), f"{name}_pred_adv": int(p1[j]), f"{name}_corr": float(corr[j])}
            out[i].update(upd)
    return out


def _map_items(store, plain, robust, x, y, runs: dict[str, str], items: list[str]) -> dict:
    """What Figs. 8-9 show, per item: the image, both models' Grad-CAM maps ``(H, W)`` in [0, 1] and classes.

    Items: ``"benign/<idx>"`` (a test image) or ``"<attack>/<idx>/<target>"``: the adversarial example stored by
    the attack run ``runs[attack]`` for that pair (no attack is re-run).
    """
    imgs, extra = [], []
    for item in items:
        src, rest = item.split("/", 1)
        if src == "benign":
            imgs.append(x[int(rest)])
            extra.append({"y": int(y[int(rest)])})
        else:
            i, tgt = (int(v) for v in rest.split("/"))
            x_adv, rows = _stored_adv(store, runs[src], [(i, tgt)])
            imgs.append(x_adv[0])
            extra.append({"y": int(y[i]), "success": bool(rows[0]["success"]), "target": tgt})
    xs = torch.stack(imgs)
    out = {item: {"x": array_to_text(xs[j].numpy().astype(np.float32)), **extra[j]} for j, item in enumerate(items)}
    for name, net in (("plain", plain), ("robust", robust)):
        with torch.no_grad():
            pred = net(xs).argmax(1)
        maps = grad_cam(net, xs)
        for j, item in enumerate(items):
            out[item].update({f"{name}_pred": int(pred[j]), f"{name}_map": array_to_text(maps[j].numpy().astype(np.float32))})
    return out


def plan(cfg: Config, ctx):
    """Per dataset: plain and FGSM-AT model A, the attacks, per-example attention shifts, and the figures' maps.

    The attacks are attack runs (their records hold ``x_adv``); the attention shifts and the Grad-CAM maps the
    figures show are tasks reading those records, so no attack runs twice and the report draws every figure
    from the store.
    """
    for data in cfg.datasets:
        train_full = ctx.data(data, "train", cfg.seed)
        test = ctx.data(data, "test", cfg.seed)
        max_train = min(cfg.max_train, len(train_full))
        dspec = DataSpec(data, seed=cfg.seed, max_train=None if max_train >= len(train_full) else max_train)
        tc = TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
        eps = 0.3 if data == "mnist" else 0.1
        plain, info_p = ctx.model(f"{data}/plain", ModelSpec("mnist-a", dspec, tc))
        robust, info_r = ctx.model(f"{data}/fgsm-at", ModelSpec("mnist-a", dspec, tc, Objective("fgsm-at", eps=eps)))
        with torch.no_grad():
            correct = {name: int(sum(int((net(test.x[k:k + 500]).argmax(1) == test.y[k:k + 500]).sum())
                                     for k in range(0, len(test), 500))) for name, net in (("plain", plain),
                                                                                         ("fgsm-at", robust))}
        ctx.meta(f"{data}/accuracy", {"n": len(test), **correct})
        idx = [int(i) for i in ctx.first_correct(plain, test.x, test.y, cfg.n)]
        items = [str(i) for i in idx]
        t = random_targets(test.y, cfg.seed + 777, test.num_classes)
        data_key = f"{data}-test-seed{cfg.seed}"
        attacks = map_attacks(data, cw_steps=cfg.cw_steps)
        keys: dict[str, str] = {}
        for label, attack in attacks.items():
            run = AttackRun(data, label, plain, attack, info_p["key"], test.x, test.y, data_key,
                            [(i, int(t[i])) for i in idx], "random", tags={"data": data, "attack": label, "role": "attack"})
            yield run
            keys[label] = run.key()
            conf = {"attack_run": run.key(), "robust": info_r["key"], "cam": "grad-cam"}
            yield TaskRun(data, f"grad-cam {label}", conf, info_p["key"], items,
                          functools.partial(_shift, ctx.store, run.key(), plain, robust, test.x, test.y, t),
                          tags={"data": data, "attack": label, "role": "shift"}, batch_size=max(len(items), 1))
        fig = idx[: cfg.figure_images]
        map_items = [m for i in fig for m in [f"benign/{i}"] + [f"{label}/{i}/{int(t[i])}" for label in attacks]]
        if fig:  # Fig. 8: stAdv on the first image towards three targets
            i0 = fig[0]
            targets = [c for c in range(test.num_classes) if c != int(test.y[i0])][:3]
            run = AttackRun(data, FIG8, plain, attacks["stAdv"], info_p["key"], test.x, test.y, data_key,
                            [(i0, c) for c in targets], "fig8", tags={"data": data, "attack": FIG8, "role": "attack"})
            yield run
            keys[FIG8] = run.key()
            map_items += [f"{FIG8}/{i0}/{c}" for c in targets]
        conf = {"attack_runs": keys, "robust": info_r["key"], "cam": "grad-cam", "data": data_key}
        yield TaskRun(data, "grad-cam maps", conf, info_p["key"], map_items,
                      functools.partial(_map_items, ctx.store, plain, robust, test.x, test.y, keys),
                      tags={"data": data, "role": "figures"}, batch_size=max(len(map_items), 1))


def _figures(results, data: str) -> list[str]:
    """The Figs. 8-9 analogues from the stored maps, drawn by :func:`spatialadv.viz.image_map_figure`."""
    run = results.get(data, "grad-cam maps")
    if run is None:
        return []
    got, name, written = run.items(), NAMES[data], []
    benign = [k for k in got if k.startswith("benign/")]
    for j, b in enumerate(benign):
        i = b.split("/")[1]
        cols = [b] + [k for k in got if k.split("/")[0] in ATTACK_NAMES and k.split("/")[1] == i]
        if len(cols) == 1:
            continue
        titles = [f"{'benign' if k == b else k.split('/')[0]} plain→{got[k]['plain_pred']} AT→{got[k]['robust_pred']}"
                  for k in cols]
        fname = f"attention_fig9_{data}_{j}.png"
        image_map_figure([array_from_text(got[k]["x"]) for k in cols],
                         [[array_from_text(got[k]["plain_map"]), array_from_text(got[k]["robust_map"])] for k in cols],
                         titles, results.out / fname, map_titles=["plain", "FGSM-AT"],
                         suptitle=f"{name}: Grad-CAM of the plain (row 2) and the FGSM-trained model (row 3), "
                                  f"y={got[b]['y']}, target={got[cols[1]]['target']} (stAdv Fig. 9)")
        written.append(fname)
    fig8 = [k for k in got if k.startswith(FIG8 + "/")]
    if benign and fig8:
        cols = [benign[0]] + fig8
        titles = [f"original →{got[benign[0]]['plain_pred']}"] + [
            f"stAdv t={got[k]['target']} →{got[k]['plain_pred']}" for k in fig8]
        fname = f"attention_fig8_{data}.png"
        image_map_figure([array_from_text(got[k]["x"]) for k in cols], [array_from_text(got[k]["plain_map"]) for k in cols],
                         titles, results.out / fname,
                         suptitle=f"{name}: Grad-CAM of stAdv examples towards three targets (stAdv Fig. 8)")
        written.append(fname)
    return written


#: stAdv Fig. 9 (f)-(h): the ensemble-adversarially trained inception_v3 on one ImageNet image ("cinema", attacked
#: towards "missile"): FGSM and C&W fail (top-1 stays "cinema"), stAdv still gives "missile".
PAPER_FIG9 = {"FGSM": (0.0, 1.0), "C&W": (0.0, 1.0), "stAdv": (1.0, 0.0)}


def report(cfg: Config, results) -> Report:
    """The attention-shift table per dataset (with 95 % intervals, beside stAdv Fig. 9's one image) and the figures."""
    blocks: list = []
    out: dict[str, Any] = {"datasets": {}}
    figures: list = []
    blocks.append(
        "stAdv §4.5 shows CAM maps of inception_v3 on ImageNet; here Grad-CAM (Selvaraju et al. 2017, equal to CAM up "
        "to a constant on GAP networks; computed with captum's LayerGradCam) at the last convolution of Tramèr et al.'s "
        "model A, plain and FGSM-adversarially trained, on MNIST-5k and Fashion-MNIST (ImageNet is not available "
        "offline). Adversarial examples are crafted on the plain model, targeted (random targets), and shown on both "
        "models (the paper's Fig. 9 protocol). Each map explains the model's predicted class. 'corr' = mean Pearson "
        "correlation between the benign image's map and its adversarial example's map over the successful examples "
        "(1 = attention unchanged). The paper's column is what its Fig. 9 (f)-(h) shows for its one ImageNet image "
        "on the ensemble-adversarially trained inception_v3 (1 = yes, 0 = no), not a measured rate.")
    for data in cfg.datasets:
        tab = Comparison(["attack (on plain)"], [Metric("success (plain, %)", pct=True, digits=1),
                                                 Metric("corr plain", digits=3), Metric("corr FGSM-AT", digits=3),
                                                 Metric("FGSM-AT → target (%)", pct=True, digits=1),
                                                 Metric("FGSM-AT correct (%)", pct=True, digits=1)],
                         f"{NAMES[data]}: attention shift of successful targeted examples crafted on the plain model; "
                         "the last two columns evaluate the same examples on the FGSM-trained model (transfer). "
                         "Success is over the attacked images, the other columns over the successful examples "
                         "(one per image).")
        d = {}
        for label in ATTACK_NAMES:
            run = results.get(data, f"grad-cam {label}")
            if run is None:
                continue
            recs = list(run.items().values())
            succ = [r for r in recs if r["success"]]
            v: dict[str, Any] = {"n": len(recs), "successes": len(succ), "success": rate([bool(r["success"]) for r in recs]),
                 "plain_corr": mean([r["plain_corr"] for r in succ]),
                 "robust_corr": mean([r["robust_corr"] for r in succ]),
                 "robust_fooled_to_target": rate([r["robust_pred_adv"] == r["target"] for r in succ]),
                 "robust_correct": rate([r["robust_pred_adv"] == r["y"] for r in succ])}
            d[label] = {k: e.to_json() if isinstance(e, Estimate) else e for k, e in v.items()}
            paper = [PaperValue(p, "stadv", "Fig. 9", "one ImageNet image, robust inception_v3") for p in PAPER_FIG9[label]]
            tab.add([label], v["success"], v["plain_corr"], v["robust_corr"], Cell(v["robust_fooled_to_target"], paper[0]),
                    Cell(v["robust_correct"], paper[1]))
        acc = results.meta(f"{data}/accuracy", {}) or {}
        blocks.append(f"# {NAMES[data]}")
        if acc.get("n"):
            acc_tab = Comparison(["model"], [Metric("clean test accuracy", digits=4)],
                                 f"{NAMES[data]}: on the whole test split ({acc['n']} images).")
            for m, k in (("plain", "plain"), ("FGSM-AT", "fgsm-at")):
                acc_tab.add([m], rate(acc[k], acc["n"]))
            blocks.append(acc_tab)
        blocks.append(tab)
        out["datasets"][data] = {"accuracy": acc, "attacks": d}
        figures += _figures(results, data)
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
