"""The attack contract: immutable attack objects returning :class:`AttackResult`."""

from __future__ import annotations

import contextvars
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_images, check_index, check_labels, check_logits, warn_if_training
from ..threats import Threat

__all__ = ["AttackResult", "Attack", "margin", "criterion", "predict_logits", "input_grad", "model_input_error",
           "warn_if_probabilities", "deprecated_keyword"]


@dataclass(frozen=True)
class AttackResult:
    """What every attack returns. All tensors are per example (first dim N).

    Attributes:
        x_adv: adversarial images ``(N, C, H, W)`` in [0, 1]; equal to the input
            where ``success`` is False.
        success: ``(N,)`` bool, recomputed from the model on ``x_adv``:
            ``argmax f(x_adv) == target`` (targeted) or ``!= y`` (untargeted).
        pred: ``(N,)`` int64 predicted class on ``x_adv``.
        size: ``(N,)`` the perturbation's size in the threat model's units
            (``unit``; the attack's :attr:`Attack.threat` ``.measure``); 0
            where the attack failed.
        unit: name of ``size``'s unit, the threat's ``unit``: ``"linf"``,
            ``"l2"`` (pixel values in [0, 1]), ``"flow_tv"`` (stAdv Eq. 5,
            pixels), ``"flow_smoothness"`` (ℓ_diff, pixels), ``"l0"`` (changed
            features), ``"rt_box"`` or ``"affine_linf_box"`` (unitless
            fractions of the budget box); see
            :mod:`spatialadv.threats`.
        grad_evals: ``(N,)`` int64, **model gradient evaluations** per example:
            each forward+backward pass of the model through which the example
            went (line-search trials and restarts included). 0 for attacks
            that use no gradient (STM, a fitted generator).
        time_s: wall-clock seconds of the whole call.
        targeted: whether ``target`` was used.
        target: ``(N,)`` target classes, or None.
        flow: ``(N, 2, H, W)`` flow in pixels (spatial attacks), zero where failed.
        delta: ``(N, C, H, W)`` additive perturbation ``x_adv − x`` (L_p attacks).
        theta: ``(N, 2, 3)`` affine transform in **normalised** coordinates
            (:func:`~spatialadv.ops.affine_warp` convention), the identity where
            failed (STM, SdpAdv/SdAdv).
        eta: ``(N, C, H, W)`` additive perturbation applied after the affine
            warp (SdpAdv/AdvGAN), zero where failed.
        params: the threat model's parameters per example (first dim N), the
            identity where failed (``theta`` → θ_I, every other key → 0):
            STM ``angle`` ``(N,)`` degrees and ``shift`` ``(N, 2)`` pixels
            (x then y); SdpAdv/SdAdv/AdvGAN ``theta`` ``(N, 2, 3)``
            (normalised coordinates) and ``eta_linf`` ``(N,)`` ([0, 1] pixel
            units); stAdv with a τ search ``tau`` ``(N,)`` (the τ of the
            returned flow). Empty for the L_p attacks (``delta`` is the
            parameter) and flow attacks without per-example τ. Keys an
            attack lists in its ``solver_params`` describe the solver, not
            the perturbation, and keep their value where failed (stAdv
            ``steps`` ``(N,)``: L-BFGS steps used).
        forward_evals: ``(N,)`` int64, **forward-only** model evaluations per
            example made by the attack's search (STM candidates, the final
            evaluation of C&W's last iterate, success checks between τ runs).
            The evaluations every call makes on its own — the class-count
            probe on ``x`` and the success recomputation on ``x_adv`` — are
            not counted, nor are the forward passes inside ``grad_evals``.
    """

    x_adv: Tensor
    success: Tensor
    pred: Tensor
    size: Tensor
    unit: str
    grad_evals: Tensor
    time_s: float
    targeted: bool
    target: Tensor | None = None
    flow: Tensor | None = None
    delta: Tensor | None = None
    theta: Tensor | None = None
    eta: Tensor | None = None
    params: dict[str, Tensor] = field(default_factory=dict)
    forward_evals: Tensor | None = None

    @property
    def success_rate(self) -> float:
        """Fraction of examples with ``success`` (all examples count)."""
        return float(self.success.float().mean())


