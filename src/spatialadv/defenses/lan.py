"""Latent attention (LAN) masks and the attention-based adversarial-example detector.

* LAN — Grimm, Arumugam, Karamcheti, Abel, Wong & Littman, 2017, "Modeling
  Latent Attention Within Neural Networks", arXiv:1706.00536: a mask
  generator ``A(x) ∈ [0, 1]^{H×W}`` trained with
  ``L = E_η[L_F(F(x̃), F(x)) − β·mean(A(x))]``,
  ``x̃ = A(x)⊙η + (1 − A(x))⊙x`` (the thesis's Eqs. 8-9), η a training
  image, F frozen.
* The detector — Nguyen, MSc thesis 2018, §3.2, Fig. 3: image classifier
  ``f1``, attention model ``g`` (a LAN trained on ``f1``) and mask classifier
  ``f2`` trained on the masks of clean training images; an input is flagged
  adversarial when ``f2(g(x)) ≠ f1(x)``.
* The adaptive attack — Carlini & Wagner, 2017, "Adversarial Examples Are
  Not Easily Detected: Bypassing Ten Detection Methods", AISec 2017: attack
  ``f1`` and the detector at once (:class:`spatialadv.attacks.LANAdaptivePGD`;
  importing it from here still works, with a ``DeprecationWarning``).
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
import torch.nn.functional as F
from torch import Tensor, nn

from .._deprecated import moved
from .._validation import check_int, check_positive
from ..models import load_or_build

__all__ = ["MaskGenerator", "MaskClassifier", "corrupt", "lan_loss", "train_lan", "train_mask_classifier",
           "LANDetector", "LANConfig", "load_or_train_lan", "MaskClassifierConfig", "load_or_train_mask_classifier",
           "NOISES"]

log = logging.getLogger(__name__)


class MaskGenerator(nn.Module):
    """The LAN attention model ``A``: a 3-layer fully connected network, ``(N, C, H, W) → (N, 1, H, W)`` in [0, 1].

    Grimm et al. 2017 and the thesis (§3.3: "a 3-layer Fully Connected
    Network"): ``FC(hidden) − ReLU − FC(hidden) − ReLU − FC(S·S) − sigmoid``,
    ``S = mask_size`` (default ``H``). One mask per pixel, shared by the channels;
    a coarser mask (``S < H``) is upsampled to ``H × W`` by repeating each value
    over its ``(H/S) × (H/S)`` block.

    Args:
        in_channels, image_size: the images' C and H = W.
        hidden: width of the two hidden layers, ≥ 1.
        mask_size: the mask's resolution S, a divisor of ``image_size`` (None: ``image_size``).

    Raises:
        ValueError: a non-positive size, or ``mask_size`` not dividing ``image_size``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 256, mask_size: int | None = None) -> None:
        super().__init__()
        check_int(in_channels, "in_channels")
        check_int(image_size, "image_size")
        check_int(hidden, "hidden")
        s = image_size if mask_size is None else mask_size
        check_int(s, "mask_size")
        if image_size % s:
            raise ValueError(f"mask_size must divide image_size ({image_size}), got {s}")
        self.image_size, self.mask_size = image_size, s
        d = in_channels * image_size * image_size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, s * s))

    def forward(self, x: Tensor) -> Tensor:
        """Mask ``(N, 1, H, W)`` in [0, 1] of images ``x`` ``(N, C, H, W)``."""
        s, r = self.mask_size, self.image_size // self.mask_size
        m = torch.sigmoid(self.net(x)).view(-1, 1, s, s)
        return m if r == 1 else m.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3)


