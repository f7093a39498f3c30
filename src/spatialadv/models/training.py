"""Training: :class:`TrainConfig`, pluggable training objectives (:class:`Objective`) and :func:`train_model`.

An objective says *what* is minimised; :func:`train_model` owns the loop
(Adam, seeded mini-batches, optional shift augmentation). Built-in objectives
(:data:`OBJECTIVES`; options and their defaults in brackets):

==============  ===============================================================================
``standard``    cross-entropy.
``fgsm-at``     "Adv-Train" (``eps`` = 0.3, ``adv_weight`` = 0.5): per batch
                ``(1 − adv_weight)·CE(f(x), y) + adv_weight·CE(f(x_FGSM), y)``, x_FGSM one
                L∞ FGSM step of size ``eps`` (pixels in [0, 1]) on the current model
                (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
                Examples", ICLR 2015, Eq. 3; :func:`spatialadv.defenses.fgsm_adversary`).
``pgd-at``      PGD adversarial training (``eps`` = 0.3, ``steps`` = 40, ``step_size`` = 0.01,
                ``adv_weight`` = 1: the loss on PGD examples only, as Madry, Makelov,
                Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
                Adversarial Attacks", ICLR 2018, §3; :func:`spatialadv.defenses.pgd_adversary`).
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
                :class:`spatialadv.certify.training.SDPPenalty`, after Raghunathan,
                Steinhardt & Liang, "Certified Defenses against Adversarial Examples", ICLR 2018.
``stadv-at``    CE + ``lam_r·CE(f(x_adv), y)`` with x_adv from a pool of ``pool_size`` stAdv
                (``tau``) adversarial training images regenerated every ``refresh`` epochs
                (``lam_r`` = 0.3, ``tau`` = 0.05, ``refresh`` = 3, ``pool_size`` = 1000);
                :class:`spatialadv.certify.training.StAdvPoolPenalty`.
``smoothing``   ``(1 − aug_weight)·CE(f(x), y) + aug_weight·CE(f(x_aug), y)``, x_aug a draw of the smoothing
                distribution: rotation U[±``rotation``°], translation U[±``translation`` px], + N(0, ``sigma``²)
                (``sigma`` = 0.25, ``rotation`` = 30, ``translation`` = 3, ``aug_weight`` = 1);
                :class:`spatialadv.certify.smoothing.SmoothingAugmentation`.
==============  ===============================================================================

The certificate objectives (``random`` … ``stadv-at``) are the training
variants of the smooth-flow certificate experiments of *Provable Defenses
against Spatially Transformed Adversarial Inputs: Impossibility and
Possibility Results* (ICLR 2019 submission), §6.8; their mathematics lives in :mod:`spatialadv.certify.training`.
New objectives: :func:`register_objective`; an adversarial-training objective with any attack as the adversary:
:func:`spatialadv.defenses.register_adversarial_objective`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._validation import check_name
from ..data import Dataset

__all__ = ["TrainConfig", "Objective", "OBJECTIVES", "ObjectiveType", "OptionSpec", "TrainingParts", "register_objective", "hinge_loss",
           "train_model", "accuracy"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_model` (Adam).

    Attributes:
        epochs: passes over the training set, ≥ 1.
        batch_size: images per Adam step, ≥ 1.
        lr: Adam learning rate, > 0.
        weight_decay: Adam's L2 weight decay, ≥ 0.
        shift: > 0 adds random integer translations of up to ``shift`` pixels
            (zero fill) as data augmentation. Off by default: the papers' models
            are trained without it, and translation augmentation makes a model
            markedly more robust to flow attacks (on MNIST-5k model B, ±2 px
            shifts left clean accuracy at 97.3 % but cut targeted stAdv success
            from 99.6 % to 97.4 %).
        seed: seed of the initialisation (see :func:`spatialadv.models.load_or_train`),
            the mini-batch order, the augmentation and dropout.

    Raises:
        ValueError: a field out of its range (the message names it).
        TypeError: an int field given as a non-int.
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    shift: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "shift", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TrainConfig.{name} must be an int, got {v!r}")
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"TrainConfig.{name} must be a finite float, got {v!r}")
        for name, ok, rng in (("epochs", self.epochs >= 1, "≥ 1"), ("batch_size", self.batch_size >= 1, "≥ 1"),
                              ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, "≥ 0"),
                              ("shift", self.shift >= 0, "≥ 0")):
            if not ok:
                raise ValueError(f"TrainConfig.{name} must be {rng}, got {getattr(self, name)!r}")


# ------------------------------------------------------------------------------------------- objectives
@dataclass(frozen=True)
class OptionSpec:
    """One option of an objective: default, type (``float`` or ``int``) and the accepted interval.

    ``low`` / ``high`` bound the value (``None``: unbounded); ``low_open``
    excludes ``low`` itself.
    """

    default: float | int
    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        """The accepted values in words, e.g. ``"a float in (0, ∞)"``, for error messages."""
        lo = "(-∞" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "∞)" if self.high is None else f"{self.high:g}]"
        return f"{'an int' if self.kind is int else 'a float'} in {lo}, {hi}"

    def check(self, objective: str, name: str, value: Any) -> float | int:
        """Validate ``value`` and return it converted to ``kind``.

        Args:
            objective: the objective's name, used in the error message.
            name: the option's name, used in the error message.
            value: the value given for the option (a bool is refused).

        Returns:
            ``kind(value)``.

        Raises:
            ValueError: not a number of the right kind, not finite, or outside the interval.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.kind is int and not isinstance(value, int)):
            raise ValueError(f"objective {objective!r}: option {name!r} must be {self.describe()}, got {value!r}")
        value = self.kind(value)
        bad = (not math.isfinite(value)
               or (self.low is not None and (value <= self.low if self.low_open else value < self.low))
               or (self.high is not None and value > self.high))
        if bad:
            raise ValueError(f"objective {objective!r}: option {name!r} must be {self.describe()}, got {value!r}")
        return value


