"""Adv-Critic: a classifier whose adversarial examples must look like real data of their new class to a critic.

Matyasko & Chau, "Improved Network Robustness with Adversary Critic",
NeurIPS 2018. The attack on the classifier plays the generator of a GAN: a
differentiable, unrolled attack ``A_f`` maps each image ``x`` to ``x̂`` of the
nearest other class; a class-conditional critic ``D`` learns to tell real
images of class k from adversarial images classified as k; the classifier is
trained on

    CE(f(x), y) + λ · mean_S softplus(−D(x̂)[f(x̂)]) + λ_cyc · mean_S ‖x − A_f(x̂ → f(x))‖²₂,

S = the images whose prediction the attack changed, so that its adversarial
examples fool the critic (they must look like the target class) and mapping
them back returns the original (adversarial cycle-consistency). Gradients
reach the classifier's parameters through the unrolled attack (double
back-propagation).

The attack (the authors' "high-confidence" attack, unrolled): target t = the
class of the closest linearised boundary (DeepFool); ``steps`` Newton steps
``r ← r + (1e-4 + |log p_t − log C_t| / ‖w‖) · w / ‖w‖``, ``w = ∇ log p_t``,
each example stopping once ``p_t ≥ C_t`` (a straight-through mask), where
``C_t`` is a running mean (decay 0.5) of the classifier's confidence on
images it assigns to t; ``x̂ = x + (1 + overshoot)·r``. The critic: an MLP
with Gaussian noise on its input (σ 0.1) and hidden layers (σ 0.5), K outputs
(one per class), trained by the non-saturating GAN loss plus 10 × the
one-centred gradient penalty at the real and at the adversarial points, one
Adam step (lr 1e-3, β₁ = 0.5) per classifier step.

Convention: the authors' networks are 1 200 units wide and train for 50 000
steps; here the critic is 256 wide and the objective is meant for
fine-tuning a trained classifier (``ModelSpec(..., init=plain)``) for a few
epochs — the CPU budget. The objective is ``adv-critic`` of
:mod:`spatialadv.training`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int, check_positive

__all__ = ["AdvCritic", "AdvCriticPenalty", "closest_boundary_target", "unrolled_attack"]


class AdvCritic(nn.Module):
    """Class-conditional critic ``(N, C, H, W) -> (N, K)`` logits: FC-LeakyReLU(0.2) layers with Gaussian noise (always on).

    Args:
        in_features: C·H·W.
        num_classes: K.
        hidden: widths of the hidden layers.
        input_noise, hidden_noise: standard deviations of the noise added to the input and after each hidden layer.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] = (256, 256), *,
                 input_noise: float = 0.1, hidden_noise: float = 0.5) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        width = in_features
        for h in hidden:
            self.layers.append(nn.Linear(width, h))
            width = h
        self.out = nn.Linear(width, num_classes)
        self.input_noise, self.hidden_noise = input_noise, hidden_noise

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, K)``."""
        h = x.flatten(1)
        h = h + self.input_noise * torch.randn_like(h)
        for layer in self.layers:
            h = F.leaky_relu(layer(h), 0.2)
            h = h + self.hidden_noise * torch.randn_like(h)
        return self.out(h)


def closest_boundary_target(model: nn.Module, x: Tensor) -> Tensor:
    """DeepFool's closest class: ``argmin_{k ≠ l} |f_k − f_l| / ‖∇f_k − ∇f_l‖₂`` at ``x``, ``l = argmax f`` — ``(N,)`` int64.

    One input-gradient per class (no graph is kept).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        k = logits.shape[1]
        grads = torch.stack([torch.autograd.grad(logits[:, j].sum(), x, retain_graph=j < k - 1)[0].flatten(1)
                             for j in range(k)], 1)
    logits = logits.detach()
    lab = logits.argmax(1)
    rows = torch.arange(len(x))
    df = (logits - logits[rows, lab][:, None]).abs()
    dg = (grads - grads[rows, lab][:, None]).norm(dim=2).clamp_min(1e-12)
    ratio = df / dg
    ratio[rows, lab] = float("inf")
    return ratio.argmin(1)