class MaskClassifier(nn.Module):
    """The mask classifier ``f2``: LeNet-5 (the thesis, §3.3) on masks ``(N, 1, H, W)`` → logits ``(N, K)``.

    ``Conv(6w, 5×5) − ReLU − MaxPool 2 − Conv(16w, 5×5) − ReLU − MaxPool 2 − FC(120w) − ReLU − FC(84w) − ReLU −
    FC(K)`` with width multiplier ``w`` (``width``; 1 is LeNet-5; ReLU in place of LeNet's tanh; padding 2 on the
    first convolution for images smaller than 32).

    With ``standardize`` (the default) the masks are first standardised per
    pixel, ``(m − μ) / σ``, with the per-pixel mean and standard deviation of
    the training masks (buffers set by :meth:`set_standardization`; identity
    until then). Without it, :meth:`set_standardization` leaves the identity.

    Args:
        image_size: H = W of the masks, ≥ 12.
        num_classes: K ≥ 2.
        width: width multiplier w ≥ 1 of every layer.
        standardize: whether :meth:`set_standardization` sets μ and σ.

    Raises:
        ValueError: a size, ``num_classes`` or ``width`` out of range.

    Convention:
        Not in the thesis. LAN masks of different classes differ by a few
        hundredths on a common background (the part of the mask every image
        shares); without standardisation LeNet learns them poorly (about
        20 % test accuracy on MNIST-5k's masks), with it f2 reaches the
        thesis's regime (≈ 50-60 % on masks, thesis §3.3: 60 %). The
        ``lan-detection`` job measures both.
    """

    mu: Tensor
    sigma: Tensor

    def __init__(self, image_size: int = 28, num_classes: int = 10, width: int = 1, standardize: bool = True) -> None:
        super().__init__()
        check_int(image_size, "image_size", minimum=12)
        check_int(num_classes, "num_classes", minimum=2)
        check_int(width, "width")
        self.standardize = bool(standardize)
        pad = 2 if image_size < 32 else 0
        self.features = nn.Sequential(nn.Conv2d(1, 6 * width, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6 * width, 16 * width, 5), nn.ReLU(), nn.MaxPool2d(2))
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, image_size, image_size)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 120 * width), nn.ReLU(), nn.Linear(120 * width, 84 * width),
                                  nn.ReLU(), nn.Linear(84 * width, num_classes))
        self.register_buffer("mu", torch.zeros(1, 1, image_size, image_size))
        self.register_buffer("sigma", torch.ones(1, 1, image_size, image_size))

    def set_standardization(self, masks: Tensor) -> None:
        """Set μ and σ (floored at 1e-6) from training masks ``(N, 1, H, W)`` (nothing without ``standardize``)."""
        if not self.standardize:
            return
        with torch.no_grad():
            self.mu.copy_(masks.mean(0, keepdim=True))
            self.sigma.copy_(masks.std(0, keepdim=True).clamp_min(1e-6))

    def forward(self, m: Tensor) -> Tensor:
        """Logits ``(N, K)`` of masks ``m`` ``(N, 1, H, W)``."""
        return self.head(self.features((m - self.mu) / self.sigma))


def corrupt(x: Tensor, mask: Tensor, eta: Tensor) -> Tensor:
    """``x̃ = A(x)⊙η + (1 − A(x))⊙x`` (the thesis's Eq. 8), ``(N, C, H, W)``; the mask broadcasts over channels."""
    return mask * eta + (1 - mask) * x