def predict_logits(model: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    """Run ``model`` and validate its logits ``(N, K)``."""
    return check_logits(model(x), x.shape[0], num_classes)


def _first_tensor(model: nn.Module) -> Tensor | None:
    """The model's first floating-point parameter or buffer (None when it has none)."""
    if not isinstance(model, nn.Module):
        return None
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t
    return None


def model_input_error(model: nn.Module, x: Tensor, error: RuntimeError) -> Exception:
    """Turn a model's ``RuntimeError`` on ``x`` into a ``TypeError``/``ValueError`` naming ``x`` and the model.

    Args:
        model: the model that raised.
        x: the images ``(N, C, H, W)`` it was called on.
        error: the ``RuntimeError`` it raised (raise the result ``from error``).

    Returns:
        ``TypeError`` for a dtype mismatch between ``x`` and the model's
        parameters; ``ValueError`` for a device mismatch or anything else
        (typically channels or image size the model does not accept).
    """
    name = type(model).__name__
    ref = _first_tensor(model)
    msg = str(error).split("\n")[0]
    if ref is not None and ref.dtype != x.dtype:
        return TypeError(f"x has dtype {x.dtype} but the model ({name}) has {ref.dtype} weights; convert one of them "
                         f"(x.to({ref.dtype}) or model.to({x.dtype})). The model raised: {msg}")
    if ref is not None and ref.device != x.device:
        return ValueError(f"x is on device {x.device} but the model ({name}) is on {ref.device}; move one of them "
                          f"(x.to({str(ref.device)!r}) or model.to({str(x.device)!r})). The model raised: {msg}")
    return ValueError(f"the model ({name}) failed on x of shape {tuple(x.shape)} (N, C, H, W), dtype {x.dtype}, "
                      f"device {x.device}; check that x has the channels and image size the model expects. "
                      f"The model raised: {msg}")


def warn_if_probabilities(logits: Tensor, *, tol: float = 1e-4) -> bool:
    """Warn (``UserWarning``) when a model's output ``(N, K)`` looks like probabilities, not logits.

    AutoAttack's check: every entry in [0, 1] and every row summing to 1
    within ``tol``. Attacks expect logits; on probabilities margins and
    gradients saturate and attacks fail silently.

    Args:
        logits: the model's output ``(N, K)``.
        tol: tolerance on the row sums.

    Returns:
        True when the warning was issued.
    """
    with torch.no_grad():
        probs = bool((logits >= 0).all() and (logits <= 1).all()
                     and ((logits.sum(1) - 1).abs() <= tol).all())
    if probs:
        warnings.warn("model output looks like probabilities, attacks expect logits (AutoAttack's check): every "
                      "row is in [0, 1] and sums to 1; remove the model's final softmax", UserWarning, stacklevel=3)
    return probs


def margin(logits: Tensor, y: Tensor, target: Tensor | None, kappa: float = 0.0) -> Tensor:
    """C&W / stAdv margin loss per example (stAdv Eq. 3), ``(N,)``.

    Targeted: ``max(max_{i≠t} Z_i − Z_t, −κ)``; untargeted:
    ``max(Z_y − max_{i≠y} Z_i, −κ)``. The max over other classes masks the
    reference class with ``−inf`` (never 0), so negative logits are handled.
    The loss is ≤ 0 exactly when the attack criterion holds (up to ties).
    """
    ref = target if target is not None else y
    z_ref = logits.gather(1, ref[:, None]).squeeze(1)
    other = logits.masked_fill(torch.nn.functional.one_hot(ref, logits.shape[1]).bool(), float("-inf")).amax(1)
    diff = other - z_ref if target is not None else z_ref - other
    return diff.clamp(min=-kappa)


def criterion(pred: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The attack criterion per example, ``(N,)`` bool.

    ``pred == target`` (targeted) or ``pred != y`` (untargeted), for predicted
    classes ``pred`` ``(N,)``.
    """
    return pred == target if target is not None else pred != y


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base class of the attacks.

    Subclasses are frozen dataclasses of hyper-parameters that implement
    :meth:`_run`; calling the attack validates inputs, runs it, and recomputes
    success from the model.

    Call: ``attack(model, x, y, *, target=None, index=None) -> AttackResult``.

    Args (of the call):
        model: ``nn.Module`` mapping ``(N, C, H, W)`` images in [0, 1] to logits
            ``(N, K)``. Its train/eval mode is never changed (a warning is
            issued in train mode); its parameters receive no gradients.
        x: images ``(N, C, H, W)`` float in [0, 1]; never modified.
        y: true labels ``(N,)`` int64 in [0, K).
        target: optional target classes ``(N,)`` in [0, K), each ≠ ``y``.
        index: optional identities of the examples, integer ``(N,)`` or
            ``(N, k)`` (e.g. rows ``(dataset index, target)``); default
            ``arange(N)``, i.e. row ``[i]`` for position ``i``. Every random
            draw of an example (random starts, random candidates) comes from a
            generator seeded by ``(seed, *row)`` only
            (:func:`spatialadv.threats.example_generator`), so an example's
            result depends on its identity, never on its position or its
            batch-mates; pass the dataset index to make a result reproducible
            across batchings. Deterministic attacks ignore it.

    Raises:
        TypeError, ValueError: see :mod:`spatialadv._validation`; also a
            target equal to the label, an attack that does not support
            targeted mode, or a malformed ``index``
            (:func:`~spatialadv._validation.check_index`).
    """

    #: ``params`` keys that describe the solver's work (kept for failed examples too)
    solver_params: ClassVar[tuple[str, ...]] = ()
    #: True for attacks whose first gradient is taken at ``x`` itself (no random start): the input check's
    #: forward then runs with autograd on and :func:`take_check_forward` hands it to that first gradient,
    #: which saves one forward pass per call (the gradient is the same bit for bit)
    reuses_check_forward: ClassVar[bool] = False

    @property
    def threat(self) -> Threat:
        """The threat model: the source of projections, random starts, ``size`` and its ``unit``.

        Every attack defines it (:mod:`spatialadv.threats`);
        ``AttackResult.unit`` is ``threat.unit``.

        Raises:
            NotImplementedError: in the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must define its threat model (the threat property)")

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, *, target: Tensor | None = None,
                 index: Tensor | None = None) -> AttackResult:
        """Validate the inputs, run the attack and recompute success from ``model``.

        The arguments are those of the class docstring ("Args (of the call)").

        Returns:
            :class:`AttackResult` of the batch; ``x_adv`` equals ``x`` and
            ``size`` is 0 where the attack failed.

        Raises:
            TypeError, ValueError: invalid images, labels, targets (a target
                equal to the label included) or ``index``; see the class docstring.
            TypeError: the model raised a ``RuntimeError`` on ``x`` because of a
                dtype mismatch (e.g. float64 images, float32 weights).
            ValueError: the model raised a ``RuntimeError`` on ``x`` for
                another reason: ``x`` on another device than the model, or
                ``x``'s channels or image size not those the model expects.
                The original error is kept as ``__cause__``.

        Warns:
            UserWarning: the model's output on ``x`` looks like probabilities
                (every row in [0, 1] and summing to 1 within 1e-4; AutoAttack's
                check), once per call: attacks expect logits (a softmax
                saturates margins and gradients).
        """
        check_images(x)
        warn_if_training(model)
        n = x.shape[0]
        index = check_index(index, n)
        reuse = self.reuses_check_forward
        xg = x.detach().requires_grad_(True) if reuse else x
        with torch.enable_grad() if reuse else torch.no_grad():
            try:
                out = model(xg)
            except RuntimeError as e:  # dtype/device/shape mismatch between x and the model
                raise model_input_error(model, x, e) from e
        logits = check_logits(out, n)
        num_classes = logits.shape[1]
        warn_if_probabilities(logits)
        y = check_labels(y, n, num_classes).to(x.device)
        if target is not None:
            target = check_labels(target, n, num_classes, name="target").to(x.device)
            if bool((target == y).any()):
                raise ValueError("target must differ from the true label y for every example")
        t0 = time.perf_counter()
        x_in = x.detach()
        token = _CHECK_FORWARD.set([x_in, xg, out] if reuse and out.requires_grad else None)
        try:
            parts = self._run(model, x_in, y, target, index)
        finally:
            _CHECK_FORWARD.reset(token)
        return self._finish(model, x_in, y, target, parts, time.perf_counter() - t0, num_classes,
                            logits.detach().argmax(1))

    # -- to implement -------------------------------------------------------------------------
    def _run(self, model: nn.Module, x: Tensor, y: Tensor, target: Tensor | None, index: Tensor) -> dict:
        """Run the attack proper on validated inputs; subclasses implement it.

        Return a dict with ``x_adv`` ``(N, C, H, W)``, ``grad_evals`` ``(N,)`` (model gradient
        evaluations) and optionally ``forward_evals`` ``(N,)``, ``flow``, ``theta``,
        ``eta`` and ``params`` (dict of per-example tensors). ``index`` is the
        validated ``(N, k)`` int64 CPU tensor of identities. Must not modify ``x``.
        """
        raise NotImplementedError

    def _size(self, x: Tensor, result: AttackResult) -> Tensor:
        """Size ``(N,)`` of the result's perturbation in the threat's units (before masking)."""
        return self.threat.measure(x, result)

    # -- shared -------------------------------------------------------------------------------
    def _finish(self, model, x, y, target, parts, elapsed, num_classes, clean_pred: Tensor) -> AttackResult:
        x_adv = parts["x_adv"].detach().clamp(0, 1)
        with torch.no_grad():
            pred = predict_logits(model, x_adv, num_classes).argmax(1)
        success = criterion(pred, y, target)
        keep = success.view(-1, 1, 1, 1)
        x_adv = torch.where(keep, x_adv, x)
        pred = torch.where(success, pred, clean_pred)  # failures: the prediction on x (the input check's forward)
        flow = parts.get("flow")
        if flow is not None:
            flow = torch.where(keep, flow.detach(), torch.zeros_like(flow))
        theta, eta = parts.get("theta"), parts.get("eta")
        if theta is not None:
            eye = torch.zeros_like(theta)
            eye[:, 0, 0] = 1
            eye[:, 1, 1] = 1
            theta = torch.where(success.view(-1, 1, 1), theta.detach(), eye)
        if eta is not None:
            eta = torch.where(keep, eta.detach(), torch.zeros_like(eta))
        params = {}
        for key, value in (parts.get("params") or {}).items():
            value = value.detach()
            if key in self.solver_params:
                params[key] = value
                continue
            if key == "theta":
                fail = torch.zeros_like(value)
                fail[:, 0, 0] = 1
                fail[:, 1, 1] = 1
            else:
                fail = torch.zeros_like(value)
            params[key] = torch.where(success.view(-1, *([1] * (value.dim() - 1))), value, fail)
        zero_counts = torch.zeros(len(x), dtype=torch.long, device=x.device)
        forward_evals = parts.get("forward_evals")
        result = AttackResult(
            x_adv=x_adv, success=success, pred=pred, size=torch.zeros(len(x), dtype=x.dtype, device=x.device),
            unit=self.threat.unit, grad_evals=parts["grad_evals"].long(), time_s=elapsed, targeted=target is not None,
            target=target, flow=flow, delta=None if flow is not None else x_adv - x, theta=theta, eta=eta,
            params=params, forward_evals=zero_counts if forward_evals is None else forward_evals.long().to(x.device),
        )
        size = torch.where(success, self._size(x, result).to(x.dtype), result.size)
        return replace(result, size=size)

    def replace(self, **changes) -> "Attack":
        """A copy with some hyper-parameters changed (validated again)."""
        return replace(self, **changes)


def deprecated_keyword(attack: "Attack", old: str, new: str, value: object, default: object) -> None:
    """Apply a deprecated constructor keyword ``old`` (an ``InitVar``) to the field ``new``, with a ``DeprecationWarning``.

    Call from ``__post_init__`` before validating. ``value`` is what the
    caller passed as ``old`` (None: not passed), ``default`` the default of
    ``new``. Only the constructor (and so :func:`make_attack` and the CLI's
    ``--param``) accepts the old name: it is no field, so ``replace``,
    ``attack_config`` and run keys know only ``new``, and reading
    ``attack.old`` gives None.

    Raises:
        TypeError: both ``old`` and ``new`` passed with different values.
    """
    if value is None:
        return
    warnings.warn(f"{type(attack).__name__}({old}=...) is deprecated; use {new}=... (same meaning)", DeprecationWarning,
                  stacklevel=4)
    current = getattr(attack, new)
    if current != default and current != value:
        raise TypeError(f"{type(attack).__name__}: pass {new} only ({old} is its deprecated alias), got {new}={current!r} "
                        f"and {old}={value!r}")
    object.__setattr__(attack, new, value)


#: The input check's forward of the current call (``[x, x_with_grad, logits]``) for attacks with
#: ``reuses_check_forward``; consumed once by :func:`take_check_forward`.
_CHECK_FORWARD: contextvars.ContextVar[list | None] = contextvars.ContextVar("_CHECK_FORWARD", default=None)


def take_check_forward(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """The input check's ``(x_with_grad, logits)`` when ``x`` is the attack's input tensor itself, once; else None.

    The logits carry the autograd graph of ``x_with_grad`` (a leaf equal to
    ``x``); an attack with ``reuses_check_forward`` calls this for its first
    gradient at ``x`` instead of running the model again.
    """
    held = _CHECK_FORWARD.get()
    if held is None or len(held) != 3 or held[0] is not x:
        return None
    _, xg, logits = held
    held.clear()  # once: later gradients are at other points, and the graph is freed with it
    return xg, logits


def input_grad(model: nn.Module, x: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
    """Gradient of ``loss_fn(logits).sum()`` w.r.t. ``x`` only (no parameter grads).

    Returns ``(grad (N, C, H, W), logits (N, K))``.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits)
        (g,) = torch.autograd.grad(loss.sum(), x)
    return g, logits.detach()
