"""``spatialadv reproduce stadv-defenses``: stAdv against adversarial training and the mean filter (Tables 3 and 5, MNIST).

Xiao, Zhu, Li, He, Liu & Song, *Spatially Transformed Adversarial Examples*,
ICLR 2018, §4.4 and Appendix B. Models A, B and C (Table 4) on MNIST-5k,
each plain and adversarially trained three ways at L∞ ε = 0.3:

* FGSM adversarial training, "Adv." (Goodfellow et al. 2015; objective ``fgsm-at``);
* ensemble adversarial training, "Ens." (Tramèr et al. 2018; objective ``ens-at``:
  FGSM crafted in turn on the model being trained and on the two other
  architectures, trained plainly and frozen);
* PGD adversarial training, "PGD" (Madry et al. 2018; objective ``pgd-at``:
  40 steps of 0.01 from a random start, ε ramped up over the first epochs),

each trained from scratch until its accuracy under the training attack on
held-out training images plateaus (the learning curve is in the report);

On the first N test images that the plain model and its three defended
versions all classify correctly, FGSM (ε = 0.3), C&W L2 and stAdv (the
paper's τ = 0.05) are run untargeted

* **transfer** — crafted on the plain model, evaluated on the defended ones
  (the reading of §4.4 the paper's numbers support: C&W's minimal
  perturbations reach only 1-5 %);
* **white-box** — crafted on each defended model itself (the adaptive
  evaluation, plus PGD L∞ 0.3 as the check of what the training bought);

and Table 5: the plain model behind a 3×3 mean filter on the FGSM, C&W and
stAdv examples crafted without it, and the adaptive stAdv with the filter
inside the model. A "Fidelity" section opens the report: each claim of the
paper tested with the 95 % intervals.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..attacks import FGSM, PGD, CarliniWagnerL2, StAdv
from ..data import TRAIN_SIZES, DataSpec
from ..defenses import Defended, MeanFilter, bf16_is_native
from ..eval.compare import Cell, Comparison, Metric, PaperValue, mean, rate
from ..eval.runner import make_pairs
from ..training import ModelSpec, Objective, TrainConfig
from .framework import AttackRun, Experiment, Report, Shown, Table, TaskRun, option, transfer_task, validate_config

__all__ = ["Config", "PAPER", "DEFENSES", "attacks", "plan", "report", "EXPERIMENTS"]

ARCHS = ("mnist-a", "mnist-b", "mnist-c")
#: Defense label in the report → objective name.
DEFENSES = {"Adv.": "fgsm-at", "Ens.": "ens-at", "PGD": "pgd-at"}
TRANSFERRED = ("FGSM", "C&W", "stAdv")

#: Xiao et al. (ICLR 2018), Table 3 (MNIST block: attack success rate, %) and Table 5 (accuracy of the 3×3 mean-filtered
#: model on stAdv examples, %). The extracted text of Table 3 interleaves two cells ("48.38%" of A/PGD and "50.17%" of
#: B/Adv.); the reading below is the only one that assigns every number in it to one cell.
PAPER: dict[str, Any] = {
    "table3": {
        ("mnist-a", "Adv."): (4.3, 4.6, 32.62), ("mnist-a", "Ens."): (1.6, 4.2, 48.07), ("mnist-a", "PGD"): (4.4, 2.96, 48.38),
        ("mnist-b", "Adv."): (6.0, 4.5, 50.17), ("mnist-b", "Ens."): (2.7, 3.18, 46.14), ("mnist-b", "PGD"): (9.0, 3.0, 49.82),
        ("mnist-c", "Adv."): (3.22, 0.86, 30.44), ("mnist-c", "Ens."): (1.45, 0.98, 28.82), ("mnist-c", "PGD"): (2.1, 0.98, 28.13),
    },
    "table5": {"mnist-a": 59.00, "mnist-b": 64.22, "mnist-c": 79.71},
    "adaptive_mean_filter": "nearly 100 %",
    "source": "Xiao et al., Spatially Transformed Adversarial Examples, ICLR 2018, §4.4, Tables 3 and 5",
}


@dataclass(frozen=True)
class Config:
    """Settings of ``spatialadv reproduce stadv-defenses``."""

    n: int = option(200, "test images per architecture: the first N that the plain model and its three adversarially "
                    "trained versions all classify correctly (200: a 95 % interval of about ±7 points at 50 %, ±3 at 5 %)",
                    minimum=1)
    models: tuple[str, ...] = option(ARCHS, "architectures (stAdv Table 4)", choices=ARCHS)
    seed: int = option(0, "seed of the MNIST-5k split and of training", minimum=0)
    epochs: int = option(12, "training epochs of the plain models (the stadv-mnist models, same cache keys) and of the "
                         "static models of ensemble training", minimum=1)
    max_train: int | None = option(None, "train on a seeded subset of this many training images (none: all 4 000)",
                                   minimum=10, maximum=TRAIN_SIZES["mnist"])
    at_epochs: int = option(100, "maximum epochs of adversarial training (from scratch); training stops earlier when the "
                            "held-out curve plateaus (see patience)", minimum=1)
    holdout: int = option(500, "training images held out for the learning curve of the adversarially trained models "
                          "(not trained on)", minimum=10)
    patience: int = option(5, "stop adversarial training when the held-out accuracy under the training attack has not "
                           "improved for this many epochs (plateau), keeping the best epoch", minimum=1)
    eps: float = option(0.3, "L∞ budget of adversarial training and of FGSM / PGD (stAdv §4.4: 0.3 on MNIST)",
                        above=0.0, maximum=1.0)
    pgd_steps: int = option(40, "PGD steps per training batch (Madry et al. on MNIST: 40)", minimum=1)
    pgd_step_size: float = option(0.01, "PGD training step size (Madry et al. on MNIST: 0.01)", above=0.0, maximum=1.0)
    pgd_warmup: int = option(5, "epochs over which PGD training's ε and step size ramp up linearly (0: none; from scratch "
                             "at the full ε the models can collapse to chance)", minimum=0)
    pgd_bf16: str = option("auto", "PGD training steps under bfloat16 autocast: on, off, or auto: on where the CPU "
                           "computes bfloat16 in hardware (AVX-512 BF16 or AMX; about 1.7× faster steps), off elsewhere "
                           "(emulated bfloat16 made the steps 10-12× slower on an AVX2 CPU); the stored configuration "
                           "and the report say which ran, and the float32 control measures its effect on model B",
                           choices=("auto", "on", "off"))
    bf16_control: bool = option(True, "with bf16 steps (--pgd-bf16 on, or auto where it resolves to on), also train model "
                                "B's PGD defense with float32 steps and compare (the measured effect of bf16)")
    filter_size: int = option(3, "side of the mean filter of Table 5, odd", minimum=1, maximum=27,
                              check=lambda v: None if v % 2 else "odd")
    batch_size: int = option(100, "images per attack call", minimum=1)
    quick: bool = option(False, "smoke-run preset (minutes, not hours): every setting left at its default takes the "
                         "value of QUICK (N 40, at most 4 epochs of adversarial training, PGD training 7 steps of 0.1, no "
                         "bf16 control); the report is then no reproduction")

    def __post_init__(self) -> None:
        # bf16: a stored configuration of an earlier version holds a bool; "auto" is resolved on this machine, once,
        # so the stored configuration and the report name what ran
        bf16 = {True: "on", False: "off"}.get(self.pgd_bf16, self.pgd_bf16)  # type: ignore[call-overload]
        if bf16 not in ("auto", "on", "off"):
            raise ValueError(f"--pgd-bf16 must be one of auto, on, off, got {self.pgd_bf16!r}")
        object.__setattr__(self, "pgd_bf16", ("on" if bf16_is_native() else "off") if bf16 == "auto" else bf16)
        if self.quick:
            for f in fields(self):
                if f.name in QUICK and getattr(self, f.name) == f.default:
                    object.__setattr__(self, f.name, QUICK[f.name])
        validate_config(self)  # the domains declared above, checked when the Config is made too


#: The ``--quick`` preset: a smoke run of the whole pipeline on 2 cores in minutes (weak defenses, wide intervals).
QUICK = {"n": 40, "at_epochs": 4, "holdout": 200, "patience": 2, "pgd_steps": 7, "pgd_step_size": 0.1, "pgd_warmup": 2,
         "bf16_control": False}


def attacks(eps: float = 0.3) -> dict:
    """The attacks of Tables 3 and 5, by report label (all run untargeted).

    FGSM at L∞ ``eps``; C&W L2 on the schedule of ``stadv-mnist`` (c₀ = 1, 3
    binary-search steps × 100 Adam steps, lr 0.05, κ = 0); stAdv with the
    paper's settings (τ = 0.05, κ = 0, L-BFGS); PGD L∞ ``eps`` (40 steps of
    0.01, per-example early stop) for the white-box check only.
    """
    return {"FGSM": FGSM(eps=eps),
            "C&W": CarliniWagnerL2(initial_const=1.0, binary_search_steps=3, steps=100, lr=0.05),
            "stAdv": StAdv(),
            "PGD": PGD(norm="linf", eps=eps, step_size=0.01, steps=40, early_stop=True)}


def _data_and_at(cfg: Config) -> tuple[DataSpec, TrainConfig]:
    """The training data and the adversarial-training schedule (to a plateau of the held-out curve)."""
    return (DataSpec("mnist", seed=cfg.seed, max_train=cfg.max_train),
            TrainConfig(epochs=cfg.at_epochs, seed=cfg.seed, holdout=cfg.holdout, patience=cfg.patience))


def _specs(cfg: Config, arch: str) -> dict:
    data, at = _data_and_at(cfg)
    plain = ModelSpec(arch, data, TrainConfig(epochs=cfg.epochs, seed=cfg.seed))
    return {"plain": plain,
            "Adv.": ModelSpec(arch, data, at, Objective("fgsm-at", eps=cfg.eps)),
            "Ens.": ModelSpec(arch, data, at, Objective("ens-at", eps=cfg.eps, static_epochs=cfg.epochs,
                                                        static_seed=cfg.seed)),
            "PGD": _pgd_spec(cfg, arch, data, at, cfg.pgd_bf16 == "on")}


#: The label of the PGD run over the first N test images, correctly classified or not (Madry et al.'s accuracy).
ALL_IMAGES = "PGD (first N test images)"

#: The architecture whose PGD defense is also trained with float32 steps (the bf16 control): the cheapest.
CONTROL_ARCH = "mnist-b"
CONTROL = "PGD (float32 steps)"


def _pgd_spec(cfg: Config, arch: str, data: DataSpec, at: TrainConfig, bf16: bool) -> ModelSpec:
    return ModelSpec(arch, data, at, Objective("pgd-at", eps=cfg.eps, steps=cfg.pgd_steps, step_size=cfg.pgd_step_size,
                                               warmup=cfg.pgd_warmup, bf16=int(bf16)))


def _control(cfg: Config, arch: str) -> ModelSpec | None:
    """The float32-step twin of ``arch``'s PGD defense, when the job trains one."""
    if not (cfg.pgd_bf16 == "on" and cfg.bf16_control and arch == CONTROL_ARCH):
        return None
    return _pgd_spec(cfg, arch, *_data_and_at(cfg), False)


