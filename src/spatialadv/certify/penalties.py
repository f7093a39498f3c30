"""Training penalties of the one-hidden-layer network of the smooth-flow certificates.

The mathematics of the training variants of *Provable Defenses against
Spatially Transformed Adversarial Inputs: Impossibility and Possibility
Results* (ICLR 2019 submission; "the provable-defenses paper"), §4.2 and
§6.8: the Frobenius and spectral regularisers, the SDP-dual robust loss and
the stAdv adversarial-training pool. The objectives that use them
(``frobenius``, ``spectral``, ``sdp``, ``stadv-at``) and the variants' specs
(:func:`spatialadv.training.certify_spec`) are in :mod:`spatialadv.training`::

    model, info = load_or_train(certify_spec("sdp", DataSpec("mnist"), TrainConfig(epochs=10)))
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..attacks import StAdv
from ..data import Dataset
from ..ops.flow_smoothness import box_half_widths
from .bounds import class_pairs, dual_objective, initial_dual, network_weights, ritz_top_eigen

log = logging.getLogger(__name__)

__all__ = ["frobenius_penalty", "spectral_penalty", "SDPPenalty", "StAdvPoolPenalty"]


def frobenius_penalty(lam: float = 0.08):
    """``λ(‖W‖_F + ‖V‖_F)`` (provable-defenses paper, §6.8 item 2) as a training penalty (objective ``frobenius``).

    Returns ``pen(model, x, y, logits, epoch) -> scalar`` for
    :class:`spatialadv.training.TrainingParts`; W ``(m, D)`` and V ``(K, m)`` are
    read from the one-hidden-layer ``model`` each call
    (:func:`~spatialadv.certify.network_weights`, which raises TypeError on other
    architectures).
    """
    def pen(model, xb, yb, logits, epoch):
        net = network_weights(model)
        return lam * (torch.linalg.matrix_norm(net.W) + torch.linalg.matrix_norm(net.V))
    return pen


def spectral_penalty(lam: float = 0.09):
    """``λ(‖W‖₂ + ‖V‖₂)`` (spectral norms; provable-defenses paper, §6.8 item 3) as a training penalty (objective ``spectral``).

    Same contract as :func:`frobenius_penalty`.
    """
    def pen(model, xb, yb, logits, epoch):
        net = network_weights(model)
        return lam * (torch.linalg.matrix_norm(net.W, ord=2) + torch.linalg.matrix_norm(net.V, ord=2))
    return pen


class SDPPenalty:
    """SDP-dual training objective (objective ``sdp``).

    The provable-defenses paper, §6.8 item 6, after Raghunathan, Steinhardt &
    Liang, "Certified Defenses against Adversarial Examples", ICLR 2018.

    Replaces the loss by ``CE(z + ε_t·Q̃[:, y]ᵀ, y)`` where ``Q̃[i, j]`` is the
    differentiable SDP dual surrogate :func:`~spatialadv.certify.dual_objective`
    of pair (i, j) (per unit ε, for images in [0, 1] so ρ = 1), with trainable
    dual vectors ``c`` (``(K(K-1)/2, m + D)``, optimised with the weights as
    ``extra_parameters`` of :class:`spatialadv.training.TrainingParts`) and top
    eigenvectors refreshed by ``ritz_iters`` warm-started Ritz steps per batch.
    Used as ``penalty`` it returns ``CE(robust) − CE(z)`` so that the sum with
    the plain criterion is the robust loss.

    Args:
        model: the fc network being trained (its weights are read each call).
        image_shape: ``(C, H, W)``.
        eps_train: ε_t, the training budget (ℓ_diff units).
        ritz_iters: warm-started Ritz iterations per batch (30 on the first).
        seed: seed of the Ritz start vectors.

    Raises:
        TypeError: ``model`` is not a one-hidden-layer network.
    """

    def __init__(self, model: nn.Module, image_shape, *, eps_train: float = 0.02, ritz_iters: int = 3, seed: int = 0):
        ch, h, w = image_shape
        self.eps_train = eps_train
        self.ritz_iters = ritz_iters
        self.lam = torch.as_tensor(box_half_widths(h, w), dtype=torch.float32).repeat(ch)
        net = network_weights(model)
        k = net.V.shape[0]
        self.pairs = class_pairs(k)
        self.k = k
        with torch.no_grad():
            dv = torch.stack([net.V[i] - net.V[j] for i, j in self.pairs]).double()
            assert net.W is not None, "the SDP penalty needs a one-hidden-layer network"
            bmat = dv[:, :, None] * net.W.detach().double()[None] * self.lam.double()[None, None, :]
            self.c = initial_dual(bmat).float().requires_grad_(True)
        del bmat
        self.u: Tensor | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self.last_q: Tensor | None = None

    def q_matrix(self, model: nn.Module) -> Tensor:
        """The surrogate pair bounds ``Q̃`` ``(K, K)`` of ``model``'s current weights (per unit ε).

        Refreshes the top eigenvectors ``self.u`` with warm-started Ritz steps
        and stores a detached copy of the result in ``self.last_q``. ``Q̃`` is
        symmetric with a zero diagonal and differentiable in the weights and
        in ``c``; it is a training surrogate, not a certified bound.
        """
        net = network_weights(model)
        ii = torch.tensor([p[0] for p in self.pairs])
        jj = torch.tensor([p[1] for p in self.pairs])
        dv = net.V[ii] - net.V[jj]
        assert net.W is not None, "the SDP penalty needs a one-hidden-layer network"
        _, self.u = ritz_top_eigen(net.W, dv, self.lam, self.c, self.u, iters=self.ritz_iters if self.u is not None else 30,
                                   generator=self.gen)
        vals = dual_objective(net.W, dv, self.lam, self.c, self.u)
        q = torch.zeros(self.k, self.k, dtype=vals.dtype)
        q = q.index_put((ii, jj), vals).index_put((jj, ii), vals)
        self.last_q = q.detach()
        return q

    def __call__(self, model, xb, yb, logits, epoch):
        """The penalty of a batch: ``CE(z + ε_t·Q̃[:, y]ᵀ, y) − CE(z, y)``, a scalar tensor.

        Args:
            model: the network being trained.
            xb: the batch's images ``(B, C, H, W)`` (unused).
            yb: the batch's labels ``(B,)`` int64.
            logits: ``model(xb)``, ``(B, K)``.
            epoch: the 0-based epoch (unused).
        """
        q = self.q_matrix(model)
        robust = logits + self.eps_train * q[:, yb].T
        return nn.functional.cross_entropy(robust, yb) - nn.functional.cross_entropy(logits, yb)


class StAdvPoolPenalty:
    """``λ_r · CE(model(x_adv), y_adv)`` with x_adv from a stAdv pool refreshed every ``refresh`` epochs (objective ``stadv-at``).

    The pool holds ``pool_size`` training images (a fixed seeded subset)
    attacked untargeted by :class:`~spatialadv.attacks.StAdv` with ``tau``
    on the current model (in eval mode for the attack; the mode is restored).
    Failed attacks leave the clean image in the pool. Each batch draws as many
    pool images as it has, seeded. The provable-defenses paper, §6.8 item 5,
    with the attack of Xiao, Zhu, Li, He, Liu & Song, "Spatially Transformed Adversarial
    Examples", ICLR 2018.

    Args:
        data: the training set ``(N, C, H, W)`` in [0, 1].
        lam_r: weight of the pool loss, ≥ 0.
        tau: stAdv's flow-smoothness weight τ, on pixel flows (``flow_units="pixels"``, plain L-BFGS).
        refresh: regenerate the pool every ``refresh`` epochs (epoch 0 included).
        pool_size: number of training images in the pool.
        max_iter: stAdv optimiser iterations.
        seed: seed of the pool subset and of the per-batch draws.

    Attributes:
        success_rates: stAdv success rate of each pool regeneration, in [0, 1].
    """

    def __init__(self, data: Dataset, *, lam_r: float = 0.3, tau: float = 0.05, refresh: int = 3, pool_size: int = 1000,
                 max_iter: int = 50, seed: int = 0):
        self.data = data
        self.lam_r = lam_r
        self.refresh = refresh
        # τ in pixels, plain L-BFGS: the attack the cached stadv-at checkpoints were trained with
        self.attack = StAdv(tau=tau, steps=max_iter, flow_units="pixels", tv_smoothing=1e-4, precondition=0.0, abandon_after=10,
                 polish_ls=10)
        gen = torch.Generator().manual_seed(seed)
        self.idx = torch.randperm(len(data), generator=gen)[:pool_size]
        self.gen = gen
        self.pool_x = None
        self.epoch = -1
        self.success_rates: list[float] = []

    def __call__(self, model, xb, yb, logits, epoch):
        """The penalty of a batch: ``λ_r · CE(model(x_adv), y_adv)`` on ``len(xb)`` pool images, a scalar tensor.

        At the first call of an epoch divisible by ``refresh`` the pool is
        regenerated first (which clears the parameters' gradients).

        Args:
            model: the network being trained.
            xb: the batch's images ``(B, C, H, W)`` (only its size is used).
            yb: the batch's labels (unused).
            logits: ``model(xb)`` (unused).
            epoch: the 0-based epoch.
        """
        if epoch != self.epoch:
            self.epoch = epoch
            if epoch % self.refresh == 0:
                was_training = model.training
                model.eval()
                res = self.attack(model, self.data.x[self.idx], self.data.y[self.idx])
                model.train(was_training)
                self.pool_x = res.x_adv
                self.success_rates.append(res.success_rate)
                for p in model.parameters():
                    p.grad = None
        pick = torch.randint(0, len(self.idx), (len(xb),), generator=self.gen)
        return self.lam_r * nn.functional.cross_entropy(model(self.pool_x[pick]), self.data.y[self.idx][pick])