def lan_loss(model: nn.Module, generator: nn.Module, x: Tensor, eta: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """LAN objective on one draw of η (the thesis's Eq. 9; Grimm et al. 2017), averaged over the batch.

    Args:
        model: the frozen classifier F (eval mode), logits ``(N, K)``.
        generator: the mask generator A.
        x: images ``(N, C, H, W)`` in [0, 1].
        eta: the noise images ``(N, C, H, W)`` (training images).
        beta: weight β ≥ 0 of the mask-size reward.

    Returns:
        ``(loss, L_F)``: the scalar ``mean(L_F) − β·mean(A(x))`` and ``L_F`` ``(N,)``.

    Convention:
        ``L_F(F(x̃), F(x))`` is the cross-entropy of F's softmax on ``x̃``
        against F's softmax on ``x`` (soft labels, held constant): F was
        trained with the cross-entropy, and "F(x)" is its output distribution.
    """
    mask = generator(x)
    with torch.no_grad():
        p_ref = model(x).softmax(1)
    lf = -(p_ref * model(corrupt(x, mask, eta)).log_softmax(1)).sum(1)
    return lf.mean() - beta * mask.mean(), lf.detach()


def _batches(n: int, batch_size: int, gen: torch.Generator):
    perm = torch.randperm(n, generator=gen)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


#: The noise distributions H of :func:`train_lan`.
NOISES = ("images", "uniform")


def train_lan(generator: nn.Module, model: nn.Module, x: Tensor, *, beta: float = 1.0, epochs: int = 5,
              lr: float = 1e-3, batch_size: int = 128, seed: int = 0, noise: str = "images") -> list[float]:
    """Train the mask generator on images ``x`` ``(N, C, H, W)`` with F frozen; returns the mean loss per epoch.

    Adam; each step draws one η per image (:func:`lan_loss`, one sample of the
    expectation) from the noise distribution H: ``"images"``, a uniformly
    random training image (Grimm et al. 2017), or ``"uniform"``, i.i.d.
    U[0, 1] pixels. ``model`` must be in eval mode (its parameters are not
    updated).

    Raises:
        ValueError: ``model`` in train mode; invalid hyper-parameters or ``noise``.

    Convention:
        The thesis (§3.1, §3.2) says only that η is "noise drawn from a
        predefined distribution"; the default follows Grimm et al.
    """
    if model.training:
        raise ValueError("F must be in eval mode (model.eval()) while the LAN is trained")
    check_positive(beta, "beta", allow_zero=True)
    check_int(epochs, "epochs")
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(generator.parameters(), lr=lr)
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    generator.train()
    history = []
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for b in _batches(len(x), batch_size, gen):
                if noise == "images":
                    eta = x[torch.randint(0, len(x), (len(b),), generator=gen)]
                else:
                    eta = torch.rand(x[b].shape, generator=gen, dtype=x.dtype).to(x.device)
                loss, _ = lan_loss(model, generator, x[b], eta, beta)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                count += len(b)
            history.append(total / count)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        generator.eval()
    return history


@torch.no_grad()
def _masks(generator: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    return torch.cat([generator(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def train_mask_classifier(classifier: nn.Module, masks: Tensor, y: Tensor, *, epochs: int = 5, lr: float = 1e-3,
                          batch_size: int = 64, seed: int = 0) -> list[float]:
    """Train ``f2`` on masks ``(N, 1, H, W)`` with labels ``y`` ``(N,)`` (cross-entropy, Adam); mean loss per epoch.

    A :class:`MaskClassifier` gets its standardisation from ``masks`` first.
    """
    if isinstance(classifier, MaskClassifier):
        classifier.set_standardization(masks)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr)
    classifier.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for b in _batches(len(masks), batch_size, gen):
            loss = F.cross_entropy(classifier(masks[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        history.append(total / len(masks))
    classifier.eval()
    return history


class LANDetector(nn.Module):
    """Classification-interpretation contrastive detector (the thesis, §3.2, Fig. 3).

    Args:
        f1: image classifier, ``(N, C, H, W)`` → logits ``(N, K)``.
        g: attention model (:class:`MaskGenerator`), ``(N, C, H, W)`` → masks ``(N, 1, H, W)``.
        f2: mask classifier, masks → logits ``(N, K)``.

    ``forward(x)`` returns ``f2``'s logits on ``g(x)`` (so the detector's mask
    branch is itself a model attacks can target).
    """

    def __init__(self, f1: nn.Module, g: nn.Module, f2: nn.Module) -> None:
        super().__init__()
        self.f1, self.g, self.f2 = f1, g, f2

    def forward(self, x: Tensor) -> Tensor:
        """Mask-classifier logits ``f2(g(x))`` ``(N, K)``."""
        return self.f2(self.g(x))

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 500) -> dict[str, Tensor]:
        """Per example: ``pred1 = argmax f1(x)``, ``pred2 = argmax f2(g(x))``, ``flag = pred1 ≠ pred2`` (all ``(N,)``)."""
        p1, p2 = [], []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            p1.append(self.f1(xb).argmax(1))
            p2.append(self(xb).argmax(1))
        pred1, pred2 = torch.cat(p1), torch.cat(p2)
        return {"pred1": pred1, "pred2": pred2, "flag": pred1 != pred2}


@dataclass(frozen=True)
class LANConfig:
    """Training settings of the LAN mask generator and of the mask classifier (part of their cache key).

    Attributes:
        beta: β of Eq. 9 (not stated in the thesis; 1.0: the mask reward and the
            cross-entropy on a common scale). hidden: the generator's hidden width.
        lan_epochs, f2_epochs: training epochs. lr, f2_lr: Adam learning rates
            (a small LAN rate: at 1e-3 the sigmoid saturates early and the mask
            collapses to one input-independent mask on MNIST).
        seed: seed of both trainings. max_train: train on the first this many
            training images (None: all).
        noise: the LAN's noise distribution H, ``"images"`` or ``"uniform"`` (:func:`train_lan`).
        mask_size: the mask's resolution (:class:`MaskGenerator`; None: the images').

    The detector's ``f2`` is LeNet-5 on standardised masks; other mask
    classifiers on the same ``g``: :func:`load_or_train_mask_classifier`.
    """

    beta: float = 1.0
    hidden: int = 256
    lan_epochs: int = 10
    f2_epochs: int = 8
    lr: float = 2e-4
    f2_lr: float = 1e-3
    seed: int = 0
    max_train: int | None = None
    noise: str = "images"
    mask_size: int | None = None


#: LANConfig fields added after the cache format ``lan-1``: left out of the cache key at these values, so a
#: detector cached before they existed keeps its key.
_LATER_FIELDS = {"noise": "images", "mask_size": None}


def _digest(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:10]


def _train_subset(train, max_train: int | None) -> tuple[Tensor, Tensor]:
    x, y = train.x, train.y
    if max_train is not None:
        x, y = x[:max_train], y[:max_train]
    return x, y


def _freeze(*modules: nn.Module) -> None:
    for m in modules:
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)


def _accuracy(f2: nn.Module, masks: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([f2(masks[i:i + 1000]).argmax(1) for i in range(0, len(masks), 1000)])
    return float(pred.eq(y).float().mean())


def load_or_train_lan(f1: nn.Module, f1_key: str, train, config: LANConfig = LANConfig(), *,
                      directory: str | Path | None = None) -> tuple[LANDetector, dict]:
    """The detector ``(f1, g, f2)`` for a cached classifier, with ``g`` and ``f2`` trained once and then cached.

    The two networks are one cached artifact, ``<directory>/<key>.safetensors`` with ``key =
    lan-<f1_key>-<hash of f1_key and config>``, through :func:`spatialadv.models.load_or_build`
    (checksum verified; a corrupt file is moved aside and retrained; rank 0 first under ``torchrun``).
    ``g`` is a :class:`MaskGenerator` trained by :func:`train_lan`; ``f2`` a :class:`MaskClassifier` (LeNet-5 on
    standardised masks) trained by :func:`train_mask_classifier` on the masks of the same training images.

    Args:
        f1: the frozen classifier (eval mode), e.g. from :func:`spatialadv.training.load_or_train`.
        f1_key: its cache key (:func:`spatialadv.training.model_key`); part of the LAN key.
        train: the training split (``.x`` ``(N, C, H, W)`` in [0, 1], ``.y`` ``(N,)``, ``.num_classes``).
        config: :class:`LANConfig`.
        directory: checkpoint folder (default ``cache_dir() / "models"``).

    Returns:
        ``(detector, info)`` with ``info`` keys ``key``, ``cached``, ``lan_history``, ``f2_history``,
        ``train_seconds``, ``f2_train_accuracy``. ``g`` and ``f2`` are in eval mode and frozen.

    Raises:
        ValueError: ``f1_key`` makes an unsafe file name (a path separator, ``..``, another character than
            ``[A-Za-z0-9._-]``; :func:`spatialadv.models.artifact_path`); an invalid ``config.noise`` or
            ``config.mask_size``.
    """
    conf = asdict(config)
    for k, v in _LATER_FIELDS.items():
        if conf[k] == v:
            del conf[k]
    key = f"lan-{f1_key}-{_digest({'format': 'lan-1', 'f1': f1_key, 'config': conf})}"
    c, s = int(train.x.shape[1]), int(train.x.shape[2])
    x, y = _train_subset(train, config.max_train)

    def make() -> nn.ModuleDict:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            return nn.ModuleDict({"g": MaskGenerator(c, s, config.hidden, config.mask_size),
                                  "f2": MaskClassifier(s, train.num_classes)})

    def build() -> tuple[nn.ModuleDict, dict]:
        nets = make()
        g, f2 = nets["g"], nets["f2"]
        t0 = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            lan_hist = train_lan(g, f1, x, beta=config.beta, epochs=config.lan_epochs, lr=config.lr, seed=config.seed,
                                 noise=config.noise)
            masks = _masks(g, x)
            f2_hist = train_mask_classifier(f2, masks, y, epochs=config.f2_epochs, lr=config.f2_lr, seed=config.seed)
        meta = {"lan_history": lan_hist, "f2_history": f2_hist, "train_seconds": time.perf_counter() - t0,
                "f2_train_accuracy": _accuracy(f2, masks, y)}
        log.info("trained LAN %s in %.1f s", key, meta["train_seconds"])
        return nets, {"key": key, "info": meta}

    if config.noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {config.noise!r}")
    art = load_or_build(key, make, build, kind="models", directory=directory,
                        check=lambda meta: None if meta.get("key") == key else f"metadata key {meta.get('key')!r} is not {key!r}",
                        what="LAN detector")
    nets = cast(nn.ModuleDict, art.module)
    g, f2 = nets["g"], nets["f2"]
    info = {"key": key, "cached": art.cached, **art.meta.get("info", {})}
    _freeze(g, f2)
    return LANDetector(f1, g, f2), info


@dataclass(frozen=True)
class MaskClassifierConfig:
    """Settings of a mask classifier trained on an existing LAN's masks (part of its cache key).

    Attributes:
        width: :class:`MaskClassifier`'s width multiplier (1: LeNet-5).
        standardize: per-pixel standardisation of the masks.
        epochs, lr: Adam training (:func:`train_mask_classifier`). seed: initialisation and batch order.
        max_train: the first this many training images (None: all); use the LAN's.
    """

    width: int = 1
    standardize: bool = True
    epochs: int = 8
    lr: float = 1e-3
    seed: int = 0
    max_train: int | None = None


def load_or_train_mask_classifier(detector: LANDetector, lan_key: str, train,
                                  config: MaskClassifierConfig = MaskClassifierConfig(), *,
                                  directory: str | Path | None = None) -> tuple[LANDetector, dict]:
    """Another mask classifier ``f2`` on the masks of a cached LAN: the detector ``(f1, g, f2')``, ``f2'`` cached.

    ``f2'`` is a :class:`MaskClassifier` (``config.width``, ``config.standardize``) trained with
    :func:`train_mask_classifier` on ``detector.g``'s masks of the training images; it is cached as
    ``<directory>/<lan_key>-f2-<hash>.safetensors`` through :func:`spatialadv.models.load_or_build`. Used to
    measure what f2's capacity and the standardisation change (the thesis, §3.3, uses LeNet).

    Args:
        detector: a detector from :func:`load_or_train_lan` (its ``f1`` and ``g`` are kept).
        lan_key: its cache key (``info["key"]``).
        train: the training split (``.x`` ``(N, C, H, W)`` in [0, 1], ``.y`` ``(N,)``, ``.num_classes``).
        config: :class:`MaskClassifierConfig`.
        directory: checkpoint folder (default ``cache_dir() / "models"``).

    Returns:
        ``(detector, info)``: a new :class:`LANDetector` sharing ``f1`` and ``g``; ``info`` keys ``key``,
        ``cached``, ``f2_history``, ``train_seconds``, ``f2_train_accuracy``. ``f2'`` is frozen in eval mode.

    Raises:
        ValueError: an unsafe ``lan_key`` (:func:`spatialadv.models.artifact_path`); ``config.width`` < 1.
    """
    key = f"{lan_key}-f2-{_digest({'format': 'lan-f2-1', 'lan': lan_key, 'config': asdict(config)})}"
    s = int(train.x.shape[2])
    x, y = _train_subset(train, config.max_train)

    def make() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            return MaskClassifier(s, train.num_classes, width=config.width, standardize=config.standardize)

    def build() -> tuple[nn.Module, dict]:
        f2 = make()
        t0 = time.perf_counter()
        masks = _masks(detector.g, x)
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            hist = train_mask_classifier(f2, masks, y, epochs=config.epochs, lr=config.lr, seed=config.seed)
        meta = {"f2_history": hist, "train_seconds": time.perf_counter() - t0, "f2_train_accuracy": _accuracy(f2, masks, y)}
        return f2, {"key": key, "info": meta}

    art = load_or_build(key, make, build, kind="models", directory=directory,
                        check=lambda meta: None if meta.get("key") == key else f"metadata key {meta.get('key')!r} is not {key!r}",
                        what="mask classifier")
    _freeze(art.module)
    return LANDetector(detector.f1, detector.g, art.module), {"key": key, "cached": art.cached, **art.meta.get("info", {})}

#: names moved to :mod:`spatialadv.attacks` (attacks sit below this layer): deprecated aliases
__getattr__ = moved(__name__, {"LANAdaptivePGD": "spatialadv.attacks"})