@dataclass
class TrainingParts:
    """What an objective plugs into :func:`train_model`'s loop for one run.

    Per batch ``(x, y)`` (``(B, C, H, W)``, ``(B,)``) the loss is
    ``criterion(f(x), y)``; with ``adversary`` it becomes
    ``(1 − adv_weight)·criterion(f(x), y) + adv_weight·criterion(f(x_adv), y)``,
    ``x_adv = adversary(model, x, y)`` (detached); then ``penalty(model, x, y,
    logits, epoch)`` is added (``epoch`` counts from 0).

    Attributes:
        criterion: ``(logits (B, K), y (B,)) -> scalar``.
        penalty: optional ``(model, x, y, logits, epoch) -> scalar``.
        adversary: optional ``(model, x, y) -> x_adv (B, C, H, W)``; must leave no
            gradient on the model's parameters.
        adv_weight: weight of the adversarial loss, in [0, 1].
        extra_parameters: further tensors optimised by the same Adam (e.g. dual variables).
        trains: False skips the loop (the model keeps its initialisation).
        notes: optional ``() -> dict`` (JSON-able) called after training, e.g.
            ``{"pool_success_rates": [...]}``; stored in the checkpoint.
    """

    criterion: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy
    penalty: Callable[[nn.Module, Tensor, Tensor, Tensor, int], Tensor] | None = None
    adversary: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    adv_weight: float = 0.5
    extra_parameters: tuple = ()
    trains: bool = True
    notes: Callable[[], dict] | None = None


@dataclass(frozen=True)
class ObjectiveType:
    """A registered objective: its option schema and a builder of :class:`TrainingParts`.

    ``build(model, data, config, options) -> TrainingParts`` is called once per
    training run, on the freshly built model, with ``options`` complete (defaults filled).
    """

    name: str
    build: Callable[[nn.Module, Dataset, TrainConfig, dict], TrainingParts]
    options: dict[str, OptionSpec] = field(default_factory=dict)
    description: str = ""


OBJECTIVES: dict[str, ObjectiveType] = {}