@torch.no_grad()
def _correct(net, x, y, batch: int = 500) -> torch.Tensor:
    return torch.cat([net(x[i : i + batch]).argmax(1) == y[i : i + batch] for i in range(0, len(x), batch)])


def plan(cfg: Config, ctx):
    """Per architecture: the plain and three adversarially trained models; transfer, white-box and mean-filter runs."""
    test = ctx.data("mnist", "test", cfg.seed)
    data_key = f"mnist-test-seed{cfg.seed}"
    atk = attacks(cfg.eps)
    clean = {}
    # every plain model first: they are also the static models of ensemble training
    plain = {arch: ctx.model(f"{arch}/plain", _specs(cfg, arch)["plain"]) for arch in ARCHS}
    for arch in cfg.models:
        nets, keys = {"plain": plain[arch][0]}, {"plain": plain[arch][1]["key"]}
        for label, spec in _specs(cfg, arch).items():
            if label != "plain":
                nets[label], info = ctx.model(f"{arch}/{label}", spec)
                keys[label] = info["key"]
        filtered = Defended(MeanFilter(cfg.filter_size), nets["plain"]).eval()
        keys["mean"] = f"{keys['plain']}+mean-{cfg.filter_size}"
        ok = {label: _correct(net, test.x, test.y) for label, net in nets.items()}
        ok["mean"] = _correct(filtered, test.x, test.y)
        common = torch.stack([ok[k] for k in ("plain", *DEFENSES)]).all(0)
        clean[arch] = {k: float(v.float().mean()) for k, v in ok.items()} | {"common": float(common.float().mean())}
        idx = torch.nonzero(common).flatten()[: cfg.n]
        pairs = make_pairs(idx, test.y, test.num_classes, "untargeted")
        items = [str(int(i)) for i in idx]
        targets = {d: nets[d] for d in DEFENSES} | {"mean": filtered}
        crafted = {a: atk[a] for a in TRANSFERRED}
        conf = {"attacks": {k: repr(a) for k, a in crafted.items()}, "targets": {k: keys[k] for k in targets},
                "data": data_key}
        yield TaskRun(f"{arch}/plain", "transfer", conf, keys["plain"], items,
                      functools.partial(transfer_task, nets["plain"], targets, crafted, test.x, test.y),
                      batch_size=cfg.batch_size)
        yield AttackRun(f"{arch}/plain", "PGD", nets["plain"], atk["PGD"], keys["plain"], test.x, test.y, data_key,
                        pairs, "untargeted", batch_size=cfg.batch_size)
        # the accuracy Madry et al. report: PGD over the first N test images, a clean mistake counting as a mistake
        everyone = make_pairs(torch.arange(min(cfg.n, len(test))), test.y, test.num_classes, "untargeted")
        for d in DEFENSES:
            for label, attack in atk.items():
                yield AttackRun(f"{arch}/{d}", label, nets[d], attack, keys[d], test.x, test.y, data_key, pairs,
                                "untargeted", tags={"table": "white-box"}, batch_size=cfg.batch_size)
            yield AttackRun(f"{arch}/{d}", ALL_IMAGES, nets[d], atk["PGD"], keys[d], test.x, test.y, data_key, everyone,
                            "untargeted", tags={"table": "all images"}, batch_size=cfg.batch_size)
        yield AttackRun(f"{arch}/mean", "stAdv", filtered, atk["stAdv"], keys["mean"], test.x, test.y, data_key, pairs,
                        "untargeted", tags={"table": "adaptive"}, batch_size=cfg.batch_size)
        control = _control(cfg, arch)
        if control is not None:  # the bf16 control: the same PGD training with float32 steps, PGD-attacked alike
            net, info = ctx.model(f"{arch}/{CONTROL}", control)
            clean[arch][CONTROL] = float(_correct(net, test.x, test.y).float().mean())
            yield AttackRun(f"{arch}/{CONTROL}", "PGD", net, atk["PGD"], info["key"], test.x, test.y, data_key, pairs,
                            "untargeted", tags={"table": "control"}, batch_size=cfg.batch_size)
            yield AttackRun(f"{arch}/{CONTROL}", ALL_IMAGES, net, atk["PGD"], info["key"], test.x, test.y, data_key,
                            everyone, "untargeted", tags={"table": "control"}, batch_size=cfg.batch_size)
    ctx.meta("clean", clean)


