"""User mistakes at the attack boundary (``Attack.__call__``): clear errors, never a raw torch traceback or a silent failure."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from spatialadv.attacks import PGD, RotationTranslation, StAdv

ATTACKS = {"pgd": lambda: PGD(eps=0.1, steps=2), "stadv": lambda: StAdv(steps=2),
           "stm": lambda: RotationTranslation(num_rotations=3, num_translations=3)}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_dtype_mismatch_is_a_type_error_naming_x_and_the_model(name, digits_model):
    model, x, y = digits_model
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the model \(\w+\) has torch.float32") as info:
        ATTACKS[name]()(model, x[:4].double(), y[:4])
    assert isinstance(info.value.__cause__, RuntimeError)  # torch's message is kept as the cause


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_channel_and_size_mismatch_is_a_value_error(name, digits_model):
    model, x, y = digits_model
    for bad in (x[:4].repeat(1, 3, 1, 1), torch.nn.functional.pad(x[:4], (0, 2, 0, 2))):
        with pytest.raises(ValueError, match=r"the model \(\w+\) failed on x of shape .*channels and image size") as info:
            ATTACKS[name]()(model, bad, y[:4])
        assert isinstance(info.value.__cause__, RuntimeError)


def test_device_mismatch_is_a_value_error(digits_model):
    model, x, y = digits_model
    meta = copy.deepcopy(model).to("meta")
    with pytest.raises(ValueError, match=r"x is on device cpu but the model \(\w+\) is on meta") as info:
        PGD(eps=0.1, steps=2)(meta, x[:4], y[:4])
    assert isinstance(info.value.__cause__, RuntimeError)


def test_other_model_errors_are_not_masked(digits_model):
    _, x, y = digits_model

    class Broken(nn.Module):
        def forward(self, x):
            raise KeyError("a bug in the model")

    with pytest.raises(KeyError, match="a bug in the model"):
        PGD(eps=0.1, steps=2)(Broken().eval(), x[:4], y[:4])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_probability_output_warns_once_per_call(name, digits_model):
    model, x, y = digits_model
    probs = nn.Sequential(model, nn.Softmax(dim=1)).eval()
    with pytest.warns(UserWarning, match=r"model output looks like probabilities, attacks expect logits \(AutoAttack's check\)") as rec:
        ATTACKS[name]()(probs, x[:4], y[:4])
    assert sum("looks like probabilities" in str(w.message) for w in rec) == 1
    assert all(w.filename == __file__ for w in rec if "looks like probabilities" in str(w.message))
    with warnings.catch_warnings():  # logits: no warning
        warnings.simplefilter("error")
        ATTACKS[name]()(model, x[:4], y[:4])