def register_objective(name: str, build: Callable[[nn.Module, Dataset, TrainConfig, dict], TrainingParts], *,
                       options: dict[str, OptionSpec] | None = None, description: str = "") -> ObjectiveType:
    """Add a training objective usable as ``Objective(name, **options)``.

    Args:
        name: the objective's name (part of model cache keys).
        build: ``(model, data, config, options) -> TrainingParts``.
        options: option name → :class:`OptionSpec` (JSON-able numbers only).
        description: one line for listings.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` already registered, or not a safe file-name part
            (``[A-Za-z0-9._-]``, no ``..``; it becomes part of cache keys).
    """
    check_name(name, "objective name")
    if name in OBJECTIVES:
        raise ValueError(f"objective {name!r} is already registered")
    OBJECTIVES[name] = ObjectiveType(name, build, dict(options or {}), description)
    return OBJECTIVES[name]


class Objective:
    """A training objective by name with its options: immutable, hashable, JSON-able.

    Missing options take the objective's defaults, so ``Objective("fgsm-at")``
    equals ``Objective("fgsm-at", eps=0.3)`` (and gives the same cache key).
    Float options accept ints (``eps=1`` is stored as 1.0).

    Args:
        name: a key of :data:`OBJECTIVES` (see the module docstring).
        **options: the objective's options.

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: unknown objective or a name that is not a safe file-name
            part (``[A-Za-z0-9._-]``, no ``..``), unknown option, or an option of the
            wrong type or out of range (the message names the option and the
            accepted range).

    Example:
        >>> Objective("fgsm-at", eps=0.1).options
        {'adv_weight': 0.5, 'eps': 0.1}
        >>> Objective("sdp").to_dict()
        {'name': 'sdp', 'options': {'eps_train': 0.02}}
    """

    __slots__ = ("_name", "_options")

    def __init__(self, name: str, **options: Any) -> None:
        check_name(name, "Objective.name")
        if name not in OBJECTIVES:
            raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
        schema = OBJECTIVES[name].options
        unknown = sorted(set(options) - set(schema))
        if unknown:
            accepted = ", ".join(sorted(schema)) or "none"
            raise ValueError(f"objective {name!r} has no option {unknown[0]!r}; its options are: {accepted}")
        full = {k: spec.check(name, k, options.get(k, spec.default)) for k, spec in sorted(schema.items())}
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_options", tuple(full.items()))

    @property
    def name(self) -> str:
        """The objective's registry name."""
        return self._name

    @property
    def options(self) -> dict:
        """All options (defaults filled), sorted by name; a fresh dict."""
        return dict(self._options)

    def __setattr__(self, key, value):
        raise AttributeError("Objective is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, Objective) and (self._name, self._options) == (other._name, other._options)

    def __hash__(self) -> int:
        return hash((self._name, self._options))

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self._options)
        return f"Objective({self._name!r}{opts})"

    def __reduce__(self):
        return (_objective_from_items, (self._name, self._options))

    def to_dict(self) -> dict:
        """``{"name": str, "options": {option: number}}``, JSON-able."""
        return {"name": self._name, "options": self.options}

    @classmethod
    def from_dict(cls, d: dict) -> "Objective":
        """Inverse of :meth:`to_dict`."""
        return cls(d["name"], **d.get("options", {}))


def _objective_from_items(name, items):
    return Objective(name, **dict(items))


