"""The papers' classifier architectures and their registry :data:`MODELS`.

Registry names (all map ``(N, C, H, W)`` images in [0, 1] to logits ``(N, K)``):

==============  ==========================================================================
``mnist-a``     stAdv Table 4 model A: Conv(64,5×5)+ReLU, Conv(64,5×5)+ReLU, Dropout(0.25),
                FC(128)+ReLU, Dropout(0.5), FC(K)
``mnist-b``     stAdv Table 4 model B **as in Tramèr et al.'s original** (which the table
                abbreviates): Dropout(0.2) on the input, Conv(64,8×8, stride 2, 'same'
                padding)+ReLU, Conv(128,6×6, stride 2)+ReLU, Conv(128,5×5)+ReLU, Dropout(0.5), FC(K)
``mnist-c``     stAdv Table 4 model C: Conv(128,3×3)+ReLU, Conv(64,3×3)+ReLU, Dropout(0.25),
                FC(128)+ReLU, Dropout(0.5), FC(K)
``c4``          SdpAdv Model-A / Smooth-adv C4: Conv(64,8×8,s2,'same')+ReLU, Conv(128,6×6,s2)+ReLU,
                Conv(128,5×5,s1)+ReLU, FC(K)
``fc-200``      SdpAdv Model-B: FC(200)+ReLU, FC(200)+ReLU, FC(K)
``fc-500``      one hidden layer (spatial certificates of the provable-defenses paper): FC(500)+ReLU, FC(K)
``stn-fc-500``  spatial-transformer front end (:class:`STNClassifier`) followed by ``fc-500``
``cnn-small``   a small CNN for Monte-Carlo certification (about 3× the cost of ``fc-500`` per
                image, a tenth of ``c4``): Conv(16,5×5,s2,'same')+ReLU, Conv(32,5×5,s2,'same')+ReLU,
                FC(100)+ReLU, FC(K) — LeNet-like; convolutions make it far less sensitive to shifts
                than a fully connected net
==============  ==========================================================================

Convolutions are unpadded ('valid') unless marked 'same'. The provable-defenses
paper is *Provable Defenses against Spatially Transformed Adversarial Inputs:
Impossibility and Possibility Results* (ICLR 2019 submission).

Every entry of :data:`MODELS` is a builder ``(in_channels, image_size, num_classes) -> nn.Module``;
add your own architecture by inserting one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..ops.affine import affine_warp

__all__ = ["MODELS", "build_model", "STNClassifier"]


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


def _cnn_small(c: int, s: int, k: int) -> nn.Module:
    f = nn.Sequential(nn.Conv2d(c, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(16, 32, 5, stride=2, padding=2), nn.ReLU())
    return _conv_head(f, lambda d: [nn.Linear(d, 100), nn.ReLU(), nn.Linear(100, k)], c, s)


class STNClassifier(nn.Module):
    """Spatial-transformer front end followed by the ``fc-500`` classifier.

    The STN baseline ("f_stn") of the smooth-flow certificate experiments of
    the provable-defenses paper (§6.8 item 4; see :mod:`spatialadv.certify`), after
    Jaderberg, Simonyan, Zisserman & Kavukcuoglu, "Spatial Transformer
    Networks", NeurIPS 2015.

    Localisation net ``Flatten → Linear(D, hidden) → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden, 6)``
    predicts an affine θ ``(N, 2, 3)`` (initialised to the identity), applied with
    the library's one affine sampler :func:`spatialadv.ops.affine_warp` (the same
    one STM and SdpAdv use), then the one-hidden-layer classifier
    ``self.classifier`` (``fc-500``).

    Convention:
        θ maps output to input coordinates, normalised to [-1, 1] with the
        corner pixels' centres at ±1 (``align_corners=True``, the
        :func:`~spatialadv.ops.affine_warp` ``"normalized"`` units); exact
        bilinear sampling, zero padding outside the image. The identity θ
        returns the input bit for bit.

    Args:
        in_channels: C of the input images.
        image_size: H = W of the input images, in pixels.
        num_classes: K, number of logits.
        hidden: width of the localisation net's two hidden layers.

    Shapes:
        input ``(N, C, H, W)`` in [0, 1]; output logits ``(N, K)``.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10, hidden: int = 100):
        super().__init__()
        d = in_channels * image_size * image_size
        last = nn.Linear(hidden, 6)
        self.loc = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last)
        nn.init.zeros_(last.weight)
        with torch.no_grad():
            last.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))
        self.classifier = _fc((500,))(in_channels, image_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` of images ``x`` ``(N, C, H, W)`` in [0, 1], warped by the predicted θ then classified."""
        theta = self.loc(x).view(-1, 2, 3)
        return self.classifier(affine_warp(x, theta, units="normalized"))


MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "mnist-a": _mnist_a,
    "mnist-b": _mnist_b,
    "mnist-c": _mnist_c,
    "c4": _c4,
    "fc-200": _fc((200, 200)),
    "fc-500": _fc((500,)),
    "stn-fc-500": STNClassifier,
    "cnn-small": _cnn_small,
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
