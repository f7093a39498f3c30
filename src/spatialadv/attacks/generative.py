"""Amortized adversarial generators: SdpAdv, SdAdv and AdvGAN.

SdpAdv is the generator of *Perturbations Are Not Enough: Generating
Adversarial Examples with Spatial Distortions* (ICLR 2020 submission; "the
SdpAdv paper"), Eqs. 5-9. A generator ``g`` maps an image to an adversarial image in one forward pass::

    θ = clip(h_sd(x), θ_I ± γ)          localisation net → affine θ (6 numbers)
    x_T = t_θ(x)                          STN grid + bilinear sampler (Eq. 5)
    η = clip(h_p(x_T), ±ε)               perturbation net
    x_A = clip_[0,1](x_T + η)

and a discriminator ``d`` tells ``x_T`` (real) from ``x_A`` (fake). The
networks are trained against a frozen classifier by minimising (Eq. 9)
``L_g = L_adv + α L_θ + β L_η + λ L_GAN``.

* SdAdv is ``eps = 0`` (no perturbation network, no discriminator: with
  ``x_A = x_T`` there is nothing to discriminate);
* AdvGAN (Xiao et al. 2018a, as the SdpAdv paper implements it) is
  ``gamma = 0`` (``θ = θ_I`` exactly, so ``x_T = x`` bit for bit).

Use :meth:`SdpAdv.fit` to train (returns a fitted copy: the hyper-parameter
object itself stays immutable), then call the fitted attack like any other.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_images, check_int, check_labels, check_positive
from ..models import checkpoint_metadata, load_checkpoint, save_checkpoint
from ..ops.affine import affine_warp, identity_theta
from ..threats import AffineLinf
from .base import Attack, margin

log = logging.getLogger(__name__)

__all__ = ["GeneratorNets", "SdpAdv", "sdadv", "advgan"]


class GeneratorNets(nn.Module):
    """The three networks of SdpAdv (the SdpAdv paper, §4.1 "Settings of SdpAdv").

    * ``h_sd`` localisation net, ``X-FC(20)-ReLU-FC(6)``; its last layer starts
      at zero weights and bias θ_I (the identity, as in STN);
    * ``h_p`` perturbation net, ``X-FC(128)-ReLU-FC(128)-ReLU-FC(C·H·W)``
      reshaped to the image ("X-FC(128)-FC(128)-X");
    * ``d`` discriminator, ``X-FC(64)-LeakyReLU-FC(32)-LeakyReLU-FC(2)``
      (logits; class 1 = real ``x_T``, class 0 = ``x_A``).

    Args:
        shape: ``(C, H, W)`` of the images.
    """

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = shape
        d = c * h * w
        self.shape = (c, h, w)
        last = nn.Linear(20, 6)
        self.h_sd = nn.Sequential(nn.Flatten(), nn.Linear(d, 20), nn.ReLU(), last)
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        self.h_p = nn.Sequential(nn.Flatten(), nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, d))
        self.d = nn.Sequential(nn.Flatten(), nn.Linear(d, 64), nn.LeakyReLU(0.2), nn.Linear(64, 32), nn.LeakyReLU(0.2), nn.Linear(32, 2))

    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters of the generator proper, ``h_sd`` then ``h_p`` (not the discriminator ``d``)."""
        return list(self.h_sd.parameters()) + list(self.h_p.parameters())