def hinge_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Multi-class hinge loss, margin 1 (:func:`torch.nn.functional.multi_margin_loss`), mean over the batch.

    Args:
        logits: ``(B, K)``.
        y: ``(B,)`` int64 labels in [0, K).

    Returns:
        A scalar tensor.
    """
    return nn.functional.multi_margin_loss(logits, y)


def _standard(model, data, config, options) -> TrainingParts:
    return TrainingParts()


def _fgsm_at(model, data, config, options) -> TrainingParts:
    from ..defenses.adversarial import fgsm_adversary

    return TrainingParts(adversary=fgsm_adversary(options["eps"]), adv_weight=options["adv_weight"])


def _pgd_at(model, data, config, options) -> TrainingParts:
    from ..defenses.adversarial import pgd_adversary

    return TrainingParts(adversary=pgd_adversary(options["eps"], options["steps"], options["step_size"]),
                         adv_weight=options["adv_weight"])


def _ll_at(model, data, config, options) -> TrainingParts:
    from ..defenses.adversarial import ll_adversary

    return TrainingParts(adversary=ll_adversary(options["eps"]), adv_weight=options["adv_weight"])


#: The static models of ``ens-at``: the stAdv Table 4 architectures, each trained plainly (cross-entropy).
ENSEMBLE_STATIC = ("mnist-a", "mnist-b", "mnist-c")


def _ens_at(model, data, config, options) -> TrainingParts:
    from ..data import DataSpec
    from ..defenses.adversarial import ensemble_adversary
    from .architectures import build_model
    from .cache import ModelSpec, load_or_train

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
    return TrainingParts(adversary=ensemble_adversary(static, options["eps"]), adv_weight=options["adv_weight"])


def _adv_critic(model, data, config, options) -> TrainingParts:
    from ..defenses.adv_critic import AdvCriticPenalty

    pen = AdvCriticPenalty(int(data.x[0].numel()), data.num_classes, lam=options["lam"], lam_cycle=options["lam_cycle"],
                           steps=options["steps"], overshoot=options["overshoot"])
    return TrainingParts(penalty=pen, notes=pen.notes)


def _random(model, data, config, options) -> TrainingParts:
    return TrainingParts(trains=False)


def _hinge(model, data, config, options) -> TrainingParts:
    return TrainingParts(criterion=hinge_loss)


def _frobenius(model, data, config, options) -> TrainingParts:
    from ..certify.training import frobenius_penalty

    return TrainingParts(criterion=hinge_loss, penalty=frobenius_penalty(options["lam"]))


def _spectral(model, data, config, options) -> TrainingParts:
    from ..certify.training import spectral_penalty

    return TrainingParts(criterion=hinge_loss, penalty=spectral_penalty(options["lam"]))


def _sdp(model, data, config, options) -> TrainingParts:
    from ..certify.training import SDPPenalty

    pen = SDPPenalty(model, tuple(data.x.shape[1:]), eps_train=options["eps_train"], seed=config.seed)
    return TrainingParts(penalty=pen, extra_parameters=(pen.c,))


def _smoothing(model, data, config, options) -> TrainingParts:
    from ..certify.smoothing import SmoothingAugmentation

    aug = SmoothingAugmentation(sigma=options["sigma"], rotation=options["rotation"], translation=options["translation"],
                                seed=config.seed)
    return TrainingParts(adversary=aug, adv_weight=options["aug_weight"])


def _stadv_at(model, data, config, options) -> TrainingParts:
    from ..certify.training import StAdvPoolPenalty

    pen = StAdvPoolPenalty(data, lam_r=options["lam_r"], tau=options["tau"], refresh=options["refresh"],
                           pool_size=options["pool_size"], seed=config.seed)
    return TrainingParts(penalty=pen, notes=lambda: {"pool_success_rates": [float(r) for r in pen.success_rates]})


_NONNEG = dict(low=0.0)
register_objective("standard", _standard, description="cross-entropy")
register_objective("fgsm-at", _fgsm_at, description="FGSM adversarial training, Adv-Train (Goodfellow et al. 2015)",
                   options={"eps": OptionSpec(0.3, float, 0.0, 1.0, low_open=True), "adv_weight": OptionSpec(0.5, float, 0.0, 1.0)})
register_objective("pgd-at", _pgd_at, description="PGD adversarial training (Madry et al. 2018)",
                   options={"eps": OptionSpec(0.3, float, 0.0, 1.0, low_open=True), "steps": OptionSpec(40, int, 1.0),
                            "step_size": OptionSpec(0.01, float, 0.0, 1.0, low_open=True),
                            "adv_weight": OptionSpec(1.0, float, 0.0, 1.0)})
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


# ------------------------------------------------------------------------------------------- the loop
def _random_shift(x: Tensor, shift: int, gen: torch.Generator) -> Tensor:
    if shift == 0:
        return x
    n = x.shape[0]
    pad = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
    h, w = x.shape[2:]
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on images ``x (N, C, H, W)`` with labels ``y (N,)``, in [0, 1].

    The model's mode is not changed; an empty set gives 0.
    """
    correct = 0
    dev = next(iter(model.parameters()), x).device
    for i in range(0, len(x), batch_size):
        pred = model(x[i : i + batch_size].to(dev)).argmax(1)
        correct += int((pred == y[i : i + batch_size].to(dev)).sum())
    return correct / max(len(x), 1)


