"""The papers' classifier architectures, training, and a safetensors checkpoint cache.

Registry names (all map ``(N, C, H, W)`` images in [0, 1] to logits ``(N, K)``):

==========  ==============================================================================
``mnist-a`` stAdv Table 4 model A: Conv(64,5×5)+ReLU, Conv(64,5×5)+ReLU, Dropout(0.25),
            FC(128)+ReLU, Dropout(0.5), FC(K)
``mnist-b`` stAdv Table 4 model B **as in Tramèr et al.'s original** (which the table
            abbreviates): Dropout(0.2) on the input, Conv(64,8×8, stride 2, 'same'
            padding)+ReLU, Conv(128,6×6, stride 2)+ReLU, Conv(128,5×5)+ReLU, Dropout(0.5), FC(K)
``mnist-c`` stAdv Table 4 model C: Conv(128,3×3)+ReLU, Conv(64,3×3)+ReLU, Dropout(0.25),
            FC(128)+ReLU, Dropout(0.5), FC(K)
``c4``      SdpAdv Model-A / Smooth-adv C4: Conv(64,8×8,s2,'same')+ReLU, Conv(128,6×6,s2)+ReLU,
            Conv(128,5×5,s1)+ReLU, FC(K)
``fc-200``  SdpAdv Model-B: FC(200)+ReLU, FC(200)+ReLU, FC(K)
``fc-500``  one hidden layer (certificates, seed 002 §4): FC(500)+ReLU, FC(K)
==========  ==============================================================================

Convolutions are unpadded ('valid') unless marked 'same'.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import Dataset

log = logging.getLogger(__name__)

__all__ = ["MODELS", "build_model", "TrainConfig", "train_model", "accuracy", "load_or_train", "cache_dir", "save_checkpoint", "load_checkpoint"]


def _flat_dim(features: nn.Module, in_channels: int, image_size: int) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, in_channels, image_size, image_size)).flatten(1).shape[1])


def _conv_head(features: nn.Sequential, head: Callable[[int], list[nn.Module]], c: int, s: int) -> nn.Sequential:
    return nn.Sequential(*features, nn.Flatten(), *head(_flat_dim(features, c, s)))


def _mnist_a(c: int, s: int, k: int) -> nn.Module:
    f = nn.Sequential(nn.Conv2d(c, 64, 5), nn.ReLU(), nn.Conv2d(64, 64, 5), nn.ReLU(), nn.Dropout(0.25))
    return _conv_head(f, lambda d: [nn.Linear(d, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, k)], c, s)


def _mnist_b(c: int, s: int, k: int) -> nn.Module:
    f = nn.Sequential(
        nn.Dropout(0.2),
        nn.Conv2d(c, 64, 8, stride=2, padding=3), nn.ReLU(),
        nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(),
        nn.Conv2d(128, 128, 5), nn.ReLU(), nn.Dropout(0.5),
    )
    return _conv_head(f, lambda d: [nn.Linear(d, k)], c, s)


def _mnist_c(c: int, s: int, k: int) -> nn.Module:
    f = nn.Sequential(nn.Conv2d(c, 128, 3), nn.ReLU(), nn.Conv2d(128, 64, 3), nn.ReLU(), nn.Dropout(0.25))
    return _conv_head(f, lambda d: [nn.Linear(d, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, k)], c, s)


def _c4(c: int, s: int, k: int) -> nn.Module:
    f = nn.Sequential(
        nn.Conv2d(c, 64, 8, stride=2, padding=3), nn.ReLU(),
        nn.Conv2d(64, 128, 6, stride=2), nn.ReLU(),
        nn.Conv2d(128, 128, 5), nn.ReLU(),
    )
    return _conv_head(f, lambda d: [nn.Linear(d, k)], c, s)


def _fc(hidden: tuple[int, ...]) -> Callable[[int, int, int], nn.Module]:
    def build(c: int, s: int, k: int) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        d = c * s * s
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, k))
        return nn.Sequential(*layers)

    return build


MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "mnist-a": _mnist_a,
    "mnist-b": _mnist_b,
    "mnist-c": _mnist_c,
    "c4": _c4,
    "fc-200": _fc((200, 200)),
    "fc-500": _fc((500,)),
}


def build_model(name: str, *, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> nn.Module:
    """Build an untrained registry model.

    Args:
        name: a key of :data:`MODELS`.
        in_channels: C of the input images.
        image_size: H = W of the input images, in pixels (≥ 28 for the
            unpadded 8×8/6×6/5×5 stacks of ``mnist-b`` and ``c4``).
        num_classes: K, number of logits.

    Raises:
        ValueError: unknown name, or an image too small for the architecture.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](in_channels, image_size, num_classes)
    except RuntimeError as e:
        raise ValueError(f"model {name!r} does not accept {image_size}×{image_size} images: {e}") from e


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_model` (Adam, cross-entropy).

    ``shift`` > 0 adds random integer translations of up to ``shift`` pixels
    (zero fill) as data augmentation. Off by default: the papers' models are
    trained without it, and translation augmentation makes a model markedly
    more robust to flow attacks (on MNIST-5k model B, ±2 px shifts left clean
    accuracy at 97.3 % but cut targeted stAdv success from 99.6 % to 97.4 %).
    """

    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    shift: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.shift < 0 or self.weight_decay < 0:
            raise ValueError(f"invalid TrainConfig {self}")


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
    """Top-1 accuracy of ``model`` on ``(x, y)``, in [0, 1]. The model's mode is not changed."""
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


def train_model(model: nn.Module, data: Dataset, config: TrainConfig = TrainConfig(), *, progress: bool = True,
                adversary: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None, adv_weight: float = 0.5,
                criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
                penalty: Callable[[nn.Module, Tensor, Tensor, Tensor, int], Tensor] | None = None,
                extra_parameters: tuple = ()) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy; returns it in eval mode.

    Deterministic for a given ``config.seed`` on one machine (seeded parameter
    re-initialisation is the caller's job: :func:`load_or_train` seeds before building).

    Adversarial training hook: with ``adversary``, each batch's loss is
    ``(1 − adv_weight) · CE(f(x), y) + adv_weight · CE(f(x_adv), y)`` with
    ``x_adv = adversary(model, x, y)`` computed on the current model
    (Goodfellow et al. 2015, Eq. 3; Tramèr et al. 2018). The adversary must
    not leave gradients on the model's parameters; see
    :mod:`spatialadv.defenses.adversarial`.

    Hooks (for regularised / adversarial training, e.g. :mod:`spatialadv.certify.training`):
        criterion: ``criterion(logits, y) -> scalar`` replaces cross-entropy
            (also on the adversarial batch when ``adversary`` is given).
        penalty: ``penalty(model, xb, yb, logits, epoch) -> scalar`` added to the
            loss of every batch (``epoch`` counts from 0).
        extra_parameters: further tensors optimised by the same Adam (e.g. the
            dual variables of a penalty).
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam([*model.parameters(), *extra_parameters], lr=config.lr, weight_decay=config.weight_decay)
    n = len(data)
    model.train()
    bar = tqdm(range(config.epochs), desc=f"train {data.name}", disable=not progress, unit="epoch")
    for epoch in bar:
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            xb = _random_shift(data.x[idx], config.shift, gen)
            logits = model(xb)
            ce = criterion or nn.functional.cross_entropy
            loss = ce(logits, data.y[idx])
            if adversary is not None:
                xa = adversary(model, xb, data.y[idx]).detach()
                loss = (1 - adv_weight) * loss + adv_weight * ce(model(xa), data.y[idx])
            if penalty is not None:
                loss = loss + penalty(model, xb, data.y[idx], logits, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / n:.4f}")
    model.eval()
    return model


def cache_dir() -> Path:
    """Checkpoint cache: ``$SPATIALADV_CACHE`` or ``~/.cache/spatialadv``."""
    return Path(os.environ.get("SPATIALADV_CACHE", Path.home() / ".cache" / "spatialadv"))


def save_checkpoint(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Save the state dict as safetensors (no pickle); ``metadata`` is stored as JSON strings."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load safetensors weights into ``model``; returns the decoded metadata.

    Raises:
        FileNotFoundError: missing file. RuntimeError: keys or shapes do not match.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: json.loads(v) for k, v in meta.items()}


def _key(name: str, data: Dataset, config: TrainConfig, seed: int, defense: dict | None = None) -> str:
    spec = {"model": name, "data": data.name, "split": data.split, "n": len(data), "shape": list(data.x.shape[1:]),
            "config": asdict(config), "seed": seed}
    if defense is not None:  # only present for defended models, so plain models keep their keys
        spec["defense"] = defense
    blob = json.dumps(spec, sort_keys=True)
    tag = f"-{defense['name']}" if defense is not None else ""
    return f"{name}{tag}-{data.name}-seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def load_or_train(name: str, train: Dataset, test: Dataset | None = None, *, config: TrainConfig = TrainConfig(),
                  seed: int = 0, progress: bool = True, directory: str | os.PathLike | None = None,
                  adversary: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
                  defense: dict | None = None) -> tuple[nn.Module, dict]:
    """Return a trained registry model in eval mode, from the cache when present.

    ``adversary`` (with ``defense``, a JSON-able description holding at least
    ``"name"`` and ``"adv_weight"``, which becomes part of the cache key) trains
    adversarially through :func:`train_model`'s hook; see
    :func:`spatialadv.defenses.adversarial.adversarially_trained`.

    The cache key covers the model name, dataset name/split/size/shape, the
    training config and the seed. A fresh model is trained with
    ``torch.manual_seed(seed)`` (in a forked RNG state) before construction, then saved as
    ``<cache>/models/<key>.safetensors`` with its metadata (clean test accuracy
    when ``test`` is given).

    Returns:
        ``(model, info)`` with ``info`` keys ``path``, ``cached`` (bool),
        ``test_accuracy`` (float or None), ``key``.
    """
    config = TrainConfig(**{**asdict(config), "seed": seed})
    if (adversary is None) != (defense is None):
        raise ValueError("adversary and defense must be given together (defense describes the adversary for the cache key)")
    key = _key(name, train, config, seed, defense)
    path = Path(directory or cache_dir() / "models") / f"{key}.safetensors"
    c, s = train.x.shape[1], train.x.shape[2]
    # Seeded initialisation and training (dropout draws from the global RNG) without
    # touching the caller's RNG state: the same seed gives the same model on one machine.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(name, in_channels=c, image_size=s, num_classes=train.num_classes)
        if not path.is_file():
            extra = {} if adversary is None else {"adversary": adversary, "adv_weight": float(defense.get("adv_weight", 0.5))}
            train_model(model, train, config, progress=progress, **extra)
    if path.is_file():
        meta = load_checkpoint(model, path)
        model.eval()
        log.info("loaded %s from %s", name, path)
        acc = accuracy(model, test.x, test.y) if test is not None else meta.get("test_accuracy")
        return model, {"path": str(path), "cached": True, "test_accuracy": acc, "key": key}
    acc = accuracy(model, test.x, test.y) if test is not None else None
    save_checkpoint(model, path, {"model": name, "data": train.name, "config": asdict(config), "seed": seed, "test_accuracy": acc,
                                  **({"defense": defense} if defense is not None else {})})
    return model, {"path": str(path), "cached": False, "test_accuracy": acc, "key": key}
