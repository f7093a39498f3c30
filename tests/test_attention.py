"""Tests of CAM / Grad-CAM (spatialadv.attention) against hand computations on tiny networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spatialadv.attention import class_activation_map, grad_cam, last_conv_layer


def _tiny(seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(1, 2, 3)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    return net, conv


def test_grad_cam_matches_hand_computation():
    net, conv = _tiny()
    x = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 1])
    maps = grad_cam(net, x, target, upsample=False, normalize=False)
    # by hand: A = conv(x); dZ_c/dA = w_c (reshaped) where A > 0 (ReLU), else 0
    with torch.no_grad():
        a = conv(x)  # (4, 2, 4, 4)
        w = net[3].weight.view(3, 2, 4, 4)[target]  # (4, 2, 4, 4)
        grad = w * (a > 0)
        alpha = grad.mean(dim=(2, 3))  # Eq. 1
        hand = torch.relu((alpha[:, :, None, None] * a).sum(1))  # Eq. 2
    torch.testing.assert_close(maps, hand)
    assert all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())
    # default: predicted class, upsampled to the input and normalised to [0, 1]
    full = grad_cam(net, x)
    assert full.shape == (4, 6, 6) and float(full.min()) >= 0 and float(full.max()) <= 1 + 1e-6


def test_grad_cam_equals_cam_on_gap_network():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 5, 3, padding=1)
    fc = nn.Linear(5, 4)
    net = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    x = torch.rand(3, 1, 7, 7)
    t = torch.tensor([0, 3, 2])
    with torch.no_grad():
        cam = class_activation_map(conv(x), fc.weight, t, normalize=False)
    gc = grad_cam(net, x, t, upsample=False, normalize=False)
    torch.testing.assert_close(gc, torch.relu(cam) / 49)
    torch.testing.assert_close(grad_cam(net, x, t, upsample=False), class_activation_map(conv(x).detach(), fc.weight, t))


def test_errors():
    with pytest.raises(ValueError, match="Conv2d"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    net, _ = _tiny()
    with pytest.raises(ValueError, match=r"target must have shape \(2,\), got \(3,\)"):
        grad_cam(net, torch.rand(2, 1, 6, 6), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"weight \(K, K'\) must match, got \(1, 2, 3, 3\) and \(4, 3\)"):
        class_activation_map(torch.rand(1, 2, 3, 3), torch.rand(4, 3), torch.tensor([0]))
