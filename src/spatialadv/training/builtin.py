"""The built-in training objectives, naming the defenses' adversaries and certify's penalties, and the certificate variants.

Registered on import (:mod:`spatialadv.training` imports this module), usable
as ``Objective(name, **options)`` (options and their defaults in brackets):

==============  ===============================================================================
``standard``    cross-entropy.
``fgsm-at``     "Adv-Train" (``eps`` = 0.3, ``adv_weight`` = 0.5): per batch
                ``(1 − adv_weight)·CE(f(x), y) + adv_weight·CE(f(x_FGSM), y)``, x_FGSM one
                L∞ FGSM step of size ``eps`` (pixels in [0, 1]) on the current model
                (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
                Examples", ICLR 2015, Eq. 3; :func:`~spatialadv.defenses.fgsm_adversary`).
``pgd-at``      PGD adversarial training (``eps`` = 0.3, ``steps`` = 40, ``step_size`` = 0.01,
                ``adv_weight`` = 1: the loss on PGD examples only, as Madry, Makelov,
                Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
                Adversarial Attacks", ICLR 2018, §3; :func:`spatialadv.defenses.pgd_adversary`),
                ``warmup`` = 5: ε and the step size ramp linearly to their values over the first
                ``warmup`` epochs (at most the run's epochs; 0: full ε from the first batch). Without
                it, training model B from scratch at ε = 0.3 sat at chance for its first epochs
                and could stay there (collapse, refused by the loop); with it, it did not.
                ``bf16`` = 0: 1 runs the PGD steps under bfloat16 autocast (throughput; see
                :func:`~spatialadv.defenses.pgd_adversary`). The held-out curve
                (``TrainConfig.holdout``) scores float32 PGD at the full ε.
``ens-at``      ensemble adversarial training (``eps`` = 0.3, ``adv_weight`` = 0.5, ``static_epochs`` = 12,
                ``static_seed`` = 0): as ``fgsm-at``, with each batch's FGSM examples crafted in turn on
                the current model or on one of the static models — the architectures of
                :data:`ENSEMBLE_STATIC` other than the one being trained (and that take the image size),
                trained plainly on the same
                data (``DataSpec(name, seed=static_seed)``, with ``max_train`` when the run uses a
                subset; ``static_epochs`` epochs, cached like every
                model) (Tramèr, Kurakin, Papernot, Goodfellow, Boneh & McDaniel, "Ensemble Adversarial
                Training: Attacks and Defenses", ICLR 2018; :func:`spatialadv.defenses.ensemble_adversary`).
``ll-at``       "step l.l." adversarial training (``eps`` = 0.3, ``adv_weight`` = 0.5): as ``fgsm-at``
                with one step *towards* the least-likely class, ``x − eps·sign(∇_x CE(f(x), y_LL))``
                (Kurakin, Goodfellow & Bengio, "Adversarial Examples in the Physical World", ICLR 2017
                workshop; the adversarially trained C4 of Zhang et al., "Smooth Adversarial Examples",
                Table 2; :func:`spatialadv.defenses.ll_adversary`).
``adv-critic``  ``CE(f(x), y) + lam·mean_S softplus(−D(x̂)[f(x̂)]) + lam_cycle·mean_S ‖x − A_f(x̂)‖²`` with x̂ an
                unrolled, differentiable attack to the closest class and D a class-conditional critic
                trained alongside (``lam`` = 0.5, ``lam_cycle`` = 0.01, ``steps`` = 5, ``overshoot`` = 0.05;
                Matyasko & Chau, "Improved Network Robustness with Adversary Critic", NeurIPS 2018;
                :class:`spatialadv.defenses.adv_critic.AdvCriticPenalty`).
``random``      no training: the seeded initialisation (f_rd of the certificate experiments).
``hinge``       multi-class hinge loss (Weston-Watkins, margin 1).
``frobenius``   hinge + ``lam·(‖W‖_F + ‖V‖_F)`` (``lam`` = 0.08), one-hidden-layer nets only.
``spectral``    hinge + ``lam·(‖W‖₂ + ‖V‖₂)`` (``lam`` = 0.09), one-hidden-layer nets only.
``sdp``         CE on the robust logits ``z + eps_train·Q̃[:, y]`` with Q̃ the SDP-dual
                margin bound of every class pair (``eps_train`` = 0.02, ℓ_diff units);
                :class:`spatialadv.certify.penalties.SDPPenalty`, after Raghunathan,
                Steinhardt & Liang, "Certified Defenses against Adversarial Examples", ICLR 2018.
``stadv-at``    CE + ``lam_r·CE(f(x_adv), y)`` with x_adv from a pool of ``pool_size`` stAdv
                (``tau``) adversarial training images regenerated every ``refresh`` epochs
                (``lam_r`` = 0.3, ``tau`` = 0.05, ``refresh`` = 3, ``pool_size`` = 1000);
                :class:`spatialadv.certify.penalties.StAdvPoolPenalty`.
``smoothing``   ``(1 − aug_weight)·CE(f(x), y) + aug_weight·CE(f(x_aug), y)``, x_aug a draw of the smoothing
                distribution: rotation U[±``rotation``°], translation U[±``translation`` px], + N(0, ``sigma``²)
                (``sigma`` = 0.25, ``rotation`` = 30, ``translation`` = 3, ``aug_weight`` = 1);
                :class:`spatialadv.certify.smoothing.SmoothingAugmentation`.
``flow-noise``  as ``smoothing`` with x_aug = ``flow_warp(x, φ)``, φ ~ N(0, ``sigma``²) per flow component
                (pixels; ``sigma`` = 0.5): the distribution of
                :class:`spatialadv.certify.smoothing.FlowSmoothedClassifier` (DeformRS, Alfarra et al. 2022).
==============  ===============================================================================

The certificate objectives (``random`` … ``stadv-at``) are the training
variants of the smooth-flow certificate experiments of *Provable Defenses
against Spatially Transformed Adversarial Inputs: Impossibility and
Possibility Results* (ICLR 2019 submission), §6.8; their mathematics lives in :mod:`spatialadv.certify.penalties`;
:func:`certify_spec` maps the paper's variant names to specs.
New objectives: :func:`~spatialadv.training.register_objective`; an adversarial-training objective with any attack as the adversary:
:func:`~spatialadv.training.register_adversarial_objective`.

The training variants of the provable-defenses paper (§4.2, §6.8; :func:`certify_spec`):

=============  ==============  ================================================================
variant        spec            training
=============  ==============  ================================================================
``normal``     fc-500          ``standard``: cross-entropy, no regulariser (f_nt)
``random``     fc-500          ``random``: no training at all, the seeded initialisation (f_rd)
``frobenius``  fc-500          ``frobenius``: multi-class hinge + ``λ(‖W‖_F + ‖V‖_F)``, λ = 0.08 (f_fro)
``spectral``   fc-500          ``spectral``: multi-class hinge + ``λ(‖W‖₂ + ‖V‖₂)``, λ = 0.09 (f_spe)
``sdp``        fc-500          ``sdp``: cross-entropy on the robust logits ``z + ε_t·Q̃[:, y]``, Q̃ the
                               SDP dual surrogate (:func:`~spatialadv.certify.dual_objective`) of every
                               class pair with trainable dual vectors c, ε_t = 0.02 (f_sdp; after
                               Raghunathan, Steinhardt & Liang, "Certified Defenses against
                               Adversarial Examples", ICLR 2018)
``stn``        stn-fc-500      ``hinge``: multi-class hinge on a spatial-transformer front end
                               (:class:`~spatialadv.models.STNClassifier`) followed by fc-500 (f_stn)
``stadv-at``   fc-500          ``stadv-at``: cross-entropy + ``λ_r · CE(x_adv)`` with x_adv drawn from a
                               pool of stAdv (τ = 0.05) adversarial training images regenerated every
                               3 epochs, λ_r = 0.3 (f_at)
=============  ==============  ================================================================
"""