# ------------------------------------------------------------------------------------------------ report
#: Madry et al. (ICLR 2018), Table 1 (MNIST): accuracy of their PGD-trained network under white-box L∞ ε = 0.3 attacks:
#: 89.3 % (PGD, 100 steps, restarts) to 92.7 % (FGSM-like); the span quoted by the report.
MADRY_PGD = (0.893, 0.927)
#: The goal for the PGD-trained A, B, C on MNIST-5k (4 000 training images, not Madry's 60 000).
PGD_GOAL = 0.80
NAMES = {"mnist-a": "A", "mnist-b": "B", "mnist-c": "C"}


def _verdict(est, threshold: float, claim_below: bool) -> str:
    """Whether the claim "value < threshold" (``claim_below``) or "value > threshold" holds by the 95 % interval."""
    if est is None or est.n == 0:
        return "not measured"
    lo, hi = est.low, est.high
    if claim_below:
        return "holds" if hi < threshold else ("does not hold" if lo > threshold else "undecided (interval straddles it)")
    return "holds" if lo > threshold else ("does not hold" if hi < threshold else "undecided (interval straddles it)")


def _order_verdict(a, b) -> str:
    """Whether estimate ``a`` exceeds ``b``: "holds" when their 95 % intervals are disjoint with a above."""
    verdict = "not measured" if a is None else a.order(b)
    return {"higher": "holds", "lower": "does not hold (reversed)",
            "tie (intervals overlap)": "undecided (intervals overlap)"}.get(verdict, verdict)


