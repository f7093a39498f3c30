"""Adversarial training with any attack as the adversary: FGSM ("Adv-Train"), step l.l., PGD (Madry et al.), any :class:`~spatialadv.attacks.base.Attack`.

Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015 (Eq. 3); the "Adv. training" baseline of Tramèr et al.
and the robust classifier of the SdpAdv experiments (ε = 0.3 on MNIST /
Fashion-MNIST).

An adversarially trained model is an ordinary cached model whose spec names
the objective ``fgsm-at`` (:mod:`spatialadv.training`)::

    spec = ModelSpec("c4", DataSpec("mnist"), TrainConfig(), Objective("fgsm-at", eps=0.3, adv_weight=0.5))
    model, info = load_or_train(spec)

PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards
Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018) is the
objective ``pgd-at`` with :func:`pgd_adversary`.

Step l.l. (Kurakin, Goodfellow & Bengio, "Adversarial Examples in the
Physical World", ICLR 2017 workshop, §2.1; the adversarial training of Zhang
et al., "Smooth Adversarial Examples", Table 2) is the objective ``ll-at``
with :func:`ll_adversary`.

Ensemble adversarial training (Tramèr, Kurakin, Papernot, Goodfellow, Boneh
& McDaniel, "Ensemble Adversarial Training: Attacks and Defenses", ICLR
2018) is the objective ``ens-at`` with :func:`ensemble_adversary`: the
adversarial half of each batch is crafted on the current model or on one of
several *static* pre-trained models, in turn.

One mechanism: an objective's adversary is a callable ``(model, x, y) ->
x_adv`` plugged into :func:`spatialadv.training.train_model`. Any attack of
this library becomes one with :func:`attack_adversary`, and
:func:`spatialadv.training.register_adversarial_objective` registers it as a named objective
whose options (the attack's hyper-parameters) enter the checkpoint's cache
key, so adversarially trained models are cached like every model; there is
no second cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_int, check_positive
from ..attacks.base import Attack, input_grad

__all__ = ["fgsm_adversary", "pgd_adversary", "bf16_is_native", "ll_adversary", "ensemble_adversary", "attack_adversary"]


def fgsm_adversary(eps: float = 0.3) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The adversary of the ``fgsm-at`` objective: one L∞ FGSM step.

    ``x_adv = clip_[0,1](x + eps · sign(∇_x CE(f(x), y)))`` computed on the
    model as it is (its mode is not changed; during training it is in train
    mode, as in Goodfellow et al. 2015). Gradients are taken w.r.t. the input
    only, so the model's parameters receive none.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0 (SdpAdv's Adv-Train: 0.3).

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)`` in [0, 1].

    Raises:
        ValueError: ``eps`` ≤ 0.
    """
    check_positive(eps, "eps")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        g, _ = input_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))
        return (x + eps * g.sign()).clamp(0.0, 1.0)

    return adversary