from __future__ import annotations

from typing import Any

import torch

from ..certify.penalties import SDPPenalty, StAdvPoolPenalty, frobenius_penalty, spectral_penalty
from ..certify.smoothing import SmoothingAugmentation
from ..data import DataSpec
from ..defenses.adv_critic import AdvCriticPenalty
from ..defenses.adversarial import ensemble_adversary, fgsm_adversary, ll_adversary, pgd_adversary
from ..models import build_model
from .config import TrainConfig
from .objectives import Objective, OptionSpec, TrainingParts, hinge_loss, register_objective
from .specs import ModelSpec, load_or_train

__all__ = ["ENSEMBLE_STATIC", "VARIANTS", "certify_spec"]


def _fgsm_at(model, data, config, options) -> TrainingParts:
    return TrainingParts(adversary=fgsm_adversary(options["eps"]), adv_weight=options["adv_weight"], resumable=True)


def _pgd_at(model, data, config, options) -> TrainingParts:
    eps, steps, step, warmup = options["eps"], options["steps"], options["step_size"], options["warmup"]
    bf16 = bool(options["bf16"])
    full = pgd_adversary(eps, steps, step, bf16=bf16)
    evaluator = pgd_adversary(eps, steps, step)  # the held-out curve: float32, full ε
    if warmup == 0:
        return TrainingParts(adversary=full, adv_weight=options["adv_weight"], evaluator=evaluator, resumable=True)
    current = {"adversary": full}
    ramp = min(warmup, config.epochs)  # a run shorter than the warm-up still ends at the full ε

    def schedule(epoch: int) -> dict:
        # ε and the step size grow linearly over the first `ramp` epochs: (epoch + 1) / ramp of their values
        frac = min(1.0, (epoch + 1) / ramp)
        current["adversary"] = full if frac == 1.0 else pgd_adversary(eps * frac, steps, step * frac, bf16=bf16)
        return {"eps": eps * frac}

    return TrainingParts(adversary=lambda m, x, y: current["adversary"](m, x, y), adv_weight=options["adv_weight"],
                         schedule=schedule, evaluator=evaluator, resumable=True)  # `current` is set every epoch


