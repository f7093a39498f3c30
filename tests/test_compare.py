import json
import math

import numpy as np
import pytest
from scipy import stats

from spatialadv.eval.compare import Cell, Comparison, Estimate, Metric, PaperValue, bootstrap, mean, rate, run_estimates
from spatialadv.experiments.framework import Table


def test_rate_is_clopper_pearson():
    e = rate(97, 100)
    iv = stats.binomtest(97, 100).proportion_ci(0.95, method="exact")
    assert (e.value, e.k, e.n, e.method) == (0.97, 97, 100, "clopper-pearson")
    assert e.low == pytest.approx(iv.low, abs=1e-12) and e.high == pytest.approx(iv.high, abs=1e-12)
    # per-trial outcomes without clusters give the same interval
    assert rate(np.r_[np.ones(97), np.zeros(3)]) == e
    # the ends: 0 and n successes reach 0 and 1 exactly
    assert rate(0, 10).low == 0.0 and rate(10, 10).high == 1.0
    assert rate(10, 10).low == pytest.approx(0.025 ** (1 / 10))


def test_rate_clustered_by_image_is_wider_and_honest_when_every_pair_agrees():
    images = np.repeat(np.arange(100), 9)
    # every pair of an image agrees: the 900 pairs carry the information of 100 images
    outcomes = np.repeat(np.r_[np.ones(90), np.zeros(10)], 9)
    clustered = rate(outcomes, clusters=images)
    assert clustered.method == "clopper-pearson-clustered"
    same_as_images = rate(90, 100)
    assert clustered.low == pytest.approx(same_as_images.low, rel=1e-9)
    assert clustered.high == pytest.approx(same_as_images.high, rel=1e-9)
    assert clustered.high - clustered.low > rate(outcomes).high - rate(outcomes).low
    # 100 % success: the interval is Clopper–Pearson on the 100 images, not on the 900 pairs
    all_ok = rate(np.ones(900), clusters=images)
    assert all_ok.low == pytest.approx(rate(100, 100).low)
    # independent outcomes across pairs: the design effect is clipped at 1 (never narrower than unclustered)
    rng = np.random.default_rng(0)
    iid = rng.random(900) < 0.5
    assert rate(iid, clusters=images).low <= rate(iid).low + 1e-12


def test_rate_refuses_bad_input():
    with pytest.raises(ValueError, match=r"lie in \[0, n\]"):
        rate(11, 10)
    with pytest.raises(ValueError, match="0/1"):
        rate([0.5, 1.0])
    with pytest.raises(ValueError, match="one id per trial"):
        rate([1, 0, 1], clusters=[0, 1])
    assert math.isnan(rate(0, 0).value)


def test_mean_bootstrap_is_seeded_and_covers_the_mean():
    v = np.random.default_rng(1).exponential(2.0, size=200)
    a, b = mean(v), mean(v)
    assert a == b and a.method == "bootstrap" and a.n == 200
    assert a.low < v.mean() < a.high
    # close to the t interval for n = 200
    t = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert a.low == pytest.approx(t[0], rel=0.05) and a.high == pytest.approx(t[1], rel=0.05)
    one = mean([3.0])
    assert one.value == 3.0 and math.isnan(one.low)
    assert math.isnan(mean([]).value)
    with pytest.raises(ValueError, match="finite"):
        mean([1.0, math.nan])


def test_run_estimates_match_the_summary_and_cluster_by_image():
    recs = []
    for idx in range(20):
        for t in range(3):
            ok = idx < 15
            recs.append(dict(idx=idx, target=t, label=0, clean_pred=0 if idx < 18 else 1, success=int(ok and idx < 18),
                             pred=1 if ok else 0, l2=1.0 + idx / 10, linf=0.3, size=0.1, flow_tv=None, flow_l2=None))
    e = run_estimates(recs)
    assert e["P_suc"].k == 45 and e["P_suc"].n == 54 and e["P_suc"].method == "clopper-pearson-clustered"
    assert e["clean_accuracy"].value == pytest.approx(54 / 60)
    assert e["D_bar"].value == pytest.approx(np.mean([1.0 + i / 10 for i in range(15)]))
    assert e["D_bar"].method == "cluster-bootstrap" and "flow_tv_mean" not in e


