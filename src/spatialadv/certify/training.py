"""Training variants of the one-hidden-layer MNIST network (seed 002 §4.2 and §6.8).

All variants train the registry's ``fc-500`` (784-500-10, one hidden layer)
with :func:`spatialadv.models.train_model` through its ``criterion`` /
``penalty`` hooks, and cache the weights as safetensors under
``<cache>/models/certify-<variant>-…``:

=============  ===========================================================================
``normal``     cross-entropy, no regulariser (f_nt)
``random``     no training at all (f_rd of Fig. 2): the seeded initialisation
``frobenius``  multi-class hinge + ``λ(‖W‖_F + ‖V‖_F)``, λ = 0.08 (f_fro)
``spectral``   multi-class hinge + ``λ(‖W‖₂ + ‖V‖₂)``, λ = 0.09 (f_spe)
``sdp``        cross-entropy on the robust logits ``z + ε_t·Q̃[:, y]``, Q̃ the SDP dual
               surrogate (:func:`~spatialadv.certify.dual_objective`) of every class pair
               with trainable dual vectors c (f_sdp; SDP-NN of Raghunathan et al. 2018)
``stn``        multi-class hinge on a spatial-transformer front end (3-layer localisation
               net with 100 hidden units, affine) followed by fc-500 (f_stn)
``stadv-at``   cross-entropy + ``λ_r · CE(x_adv)`` with x_adv drawn from a pool of stAdv
               (τ = 0.05) adversarial training images regenerated every 3 epochs, λ_r = 0.3 (f_at)
=============  ===========================================================================
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..models import TrainConfig, accuracy, build_model, cache_dir, load_checkpoint, save_checkpoint, train_model
from .bounds import _initial_dual, _pairs, dual_objective, network_weights, ritz_top_eigen
from .smoothness import box_half_widths

log = logging.getLogger(__name__)

__all__ = ["VARIANTS", "STNClassifier", "frobenius_penalty", "spectral_penalty", "SDPPenalty", "StAdvPoolPenalty",
           "train_variant", "hinge_loss"]

VARIANTS = ("normal", "random", "frobenius", "spectral", "sdp", "stn", "stadv-at")


def hinge_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Multi-class hinge loss (Weston-Watkins form of ``torch.nn.functional.multi_margin_loss``, margin 1)."""
    return nn.functional.multi_margin_loss(logits, y)


def frobenius_penalty(lam: float = 0.08):
    """``λ(‖W‖_F + ‖V‖_F)`` (seed 002 §6.8 item 2) as a :func:`train_model` penalty."""
    def pen(model, xb, yb, logits, epoch):
        net = network_weights(model)
        return lam * (torch.linalg.matrix_norm(net.W) + torch.linalg.matrix_norm(net.V))
    return pen


def spectral_penalty(lam: float = 0.09):
    """``λ(‖W‖₂ + ‖V‖₂)`` (seed 002 §6.8 item 3) as a :func:`train_model` penalty."""
    def pen(model, xb, yb, logits, epoch):
        net = network_weights(model)
        return lam * (torch.linalg.matrix_norm(net.W, ord=2) + torch.linalg.matrix_norm(net.V, ord=2))
    return pen


