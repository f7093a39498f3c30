"""eval.compare additions: rate_sum (the SdpAdv tables' Sum column), Estimate.plain, Estimate.from_json."""

from __future__ import annotations

import math

import pytest
from scipy.stats import beta

from spatialadv.eval.compare import Estimate, mean, rate, rate_sum


def test_rate_sum_adds_bonferroni_clopper_pearson_intervals():
    parts = [rate(40, 100), rate(50, 100), rate(3, 4)]
    s = rate_sum(parts)
    a = 0.05 / 3 / 2  # each interval at level 1 − 0.05/3: coverage of the sum ≥ 95 % by the union bound
    lo = sum(float(beta.ppf(a, k, n - k + 1)) for k, n in ((40, 100), (50, 100), (3, 4)))
    hi = sum(float(beta.ppf(1 - a, k + 1, n - k)) for k, n in ((40, 100), (50, 100), (3, 4)))
    assert s.value == pytest.approx(0.4 + 0.5 + 0.75) and (s.low, s.high) == pytest.approx((lo, hi), abs=1e-12)
    assert s.method == "clopper-pearson-sum" and s.n == 204
    # wider than each part's own 95 % interval
    assert s.low < sum(p.low for p in parts) and s.high > sum(p.high for p in parts)
    with pytest.raises(ValueError, match="needs rates"):
        rate_sum([rate(1, 2), mean([1.0, 2.0])])
    assert math.isnan(rate_sum([rate(1, 2), rate(0, 0)]).value)


def test_plain_and_json_round_trip():
    p = Estimate.plain(0.125)
    assert p.format(3) == "0.125" and p.contains(0.125) is None and p.to_json()["ci95"] == [None, None]
    assert Estimate.plain(None).format() == "–"
    for e in (rate(3, 10), rate([1, 0, 1, 1], clusters=[0, 0, 1, 1]), mean([1.0, 2.0, 4.0]), mean([]), p):
        back = Estimate.from_json(e.to_json())
        assert back.format(6) == e.format(6) and (back.n, back.method, back.k) == (e.n, e.method, e.k)