def _ll_at(model, data, config, options) -> TrainingParts:
    return TrainingParts(adversary=ll_adversary(options["eps"]), adv_weight=options["adv_weight"], resumable=True)


#: The static models of ``ens-at``: the stAdv Table 4 architectures, each trained plainly (cross-entropy).
ENSEMBLE_STATIC = ("mnist-a", "mnist-b", "mnist-c")


def _ens_at(model, data, config, options) -> TrainingParts:
    c, s, k = int(data.x.shape[1]), int(data.x.shape[2]), data.num_classes
    shapes = [tuple(p.shape) for p in model.parameters()]
    seed = options["static_seed"]
    spec_data = None
    for cand in (DataSpec(data.name, seed=seed), DataSpec(data.name, seed=seed, max_train=len(data))):
        try:
            train = cand.train()
        except ValueError:
            continue
        if train.x.shape == data.x.shape and torch.equal(train.x, data.x):
            spec_data = cand
            break
    if spec_data is None:
        raise ValueError(f"objective 'ens-at': DataSpec({data.name!r}, seed={seed}) does not reproduce this run's training "
                         "set, so the static models would be trained on other images; pass static_seed = the data seed")
    static = []
    for name in ENSEMBLE_STATIC:
        try:
            with torch.random.fork_rng():
                probe = build_model(name, in_channels=c, image_size=s, num_classes=k)
        except ValueError:
            continue  # the architecture does not take this image size
        if [tuple(p.shape) for p in probe.parameters()] == shapes:
            continue  # Tramèr et al.: the static models differ from the one being trained
        net, _ = load_or_train(ModelSpec(name, spec_data, TrainConfig(epochs=options["static_epochs"], seed=seed)),
                               progress=False)
        static.append(net.eval())
    if not static:
        raise ValueError(f"objective 'ens-at': none of the static architectures {ENSEMBLE_STATIC} other than the trained "
                         f"one accepts {s}×{s} images")
    adversary = ensemble_adversary(static, options["eps"])
    return TrainingParts(adversary=adversary, adv_weight=options["adv_weight"], resumable=True,
                         state=lambda: {"turn": adversary.turn}, load_state=lambda st: setattr(adversary, "turn", st["turn"]))