@dataclass(frozen=True, kw_only=True)
class SdpAdv(Attack):
    """SdpAdv adversarial generator, with SdAdv and AdvGAN as settings.

    The SdpAdv paper, Eqs. 5-9 and §4.1; SdAdv is ``eps = 0`` and AdvGAN is
    ``gamma = 0``.

    Forward pass (Eq. 5): ``θ' = h_sd(x)``; ``θ = θ_I + clip(θ' − θ_I, −γ, γ)``
    entrywise; ``x_T = affine_warp(x, θ)``; ``η' = h_p(x_T)``;
    ``η = clip(η', −ε, ε)`` entrywise (L∞, the budget the paper compares with
    FGSM/PGD at the same ε); ``x_A = clip_[0,1](x_T + η)``.

    Training losses, per batch (Eq. 9, ``L_g = L_adv + α L_θ + β L_η + λ L_GAN``):

    * ``L_adv``: the C&W margin on the classifier's **logits** (never softmax),
      :func:`~spatialadv.attacks.base.margin` with ``kappa``; untargeted, or
      towards ``target_class`` (one generator per target, as AdvGAN);
    * ``L_θ = E‖θ' − θ_I‖_F`` (Eq. 6, on the unclipped output);
    * ``L_η = E‖max(0, |η'| − ε)‖₂`` (Eq. 7's hinge, measured as the L2 norm of
      the part of ``η'`` outside the L∞ ball, since the clip is entrywise);
    * ``L_GAN = −E log D(x_A)`` (the non-saturating form of Eq. 8's
      ``log(1 − D(x_A))``); ``d`` maximises ``log D(x_T) + log(1 − D(x_A))``.
      Dropped when ``eps = 0`` (``x_A = x_T``).

    α starts at ``alpha`` and is multiplied by ``alpha_decay`` every
    ``alpha_every`` epochs down to ``alpha_min`` (paper: 5.0, 0.8, 10, 0.8).
    Adam with ``lr_g`` / ``lr_d`` (paper: 5e-4 / 5e-5). The paper trains for
    100 "iterations" (read here as epochs) and keeps the best model on a
    held-out validation set; :meth:`fit` does the same with ``epochs`` and
    ``val_fraction``.

    The classifier is frozen: :meth:`fit` requires it in eval mode (no
    dropout), never changes its mode, and takes gradients w.r.t. the
    generator's parameters only.

    Convention:
        θ is in **normalised** coordinates (``align_corners=True``, corner
        pixel centres at ±1, STN convention; see
        :func:`~spatialadv.ops.affine_warp`), so γ = 0.3 allows a translation
        of up to 0.3 · (W−1)/2 ≈ 4 px on 28×28 images. Border fill: zeros.
        ``AttackResult.theta`` holds θ, ``AttackResult.eta`` the applied
        perturbation ``x_A − x_T``; ``params["theta"]`` ``(N, 2, 3)`` is θ
        and ``params["eta_linf"]`` ``(N,)`` is ``‖x_A − x_T‖∞`` (identity / 0
        where failed); ``size`` is the box norm of
        :class:`~spatialadv.threats.AffineLinf`,
        ``max(max|θ − θ_I|/γ, ‖η‖∞/ε)`` (unitless, ``unit =
        "affine_linf_box"``); ``grad_evals`` and ``forward_evals`` are 0 (the
        classifier is not evaluated at attack time).

    Args:
        eps: L∞ bound of η, ≥ 0 (0: SdAdv).
        gamma: entrywise bound of ``θ − θ_I``, ≥ 0 (0: AdvGAN).
        alpha, alpha_decay, alpha_every, alpha_min: α schedule.
        beta, lam: weights of L_η and L_GAN, ≥ 0.
        kappa: margin confidence κ ≥ 0 of L_adv.
        lr_g, lr_d: Adam learning rates, > 0.
        epochs: passes over the training split, ≥ 1.
        batch_size: ≥ 1.
        val_fraction: fraction of ``train_data`` held out for model selection, in (0, 1).
        target_class: None (untargeted) or the class every output should be classified as.
        seed: seed of the split, initialisation and batch order, ≥ 0.
        nets: trained :class:`GeneratorNets` (set by :meth:`fit` / :meth:`load`).
        history: training record (set by :meth:`fit`).

    Raises:
        TypeError, ValueError: invalid hyper-parameters; calling an unfitted
            generator, a call whose targets do not match ``target_class``, or
            images of another shape than the fitted ones.
    """

    eps: float = 0.1
    gamma: float = 0.3
    alpha: float = 5.0
    alpha_decay: float = 0.8
    alpha_every: int = 10
    alpha_min: float = 0.8
    beta: float = 1.0
    lam: float = 1.0
    kappa: float = 0.0
    lr_g: float = 5e-4
    lr_d: float = 5e-5
    epochs: int = 100
    batch_size: int = 128
    val_fraction: float = 1 / 6
    target_class: int | None = None
    seed: int = 0
    nets: GeneratorNets | None = field(default=None, compare=False, repr=False)
    history: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("eps", "gamma", "alpha", "alpha_min", "beta", "lam", "kappa"):
            check_positive(getattr(self, name), name, allow_zero=True)
        if self.eps > 1:
            raise ValueError(f"eps must be in [0, 1] (pixel units), got {self.eps}")
        check_positive(self.alpha_decay, "alpha_decay")
        check_int(self.alpha_every, "alpha_every", minimum=1)
        check_positive(self.lr_g, "lr_g")
        check_positive(self.lr_d, "lr_d")
        check_int(self.epochs, "epochs", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_positive(self.val_fraction, "val_fraction")
        if not self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.target_class is not None:
            check_int(self.target_class, "target_class", minimum=0)
        check_int(self.seed, "seed", minimum=0)
        if self.nets is not None and not isinstance(self.nets, GeneratorNets):
            raise TypeError(f"nets must be GeneratorNets or None, got {type(self.nets).__name__}")

    # ------------------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """``"SdAdv"`` (ε = 0), ``"AdvGAN"`` (γ = 0) or ``"SdpAdv"``."""
        if self.eps == 0:
            return "SdAdv"
        return "AdvGAN" if self.gamma == 0 else "SdpAdv"

    @property
    def fitted(self) -> bool:
        """Whether the attack holds trained networks (``nets`` is set), i.e. can be called."""
        return self.nets is not None

    def alpha_at(self, epoch: int) -> float:
        """α of the 0-based ``epoch``: ``max(alpha_min, alpha · alpha_decay^⌊epoch/alpha_every⌋)``."""
        return max(self.alpha_min, self.alpha * self.alpha_decay ** (epoch // self.alpha_every))

    def generate(self, x: Tensor, nets: GeneratorNets | None = None) -> dict[str, Tensor]:
        """The generator's forward pass (differentiable w.r.t. the networks).

        Args:
            x: images ``(N, C, H, W)`` in [0, 1].
            nets: the networks to run; default (``None``) the fitted ``self.nets``.

        Returns:
            dict with ``theta_raw`` and ``theta`` ``(N, 2, 3)`` (normalised),
            ``x_t``, ``eta_raw``, ``eta`` and ``x_a`` ``(N, C, H, W)``, all in
            ``x``'s dtype (the networks run in their own dtype: float64 images
            with a float32 generator are cast for the networks and the warp is
            done in float64).

        Raises:
            ValueError: no networks (not fitted and ``nets`` not given), or
                images whose shape differs from the fitted one.
        """
        nets = nets if nets is not None else self.nets
        if nets is None:
            raise ValueError("the generator is not fitted: call .fit(model, train_data) or SdpAdv.load(path) first")
        if tuple(x.shape[1:]) != tuple(nets.shape):
            raise ValueError(f"x must have images of shape {tuple(nets.shape)} (as fitted), got {tuple(x.shape[1:])}")
        n = x.shape[0]
        threat = self.threat
        gdt = next(nets.parameters()).dtype  # the networks run in their own dtype; outputs come back in x's
        if self.gamma > 0:
            theta_raw = nets.h_sd(x.to(gdt)).view(n, 2, 3).to(x.dtype)
            theta = threat.project_theta(theta_raw)
            x_t = affine_warp(x, theta)
        else:  # AdvGAN: θ = θ_I exactly, x_T = x
            theta_raw = theta = identity_theta(n, dtype=x.dtype, device=x.device)
            x_t = x
        if self.eps > 0:
            eta_raw = nets.h_p(x_t.to(gdt)).view_as(x).to(x.dtype)
            eta = threat.project_eta(eta_raw)
            x_a = (x_t + eta).clamp(0.0, 1.0)
        else:  # SdAdv: no perturbation
            eta_raw = eta = torch.zeros_like(x)
            x_a = x_t
        return {"theta_raw": theta_raw, "theta": theta, "x_t": x_t, "eta_raw": eta_raw, "eta": eta, "x_a": x_a}

    @property
    def threat(self) -> AffineLinf:
        """:class:`~spatialadv.threats.AffineLinf` (``gamma``, ``eps``)."""
        return AffineLinf(gamma=self.gamma, eps=self.eps)

    def _run(self, model, x, y, target, index):
        if self.target_class is None and target is not None:
            raise ValueError("this generator is untargeted (target_class=None); call it without target")
        if self.target_class is not None and (target is None or bool((target != self.target_class).any())):
            raise ValueError(f"this generator was fitted for target_class={self.target_class}; pass target filled with it")
        nets = self.nets
        with torch.no_grad():
            out = self.generate(x, nets)
        x_a = out["x_a"]
        eta = x_a - out["x_t"]
        return {"x_adv": x_a, "grad_evals": torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
                "theta": out["theta"], "eta": eta,
                "params": {"theta": out["theta"], "eta_linf": eta.flatten(1).abs().amax(1)}}

    # ------------------------------------------------------------------------------------------
    def _losses(self, model, nets, x, y, alpha):
        out = self.generate(x, nets)
        logits = model(out["x_a"])
        tgt = None if self.target_class is None else torch.full_like(y, self.target_class)
        l_adv = margin(logits, y, tgt, kappa=self.kappa).mean()
        eye = identity_theta(x.shape[0], dtype=x.dtype, device=x.device)
        l_theta = (out["theta_raw"] - eye).flatten(1).norm(dim=1).mean()
        l_eta = F.relu(out["eta_raw"].abs() - self.eps).flatten(1).norm(dim=1).mean()
        loss = l_adv + alpha * l_theta + self.beta * l_eta
        l_gan = torch.zeros((), dtype=x.dtype)
        if self.eps > 0 and self.lam > 0:
            real = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
            l_gan = F.cross_entropy(nets.d(out["x_a"]), real)  # −log D(x_A), non-saturating
            loss = loss + self.lam * l_gan
        return loss, out, {k: float(v.detach()) for k, v in (("adv", l_adv), ("theta", l_theta), ("eta", l_eta), ("gan", l_gan))}

    @torch.no_grad()
    def _success_rate(self, model, nets, x, y, batch_size=1000) -> float:
        ok = 0
        for i in range(0, len(x), batch_size):
            xa = self.generate(x[i : i + batch_size], nets)["x_a"]
            pred = model(xa).argmax(1)
            yb = y[i : i + batch_size]
            ok += int((pred == self.target_class).sum()) if self.target_class is not None else int((pred != yb).sum())
        return ok / max(len(x), 1)

    def fit(self, model: nn.Module, train_data, *, progress: bool = True, init: "SdpAdv | None" = None) -> "SdpAdv":
        """Train the generator against a frozen classifier; returns a fitted copy.

        Args:
            model: classifier mapping ``(N, C, H, W)`` in [0, 1] to logits
                ``(N, K)``; must be in eval mode (no dropout); its parameters
                receive no gradients and its mode is never changed.
            train_data: a :class:`~spatialadv.data.Dataset` or a tuple
                ``(x (N, C, H, W) in [0, 1], y (N,))``. A seeded
                ``val_fraction`` of it is held out; the epoch with the highest
                validation success rate is kept.
            progress: tqdm bars (epochs, and batches within the epoch).
            init: a fitted generator of the same image shape to start from
                (warm start: its three networks are copied, never modified),
                e.g. the ε = 0.1 generator for ε = 0.2 — the threat set of a
                smaller ε (or of SdAdv, ε = 0) lies inside that of a larger
                one. The copy before any training is then a candidate of the
                model selection too ("epoch 0"), so the result is never worse
                on the validation split than the start. ``None``: a fresh
                seeded initialisation.

        Returns:
            A copy of this attack with ``nets`` (the best epoch's networks) and
            ``history`` (per-epoch losses, validation success, seconds, sizes).

        Raises:
            ValueError: model in train mode, bad data, or too few images for a
                split; ``init`` not fitted or of another image shape.
            TypeError: ``init`` not an :class:`SdpAdv`.
        """
        if init is not None and not isinstance(init, SdpAdv):
            raise TypeError(f"init must be a fitted SdpAdv or None, got {type(init).__name__}")
        if init is not None and init.nets is None:
            raise ValueError("init must be a fitted generator (init.nets is None)")

        if isinstance(model, nn.Module) and model.training:
            raise ValueError("the target model is in train mode (dropout/batch-norm active): call model.eval() before fit")
        x_all, y_all = (train_data.x, train_data.y) if hasattr(train_data, "x") else train_data
        check_images(x_all, "train_data.x")
        y_all = check_labels(y_all, x_all.shape[0], None, "train_data.y")
        if self.target_class is not None:
            keep = y_all != self.target_class
            x_all, y_all = x_all[keep], y_all[keep]
        n = x_all.shape[0]
        n_val = int(round(self.val_fraction * n))
        if n_val < 1 or n - n_val < 1:
            raise ValueError(f"need at least one training and one validation image, got {n} images and val_fraction={self.val_fraction}")
        gen = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=gen)
        x_val, y_val = x_all[perm[:n_val]], y_all[perm[:n_val]]
        x_tr, y_tr = x_all[perm[n_val:]], y_all[perm[n_val:]]
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            nets = GeneratorNets(tuple(x_all.shape[1:])).to(device=x_all.device, dtype=x_all.dtype)
        if init is not None:
            assert init.nets is not None  # checked above
            if tuple(init.nets.shape) != tuple(nets.shape):
                raise ValueError(f"init was fitted on images of shape {tuple(init.nets.shape)}, not {tuple(nets.shape)}")
            nets.load_state_dict(init.nets.state_dict())
            for p in nets.parameters():
                p.requires_grad_(True)
            nets.train()
        g_params = nets.generator_parameters()
        opt_g = torch.optim.Adam(g_params, lr=self.lr_g)
        opt_d = torch.optim.Adam(nets.d.parameters(), lr=self.lr_d)
        use_d = self.eps > 0 and self.lam > 0
        best: tuple[float, dict | None, int] = (-1.0, None, -1)
        hist: dict = {"epochs": [], "train_images": int(n - n_val), "val_images": int(n_val), "variant": self.variant,
                      "init": None if init is None else init.hyperparameters(), "init_val_success": None}
        if init is not None:  # the warm start itself is a candidate ("epoch 0")
            val0 = self._success_rate(model, nets, x_val, y_val)
            hist["init_val_success"] = val0
            best = (val0, copy.deepcopy(nets.state_dict()), 0)
        t0 = time.perf_counter()
        bar = tqdm(range(self.epochs), desc=f"fit {self.variant} eps={self.eps:g}", disable=not progress, unit="epoch")
        for epoch in bar:
            alpha = self.alpha_at(epoch)
            order = torch.randperm(n - n_val, generator=gen)
            sums = {"adv": 0.0, "theta": 0.0, "eta": 0.0, "gan": 0.0, "d": 0.0}
            steps = 0
            for i in range(0, n - n_val, self.batch_size):
                idx = order[i : i + self.batch_size]
                xb, yb = x_tr[idx], y_tr[idx]
                with torch.enable_grad():
                    loss, out, parts = self._losses(model, nets, xb, yb, alpha)
                    grads = torch.autograd.grad(loss, g_params, allow_unused=True)
                for p, g in zip(g_params, grads):
                    p.grad = g
                opt_g.step()
                opt_g.zero_grad(set_to_none=True)
                if use_d:
                    with torch.enable_grad():
                        xt, xa = out["x_t"].detach(), out["x_a"].detach()
                        logits_d = nets.d(torch.cat([xt, xa]))
                        lab = torch.cat([torch.ones(len(xt), dtype=torch.long), torch.zeros(len(xa), dtype=torch.long)]).to(xt.device)
                        d_loss = F.cross_entropy(logits_d, lab)
                        d_grads = torch.autograd.grad(d_loss, list(nets.d.parameters()))
                    for p, g in zip(nets.d.parameters(), d_grads):
                        p.grad = g
                    opt_d.step()
                    opt_d.zero_grad(set_to_none=True)
                    parts["d"] = float(d_loss.detach())
                for k, v in parts.items():
                    sums[k] += v
                steps += 1
            val = self._success_rate(model, nets, x_val, y_val)
            rec = {"epoch": epoch + 1, "alpha": alpha, "val_success": val, "seconds": time.perf_counter() - t0,
                   **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()}}
            hist["epochs"].append(rec)
            if val > best[0]:
                best = (val, copy.deepcopy(nets.state_dict()), epoch + 1)
            bar.set_postfix(val_success=f"{val:.3f}", best=f"{best[0]:.3f}", alpha=f"{alpha:.2f}")
        bar.close()
        assert best[1] is not None  # every validation rate beats the initial -1
        nets.load_state_dict(best[1])
        nets.eval()
        for p in nets.parameters():
            p.requires_grad_(False)
        hist.update(best_epoch=best[2], best_val_success=best[0], fit_seconds=time.perf_counter() - t0)
        log.info("fitted %s: best validation success %.4f at epoch %d", self.variant, best[0], best[2])
        return replace(self, nets=nets, history=hist)

    # ------------------------------------------------------------------------------------------
    def hyperparameters(self) -> dict:
        """The JSON-able hyper-parameters (everything but ``nets`` and ``history``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("nets", "history")}

    def save(self, path: str | os.PathLike) -> Path:
        """Save the fitted networks as safetensors with a checksum and return ``path`` as a :class:`~pathlib.Path`.

        Written atomically by :func:`spatialadv.models.save_checkpoint`, with :meth:`metadata` (hyper-parameters,
        image shape, training history, dtype) as JSON metadata.

        Raises:
            ValueError: the generator is not fitted.
        """
        if self.nets is None:
            raise ValueError("nothing to save: the generator is not fitted")
        path = Path(path)
        save_checkpoint(self.nets, path, self.metadata())
        return path

    def metadata(self) -> dict:
        """The JSON-able metadata saved with the fitted networks: ``hyperparameters``, ``shape``, ``history``, ``dtype``.

        Raises:
            ValueError: the generator is not fitted.
        """
        if self.nets is None:
            raise ValueError("the generator is not fitted: no metadata")
        return {"hyperparameters": self.hyperparameters(), "shape": list(self.nets.shape), "history": self.history,
                "dtype": str(next(self.nets.parameters()).dtype)}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SdpAdv":
        """Load a generator written by :meth:`save`, verified by :func:`spatialadv.models.load_checkpoint`.

        Raises:
            FileNotFoundError: missing file.
            ValueError: no SdpAdv metadata in the file; :class:`~spatialadv.models.CorruptCheckpointError` (a
                ``ValueError``): unreadable file, keys/shapes that do not match, checksum mismatch.
        """
        path = Path(path)
        meta = checkpoint_metadata(path)
        if "hyperparameters" not in meta or "shape" not in meta:
            raise ValueError(f"{path} is not an SdpAdv generator checkpoint (no hyper-parameters in its metadata)")
        dtype = getattr(torch, str(meta.get("dtype", "torch.float32")).removeprefix("torch."))
        nets = GeneratorNets(tuple(meta["shape"])).to(dtype=dtype)
        load_checkpoint(nets, path)
        nets.eval()
        for p in nets.parameters():
            p.requires_grad_(False)
        return cls(**meta["hyperparameters"], nets=nets, history=meta.get("history"))


def sdadv(**params) -> SdpAdv:
    """SdAdv: spatial distortion only, ``SdpAdv(eps=0, ...)``."""
    return SdpAdv(**{**params, "eps": 0.0})


def advgan(**params) -> SdpAdv:
    """AdvGAN as the SdpAdv paper implements it: ``SdpAdv(gamma=0, ...)``."""
    return SdpAdv(**{**params, "gamma": 0.0})