def test_comparison_renders_ours_the_paper_and_whether_it_lies_inside():
    c = Comparison(["model"], [Metric("success (%)", pct=True, digits=1), Metric("D̄", digits=2)], "Over pairs.")
    c.add(["a"], Cell(rate(97, 100), PaperValue(0.9995, "stadv", "Table 1")), mean([1.0, 2.0, 3.0]))
    c.add(["b"], Cell(rate(100, 100), PaperValue(0.9998, "stadv", "Table 1")), None)
    md = c.markdown().splitlines()
    assert md[0] == "| model | success (%): ours [95 % CI] | paper | paper in CI | D̄: ours [95 % CI] |"
    assert md[2] == "| a | 97.0 [91.5, 99.4] | 99.95 | **no** | 2.00 [1.00, 3.00] |"
    assert md[3] == "| b | 100.0 [96.4, 100.0] | 99.98 | yes | – |"
    assert md[-1].startswith("Over pairs. Paper: Xiao et al. 2018, Table 1. Brackets: 95 % interval — Clopper–Pearson")
    doc = json.loads(json.dumps(c.to_json()))
    row = doc["rows"][0]["success (%)"]
    assert row["paper"] == {"value": 0.9995, "source": "Xiao et al. 2018, Table 1"} and row["paper_in_ci"] is False
    assert row["ours"]["k"] == 97 and row["ours"]["ci95"][0] == pytest.approx(rate(97, 100).low)


def test_comparison_with_several_sources_names_each():
    two = Comparison(["x"], [Metric("a"), Metric("b")])
    two.add(["1"], Cell(rate(1, 2), PaperValue(0.5, "stadv", "Table 1")), Cell(rate(1, 2), PaperValue(0.5, "stadv", "Table 6")))
    assert two.columns() == ["x", "a: ours [95 % CI]", "paper (Xiao et al. 2018, Table 1)", "paper in CI",
                             "b: ours [95 % CI]", "paper (Xiao et al. 2018, Table 6)", "paper in CI"]
    c = Comparison(["x"], [Metric("m")])
    c.add(["1"], Cell(Estimate(0.5, 0.4, 0.6, 10, "bootstrap"), PaperValue(0.45, "stadv", "Table 1")))
    c.add(["2"], Cell(Estimate(0.5, 0.4, 0.6, 10, "bootstrap"), PaperValue(0.7, "smooth", "Table 2", note="read off")))
    md = c.markdown()
    assert "| 1 | 0.50 [0.40, 0.60] | 0.45 (Xiao et al. 2018, Table 1) | yes |" in md
    assert "| 2 | 0.50 [0.40, 0.60] | 0.70 (Zhang et al. 2020, Table 2 (read off)) | **no** |" in md


def test_comparison_and_paper_value_refuse_bad_input():
    c = Comparison(["a", "b"], [Metric("m")])
    with pytest.raises(ValueError, match="a row needs 2 keys and 1 cells"):
        c.add(["x"], None)
    with pytest.raises(KeyError, match="unknown paper 'nope'"):
        PaperValue(0.1, "nope", "Table 1")


def test_table_cells_may_be_estimates_and_the_caption_names_the_interval():
    t = Table(["model", "rate"], [["a", rate(9, 10)]], "Rates.")
    md = t.markdown()
    assert "| a | 0.90 [0.55, 1.00] |" in md and md.endswith("Rates. Brackets: 95 % interval — Clopper–Pearson (exact binomial).")


def test_bootstrap_of_any_statistic_agrees_with_the_mean_and_resamples_clusters():
    v = np.random.default_rng(2).normal(1.0, 0.5, size=60)
    assert bootstrap([v], np.mean, range(60)) == mean(v)  # the same draws: one statistic, two entry points
    w = v + 1.0
    ratio = bootstrap([v, w], lambda a, b: a.mean() / b.mean(), np.repeat(np.arange(20), 3))
    assert ratio.method == "cluster-bootstrap" and ratio.value == pytest.approx(v.mean() / w.mean())
    assert ratio.low < ratio.value < ratio.high
    assert math.isnan(bootstrap([v[:3]], np.std, [0, 0, 0]).low)  # one image: no interval


def test_estimate_order_by_intervals():
    a, b = rate(5, 100), rate(60, 100)
    assert a.order(b) == "lower" and b.order(a) == "higher"
    assert rate(50, 100).order(rate(55, 100)) == "tie (intervals overlap)"
    assert a.order(None) == "not measured" and a.order(mean([])) == "not measured"
    assert mean([]).order(a) == "not measured"
