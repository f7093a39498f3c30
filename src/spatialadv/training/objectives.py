"""Training objectives: what :func:`~spatialadv.training.train_model` minimises, by name, with validated options.

An :class:`Objective` (``Objective("fgsm-at", eps=0.3)``) names a registered
:class:`ObjectiveType` — its option schema (:class:`OptionSpec`) and a
builder of the :class:`TrainingParts` it plugs into the training loop
(criterion, adversary, penalty, extra parameters). The objective and its
options (defaults filled) enter a model's cache key
(:func:`spatialadv.training.model_key`).

The built-in objectives (``fgsm-at``, ``pgd-at``, ``sdp``, ``smoothing``, …)
are registered by :mod:`spatialadv.training.builtin`, which names the
defenses' adversaries and certify's penalties; only ``standard``
(cross-entropy, the default) is registered here. New objectives:
:func:`register_objective`; an adversarial-training objective with any attack
as the adversary: :func:`register_adversarial_objective`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from .._validation import check_bool, check_name
from ..attacks.base import Attack
from ..data import Dataset
from ..defenses.adversarial import attack_adversary
from .config import TrainConfig

__all__ = ["Objective", "OBJECTIVES", "ObjectiveType", "OptionSpec", "TrainingParts", "register_objective",
           "register_adversarial_objective", "hinge_loss"]


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
    """What an objective plugs into :func:`~spatialadv.training.train_model`'s loop for one run.

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
        schedule: optional ``(epoch) -> dict | None`` called at the start of each
            epoch (from 0), e.g. to ramp the adversary's ε; the dict it returns
            (JSON-able, e.g. ``{"eps": 0.15}``) is recorded in that epoch's
            learning-curve point.
        evaluator: optional ``(model, x, y) -> x_adv`` scoring the held-out
            learning curve (:attr:`TrainConfig.holdout`); default ``adversary``.
            Use it when the training adversary is weakened by a schedule.
        resumable: True when the run can continue from a per-epoch resume file
            (``train_model(checkpoint=...)``): the parts keep no state across
            epochs beyond the model, the optimiser (``extra_parameters``
            included), the RNGs and what ``state`` returns. False (the default,
            safe for objectives that do not say) makes every run start at epoch 1.
        state: optional ``() -> dict`` of the objective's own state between
            epochs (e.g. a turn counter), saved in the resume file.
        load_state: ``(dict) -> None`` restoring what ``state`` returned.
    """

    criterion: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy
    penalty: Callable[[nn.Module, Tensor, Tensor, Tensor, int], Tensor] | None = None
    adversary: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    adv_weight: float = 0.5
    extra_parameters: tuple = ()
    trains: bool = True
    notes: Callable[[], dict] | None = None
    schedule: Callable[[int], dict | None] | None = None
    evaluator: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None
    resumable: bool = False
    state: Callable[[], dict] | None = None
    load_state: Callable[[dict], None] | None = None


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
        name: a key of :data:`OBJECTIVES` (:mod:`spatialadv.training.builtin` lists the built-in ones).
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
    _name: str
    _options: tuple[tuple[str, Any], ...]

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
    return TrainingParts(resumable=True)


register_objective("standard", _standard, description="cross-entropy")


def register_adversarial_objective(name: str, make_attack: Callable[..., Attack | Callable], *, options: dict | None = None,
                                   adv_weight: float = 0.5, eval_mode: bool = True, description: str = ""):
    """Register a training objective whose adversary is an attack built from the objective's options.

    The objective's loss per batch is ``(1 − adv_weight)·CE(f(x), y) +
    adv_weight·CE(f(x_adv), y)`` with ``x_adv`` from ``make_attack(**options)``
    (an :class:`~spatialadv.attacks.base.Attack`, wrapped by
    :func:`~spatialadv.defenses.attack_adversary`, or directly an adversary callable ``(model, x, y)
    -> x_adv``). The options — the attack's hyper-parameters, plus
    ``adv_weight`` — enter the cache key of every model trained with it::

        from spatialadv.attacks import PGD
        from spatialadv.training import OptionSpec, register_adversarial_objective
        register_adversarial_objective(
            "pgd-l2-at", lambda eps: PGD(norm="l2", eps=eps, steps=10, step_size=eps / 4),
            options={"eps": OptionSpec(2.0, float, 0.0, low_open=True)})
        spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(), Objective("pgd-l2-at", eps=1.5))

    Args:
        name: the objective's name (a safe file-name part, not yet registered).
        make_attack: ``(**options) -> Attack`` (or adversary callable), called once per training run.
        options: :class:`OptionSpec` per keyword of ``make_attack``.
        adv_weight: default weight of the adversarial loss, in [0, 1] (an option of the objective).
        eval_mode: passed to :func:`~spatialadv.defenses.attack_adversary`.
        description: one line for listings.

    Returns:
        The registered :class:`ObjectiveType`.

    Raises:
        ValueError: ``name`` already registered or unsafe; ``options`` names ``adv_weight``.
        TypeError: ``make_attack`` not callable.
    """
    if not callable(make_attack):
        raise TypeError(f"make_attack must be callable, got {type(make_attack).__name__}")
    options = dict(options or {})
    if "adv_weight" in options:
        raise ValueError("options must not name 'adv_weight': it is added by register_adversarial_objective")
    check_bool(eval_mode, "eval_mode")
    attack_options = tuple(options)

    def build(model, data, config, opts) -> TrainingParts:
        made = make_attack(**{k: opts[k] for k in attack_options})
        adversary = attack_adversary(made, eval_mode=eval_mode) if isinstance(made, Attack) else made
        if not callable(adversary):
            raise TypeError(f"objective {name!r}: make_attack returned {type(made).__name__}, not an Attack or callable")
        return TrainingParts(adversary=adversary, adv_weight=opts["adv_weight"])

    options["adv_weight"] = OptionSpec(adv_weight, float, 0.0, 1.0)
    return register_objective(name, build, options=options, description=description)