class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward (a straight-through estimator)."""

    @staticmethod
    def forward(ctx, v):
        return torch.round(v)

    @staticmethod
    def backward(ctx, g):
        return g


def unrolled_attack(model: nn.Module, x: Tensor, target: Tensor, confidence: Tensor, *, steps: int = 5,
                    overshoot: float = 0.05) -> Tensor:
    """The unrolled high-confidence L2 attack: ``x̂ = x + (1 + overshoot) · r`` (module docstring), differentiable in the parameters.

    Args:
        model: the classifier (its parameters may require grad: ``x̂`` then depends on them).
        x: images ``(N, C, H, W)``.
        target: ``(N,)`` target classes.
        confidence: ``(N,)`` target confidences ``C_t`` in (0, 1).
        steps: unrolled steps, ≥ 1.
        overshoot: ≥ 0.

    Returns:
        ``x̂`` ``(N, C, H, W)`` (not clipped to [0, 1], as the authors' training attack).
    """
    rows = torch.arange(len(x))
    c = confidence.clamp(1e-6, 1 - 1e-6)
    r = torch.zeros_like(x)
    mask = torch.ones(len(x), device=x.device)
    for _ in range(steps):
        xa = (x + (1 + overshoot) * r).detach().requires_grad_(True)
        lp = F.log_softmax(model(xa), 1)[rows, target]
        mask = mask * _RoundSTE.apply(torch.sigmoid(c - lp.exp()))
        (w,) = torch.autograd.grad(lp.sum(), xa, create_graph=True)
        wn = (1e-8 + w.flatten(1).pow(2).sum(1)).sqrt()
        step = (1e-4 + (lp - c.log()).abs() / wn) / wn
        r = r + (mask * step).view(-1, *[1] * (x.dim() - 1)) * w
    return x + (1 + overshoot) * r


class AdvCriticPenalty:
    """The ``adv-critic`` objective's penalty ``(model, x, y, logits, epoch) -> λ·GAN + λ_cyc·cycle`` (one critic step per call).

    Args:
        in_features, num_classes: of the images and the classifier.
        lam: λ, weight of the critic term (authors: 0.5 for their MLP, 0.1 for LeNet-5).
        lam_cycle: λ_cyc (authors: 0.01).
        steps: unrolled attack steps (authors: 5).
        overshoot: (authors: 0.05).
        gp_weight: gradient-penalty weight (authors: 10).
        critic_lr: Adam learning rate of the critic (authors: 1e-3, β₁ = 0.5).
        critic_hidden: critic widths.

    Raises:
        ValueError: a hyper-parameter out of range.
    """

    def __init__(self, in_features: int, num_classes: int, *, lam: float = 0.5, lam_cycle: float = 0.01, steps: int = 5,
                 overshoot: float = 0.05, gp_weight: float = 10.0, critic_lr: float = 1e-3,
                 critic_hidden: tuple[int, ...] = (256, 256)) -> None:
        for name, v in (("lam", lam), ("lam_cycle", lam_cycle), ("overshoot", overshoot), ("gp_weight", gp_weight)):
            check_positive(v, name, allow_zero=True)
        check_positive(critic_lr, "critic_lr")
        check_int(steps, "steps", minimum=1)
        self.critic = AdvCritic(in_features, num_classes, critic_hidden)
        self.opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, betas=(0.5, 0.999))
        self.lam, self.lam_cycle, self.steps, self.overshoot, self.gp_weight = lam, lam_cycle, steps, overshoot, gp_weight
        self.conf = torch.full((num_classes,), float("nan"))
        self.history: list[dict] = []

    def _update_confidence(self, probs: Tensor) -> None:
        conf, pred = probs.max(1)
        for k in pred.unique().tolist():
            v = float(conf[pred == k].mean())
            old = float(self.conf[k])
            self.conf[k] = v if old != old else 0.5 * old + 0.5 * v  # decay 0.5; the first value as is

    def _critic_step(self, x: Tensor, y: Tensor, x_adv: Tensor, pred_adv: Tensor) -> float:
        rows = torch.arange(len(x))
        xr = x.detach().requires_grad_(True)
        xf = x_adv.detach().requires_grad_(True)
        zr = self.critic(xr)[rows, y]
        zf = self.critic(xf)[rows, pred_adv]
        (gr,) = torch.autograd.grad(zr.sum(), xr, create_graph=True)
        (gf,) = torch.autograd.grad(zf.sum(), xf, create_graph=True)
        gp = ((gr.flatten(1).norm(dim=1) - 1) ** 2).mean() + ((gf.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = F.softplus(-zr).mean() + F.softplus(zf).mean() + self.gp_weight * gp
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, logits: Tensor, epoch: int) -> Tensor:
        """The penalty for one batch; also one critic update."""
        probs = F.softmax(logits.detach(), 1)
        self._update_confidence(probs)
        pred = probs.argmax(1)
        target = closest_boundary_target(model, x)
        conf_t = self.conf[target].nan_to_num(0.9)
        x_adv = unrolled_attack(model, x, target, conf_t, steps=self.steps, overshoot=self.overshoot)
        with torch.no_grad():
            pred_adv = model(x_adv).argmax(1)
        critic_loss = self._critic_step(x, y, x_adv, pred_adv)
        for p in self.critic.parameters():
            p.requires_grad_(False)  # the classifier's loss does not train the critic
        try:
            succ = pred_adv != pred
            total = logits.new_zeros(())
            if succ.any():
                rows = torch.nonzero(succ).flatten()
                z_adv = self.critic(x_adv[rows])[torch.arange(len(rows)), pred_adv[rows]]
                gan = F.softplus(-z_adv).mean()
                x_rec = unrolled_attack(model, x_adv[rows].detach(), pred[rows], probs.max(1).values[rows],
                                        steps=self.steps, overshoot=self.overshoot)
                cycle = (x[rows] - x_rec).flatten(1).pow(2).sum(1).mean()
                total = self.lam * gan + self.lam_cycle * cycle
        finally:
            for p in self.critic.parameters():
                p.requires_grad_(True)
        self.history.append({"critic_loss": critic_loss, "attack_success": float(succ.float().mean())})
        return total

    def notes(self) -> dict:
        """Per-epoch-free summary for the checkpoint: mean critic loss and attack success over the last 50 batches."""
        last = self.history[-50:]
        if not last:
            return {}
        return {"critic_loss": sum(h["critic_loss"] for h in last) / len(last),
                "train_attack_success": sum(h["attack_success"] for h in last) / len(last)}
