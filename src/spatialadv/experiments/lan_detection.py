"""``spatialadv reproduce lan-detection``: attention-based detection of adversarial examples.

Nguyen, MSc thesis 2018, §3 (the attention-based approach), Tables 1-4 and
Figs. 2, 4, 5, with LAN masks (Grimm et al. 2017) and an adaptive attack
(Carlini & Wagner, AISec 2017). The thesis uses CIFAR-10 (AlexNet as f1, a
VGG-like net for transfer); CIFAR-10 is not available offline, so the tables
are reproduced on MNIST-5k and Fashion-MNIST with Tramèr et al.'s model A as
f1 and the C4 network (Zhang et al.'s MNIST model) as the transfer source.

Per dataset: f1 and the source net are trained (or loaded from the cache),
the LAN mask generator g and the mask classifier f2 (LeNet) are trained on f1
and the training masks (cached), then the first ``n`` test images both nets
classify correctly are attacked by FGSM, JSMA, C&W and stAdv on f1 (Table 2)
and on the source net (Table 3), and by the adaptive attack. Every example's
outcome (f1's and f2's classes on the benign and the adversarial image) is
one stored item, so the job is resumable; the report computes the tables.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..attacks import FGSM, JSMA, CarliniWagnerL2, LANAdaptivePGD, StAdv
from ..data import DataSpec
from ..defenses import LANConfig, load_or_train_lan
from ..training import ModelSpec, TrainConfig
from ..viz import image_map_figure
from .framework import Experiment, Report, Table, TaskRun, fmt, option, random_targets

__all__ = ["Config", "PAPER", "plan", "report", "EXPERIMENTS", "lan_attacks"]

#: Nguyen, MSc thesis 2018, Tables 1-4 (CIFAR-10; f1 = AlexNet, transfer source = VGG-like).
PAPER = {
    "table1_retention": {"FGSM": 0.863, "JSMA": 0.878, "C&W": 0.997},
    "table2": {"FGSM": (0.878, 0.614), "JSMA": (0.960, 0.614), "C&W": (0.860, 0.614)},
    "table3": {"FGSM": (0.843, 0.665), "JSMA": (0.853, 0.647), "C&W": (0.917, 0.750)},
    "table4": {"FGSM": (1.0, 1.0), "JSMA": (1.0, 1.0), "C&W": (1.0, 1.0)},
    "table4_recovery": 1.0,
    "f2_mask_accuracy": 0.60,
    "f1_accuracy": 0.82,
    "source": "Nguyen, MSc thesis 2018, §3.3, Tables 1-4 (CIFAR-10)",
}
ATTACK_NAMES = ("FGSM", "JSMA", "C&W", "stAdv")
NAMES = {"mnist": "MNIST-5k", "fashion-mnist": "Fashion-MNIST"}


def lan_attacks(data: str, *, cw_steps: int = 100, cw_search: int = 3) -> dict:
    """The four attacks by report label, with the settings of the report.

    FGSM untargeted, ε = 0.3 (MNIST) or 0.1 (Fashion-MNIST); JSMA targeted,
    θ = 1, γ = 14.5 % (Papernot et al.'s MNIST setting); C&W L2 targeted
    (``cw_search`` × ``cw_steps``); stAdv targeted with its defaults.
    """
    return {"FGSM": FGSM(eps=0.3 if data == "mnist" else 0.1), "JSMA": JSMA(theta=1.0, gamma=0.145),
            "C&W": CarliniWagnerL2(binary_search_steps=cw_search, steps=cw_steps), "stAdv": StAdv()}


@dataclass(frozen=True)
class Config:
    """Settings of ``spatialadv reproduce lan-detection``."""

    datasets: tuple[str, ...] = option(("mnist", "fashion-mnist"), "datasets", choices=("mnist", "fashion-mnist"))
    n: int = option(40, "test images (correctly classified by f1 and the source net) attacked per dataset", minimum=1)
    seed: int = option(0, "seed of the data split, training and targets", minimum=0)
    epochs: int = option(5, "f1 / source-net training epochs when not cached", minimum=1)
    max_train: int = option(4000, "train f1, the source net, the LAN and f2 on at most this many training images "
                            "(MNIST-5k has 4000)", minimum=100)
    beta: float = option(1.0, "β of the LAN loss (not stated in the thesis)", minimum=0.0)
    lan_epochs: int = option(10, "LAN training epochs", minimum=1)
    f2_epochs: int = option(8, "mask-classifier training epochs", minimum=1)
    cw_steps: int = option(100, "C&W Adam steps per binary-search step", minimum=1)
    adaptive_steps: int = option(100, "adaptive-attack PGD steps", minimum=1)
    threads: int = option(2, "torch intra-op threads", minimum=1)


def _detect(det, net, attack, x, y, t, targeted: bool, items: list[str]) -> dict:
    """Attack ``net`` on the images of ``items`` and record f1's and f2's classes on benign and adversarial images."""
    idx = torch.tensor([int(i) for i in items])
    xb, yb, tb = x[idx], y[idx], t[idx]
    res = attack(net, xb, yb, target=tb if targeted else None)
    with torch.no_grad():
        f1_adv = det.f1(res.x_adv).argmax(1)
    ben, adv = det.predict(xb), det.predict(res.x_adv)
    out = {}
    for j, item in enumerate(items):
        out[item] = {"y": int(yb[j]), "target": int(tb[j]) if targeted else -1, "crafted": bool(res.success[j]),
                     "fools_f1": bool(f1_adv[j] != yb[j]), "pred1": int(ben["pred1"][j]), "pred2": int(ben["pred2"][j]),
                     "pred1_adv": int(adv["pred1"][j]), "pred2_adv": int(adv["pred2"][j])}
    return out


def plan(cfg: Config, ctx):
    """Per dataset: train/load f1, the source net and the LAN detector; attack; store per-example outcomes."""
    for data in cfg.datasets:
        train_full = ctx.data(data, "train", cfg.seed)
        test = ctx.data(data, "test", cfg.seed)
        max_train = min(cfg.max_train, len(train_full))
        dspec = DataSpec(data, seed=cfg.seed, max_train=None if max_train >= len(train_full) else max_train)
        tc = TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
        f1, info1 = ctx.model(f"{data}/f1", ModelSpec("mnist-a", dspec, tc))
        src, info_s = ctx.model(f"{data}/source", ModelSpec("c4", dspec, tc))
        train = dspec.train()
        lcfg = LANConfig(beta=cfg.beta, lan_epochs=cfg.lan_epochs, f2_epochs=cfg.f2_epochs, seed=cfg.seed)
        det, linfo = load_or_train_lan(f1, info1["key"], train, lcfg)
        ok_src = ctx.first_correct(src, test.x, test.y, len(test))
        with torch.no_grad():
            ok1 = ctx.first_correct(f1, test.x, test.y, len(test))
            masks_pred = det.predict(test.x)
        both = sorted(set(ok1.tolist()) & set(ok_src.tolist()))[: cfg.n]
        items = [str(i) for i in both]
        t = random_targets(test.y, cfg.seed + 4242, test.num_classes)
        ctx.meta(f"{data}/lan", {"key": linfo["key"], "cached": linfo["cached"], "lan_history": linfo.get("lan_history"),
                                 "f2_train_accuracy": linfo.get("f2_train_accuracy"),
                                 "train_seconds": linfo.get("train_seconds"),
                                 "f2_test_accuracy": float((masks_pred["pred2"] == test.y).float().mean()),
                                 "f1_test_accuracy": float((masks_pred["pred1"] == test.y).float().mean()),
                                 "tnr_all_test": float((~masks_pred["flag"]).float().mean())})
        attacks = lan_attacks(data, cw_steps=cfg.cw_steps)
        for setting, net, key in (("direct", f1, info1["key"]), ("transfer", src, info_s["key"])):
            for label, attack in attacks.items():
                targeted = label != "FGSM"
                conf = {"attack": repr(attack), "lan": linfo["key"], "targets": cfg.seed + 4242, "targeted": targeted,
                        "f1": info1["key"]}
                yield TaskRun(f"{data}/{setting}", label, conf, key, items,
                              functools.partial(_detect, det, net, attack, test.x, test.y, t, targeted),
                              tags={"data": data, "setting": setting, "attack": label}, batch_size=len(items))
        adaptive = LANAdaptivePGD(detector=det, eps=0.3 if data == "mnist" else 0.1,
                                  step_size=0.01 if data == "mnist" else 0.005, steps=cfg.adaptive_steps)
        conf = {"attack": f"LANAdaptivePGD(eps={adaptive.eps}, step_size={adaptive.step_size}, steps={adaptive.steps})",
                "lan": linfo["key"], "targets": cfg.seed + 4242}
        yield TaskRun(f"{data}/direct", "adaptive", conf, info1["key"], items,
                      functools.partial(_detect, det, f1, adaptive, test.x, test.y, t, True),
                      tags={"data": data, "setting": "adaptive", "attack": "adaptive PGD"}, batch_size=len(items))
        _figures(ctx, data, det, f1, test, t, attacks, masks_pred)


def _mask_rows(det, x: torch.Tensor) -> list[list[np.ndarray]]:
    """Per image: the LAN mask in [0, 1] and what f2 sees, ``(m − μ)/σ`` mapped from [−3, 3] to [0, 1]."""
    with torch.no_grad():
        m = det.g(x)
        z = ((m - det.f2.mu) / det.f2.sigma + 3) / 6 if hasattr(det.f2, "mu") else m
    return [[a[0].numpy(), b[0].clamp(0, 1).numpy()] for a, b in zip(m, z)]


def _figures(ctx, data: str, det, f1, test, t, attacks, masks_pred) -> None:
    """Figs. 2, 4 and 5 of the thesis: masks per class, masks of one image and its adversarial examples, wrong masks.

    Row 2 shows the masks, row 3 the standardised masks f2 classifies.
    """
    rows = ["mask", "standardised"]

    name = NAMES[data]
    first = [int((test.y == c).nonzero()[0]) for c in range(test.num_classes)]
    xs = test.x[first]
    image_map_figure([x.numpy() for x in xs], _mask_rows(det, xs), [f"class {c}" for c in range(len(first))],
                     ctx.out / f"lan_fig2_{data}.png", overlay=False, map_titles=rows, suptitle=f"{name}: images and their LAN masks (thesis Fig. 2)")
    i = first[0]
    x0, y0, t0 = test.x[i:i + 1], test.y[i:i + 1], t[i:i + 1]
    imgs, titles = [x0[0]], []
    p = det.predict(x0)
    titles.append(f"benign f1={int(p['pred1'][0])} f2={int(p['pred2'][0])}")
    for label, attack in attacks.items():
        res = attack(f1, x0, y0, target=None if label == "FGSM" else t0)
        pa = det.predict(res.x_adv)
        imgs.append(res.x_adv[0])
        titles.append(f"{label}{'' if bool(res.success[0]) else ' (failed)'} f1={int(pa['pred1'][0])} "
                      f"f2={int(pa['pred2'][0])}")
    image_map_figure([im.numpy() for im in imgs], _mask_rows(det, torch.stack(imgs)), titles,
                     ctx.out / f"lan_fig4_{data}.png", overlay=False, map_titles=rows,
                     suptitle=f"{name}: a benign image, its adversarial examples and their masks (thesis Fig. 4)")
    wrong = ((masks_pred["pred2"] != test.y) & (masks_pred["pred1"] == test.y)).nonzero().squeeze(1)[:4]
    if len(wrong):
        xw = test.x[wrong]
        image_map_figure([x.numpy() for x in xw], _mask_rows(det, xw),
                         [f"y={int(test.y[k])} f2={int(masks_pred['pred2'][k])}" for k in wrong],
                         ctx.out / f"lan_fig5_{data}.png", overlay=False, map_titles=rows,
                         suptitle=f"{name}: masks f2 classifies as another class (thesis Fig. 5)")


def _rates(recs: list[dict]) -> dict:
    """Tables 1, 2/3 and 4 figures from per-example records (successful adversarial examples only)."""
    succ = [r for r in recs if r["fools_f1"] and (r["target"] < 0 or r["pred1_adv"] == r["target"])]
    n = len(succ)

    def mean(v):
        return float(np.mean(v)) if len(v) else float("nan")

    out = {"n": len(recs), "successes": n,
           "retention": mean([r["pred2_adv"] == r["pred2"] for r in succ]),
           "tpr": mean([r["pred1_adv"] != r["pred2_adv"] for r in succ]),
           "tnr": mean([r["pred1"] == r["pred2"] for r in succ])}
    good = [r for r in succ if r["pred2"] == r["y"]]
    det = [r for r in good if r["pred1_adv"] != r["pred2_adv"]]
    out.update(filtered=len(good), tpr_filtered=mean([r["pred1_adv"] != r["pred2_adv"] for r in good]),
               tnr_filtered=mean([r["pred1"] == r["pred2"] for r in good]),
               recovery=mean([r["pred2_adv"] == r["y"] for r in det]))
    return out


def report(cfg: Config, results) -> Report:
    """Tables 1-4 and the adaptive attack per dataset, beside the thesis's CIFAR-10 numbers."""
    blocks, data_out, figures = [], {"paper": PAPER, "datasets": {}}, []
    blocks.append(
        "The thesis evaluates on CIFAR-10 (f1 = AlexNet, 82 % accuracy; transfer source = a VGG-like net). "
        "**CIFAR-10 is not available offline**, so this report reproduces the method on MNIST-5k and Fashion-MNIST: "
        "f1 = Tramèr et al.'s model A, transfer source = C4, g = a 3-layer fully connected LAN "
        f"(β = {cfg.beta}, η = random training images, F = f1 frozen), f2 = LeNet-5 on per-pixel standardised masks. "
        "Adversarial examples count when they fool f1 (targeted attacks: f1 predicts the target). "
        "TPR = flagged fraction of the successful adversarial examples; TNR = unflagged fraction of their benign "
        "originals (the thesis's paired test set). Retention (Table 1) = f2's class of the adversarial mask equals "
        "f2's class of the benign mask. Table 4 keeps the examples whose benign mask f2 classifies correctly; "
        "recovery = f2's class of a detected adversarial example's mask equals the true label.")
    for data in cfg.datasets:
        name = NAMES[data]
        lan = results.meta(f"{data}/lan", {}) or {}
        per = {}
        for setting in ("direct", "transfer"):
            for label in ATTACK_NAMES:
                run = results.get(f"{data}/{setting}", label)
                if run is not None:
                    per[(setting, label)] = _rates(list(run.items().values()))
        run = results.get(f"{data}/direct", "adaptive")
        adaptive = None
        if run is not None:
            recs = list(run.items().values())
            adaptive = _rates(recs)
            adaptive["evasion"] = float(np.mean([r["pred1_adv"] == r["target"] and r["pred2_adv"] == r["target"]
                                                 for r in recs])) if recs else float("nan")
        blocks.append(f"# {name}")
        blocks.append(f"f1 test accuracy {fmt(lan.get('f1_test_accuracy'), 3)}, f2 accuracy on the masks of the test "
                      f"set {fmt(lan.get('f2_test_accuracy'), 3)} (thesis: f1 0.82, f2 0.60), detector TNR on the whole "
                      f"test set {fmt(lan.get('tnr_all_test'), 3)}; LAN loss per epoch "
                      + (", ".join(f"{v:.3f}" for v in (lan.get("lan_history") or [])) or "(cached)") + ".")
        rows = []
        for label in ATTACK_NAMES:
            d = per.get(("direct", label))
            if d is None:
                continue
            p = PAPER["table1_retention"].get(label)
            rows.append([label, f"{d['successes']}/{d['n']}", fmt(d["retention"], 3), fmt(p, 3)])
        blocks.append(Table(["attack", "successful / attacked", "mask class retained", "thesis (CIFAR-10)"], rows,
                            f"Table 1 analogue ({name}): adversarial examples whose mask keeps its class."))
        for setting, tno, key in (("direct", 2, "table2"), ("transfer", 3, "table3")):
            rows = []
            for label in ATTACK_NAMES:
                d = per.get((setting, label))
                if d is None:
                    continue
                p = PAPER[key].get(label, (None, None))
                rows.append([label, str(d["successes"]), fmt(d["tpr"], 3), fmt(d["tnr"], 3), fmt(p[0], 3), fmt(p[1], 3)])
            if setting == "direct" and adaptive is not None:
                rows.append(["adaptive PGD (C&W 2017)", str(adaptive["successes"]), fmt(adaptive["tpr"], 3),
                             fmt(adaptive["tnr"], 3), "–", "–"])
            what = "crafted on f1" if setting == "direct" else "crafted on the source net (C4), evaluated on f1"
            blocks.append(Table(["attack", "pairs", "TPR", "TNR", "thesis TPR", "thesis TNR"], rows,
                                f"Table {tno} analogue ({name}): examples {what}; each pair = one successful "
                                "adversarial example and its benign original."))
        rows = []
        for label in ATTACK_NAMES:
            d = per.get(("direct", label))
            if d is None:
                continue
            p = PAPER["table4"].get(label, (None, None))
            rows.append([label, str(d["filtered"]), fmt(d["tpr_filtered"], 3), fmt(d["tnr_filtered"], 3),
                         fmt(d["recovery"], 3), fmt(p[0], 3), fmt(p[1], 3), fmt(PAPER["table4_recovery"], 3)])
        blocks.append(Table(["attack", "pairs kept", "TPR", "TNR", "recovery", "thesis TPR", "thesis TNR",
                             "thesis recovery"], rows,
                            f"Table 4 analogue ({name}): only examples whose benign mask f2 classifies correctly."))
        if adaptive is not None:
            blocks.append(f"Adaptive attack ({name}): targeted L∞ PGD on CE(f1, t) + CE(f2(g(x)), t) "
                          f"(Carlini & Wagner 2017): {adaptive['successes']}/{adaptive['n']} fool f1, TPR "
                          f"{fmt(adaptive['tpr'], 3)}; {fmt(adaptive['evasion'], 3, pct=True)} % of the attacked images "
                          "fool f1 *and* go unflagged.")
        data_out["datasets"][data] = {"lan": lan, "rates": {f"{s}/{a}": v for (s, a), v in per.items()},
                                      "adaptive": adaptive}
        for f in (f"lan_fig2_{data}.png", f"lan_fig4_{data}.png", f"lan_fig5_{data}.png"):
            if (results.out / f).is_file():
                figures.append(f)
    blocks.append(
        "Deviations: MNIST-5k / Fashion-MNIST instead of CIFAR-10 (unavailable offline); model A / C4 instead of "
        "AlexNet / VGG-like; f2 standardises masks per pixel (without it LeNet stays at chance on the nearly "
        "class-independent LAN masks); β = 1 and the LAN learning rate 2e-4 are ours (the thesis gives neither); "
        "stAdv is added to the thesis's three attacks; the adaptive attack is ours, after Carlini & Wagner's recipe. "
        "The thesis's Table 4 filters *before* attacking; here the filter is applied to the same attacked set.")
    return Report("Attention-based detection of adversarial examples (LAN; Nguyen, MSc thesis 2018, Tables 1-4)",
                  blocks, data_out, figures)


EXPERIMENTS = [
    Experiment("lan-detection", "attention-based (LAN) detection of adversarial examples on MNIST-5k and Fashion-MNIST "
               "(Nguyen, MSc thesis 2018, Tables 1-4)", Config(), plan, report,
               papers=("nguyen-thesis", "lan", "jsma", "fgsm", "cw", "stadv", "cw-detect", "ensemble")),
]