def bf16_is_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 in hardware, so that bfloat16 autocast speeds a model up.

    On a CPU: AVX-512 BF16 or AMX tiles (about 1.7× faster PGD steps on the stAdv Table 4 models). Without them
    oneDNN emulates bfloat16: a PGD step of those models was measured 10-12× *slower* than in float32 on an AVX2
    CPU (batch 64, 2 threads). On CUDA: ``torch.cuda.is_bf16_supported()``. Other devices: False.

    Args:
        device: a ``torch.device`` or its name.

    Returns:
        True where bfloat16 autocast is a throughput setting worth taking.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def pgd_adversary(eps: float = 0.3, steps: int = 40, step_size: float = 0.01, *,
                  bf16: bool = False) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The adversary of the ``pgd-at`` objective: L∞ PGD from a uniform random start (Madry et al. 2018, §2-3).

    ``x₀ = clip_[0,1](x + U(−eps, eps))`` (torch's global RNG, seeded by the
    training run), then ``steps`` times ``x ← Π(x + step_size · sign(∇_x CE(f(x), y)))``
    with Π the projection onto the L∞ ball of radius ``eps`` around ``x`` and
    onto [0, 1]. The model's mode is not changed; gradients are taken w.r.t.
    the input only.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0 (Madry et al. on MNIST: 0.3).
        steps: gradient steps, int ≥ 1 (MNIST: 40).
        step_size: step in pixel units, > 0 (MNIST: 0.01).
        bf16: compute the model's forward and backward of each step under bfloat16
            autocast (the iterate, projection and returned examples stay float32).
            A throughput setting for adversarial training: on a CPU with AVX-512
            BF16 it makes a step of the stAdv Table 4 models about 1.7× faster
            (on one without, 10-12× slower: see :func:`bf16_is_native`);
            only the sign of the gradient is used, and the effect on the trained
            model is measured by ``spatialadv reproduce stadv-defenses``.

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)`` in [0, 1].

    Raises:
        ValueError: ``eps`` or ``step_size`` ≤ 0, ``steps`` < 1.
    """
    check_positive(eps, "eps")
    check_int(steps, "steps", minimum=1)
    check_positive(step_size, "step_size")
    check_bool(bf16, "bf16")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
        for _ in range(steps):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                g, _ = input_grad(model, xa, lambda z: F.cross_entropy(z.float(), y, reduction="none"))
            xa = torch.minimum(torch.maximum(xa + step_size * g.float().sign(), x - eps), x + eps).clamp(0.0, 1.0)
        return xa.detach()

    return adversary


def ll_adversary(eps: float = 0.3) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """The adversary of the ``ll-at`` objective: one "step l.l." (least-likely class) step.

    ``x_adv = clip_[0,1](x − eps · sign(∇_x CE(f(x), y_LL)))`` with ``y_LL =
    argmin_k f(x)_k`` on the current model: a step *towards* the class the
    model finds least likely (Kurakin, Goodfellow & Bengio, ICLR 2017
    workshop, Eq. 4). The model's mode is not changed; gradients are taken
    w.r.t. the input only.

    Args:
        eps: L∞ budget in [0, 1] pixel units, > 0 (the smooth-adv paper does not state it; 0.3 is the
            MNIST budget of the other defenses here).

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)`` in [0, 1] (``y`` is not used).

    Raises:
        ValueError: ``eps`` ≤ 0.
    """
    check_positive(eps, "eps")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            y_ll = model(x).argmin(1)
        g, _ = input_grad(model, x, lambda z: F.cross_entropy(z, y_ll, reduction="none"))
        return (x - eps * g.sign()).clamp(0.0, 1.0)

    return adversary


def ensemble_adversary(static_models, eps: float = 0.3) -> _EnsembleAdversary:
    """The adversary of the ``ens-at`` objective: FGSM crafted on the current model or on a static model, in turn.

    Tramèr et al., "Ensemble Adversarial Training: Attacks and Defenses", ICLR
    2018, §3.3 and Alg. 1: the source of each batch's adversarial examples
    alternates between the model being trained and fixed pre-trained models,
    so that training sees perturbations it did not produce itself (which
    decouples them from its own, possibly masked, gradients). Here the
    ``t``-th call (a training batch) crafts on ``sources[t mod (k + 1)]``
    with ``sources = (current model, *static_models)``; each example is
    ``clip_[0,1](x + eps · sign(∇_x CE(f_src(x), y)))`` (the paper's MNIST
    adversary, L∞ ε = 0.3). The static models are used as given (put them in
    eval mode); the current model's mode is not changed. Gradients are taken
    w.r.t. the input only.

    Args:
        static_models: sequence of k ≥ 1 ``nn.Module`` returning logits for the same inputs.
        eps: L∞ budget in [0, 1] pixel units, > 0.

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)`` in [0, 1]; stateful (its ``turn`` attribute counts the calls).

    Raises:
        ValueError: no static model, or ``eps`` ≤ 0.
        TypeError: a static model that is not an ``nn.Module``.
    """
    static = tuple(static_models)
    if not static:
        raise ValueError("ensemble_adversary needs at least one static model")
    for m in static:
        if not isinstance(m, nn.Module):
            raise TypeError(f"static models must be nn.Module, got {type(m).__name__}")
    check_positive(eps, "eps")
    return _EnsembleAdversary(static, float(eps))


class _EnsembleAdversary:
    """:func:`ensemble_adversary`'s callable; ``turn`` counts the calls so far (saved when training resumes)."""

    def __init__(self, static: tuple, eps: float) -> None:
        self.static, self.eps, self.turn = static, eps, 0

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        k = self.turn % (len(self.static) + 1)
        self.turn += 1
        source = model if k == 0 else self.static[k - 1]
        g, _ = input_grad(source, x, lambda z: F.cross_entropy(z, y, reduction="none"))
        return (x + self.eps * g.sign()).clamp(0.0, 1.0).detach()


def attack_adversary(attack: Attack, *, eval_mode: bool = True) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """Any untargeted :class:`~spatialadv.attacks.base.Attack` as a training adversary.

    ``adversary(model, x, y) = attack(model, x, y).x_adv``, detached. The
    attack contract returns the **input** where the attack fails, so those
    examples are trained on clean (for Madry et al.'s PGD, which trains on
    the last iterate whatever it is, use :func:`pgd_adversary`). Parameter
    gradients the attack leaves behind are discarded (the ones present
    before the call are restored).

    Args:
        attack: the attack, run untargeted on each training batch.
        eval_mode: craft in eval mode (dropout off, batch-norm statistics
            frozen; the model's mode is restored afterwards) — the attacks'
            contract expects it. False crafts on the model as the loop holds
            it (train mode), as Goodfellow et al.'s FGSM training does; the
            attack then warns once per batch.

    Returns:
        ``adversary(model, x (N, C, H, W), y (N,)) -> x_adv (N, C, H, W)``.

    Raises:
        TypeError: ``attack`` is not an :class:`~spatialadv.attacks.base.Attack`, ``eval_mode`` not a bool.
    """
    if not isinstance(attack, Attack):
        raise TypeError(f"attack must be a spatialadv Attack, got {type(attack).__name__}")
    check_bool(eval_mode, "eval_mode")

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        was_training = model.training
        grads = [(p, p.grad) for p in model.parameters()]
        try:
            if eval_mode:
                model.eval()
            x_adv = attack(model, x, y).x_adv.detach()
        finally:
            model.train(was_training)
            for p, g in grads:
                p.grad = g
        return x_adv

    return adversary