class SDPPenalty:
    """SDP-dual training objective (seed 002 §6.8 item 6, after Raghunathan et al. 2018).

    Replaces the loss by ``CE(z + ε_t·Q̃[:, y]ᵀ, y)`` where ``Q̃[i, j]`` is the
    differentiable SDP dual surrogate :func:`~spatialadv.certify.dual_objective`
    of pair (i, j) (per unit ε, for images in [0, 1] so ρ = 1), with trainable
    dual vectors ``c`` (``extra_parameters`` of :func:`train_model`) and top
    eigenvectors refreshed by ``ritz_iters`` warm-started Ritz steps per batch.
    Used as ``penalty`` it returns ``CE(robust) − CE(z)`` so that the sum with
    the plain criterion is the robust loss.

    Args:
        model: the fc network being trained (its weights are read each call).
        image_shape: ``(C, H, W)``.
        eps_train: ε_t, the training budget (ℓ_diff units).
    """

    def __init__(self, model: nn.Module, image_shape, *, eps_train: float = 0.02, ritz_iters: int = 3, seed: int = 0):
        ch, h, w = image_shape
        self.eps_train = eps_train
        self.ritz_iters = ritz_iters
        self.lam = torch.as_tensor(box_half_widths(h, w), dtype=torch.float32).repeat(ch)
        net = network_weights(model)
        k = net.V.shape[0]
        self.pairs = _pairs(k)
        self.k = k
        with torch.no_grad():
            dv = torch.stack([net.V[i] - net.V[j] for i, j in self.pairs]).double()
            bmat = dv[:, :, None] * net.W.detach().double()[None] * self.lam.double()[None, None, :]
            self.c = _initial_dual(bmat).float().requires_grad_(True)
        del bmat
        self.u = None
        self.gen = torch.Generator().manual_seed(seed)
        self.last_q = None

    def q_matrix(self, model: nn.Module) -> Tensor:
        net = network_weights(model)
        ii = torch.tensor([p[0] for p in self.pairs])
        jj = torch.tensor([p[1] for p in self.pairs])
        dv = net.V[ii] - net.V[jj]
        _, self.u = ritz_top_eigen(net.W, dv, self.lam, self.c, self.u, iters=self.ritz_iters if self.u is not None else 30,
                                   generator=self.gen)
        vals = dual_objective(net.W, dv, self.lam, self.c, self.u)
        q = torch.zeros(self.k, self.k, dtype=vals.dtype)
        q = q.index_put((ii, jj), vals).index_put((jj, ii), vals)
        self.last_q = q.detach()
        return q

    def __call__(self, model, xb, yb, logits, epoch):
        q = self.q_matrix(model)
        robust = logits + self.eps_train * q[:, yb].T
        return nn.functional.cross_entropy(robust, yb) - nn.functional.cross_entropy(logits, yb)


class StAdvPoolPenalty:
    """``λ_r · CE(model(x_adv), y_adv)`` with x_adv from a stAdv pool refreshed every ``refresh`` epochs (seed 002 §6.8 item 5).

    The pool holds ``pool_size`` training images (a fixed seeded subset)
    attacked untargeted by :class:`~spatialadv.attacks.StAdv` with ``tau``
    on the current model (in eval mode for the attack; the mode is restored).
    Failed attacks leave the clean image in the pool. Each batch draws as many
    pool images as it has, seeded.
    """

    def __init__(self, data: Dataset, *, lam_r: float = 0.3, tau: float = 0.05, refresh: int = 3, pool_size: int = 1000,
                 max_iter: int = 50, seed: int = 0):
        from ..attacks import StAdv

        self.data = data
        self.lam_r = lam_r
        self.refresh = refresh
        self.attack = StAdv(tau=tau, max_iter=max_iter)
        gen = torch.Generator().manual_seed(seed)
        self.idx = torch.randperm(len(data), generator=gen)[:pool_size]
        self.gen = gen
        self.pool_x = None
        self.epoch = -1
        self.success_rates: list[float] = []

    def __call__(self, model, xb, yb, logits, epoch):
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