def train_model(model: nn.Module, data: Dataset, config: TrainConfig = TrainConfig(), *,
                objective: Objective = Objective("standard"), progress: bool = True) -> dict:
    """Train ``model`` in place with Adam on ``objective``; leaves it in eval mode.

    Deterministic for a given ``config.seed`` on one machine, given the global
    RNG state (dropout draws from it; seeded initialisation is the caller's
    job: :func:`spatialadv.models.load_or_train` seeds before building).

    Under ``torchrun`` (:mod:`spatialadv.distributed`) the loop is
    data-parallel: every process draws the same permutation and shifts, takes
    rows ``rank, rank + world, ...`` of each global batch of
    ``config.batch_size``, and :class:`~torch.nn.parallel.DistributedDataParallel`
    averages the gradients (the objective's extra parameters are averaged
    explicitly), so each step uses the same global batch as one process; the
    weights match a single-process run up to floating-point reduction order
    and per-process dropout draws.

    Args:
        model: maps ``(B, C, H, W)`` images in [0, 1] to logits ``(B, K)``.
        data: the training set.
        config: epochs, batch size, learning rate, augmentation, seed.
        objective: what is minimised (:class:`Objective`; the module docstring lists them).
        progress: show a tqdm bar over epochs.

    Returns:
        The objective's notes, a JSON-able dict (``{}`` for most objectives;
        ``{"pool_success_rates": [...]}`` for ``stadv-at``).

    Raises:
        TypeError: ``objective`` is not an :class:`Objective`, or the objective
            needs an architecture the model does not have (e.g. ``sdp`` on a
            convolutional net).
    """
    from tqdm.auto import tqdm

    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective, got {type(objective).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    parts = OBJECTIVES[objective.name].build(model, data, config, objective.options)
    if parts.trains:
        from .. import distributed

        # data-parallel under torchrun: every rank draws the same permutation and shifts, takes the
        # rows r, r + w, ... of each global batch, and DistributedDataParallel averages the gradients
        rank, world = distributed.rank(), distributed.world_size()
        dev = next(iter(model.parameters()), data.x).device  # batches follow the model (CPU or CUDA)
        net = model
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.Adam([*model.parameters(), *parts.extra_parameters], lr=config.lr, weight_decay=config.weight_decay)
        n = len(data)
        model.train()
        bar = tqdm(range(config.epochs), desc=f"train {data.name} {objective.name}", disable=not progress or rank > 0,
                   unit="epoch")
        for epoch in bar:
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                xb, yb = _random_shift(data.x[idx], config.shift, gen).to(dev), data.y[idx].to(dev)
                if world > 1:
                    if len(idx) < world:  # a last batch too small to split: skipped by every rank alike
                        continue
                    xb, yb = xb[rank::world], yb[rank::world]
                logits = net(xb)
                loss = parts.criterion(logits, yb)
                if parts.adversary is not None:
                    xa = parts.adversary(model, xb, yb).detach()
                    loss = (1 - parts.adv_weight) * loss + parts.adv_weight * parts.criterion(net(xa), yb)
                if parts.penalty is not None:
                    loss = loss + parts.penalty(model, xb, yb, logits, epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.all_reduce_mean([p.grad for p in parts.extra_parameters if p.grad is not None])
                opt.step()
                total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{total / n:.4f}")
    model.eval()
    return parts.notes() if parts.notes is not None else {}