def _curve_summary(info: dict) -> dict:
    notes = info.get("notes") or {}
    curve = notes.get("curve") or []
    best = notes.get("best_epoch")
    point = next((c for c in curve if c.get("epoch") == best), None)
    return {"curve": curve, "best_epoch": best, "epochs_run": notes.get("epochs_run"), "stopped": notes.get("stopped"),
            "holdout": notes.get("holdout"), "best": point}


def _curve_figure(cfg: Config, models: dict, out) -> list[str]:
    """The held-out learning curves of the adversarially trained models, one panel per architecture."""
    from pathlib import Path

    from ..viz.curves import Curve, Panel, curve_panels

    panels = []
    for arch in cfg.models:
        curves = []
        for label, style in (("PGD", "o-"), (CONTROL, "x--"), ("Adv.", "s-"), ("Ens.", "^-")):
            c = _curve_summary(models.get(f"{arch}/{label}", {}))["curve"]
            if not c:
                continue
            ep = [p["epoch"] for p in c]
            attack = "PGD-40" if label in ("PGD", CONTROL) else "FGSM"
            curves.append(Curve(ep, [p["adversarial"] for p in c], f"{label}: {attack} accuracy", style))
            if label == "PGD":
                curves.append(Curve(ep, [p["clean"] for p in c], "PGD: clean accuracy", ".:"))
        if curves:
            panels.append(Panel(f"model {NAMES[arch]}", "epoch", f"held-out accuracy (ε = {cfg.eps:g})", curves,
                                ylim=(0.0, 1.0)))
    if not panels or out is None:
        return []
    path = curve_panels(panels, Path(out) / "learning_curves.png",
                        title="Adversarial training: accuracy on held-out training images after each epoch")
    return [path.name]