class STNClassifier(nn.Module):
    """Spatial transformer front end + fc-500 (seed 002 §6.8 item 4).

    Localisation net ``Flatten → Linear(D, 100) → ReLU → Linear(100, 100) → ReLU → Linear(100, 6)``
    predicting an affine θ ``(N, 2, 3)`` (initialised to the identity), applied with
    ``torch.nn.functional.affine_grid`` / ``grid_sample`` (bilinear, zero padding,
    ``align_corners=False``), then the one-hidden-layer classifier ``self.classifier``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, hidden: int = 100):
        super().__init__()
        d = in_channels * image_size * image_size
        self.loc = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 6))
        nn.init.zeros_(self.loc[-1].weight)
        with torch.no_grad():
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))
        self.classifier = build_model("fc-500", in_channels=in_channels, image_size=image_size, num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        theta = self.loc(x).view(-1, 2, 3)
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return self.classifier(nn.functional.grid_sample(x, grid, align_corners=False))


def _build(variant: str, data: Dataset) -> nn.Module:
    c, s = data.x.shape[1], data.x.shape[2]
    if variant == "stn":
        return STNClassifier(c, s, data.num_classes)
    return build_model("fc-500", in_channels=c, image_size=s, num_classes=data.num_classes)


def train_variant(variant: str, train: Dataset, test: Dataset | None = None, *, config: TrainConfig = TrainConfig(),
                  seed: int = 0, progress: bool = True, directory: str | Path | None = None,
                  options: dict | None = None) -> tuple[nn.Module, dict]:
    """Train (or load from the cache) one variant of the table in the module docstring.

    Args:
        variant: one of :data:`VARIANTS`.
        train, test: datasets (test only for the reported accuracy).
        config: :class:`~spatialadv.models.TrainConfig` (epochs, batch size, lr).
        seed: initialisation and training seed.
        options: variant hyper-parameters overriding the defaults
            (``lam`` for frobenius/spectral, ``eps_train`` for sdp, ``lam_r``/``tau``/
            ``pool_size``/``refresh`` for stadv-at); part of the cache key.

    Returns:
        ``(model, info)``; the model is in eval mode; ``info`` has ``path``,
        ``cached``, ``test_accuracy``, ``variant``, ``options`` and training notes.

    Raises:
        ValueError: unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    options = dict(options or {})
    config = TrainConfig(**{**asdict(config), "seed": seed})
    blob = json.dumps({"variant": variant, "data": train.name, "n": len(train), "shape": list(train.x.shape[1:]),
                       "config": asdict(config), "options": options, "v": 1}, sort_keys=True)
    key = f"certify-{variant}-{train.name}-seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"
    path = Path(directory or cache_dir() / "models") / f"{key}.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _build(variant, train)
    info = {"variant": variant, "options": options, "key": key, "path": str(path)}
    if path.is_file():
        meta = load_checkpoint(model, path)
        model.eval()
        info.update(cached=True, notes=meta.get("notes", {}))
    else:
        notes: dict = {}
        criterion, penalty, extra = None, None, ()
        if variant == "frobenius":
            criterion, penalty = hinge_loss, frobenius_penalty(options.get("lam", 0.08))
        elif variant == "spectral":
            criterion, penalty = hinge_loss, spectral_penalty(options.get("lam", 0.09))
        elif variant == "stn":
            criterion = hinge_loss
        elif variant == "sdp":
            pen = SDPPenalty(model, tuple(train.x.shape[1:]), eps_train=options.get("eps_train", 0.02), seed=seed)
            penalty, extra = pen, (pen.c,)
        elif variant == "stadv-at":
            pen = StAdvPoolPenalty(train, lam_r=options.get("lam_r", 0.3), tau=options.get("tau", 0.05),
                                   refresh=options.get("refresh", 3), pool_size=options.get("pool_size", 1000), seed=seed)
            penalty = pen
        if variant != "random":
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                train_model(model, train, config, progress=progress, criterion=criterion, penalty=penalty,
                            extra_parameters=extra)
        model.eval()
        if variant == "stadv-at":
            notes["pool_success_rates"] = penalty.success_rates
        save_checkpoint(model, path, {"variant": variant, "config": asdict(config), "options": options, "notes": notes})
        info.update(cached=False, notes=notes)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    info["test_accuracy"] = accuracy(model, test.x, test.y) if test is not None else None
    return model, info
