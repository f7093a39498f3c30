"""Defense-GAN: classify the projection of the input onto the range of a generator trained on clean data.

Samangouei, Kabkab & Chellappa, "Defense-GAN: Protecting Classifiers
Against Adversarial Attacks Using Generative Models", ICLR 2018, §3 and
Alg. 1. A WGAN generator ``G: z ∈ R^d → [0, 1]^{C×H×W}`` is trained on the
training set; an input ``x`` is replaced by ``G(z*)`` with

    z* = the best of R runs of L gradient-descent steps on ‖G(z) − x‖²₂,
         each from z₀ ~ N(0, I),

and ``G(z*)`` is classified by the unchanged classifier.

Pieces:

* :class:`Generator` / :class:`Critic` — fully connected (a CPU budget; the
  paper's MNIST generator is a DCGAN), trained with the WGAN-GP objective
  (Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017)
  by :func:`train_generator`, cached by :func:`load_or_train_generator`;
* :class:`DefenseGANProjection` — the projection as an ``nn.Module``
  ``(N, C, H, W) -> (N, C, H, W)``, seeded per image;
* ``Defended(DefenseGANProjection(G), classifier)`` (:class:`~spatialadv.defenses.Defended`)
  is the defended classifier. The projection's output carries no gradient to
  ``x`` (the optimisation is not unrolled), so gradient attacks on it see
  zero gradients — the obfuscation Athalye, Carlini & Wagner (ICML 2018,
  §5.3) break with BPDA: ``Defended(..., bpda=True)`` takes the gradient of
  the classifier at ``G(z*)`` as the gradient at ``x``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_int, check_positive
from ..models import load_or_build

log = logging.getLogger(__name__)

__all__ = ["GANConfig", "Generator", "Critic", "train_generator", "load_or_train_generator", "generator_key",
           "DefenseGANProjection"]


@dataclass(frozen=True)
class GANConfig:
    """Generator training settings (WGAN-GP; Gulrajani et al. 2017, Alg. 1 defaults where not stated).

    Attributes:
        z_dim: latent dimension d (Defense-GAN: 128).
        hidden: widths of the generator's hidden layers (the critic uses them reversed).
        iterations: generator updates.
        n_critic: critic updates per generator update (5).
        gp_weight: gradient-penalty weight λ (10).
        lr: Adam learning rate (1e-4), betas (0.5, 0.9).
        batch_size: images per update.
        seed: seeds initialisation and sampling.

    Raises:
        ValueError: a field out of range.
    """

    z_dim: int = 128
    hidden: tuple[int, ...] = (256, 512)
    iterations: int = 1500
    n_critic: int = 5
    gp_weight: float = 10.0
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("z_dim", "iterations", "n_critic", "batch_size"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.seed, "seed", minimum=0)
        check_positive(self.gp_weight, "gp_weight")
        check_positive(self.lr, "lr")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of ints ≥ 1, got {self.hidden!r}")


class Generator(nn.Module):
    """``z (N, z_dim) -> images (N, C, H, W)`` in [0, 1]: FC-ReLU layers, then FC-sigmoid.

    Args:
        shape: ``(C, H, W)`` of the images.
        z_dim: latent dimension.
        hidden: hidden widths.
    """

    def __init__(self, shape: tuple[int, int, int], z_dim: int = 128, hidden: tuple[int, ...] = (256, 512)) -> None:
        super().__init__()
        self.shape, self.z_dim = tuple(shape), z_dim
        layers, width = [], z_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, int(torch.tensor(shape).prod())), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """``(N, z_dim) -> (N, C, H, W)``."""
        return self.net(z).view(-1, *self.shape)


class Critic(nn.Module):
    """WGAN critic ``images (N, C, H, W) -> scores (N,)``: FC-LeakyReLU(0.2) layers (widths ``hidden`` reversed)."""

    def __init__(self, shape: tuple[int, int, int], hidden: tuple[int, ...] = (256, 512)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(shape).prod())
        for h in reversed(hidden):
            layers += [nn.Linear(width, h), nn.LeakyReLU(0.2)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N,)``."""
        return self.net(x).squeeze(1)