def report(cfg: Config, res) -> Report:
    """Fidelity, the defended models (curves, PGD accuracy), Table 3 (transfer and white-box), Table 5 for every attack."""
    clean = res.meta("clean", {})
    models = res.models
    runs = {(r.model, r.attack): r.records() for r in res.runs}
    transfer: dict = {}
    for arch in cfg.models:
        tr = res.get(f"{arch}/plain", "transfer")
        items = list(tr.items().values()) if tr is not None else []
        transfer[arch] = {a: [v[a] for v in items if a in v] for a in TRANSFERRED}
    n = {arch: len(next(iter(transfer[arch].values()), [])) for arch in cfg.models}

    cw_paper = [v[TRANSFERRED.index("C&W")] for v in PAPER["table3"].values()]
    blocks: list = [
        *(["**Smoke run (`--quick`)**: short adversarial training (at most "
           f"{cfg.at_epochs} epochs, PGD {cfg.pgd_steps} × {cfg.pgd_step_size:g}) and N = {cfg.n}; the defenses are weak "
           "and the intervals wide, so this is a check of the pipeline, not a reproduction."] if cfg.quick else []),
        f"Models A, B, C of stAdv Table 4 on MNIST-5k ({cfg.max_train or 4000} training images, of which {cfg.holdout} "
        f"are held out of adversarial training for its learning curve). Plain: cross-entropy, {cfg.epochs} epoch(s) (at "
        "the default 12, the stadv-mnist models). Adversarially trained from scratch at L∞ ε = "
        f"{cfg.eps:g} (Adam, lr 10⁻³, batches of 64) until the held-out accuracy under the training attack has not "
        f"improved for {cfg.patience} epochs (at most {cfg.at_epochs}), keeping the best epoch's weights: **Adv.** "
        "½·CE(x) + ½·CE(x_FGSM), FGSM on the current model (Goodfellow et al. 2015); **Ens.** the same with the FGSM "
        "examples crafted in turn on the current model and on the two other plain architectures, frozen (Tramèr et al. "
        f"2018); **PGD** CE(x_PGD), PGD from a uniform random start, {cfg.pgd_steps} steps of {cfg.pgd_step_size:g} "
        f"(Madry et al. 2018), ε and step ramped up linearly over the first {cfg.pgd_warmup} epoch(s)"
        + (", steps under bfloat16 autocast (the float32 control below measures its effect)" if cfg.pgd_bf16 == "on"
           else ", steps in float32")
        + ". Attacked per architecture: the first N test images that the plain model and its three defended versions "
        f"all classify correctly (N = {', '.join(f'{NAMES[a]} {n[a]}' for a in cfg.models)}), untargeted.",
        "Convention: the paper does not say whether Table 3's examples were crafted on the defended models or on the "
        "undefended A, B, C and then shown to the defended ones (\"we generate adversarial examples in the white-box "
        "setting and test different defense methods against these samples\"). Its C&W column "
        f"({min(cw_paper):g}-{max(cw_paper):g} %) is only "
        "possible for examples that were *not* optimised against the defended model — unbounded C&W L2 crafted on a "
        "model succeeds on nearly every image — so the paper's numbers are compared with our **transfer** table; the "
        "**white-box** table is the adaptive evaluation a robustness claim needs. The paper does not say whether "
        "Table 3 is targeted either; its rates are compared with untargeted attacks here (success: the evaluated model "
        "misclassifies the example), the reading under which adversarially trained models are usually scored (Madry et "
        "al. report accuracy under untargeted attacks)."]

    # ---- the models
    n_test = len(res.data("mnist", "test", cfg.seed))
    model_table = Comparison(["model"], [Metric("clean test accuracy (%)", pct=True),
                                         Metric(f"accuracy under white-box PGD-40 L∞ {cfg.eps:g}, first N test images (%)",
                                                pct=True, digits=1),
                                         Metric("the same, attacked images (%)", pct=True, digits=1)],
                             f"Clean accuracy on all {n_test} MNIST-5k test images. PGD: 40 steps of 0.01 from the "
                             "image (untargeted, early stop on success, which does not change the verdict) on the "
                             "attacked images, which every model of the architecture classifies correctly, so 100 % "
                             "minus its success rate. Madry et al. (ICLR 2018, Table 1, MNIST) report 89.3-92.7 % for "
                             "their PGD-trained network (60 000 training images); beside our PGD rows is the lower end.")
    curve_rows, pgd_acc, models_json = [], {}, {}
    labels = ("plain", *DEFENSES, CONTROL)
    for arch in cfg.models:
        for label in labels:
            info = models.get(f"{arch}/{label}")
            if info is None:
                continue
            pgd = runs.get((f"{arch}/{label}", "PGD"))
            every = runs.get((f"{arch}/{label}", ALL_IMAGES))
            frac = clean.get(arch, {}).get(label)
            acc = rate([not r["success"] for r in pgd]) if pgd else None
            acc_all = rate([r["pred"] == r["label"] and r["clean_pred"] == r["label"] for r in every]) if every else None
            if acc_all is not None:
                pgd_acc[(arch, label)] = acc_all
            paper = PaperValue(MADRY_PGD[0], "pgd", "Table 1", note="MNIST, 60 000 training images; range 89.3-92.7 %") \
                if label in ("PGD", CONTROL) else None
            model_table.add([f"{NAMES[arch]} {label}"], None if frac is None else rate(round(frac * n_test), n_test),
                            Cell(acc_all, paper), acc)
            cs = _curve_summary(info)
            models_json[f"{arch}/{label}"] = {"key": info.get("key"), "test_accuracy": info.get("test_accuracy"),
                                              "train_seconds": info.get("train_seconds"),
                                              **{k: cs[k] for k in ("best_epoch", "epochs_run", "stopped", "curve")}}
            if label != "plain":
                b = cs["best"] or {}
                secs = info.get("train_seconds")
                curve_rows.append([f"{NAMES[arch]} {label}", "–" if cs["epochs_run"] is None else str(cs["epochs_run"]),
                                   {"plateau": "plateau", "max_epochs": f"epoch limit ({cfg.at_epochs})"}.get(
                                       cs["stopped"] or "", "–"),
                                   "–" if cs["best_epoch"] is None else str(cs["best_epoch"]),
                                   "–" if b.get("clean") is None else f"{100 * b['clean']:.1f}",
                                   "–" if b.get("adversarial") is None else f"{100 * b['adversarial']:.1f}",
                                   "–" if secs is None else f"{secs / 60:.0f}"])
    blocks.append("## The models: clean accuracy and accuracy under PGD")
    blocks.append(model_table)
    blocks.append("## Training: the held-out learning curves")
    blocks.append(Table(["model", "epochs run", "stopped by", "best epoch", "held-out clean (%)",
                         "held-out adversarial (%)", "training time (min)"], curve_rows,
                        f"After every epoch the model (eval mode) is scored on the {cfg.holdout} held-out training "
                        "images: clean, and under its training attack at the full ε (PGD rows: float32 PGD-40 from a "
                        "random start; Adv. and Ens.: FGSM). Training stops when that adversarial accuracy has not "
                        f"improved for {cfg.patience} epochs (a plateau) or at the epoch limit; the best epoch's weights "
                        "are kept, and its held-out accuracies are shown. The curves are drawn in learning_curves.png; "
                        "every point is in report.json. Training time: wall clock when the checkpoint was trained."))

    # ---- Table 3
    t3: dict = {}
    transfer_table = Comparison(["model", "defense"], [Metric(f"{a} transfer success (%)", pct=True, digits=1)
                                                       for a in TRANSFERRED],
                                "Untargeted examples crafted on the plain model of the same architecture, evaluated on "
                                "the defended one (the reading of the paper's protocol its numbers support, see "
                                "Convention); success: the defended model misclassifies the example, over the N "
                                f"attacked images. FGSM ε = {cfg.eps:g}; C&W L2 c₀ = 1, 3 × 100 Adam steps, lr 0.05; "
                                "stAdv τ = 0.05, κ = 0 (the paper's settings).")
    wb_rows = []
    est3: dict = {}
    for arch in cfg.models:
        for d in DEFENSES:
            cells: list = []
            wb_cells: list = []
            t3[f"{arch}/{d}"] = {}
            for k, a in enumerate(TRANSFERRED):
                tr = rate([bool(r[d]) for r in transfer[arch][a]])
                wb = rate([bool(r["success"]) for r in runs.get((f"{arch}/{d}", a), [])])
                est3[(arch, d, a)] = (tr, wb)
                paper = PAPER["table3"][(arch, d)][k]
                t3[f"{arch}/{d}"][a] = {"transfer": None if tr.n == 0 else tr.value,
                                        "white_box": None if wb.n == 0 else wb.value, "paper": paper,
                                        "estimates": {"transfer": tr.to_json(), "white_box": wb.to_json()}}
                cells.append(Cell(tr, PaperValue(paper / 100, "stadv", "Table 3", note="MNIST")))
                wb_cells.append(Shown(wb, 1, pct=True))
            transfer_table.add([NAMES[arch], d], *cells)
            wb_rows.append([NAMES[arch], d, *wb_cells])
    blocks.append("## Table 3 — attack success rate under adversarial training (transfer, the paper's protocol)")
    blocks.append(transfer_table)
    blocks.append("## Table 3, white-box — the same attacks crafted on the defended model")
    blocks.append(Table(["model", "defense", *(f"{a} white-box success (%)" for a in TRANSFERRED)], wb_rows,
                        "Untargeted, crafted on the defended model itself (the adaptive evaluation a robustness claim "
                        "needs), same settings and images as the transfer table; success: the defended model "
                        "misclassifies the example."))
    src_rows = []
    for arch in cfg.models:
        cells = []
        for a in TRANSFERRED:
            recs = transfer[arch][a]
            cells += [Shown(rate([bool(r["source"]) for r in recs]), 1, pct=True),
                      Shown(mean([r["l2"] for r in recs if r["source"]]), 2)] if recs else ["–", "–"]
        src_rows.append([NAMES[arch], *cells])
    blocks.append(Table(["plain model", *(f"{a} {c}" for a in TRANSFERRED for c in ("success (%)", "D̄"))], src_rows,
                        "The transferred examples on the model they were crafted on: success over the N attacked "
                        "images; D̄: mean L2 distortion of the successful ones, pixels in [0, 1]."))

    # ---- Table 5, for every attack, and the adaptive attack
    t5: dict = {}
    rest: dict = {}
    t5_table = Comparison(["model"],
                          [Metric("clean accuracy, filtered (%)", pct=True),
                           *(Metric(f"{a} examples restored (%)", pct=True) for a in TRANSFERRED),
                           Metric("adaptive stAdv success (%)", pct=True, digits=1)],
                          f"Clean accuracy of the plain model behind the {cfg.filter_size}×{cfg.filter_size} mean filter "
                          f"on all {n_test} test images. Restored: the plain model behind the mean filter (Li & Li 2016) "
                          "classifies correctly an example that fools the plain model, crafted without the filter; over "
                          "the examples of that attack that fool the plain model (their numbers are in report.json; the "
                          "paper gives Table 5 for stAdv only). Adaptive: stAdv run on filter ∘ model over the N "
                          "attacked images (the filter is differentiable; the attack follows its gradient), as Carlini & "
                          "Wagner (AISec 2017) prescribe for pre-processing defenses; the paper states its rate only in "
                          "words.")
    for arch in cfg.models:
        restored = {}
        for a in TRANSFERRED:
            recs = [r for r in transfer[arch][a] if r["source"]]
            restored[a] = rate([not r["mean"] for r in recs])
            rest[(arch, a)] = restored[a]
        adaptive = rate([bool(r["success"]) for r in runs.get((f"{arch}/mean", "stAdv"), [])])
        frac = clean.get(arch, {}).get("mean")
        filtered = None if frac is None else rate(round(frac * n_test), n_test)
        acc = restored["stAdv"]
        t5[arch] = {"accuracy_recovered": None if acc.n == 0 else acc.value, "n_examples": acc.n,
                    "restored": {a: restored[a].to_json() for a in TRANSFERRED},
                    "adaptive_success": None if adaptive.n == 0 else adaptive.value, "clean_filtered": frac,
                    "paper": PAPER["table5"][arch],
                    "estimates": {"accuracy_recovered": acc.to_json(), "adaptive_success": adaptive.to_json(),
                                  "clean_filtered": None if filtered is None else filtered.to_json()}}
        t5_table.add([NAMES[arch]], filtered,
                     *(Cell(restored[a], PaperValue(PAPER["table5"][arch] / 100, "stadv", "Table 5", note="MNIST")
                            if a == "stAdv" else None) for a in TRANSFERRED),
                     Cell(adaptive, PaperValue(1.0, "stadv", "§4.4", note="\"nearly 100%\"")))
    blocks.append(f"## Table 5 — the {cfg.filter_size}×{cfg.filter_size} mean filter on every attack's examples, and the "
                  "adaptive attack")
    blocks.append(t5_table)

    fidelity, claims = _fidelity(cfg, est3, rest, pgd_acc, t5, models)
    blocks[2 + cfg.quick:2 + cfg.quick] = fidelity
    figures = _curve_figure(cfg, models, getattr(res, "out", None))
    data = {"paper": {"table3": {f"{a}/{d}": v for (a, d), v in PAPER["table3"].items()}, "table5": PAPER["table5"],
                      "madry_pgd_accuracy": list(MADRY_PGD)},
            "clean": clean, "table3": t3, "table5": t5, "n": n, "claims": claims,
            "pgd_accuracy": {f"{a}/{d}": e.to_json() for (a, d), e in pgd_acc.items()}, "models": models_json}
    return Report("stAdv against adversarial training and the mean filter on MNIST — Xiao et al. (ICLR 2018), Tables 3 and 5",
                  blocks, data, figures)