def _adv_critic(model, data, config, options) -> TrainingParts:
    pen = AdvCriticPenalty(int(data.x[0].numel()), data.num_classes, lam=options["lam"], lam_cycle=options["lam_cycle"],
                           steps=options["steps"], overshoot=options["overshoot"])
    return TrainingParts(penalty=pen, notes=pen.notes)


def _random(model, data, config, options) -> TrainingParts:
    return TrainingParts(trains=False)


def _hinge(model, data, config, options) -> TrainingParts:
    return TrainingParts(criterion=hinge_loss, resumable=True)


def _frobenius(model, data, config, options) -> TrainingParts:
    return TrainingParts(criterion=hinge_loss, penalty=frobenius_penalty(options["lam"]), resumable=True)


def _spectral(model, data, config, options) -> TrainingParts:
    return TrainingParts(criterion=hinge_loss, penalty=spectral_penalty(options["lam"]), resumable=True)


def _sdp(model, data, config, options) -> TrainingParts:
    pen = SDPPenalty(model, tuple(data.x.shape[1:]), eps_train=options["eps_train"], seed=config.seed)
    return TrainingParts(penalty=pen, extra_parameters=(pen.c,))


def _smoothing(model, data, config, options) -> TrainingParts:
    aug = SmoothingAugmentation(sigma=options["sigma"], rotation=options["rotation"], translation=options["translation"],
                                seed=config.seed)
    return TrainingParts(adversary=aug, adv_weight=options["aug_weight"])


def _flow_noise(model, data, config, options) -> TrainingParts:
    aug = SmoothingAugmentation(sigma=0.0, flow_sigma=options["sigma"], seed=config.seed)
    return TrainingParts(adversary=aug, adv_weight=options["aug_weight"])


def _stadv_at(model, data, config, options) -> TrainingParts:
    pen = StAdvPoolPenalty(data, lam_r=options["lam_r"], tau=options["tau"], refresh=options["refresh"],
                           pool_size=options["pool_size"], seed=config.seed)
    return TrainingParts(penalty=pen, notes=lambda: {"pool_success_rates": [float(r) for r in pen.success_rates]})


_NONNEG: dict[str, Any] = dict(low=0.0)
register_objective("fgsm-at", _fgsm_at, description="FGSM adversarial training, Adv-Train (Goodfellow et al. 2015)",
                   options={"eps": OptionSpec(0.3, float, 0.0, 1.0, low_open=True), "adv_weight": OptionSpec(0.5, float, 0.0, 1.0)})
register_objective("pgd-at", _pgd_at, description="PGD adversarial training (Madry et al. 2018)",
                   options={"eps": OptionSpec(0.3, float, 0.0, 1.0, low_open=True), "steps": OptionSpec(40, int, 1.0),
                            "step_size": OptionSpec(0.01, float, 0.0, 1.0, low_open=True),
                            "adv_weight": OptionSpec(1.0, float, 0.0, 1.0), "warmup": OptionSpec(5, int, 0.0),
                            "bf16": OptionSpec(0, int, 0.0, 1.0)})
register_objective("ll-at", _ll_at, description="step l.l. adversarial training (Kurakin et al. 2017)",
                   options={"eps": OptionSpec(0.3, float, 0.0, 1.0, low_open=True), "adv_weight": OptionSpec(0.5, float, 0.0, 1.0)})
register_objective("ens-at", _ens_at, description="ensemble adversarial training: FGSM from the current or a static "
                   "pre-trained model in turn (Tramèr et al. 2018)",
                   options={"eps": OptionSpec(0.3, float, 0.0, 1.0, low_open=True), "adv_weight": OptionSpec(0.5, float, 0.0, 1.0),
                            "static_epochs": OptionSpec(12, int, 1.0), "static_seed": OptionSpec(0, int, 0.0)})