def train_generator(x: Tensor, config: GANConfig = GANConfig(), *, progress: bool = False) -> tuple[Generator, dict]:
    """Train a :class:`Generator` on images ``x`` with WGAN-GP; returns ``(generator in eval mode, history)``.

    Per generator update: ``n_critic`` critic updates on ``E[D(G(z))] − E[D(x)] +
    λ E[(‖∇D(x̂)‖₂ − 1)²]`` (x̂ on random segments between real and generated
    images), then one generator update on ``−E[D(G(z))]``; Adam(lr, β = (0.5, 0.9)).
    Seeded by ``config.seed`` in a forked RNG.

    Args:
        x: training images ``(N, C, H, W)`` in [0, 1], N ≥ 2.
        config: the settings.
        progress: show a progress bar (tqdm).

    Returns:
        ``(generator, {"critic_loss": [...], "seconds": float})`` — the Wasserstein estimate
        ``E[D(x)] − E[D(G(z))]`` every 100 updates.

    Raises:
        ValueError: ``x`` not a finite 4-D batch in [0, 1] of at least 2 images.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or len(x) < 2 or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("train_generator needs images (N ≥ 2, C, H, W), finite, in [0, 1]")
    cc, hh, ww = (int(s) for s in x.shape[1:])
    shape = (cc, hh, ww)
    x = x.float()
    t0, hist = time.perf_counter(), []
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        gen, critic = Generator(shape, config.z_dim, config.hidden), Critic(shape, config.hidden)
        opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(critic.parameters(), lr=config.lr, betas=(0.5, 0.9))
        b = min(config.batch_size, len(x))
        for it in tqdm(range(config.iterations), disable=not progress, desc="train Defense-GAN generator", unit="it"):
            for _ in range(config.n_critic):
                real = x[torch.randint(len(x), (b,))]
                with torch.no_grad():
                    fake = gen(torch.randn(b, config.z_dim))
                u = torch.rand(b, 1, 1, 1)
                mix = (u * real + (1 - u) * fake).requires_grad_(True)
                (g,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
                gp = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
                w = critic(real).mean() - critic(fake).mean()
                loss_d = -w + config.gp_weight * gp
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
            loss_g = -critic(gen(torch.randn(b, config.z_dim))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if it % 100 == 0 or it == config.iterations - 1:
                hist.append(float(w.detach()))
    gen.eval().requires_grad_(False)
    return gen, {"critic_loss": hist, "seconds": time.perf_counter() - t0}


def generator_key(data_spec, config: GANConfig) -> str:
    """Cache key of a generator: ``defense-gan-<data>-seed<seed>-<hash of data spec and config>``."""
    blob = json.dumps({"data": data_spec.to_dict(), "gan": asdict(config)}, sort_keys=True)
    return f"defense-gan-{data_spec.name}-seed{config.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def load_or_train_generator(data_spec, config: GANConfig = GANConfig(), *, directory: str | Path | None = None,
                            progress: bool = True) -> tuple[Generator, dict]:
    """The generator of ``config`` trained on ``data_spec.train()``: from the cache, else trained and cached.

    Cached through :func:`spatialadv.models.load_or_build` under ``directory`` (default
    ``cache_dir() / "defense-gan"``) as ``<generator_key>.safetensors`` (safetensors with a checksum);
    a checkpoint that fails verification is moved aside to ``<file>.corrupt-<n>`` and retrained (with a
    warning), never used.

    Returns:
        ``(generator (eval mode, frozen), {"key", "cached", "train_seconds", "critic_loss"})``.

    Raises:
        FileNotFoundError: the dataset's files are missing.
        ValueError: the key is not a safe file name (:func:`spatialadv.models.artifact_path`).
    """
    key = generator_key(data_spec, config)
    train = data_spec.train()
    cc, hh, ww = (int(s) for s in train.x.shape[1:])
    shape = (cc, hh, ww)

    def build() -> tuple[Generator, dict]:
        gen, hist = train_generator(train.x, config, progress=progress)
        log.info("trained Defense-GAN generator %s in %.1f s", key, hist["seconds"])
        return gen, {"key": key, "train_seconds": hist["seconds"], "critic_loss": hist["critic_loss"]}

    art = load_or_build(key, lambda: Generator(shape, config.z_dim, config.hidden), build, kind="defense-gan",
                        directory=directory, what="Defense-GAN generator",
                        check=lambda meta: None if meta.get("key") == key else f"metadata key {meta.get('key')!r} is not {key!r}")
    gen = cast(Generator, art.module.eval().requires_grad_(False))
    return gen, {"key": key, "cached": art.cached, "train_seconds": art.meta.get("train_seconds"),
                 "critic_loss": art.meta.get("critic_loss", [])}


class DefenseGANProjection(nn.Module):
    """``x ↦ G(z*)``: the projection of Defense-GAN (Samangouei et al. 2018, Alg. 1), ``(N, C, H, W) -> (N, C, H, W)``.

    For each image, R starts ``z₀ ~ N(0, I)`` drawn from a generator seeded by
    ``seed`` and the image's bytes (so an image's projection does not depend on
    the batch it is in), L steps of gradient descent with momentum on
    ``‖G(z) − x‖²₂ / (C·H·W)`` per start, and the start of the smallest final
    error kept. Defaults: the paper's MNIST setting L = 200, R = 10, step 10,
    momentum 0.7 (the authors' code).

    The output carries no gradient to ``x``; wrap it in
    ``Defended(projection, classifier, bpda=True)`` for the BPDA attack.

    Args:
        generator: a trained :class:`Generator` (any module ``(R, z_dim) -> (R, C, H, W)`` with ``z_dim``).
        steps: L, int ≥ 1.
        restarts: R, int ≥ 1.
        lr: step size, > 0.
        momentum: in [0, 1).
        seed: int ≥ 0.

    Raises:
        ValueError: a hyper-parameter out of range; at call time, images that are not ``(N, C, H, W)``
            of the generator's shape, finite, in [0, 1].
    """

    def __init__(self, generator: nn.Module, *, steps: int = 200, restarts: int = 10, lr: float = 10.0,
                 momentum: float = 0.7, seed: int = 0) -> None:
        super().__init__()
        check_int(steps, "steps", minimum=1)
        check_int(restarts, "restarts", minimum=1)
        check_positive(lr, "lr")
        check_int(seed, "seed", minimum=0)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not hasattr(generator, "z_dim"):
            raise ValueError("generator must have a z_dim attribute (the latent dimension)")
        self.generator = generator
        self.steps, self.restarts, self.lr, self.momentum, self.seed = steps, restarts, float(lr), float(momentum), seed

    def starts(self, x: Tensor) -> Tensor:
        """The R starting latents of each image, ``(N, R, z_dim)``, seeded by ``seed`` and the image's bytes."""
        out = []
        for img in x.detach().cpu().float():
            digest = hashlib.sha256(img.numpy().tobytes() + self.seed.to_bytes(8, "little")).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
            out.append(torch.randn(self.restarts, cast(int, self.generator.z_dim), generator=gen))
        return torch.stack(out).to(x.device)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z* (N, z_dim), per-image reconstruction error ‖G(z*) − x‖²₂ / (C·H·W) (N,))``."""
        shape = getattr(self.generator, "shape", None)
        if shape is None:  # a generator without a ``shape`` attribute: one forward pass tells it
            with torch.no_grad():
                shape = tuple(self.generator(torch.zeros(1, cast(int, self.generator.z_dim), device=x.device)).shape[1:])
        if x.dim() != 4 or tuple(x.shape[1:]) != shape or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"DefenseGANProjection takes finite images (N, {', '.join(map(str, shape))}) in [0, 1], "
                             f"got shape {tuple(x.shape)}")
        n, r = len(x), self.restarts
        target = x.detach().repeat_interleave(r, 0)
        z = self.starts(x).reshape(n * r, -1)
        v = torch.zeros_like(z)
        with torch.enable_grad():
            for _ in range(self.steps):  # SGD with (PyTorch-style) momentum; each row its own problem
                zg = z.detach().requires_grad_(True)
                err = (self.generator(zg) - target).flatten(1).pow(2).mean(1)
                (g,) = torch.autograd.grad(err.sum(), zg)
                v = self.momentum * v + g
                z = z - self.lr * v
        with torch.no_grad():
            err = (self.generator(z) - target).flatten(1).pow(2).mean(1).view(n, r)
            best = err.argmin(1)
            z_best = z.view(n, r, -1)[torch.arange(n), best]
        return z_best, err[torch.arange(n), best]

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> G(z*) (N, C, H, W)``, detached from ``x``."""
        z, _ = self.project(x)
        with torch.no_grad():
            return self.generator(z)

    def extra_repr(self) -> str:
        """The settings shown by ``repr``."""
        return f"steps={self.steps}, restarts={self.restarts}, lr={self.lr:g}, momentum={self.momentum:g}, seed={self.seed}"