def _span(vals) -> str:
    vals = [100 * v for v in vals if v is not None]
    return "–" if not vals else f"{min(vals):.1f}-{max(vals):.1f} %"


def _fidelity(cfg: Config, est3: dict, rest: dict, pgd_acc: dict, t5: dict, models: dict) -> tuple[list, list]:
    """The "Fidelity" section: each claim of the paper tested with the 95 % intervals, and the measured reasons."""
    claims: list[dict] = []

    def claim(text: str, verdicts: dict, reason: str) -> None:
        vals = list(verdicts.values())
        overall = ("holds" if vals and all(v == "holds" for v in vals) else
                   "does not hold" if vals and all(v.startswith("does not hold") for v in vals) else
                   "holds in part" if any(v == "holds" for v in vals) else
                   "does not hold in part" if any(v.startswith("does not hold") for v in vals) else
                   "not measured" if not vals or all(v == "not measured" for v in vals) else "undecided")
        claims.append({"claim": text, "verdict": overall, "cells": verdicts, "reason": reason})

    archs = cfg.models
    # 1. the PGD-trained models reach Madry-level robustness
    v = {NAMES[a]: _verdict(pgd_acc.get((a, "PGD")), PGD_GOAL, claim_below=False) for a in archs}
    plateau = [f"{NAMES[a]}: {_curve_summary(models.get(f'{a}/PGD', {}))['stopped'] or '–'}" for a in archs]
    accs = ", ".join(f"{NAMES[a]} {pgd_acc[(a, 'PGD')].format(1, True)} %" for a in archs if (a, "PGD") in pgd_acc)
    claim(f"PGD adversarial training gives ≥ {100 * PGD_GOAL:.0f} % accuracy under white-box PGD-40 L∞ {cfg.eps:g} "
          "(Madry et al.: 89-93 % on MNIST with 60 000 training images)", v,
          f"measured: {accs or '–'}; training stopped by ({', '.join(plateau)}) — a plateau is the curve's verdict that "
          f"more epochs on these {cfg.max_train or 4000} images would not help.")
    # 2. adversarial training stops FGSM and C&W (< 10 % success, transfer)
    for a in ("FGSM", "C&W"):
        v = {f"{NAMES[ar]}/{d}": _verdict(est3[(ar, d, a)][0], 0.10, claim_below=True) for ar in archs for d in DEFENSES
             if (ar, d, a) in est3}
        claim(f"The three defenses keep {a} (transferred) below 10 % success (Table 3)", v,
              "see the transfer table; where a cell fails, compare the model's PGD accuracy above (a weaker defense "
              "lets more through).")
    # 3. stAdv passes: > 30 % under every defense, and above FGSM and C&W
    v = {f"{NAMES[ar]}/{d}": _verdict(est3[(ar, d, "stAdv")][0], 0.30, claim_below=False) for ar in archs
         for d in DEFENSES if (ar, d, "stAdv") in est3}
    claim("stAdv (transferred) succeeds on more than 30 % under every defense (Table 3)", v,
          "stAdv's flows are not an L∞ perturbation of ε 0.3, which the defenses were trained against.")
    v = {f"{NAMES[ar]}/{d}": _order_verdict(est3[(ar, d, "stAdv")][0],
                                            max((est3[(ar, d, a)][0] for a in ("FGSM", "C&W")), key=lambda e: e.high))
         for ar in archs for d in DEFENSES if (ar, d, "stAdv") in est3}
    claim("stAdv transfers through adversarial training more often than FGSM and C&W (Table 3)", v,
          "per cell: stAdv's interval above both FGSM's and C&W's.")
    # 4. Table 5: the mean filter restores FGSM / C&W examples more than stAdv's
    for a in ("FGSM", "C&W"):
        v = {NAMES[ar]: _order_verdict(rest[(ar, a)], rest[(ar, "stAdv")]) for ar in archs if (ar, a) in rest}
        claim(f"The mean filter restores {a} examples more often than stAdv's (Table 5 and §4.4)", v,
              "restoration rates of the examples that fool the plain model, same images.")
    # 5. the adaptive attack through the filter
    v = {NAMES[ar]: _verdict(rate(round(t5[ar]["adaptive_success"] * t5[ar]["estimates"]["adaptive_success"]["n"]),
                                  t5[ar]["estimates"]["adaptive_success"]["n"])
                             if t5[ar]["adaptive_success"] is not None else None, 0.90, claim_below=False) for ar in archs}
    claim("stAdv with the filter inside the attacked model succeeds nearly always (§4.4: \"nearly 100 %\"; here > 90 %)",
          v, "the filter is differentiable; the attack follows its gradient.")
    # the bf16 control
    ctrl = pgd_acc.get((CONTROL_ARCH, CONTROL))
    main = pgd_acc.get((CONTROL_ARCH, "PGD"))
    lines = ["## Fidelity",
             "Each claim of the paper tested against our 95 % intervals: **holds** — the interval lies on the claim's "
             "side; **does not hold** — on the other side; **undecided** — it straddles the threshold. Per cell in "
             "report.json (`claims`)."]
    for c in claims:
        cells = "; ".join(f"{k}: {val}" for k, val in c["cells"].items())
        lines.append(f"- **{c['verdict']}** — {c['claim']}. {c['reason']} ({cells})")
    if ctrl is not None and main is not None:
        lines.append(f"- **bfloat16 PGD steps in training** (a throughput setting, not the paper's): model B's PGD "
                     f"defense trained with bf16 steps has PGD-40 accuracy {main.format(1, True)} %, its float32-step "
                     f"twin {ctrl.format(1, True)} % — "
                     + ("the intervals overlap: no measurable effect." if _order_verdict(main, ctrl).startswith("undecided")
                        else "a measurable difference; the float32 model is the faithful one."))
    return ["\n".join(lines)], claims


EXPERIMENTS = [
    Experiment("stadv-defenses", "FGSM, C&W and stAdv against FGSM-, ensemble- and PGD-adversarially trained models "
               "A, B, C and the 3×3 mean filter, transferred and white-box (Xiao et al., ICLR 2018: Tables 3, 5)",
               Config(), plan, report, papers=("stadv", "fgsm", "ensemble", "pgd", "cw", "li-li", "cw-detect")),
]