register_objective("adv-critic", _adv_critic, description="CE + an adversary critic and adversarial cycle-consistency "
                   "(Matyasko & Chau 2018)",
                   options={"lam": OptionSpec(0.5, float, **_NONNEG), "lam_cycle": OptionSpec(0.01, float, **_NONNEG),
                            "steps": OptionSpec(5, int, 1.0), "overshoot": OptionSpec(0.05, float, **_NONNEG)})
register_objective("random", _random, description="no training: the seeded initialisation")
register_objective("hinge", _hinge, description="multi-class hinge loss")
register_objective("frobenius", _frobenius, description="hinge + lam (‖W‖_F + ‖V‖_F)",
                   options={"lam": OptionSpec(0.08, float, **_NONNEG)})
register_objective("spectral", _spectral, description="hinge + lam (‖W‖₂ + ‖V‖₂)",
                   options={"lam": OptionSpec(0.09, float, **_NONNEG)})
register_objective("sdp", _sdp, description="CE on SDP-dual robust logits (Raghunathan et al. 2018)",
                   options={"eps_train": OptionSpec(0.02, float, 0.0, low_open=True)})
register_objective("stadv-at", _stadv_at, description="CE + lam_r CE on a refreshed stAdv pool",
                   options={"lam_r": OptionSpec(0.3, float, **_NONNEG), "tau": OptionSpec(0.05, float, **_NONNEG),
                            "refresh": OptionSpec(3, int, 1.0), "pool_size": OptionSpec(1000, int, 1.0)})
register_objective("smoothing", _smoothing, description="CE on the smoothing distribution: random rotation/translation "
                   "+ Gaussian noise (Cohen et al. 2019; TSS, Li et al. 2021)",
                   options={"sigma": OptionSpec(0.25, float, **_NONNEG), "rotation": OptionSpec(30.0, float, 0.0, 180.0),
                            "translation": OptionSpec(3.0, float, **_NONNEG), "aug_weight": OptionSpec(1.0, float, 0.0, 1.0)})
register_objective("flow-noise", _flow_noise, description="CE on warps by a Gaussian flow, the flow-space "
                   "smoothing distribution (DeformRS, Alfarra et al. 2022; sigma in pixels)",
                   options={"sigma": OptionSpec(0.5, float, 0.0, low_open=True),
                            "aug_weight": OptionSpec(1.0, float, 0.0, 1.0)})


#: variant name → (architecture, objective name), see the module docstring.
_VARIANT_SPECS = {
    "normal": ("fc-500", "standard"),
    "random": ("fc-500", "random"),
    "frobenius": ("fc-500", "frobenius"),
    "spectral": ("fc-500", "spectral"),
    "sdp": ("fc-500", "sdp"),
    "stn": ("stn-fc-500", "hinge"),
    "stadv-at": ("fc-500", "stadv-at"),
}
VARIANTS = tuple(_VARIANT_SPECS)


def certify_spec(variant: str, data: DataSpec, train: TrainConfig = TrainConfig(), **options) -> ModelSpec:
    """The :class:`ModelSpec` of a training variant of the provable-defenses paper (the table of :data:`VARIANTS`).

    Args:
        variant: one of :data:`VARIANTS`.
        data: the training data (e.g. ``DataSpec("mnist")``).
        train: optimiser settings; ``train.seed`` seeds initialisation and training.
        **options: the objective's options overriding its defaults (``lam`` for
            frobenius/spectral, ``eps_train`` for sdp, ``lam_r``/``tau``/``refresh``/
            ``pool_size`` for stadv-at).

    Returns:
        A spec for :func:`load_or_train`.

    Raises:
        ValueError: unknown variant, or an option the variant's objective does not have.
    """
    if variant not in _VARIANT_SPECS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    architecture, objective = _VARIANT_SPECS[variant]
    return ModelSpec(architecture, data, train, Objective(objective, **options))
