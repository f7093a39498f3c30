"""Tests of the LAN mask generator, the attention-based detector and the adaptive attack."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil

import pytest
import torch
from torch import nn

from _contract import run_checked
from spatialadv.attacks import LANAdaptivePGD
from spatialadv.data import load_dataset
from spatialadv.defenses import (
    LANConfig,
    LANDetector,
    MaskClassifier,
    MaskGenerator,
    corrupt,
    lan_loss,
    load_or_train_lan,
    train_lan,
)
from spatialadv.defenses.lan import MaskClassifierConfig, load_or_train_mask_classifier


class _Subset:
    def __init__(self, x, y):
        self.x, self.y, self.num_classes = x, y, 10


@pytest.fixture(scope="module")
def mnist_small():
    """A seeded linear classifier on 400 MNIST-5k training images (eval mode, frozen) and the data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = load_dataset("mnist", "train")
        x, y = train.x[:400], train.y[:400]
        torch.manual_seed(0)
        f1 = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        opt = torch.optim.Adam(f1.parameters(), lr=1e-2)
        for _ in range(60):
            loss = nn.functional.cross_entropy(f1(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        f1.eval()
        for p in f1.parameters():
            p.requires_grad_(False)
            p.grad = None
        yield f1, x, y
    finally:
        torch.set_num_threads(threads)


def test_corrupt_known_answer():
    x, eta = torch.full((1, 1, 2, 2), 0.2), torch.full((1, 1, 2, 2), 1.0)
    mask = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]]]])
    torch.testing.assert_close(corrupt(x, mask, eta), torch.tensor([[[[0.2, 1.0], [0.6, 0.4]]]]))


def test_masks_in_unit_interval_and_loss_decreases(mnist_small):
    f1, x, _ = mnist_small
    torch.manual_seed(0)
    g = MaskGenerator(1, 28, hidden=32)
    with torch.no_grad():
        m = g(x[:8])
    assert m.shape == (8, 1, 28, 28) and float(m.min()) >= 0 and float(m.max()) <= 1
    hist = train_lan(g, f1, x, beta=1.0, epochs=6, lr=1e-3, batch_size=50)
    assert hist[-1] < hist[0] - 0.05
    assert not g.training and all(p.grad is None for p in f1.parameters())
    with torch.no_grad():
        m = g(x)
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    # the loss is the formula: mean soft cross-entropy minus beta * mean mask
    eta = x.flip(0)
    loss, lf = lan_loss(f1, g, x, eta, 0.5)
    with torch.no_grad():
        ref = f1(x).softmax(1)
        xt = g(x) * eta + (1 - g(x)) * x
        hand = -(ref * f1(xt).log_softmax(1)).sum(1)
    torch.testing.assert_close(lf, hand)
    torch.testing.assert_close(loss.detach(), hand.mean() - 0.5 * g(x).mean().detach())
    with pytest.raises(ValueError, match="eval mode"):
        train_lan(g, f1.train(), x[:10])
    f1.eval()


def test_coarse_mask_is_constant_on_blocks_and_validated():
    torch.manual_seed(0)
    g = MaskGenerator(1, 28, hidden=8, mask_size=7)
    with torch.no_grad():
        m = g(torch.rand(2, 1, 28, 28))
    assert m.shape == (2, 1, 28, 28) and g.net[-1].out_features == 49
    blocks = m.view(2, 1, 7, 4, 7, 4)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))  # each 4×4 block holds one value
    with pytest.raises(ValueError, match="mask_size must divide image_size"):
        MaskGenerator(1, 28, mask_size=5)


def test_mask_classifier_width_and_raw_masks():
    f2 = MaskClassifier(28, 10, width=2, standardize=False)
    assert f2.features[0].out_channels == 12 and f2.features[3].out_channels == 32
    assert (f2.head[1].out_features, f2.head[3].out_features) == (240, 168)
    gen = torch.Generator().manual_seed(0)
    masks = 0.5 + 0.1 * torch.rand(20, 1, 28, 28, generator=gen)
    f2.set_standardization(masks)  # raw masks: the identity stays
    assert torch.equal(f2.mu, torch.zeros_like(f2.mu)) and torch.equal(f2.sigma, torch.ones_like(f2.sigma))
    std = MaskClassifier(28, 10)
    std.set_standardization(masks)
    torch.testing.assert_close(std.mu, masks.mean(0, keepdim=True))
    torch.testing.assert_close(std.sigma, masks.std(0, keepdim=True))
    with pytest.raises(ValueError, match="width"):
        MaskClassifier(28, 10, width=0)


def test_uniform_noise_lan(mnist_small):
    f1, x, _ = mnist_small
    hists = {}
    for noise in ("images", "uniform"):
        torch.manual_seed(0)
        g = MaskGenerator(1, 28, hidden=16)
        hists[noise] = train_lan(g, f1, x[:100], epochs=2, lr=1e-3, batch_size=50, noise=noise)
    assert all(math.isfinite(h) for h in hists["uniform"]) and hists["uniform"] != hists["images"]
    with pytest.raises(ValueError, match="noise must be one of"):
        train_lan(g, f1, x[:10], noise="gaussian")


def test_lan_cache_key_keeps_the_lan1_format_and_variants_get_their_own(mnist_small, tmp_path):
    f1, x, y = mnist_small
    cfg = LANConfig(hidden=16, lan_epochs=1, f2_epochs=1, max_train=100)
    _, info = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("noise", "mask_size")}
    blob = json.dumps({"format": "lan-1", "f1": "linear-test", "config": before}, sort_keys=True)
    assert info["key"] == f"lan-linear-test-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"  # caches stay valid
    det_u, info_u = load_or_train_lan(f1, "linear-test", _Subset(x, y), dataclasses.replace(cfg, noise="uniform"),
                                      directory=tmp_path)
    det_c, info_c = load_or_train_lan(f1, "linear-test", _Subset(x, y), dataclasses.replace(cfg, mask_size=14),
                                      directory=tmp_path)
    assert len({info["key"], info_u["key"], info_c["key"]}) == 3
    assert det_c.g.mask_size == 14 and load_or_train_lan(f1, "linear-test", _Subset(x, y), dataclasses.replace(
        cfg, mask_size=14), directory=tmp_path)[1]["cached"]
    with pytest.raises(ValueError, match="noise must be one of"):
        load_or_train_lan(f1, "linear-test", _Subset(x, y), dataclasses.replace(cfg, noise="gaussian"),
                          directory=tmp_path)


def test_load_or_train_mask_classifier_caches(mnist_small, tmp_path):
    f1, x, y = mnist_small
    det, info = load_or_train_lan(f1, "linear-test", _Subset(x, y), LANConfig(hidden=16, lan_epochs=1, f2_epochs=1,
                                                                                max_train=100), directory=tmp_path)
    cfg = MaskClassifierConfig(width=2, epochs=1, max_train=100)
    d2, i2 = load_or_train_mask_classifier(det, info["key"], _Subset(x, y), cfg, directory=tmp_path)
    assert not i2["cached"] and i2["key"].startswith(info["key"] + "-f2-")
    assert d2.g is det.g and d2.f1 is det.f1 and d2.f2.features[0].out_channels == 12 and not d2.f2.training
    assert not any(p.requires_grad for p in d2.f2.parameters())
    d3, i3 = load_or_train_mask_classifier(det, info["key"], _Subset(x, y), cfg, directory=tmp_path)
    assert i3["cached"] and i3["key"] == i2["key"]
    torch.testing.assert_close(d3(x[:5]), d2(x[:5]))
    _, i4 = load_or_train_mask_classifier(det, info["key"], _Subset(x, y), dataclasses.replace(cfg, standardize=False),
                                          directory=tmp_path)
    assert i4["key"] != i2["key"]


class _Identity(nn.Module):
    def forward(self, x):
        return x


class _Permuted(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x).roll(1, dims=1)


def test_detector_flags_nothing_when_f2_agrees_by_construction(mnist_small):
    f1, x, _ = mnist_small
    agree = LANDetector(f1, _Identity(), f1).predict(x)
    assert not bool(agree["flag"].any())
    assert torch.equal(agree["pred1"], agree["pred2"])
    disagree = LANDetector(f1, _Identity(), _Permuted(f1)).predict(x)
    assert bool(disagree["flag"].all())


def test_load_or_train_lan_caches(mnist_small, tmp_path):
    f1, x, y = mnist_small
    cfg = LANConfig(hidden=16, lan_epochs=1, f2_epochs=1, max_train=200)
    det, info = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    assert not info["cached"] and len(info["lan_history"]) == 1
    det2, info2 = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    assert info2["cached"] and info2["key"] == info["key"]
    torch.testing.assert_close(det.g(x[:5]), det2.g(x[:5]))
    torch.testing.assert_close(det(x[:5]), det2(x[:5]))
    assert isinstance(det.f2, MaskClassifier) and not det.f2.training
    _, info3 = load_or_train_lan(f1, "linear-test", _Subset(x, y), LANConfig(hidden=16, lan_epochs=1, f2_epochs=1,
                                                                                max_train=200, beta=0.5),
                                 directory=tmp_path)
    assert info3["key"] != info["key"]


def test_adaptive_attack_contract(mnist_small, tmp_path):
    f1, x, y = mnist_small
    cfg = LANConfig(hidden=16, lan_epochs=1, f2_epochs=1, max_train=200)
    det, _ = load_or_train_lan(f1, "linear-test", _Subset(x, y), cfg, directory=tmp_path)
    with torch.no_grad():
        ok = f1(x).argmax(1) == y
    xs, ys = x[ok][:6], y[ok][:6]
    t = (ys + 1) % 10
    attack = LANAdaptivePGD(detector=det, eps=0.3, step_size=0.02, steps=40)
    res = run_checked(attack, f1, xs, ys, t)
    assert float((res.x_adv - xs).abs().max()) <= 0.3 + 1e-6
    assert res.success_rate > 0
    with pytest.raises(ValueError, match="targeted"):
        attack(f1, xs, ys)
    with pytest.raises(TypeError, match="detector must be an nn.Module"):
        LANAdaptivePGD(detector="lan")


def test_detection_rates_from_records():
    from spatialadv.experiments.lan_detection import _rates

    recs = [
        # fools f1 (on target), flagged, mask class retained, benign mask correct, recovered
        {"y": 1, "target": 2, "fools_f1": True, "pred1": 1, "pred2": 1, "pred1_adv": 2, "pred2_adv": 1},
        # fools f1 (off target: counts, as the thesis's "successfully fool f1"), not flagged: the mask follows f1
        {"y": 3, "target": 4, "fools_f1": True, "pred1": 3, "pred2": 5, "pred1_adv": 6, "pred2_adv": 6},
        # f1 not fooled: no pair
        {"y": 0, "target": 6, "fools_f1": False, "pred1": 0, "pred2": 0, "pred1_adv": 0, "pred2_adv": 7},
    ]
    r = _rates(recs)
    assert (r["n"], r["successes"], r["target_hit"]) == (3, 2, 1)
    assert (r["missed"], r["missed_followed"]) == (1, 1)  # the second: unflagged, its mask moved 5 → 6 with f1
    assert (r["success"].k, r["success"].n) == (2, 3)
    for key, (k, n) in {"tpr": (1, 2), "tnr": (1, 2), "retention": (1, 2), "recovery": (1, 2)}.items():
        est = r[key]
        assert (est.k, est.n, est.method) == (k, n, "clopper-pearson"), key
    # 1 of 2: the exact binomial interval [0.0126, 0.9874]
    assert r["tpr"].low == pytest.approx(0.012579, abs=1e-6) and r["tpr"].high == pytest.approx(0.987421, abs=1e-6)
    assert _rates(recs[2:])["tpr"].n == 0  # no pair: the rate is undefined, not 0


def test_best_cell_is_the_highest_mean_balanced_accuracy():
    from spatialadv.eval.compare import rate
    from spatialadv.experiments.lan_detection import _balanced, _best

    def cell(tpr, tnr, n=10):
        return {a: {"tpr": rate(tpr, n), "tnr": rate(tnr, n), "successes": n} for a in ("FGSM", "JSMA", "C&W")}

    cells = {"a": cell(9, 5), "b": cell(7, 8), "c": cell(8, 7)}
    assert _balanced(cells["a"]) == pytest.approx(0.7) and _balanced(cells["b"]) == pytest.approx(0.75)
    assert _best(cells) == "b"  # b and c tie at 0.75: the first listed wins
    assert _balanced({"FGSM": {"tpr": rate(0, 0), "tnr": rate(0, 0), "successes": 0}}) == -1.0


def test_grid_cells():
    from spatialadv.experiments.lan_detection import Config, grid_cells

    cells = grid_cells(Config(), 28)
    ids = [c["id"] for c in cells]
    assert ids[0] == "default/lenet" and cells[0]["lan"] == {} and cells[0]["clf"] is None  # the tables' detector
    assert len(set(ids)) == len(ids) == 11
    assert {c["id"] for c in cells if c["clf"] == {"standardize": False}} == {"default/lenet-raw"}
    assert {tuple(c["lan"].items()) for c in cells} == {(), (("beta", 0.1),), (("beta", 10.0),), (("noise", "uniform"),),
                                                        (("mask_size", 14),)}


def test_short_rows_state_the_images_a_row_would_need():
    from spatialadv.eval.compare import rate
    from spatialadv.experiments.lan_detection import Config, _short_rows

    per = {("transfer", "C&W", "table3"): {"successes": 10, "n": 100, "success": rate(10, 100)},
           ("transfer", "FGSM", "table3"): {"successes": 40, "n": 100, "success": rate(40, 100)}}
    keys = [("transfer", a, "table3") for a in ("FGSM", "C&W")]
    text = _short_rows(Config(), per, keys)
    assert text.startswith("transfer C&W: 10 pairs of 100 attacked") and "FGSM" not in text
    assert "would take about 300 (95 % range " in text  # 30 pairs at a 10 % rate


def test_thesis_numbers_carry_their_table():
    from spatialadv.experiments.lan_detection import _paper

    p = _paper("table3", "C&W", 0, "Table 3")
    assert p.value == 0.917 and p.source == "Nguyen 2018, Table 3 (CIFAR-10, crafted on VGG-like)"
    assert _paper("table2", "JSMA", 1, "Table 2").value == 0.614
    assert _paper("table1_retention", "FGSM", None, "Table 1").value == 0.863
    assert _paper("table2", "stAdv", 0, "Table 2") is None  # the thesis does not attack with stAdv


# ---------------------------------------------------------------------------------------------------------------------
# the job at a tiny scale: the thesis's protocol (filter, then attack), pair counting, the why-grid, the rebuild
# ---------------------------------------------------------------------------------------------------------------------
TINY = dict(datasets=("mnist",), n=3, min_pairs=2, max_attacked=6, epochs=1, max_train=300, lan_epochs=1, f2_epochs=1,
            cw_steps=3, adaptive_steps=3, why_betas=(10.0,), threads=1)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    """One tiny run of ``lan-detection`` (its own model cache, one thread): ``(exp, cfg, out, cache)``."""
    from spatialadv.experiments import experiments, run_experiment

    exp = experiments()["lan-detection"]
    cfg = dataclasses.replace(exp.config, **TINY)
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("lan") / "run"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPATIALADV_CACHE", str(cache))
        try:
            run_experiment(exp, cfg, out, progress=False)
        finally:
            torch.set_num_threads(threads)
    return exp, cfg, out, cache


def _stored(out):
    from spatialadv.eval.store import ResultStore
    from spatialadv.experiments.framework import STORE_NAME, Results

    store = ResultStore(out / STORE_NAME, readonly=True)
    return store, Results(out, store)


def _filters(cfg, cache, monkeypatch):
    """The job's pre-attack filters recomputed from the cached networks: test-order index lists per row."""
    from spatialadv.data import DataSpec
    from spatialadv.training import ModelSpec, TrainConfig, load_or_train

    monkeypatch.setenv("SPATIALADV_CACHE", str(cache))
    test = load_dataset("mnist", "test")
    spec = DataSpec("mnist", seed=0, max_train=cfg.max_train)
    tc = TrainConfig(epochs=cfg.epochs, seed=0)
    f1, i1 = load_or_train(ModelSpec("mnist-a", spec, tc), progress=False)
    src, _ = load_or_train(ModelSpec("c4", spec, tc), progress=False)
    det, info = load_or_train_lan(f1, i1["key"], spec.train(), LANConfig(lan_epochs=1, f2_epochs=1))
    assert info["cached"]  # the job's detector
    with torch.no_grad():
        pred = det.predict(test.x)
        ok_s = src(test.x).argmax(1) == test.y
    ok1, ok2 = pred["pred1"] == test.y, pred["pred2"] == test.y
    idx = (lambda m: m.nonzero().squeeze(1).tolist())
    return {"direct": {"table2": idx(ok1), "table4": idx(ok1 & ok2)},
            "transfer": {"table3": idx(ok1 & ok_s), "table4": idx(ok1 & ok_s & ok2)}}


def test_job_filters_before_attacking(tiny_job, monkeypatch):
    from spatialadv.experiments.lan_detection import ATTACK_NAMES, _merged_items

    exp, cfg, out, cache = tiny_job
    lists = _filters(cfg, cache, monkeypatch)
    store, results = _stored(out)
    with store:
        rows = results.meta("mnist/rows")
        for setting, names in lists.items():
            for label in ATTACK_NAMES:
                items = _merged_items(results, f"mnist/{setting}", f"detect {label}")
                attacked = {r["idx"] for run in results.find(f"mnist/{setting}", label) for r in run.records()}
                for row, allowed in names.items():
                    images = rows[setting][label][row]
                    # each row attacks the first images of its filtered list, in test order
                    assert images == allowed[:len(images)] and len(images) >= min(cfg.n, len(allowed)), (setting, row)
                    assert set(images) <= attacked  # attacked (not picked afterwards from another row's images)
                    for i in images:
                        v = items[str(i)]
                        assert v["pred1"] == v["y"]  # f1 classifies the benign image correctly
                        if row == "table4":
                            assert v["pred2"] == v["y"]  # and f2 its benign mask: filtered before the attack
        assert set(rows["direct"]["FGSM"]["table4"]) - set(rows["direct"]["FGSM"]["table2"]), \
            "Table 4 should attack filtered images beyond Table 2's (f2 is right on few masks at this scale)"


def test_pairs_are_counted_and_rows_extended_until_min_pairs(tiny_job):
    from spatialadv.experiments.lan_detection import ATTACK_NAMES, _merged_items

    exp, cfg, out, _ = tiny_job
    doc = json.loads((out / "report.json").read_text())["datasets"]["mnist"]
    store, results = _stored(out)
    extended = 0
    with store:
        rows = results.meta("mnist/rows")
        filtered = results.meta("mnist/lan")["filtered"]
        for setting, by_label in rows.items():
            for label in ATTACK_NAMES:
                items = _merged_items(results, f"mnist/{setting}", f"detect {label}")
                for row, images in by_label[label].items():
                    if not images:  # an empty filtered list (f2 is right on few masks at this scale): no row
                        assert filtered[setting][row] == 0 and f"{setting}/{label}/{row}" not in doc["rates"]
                        continue
                    pairs = sum(items[str(i)]["fools_f1"] for i in images)
                    r = doc["rates"][f"{setting}/{label}/{row}"]
                    assert (r["n"], r["successes"]) == (len(images), pairs)
                    if pairs:  # TPR and TNR rest on the pairs, one per successful adversarial example
                        assert r["tpr"]["n"] == r["tnr"]["n"] == r["recovery"]["n"] == pairs
                    cap = min(cfg.max_attacked, filtered[setting][row])
                    assert len(images) <= cap
                    if len(images) > cfg.n:  # extended only while the row lacked pairs
                        extended += 1
                        before = sum(items[str(i)]["fools_f1"] for i in images[:len(images) - cfg.n])
                        assert before < cfg.min_pairs
                    if len(images) < cap:
                        assert pairs >= cfg.min_pairs
    assert extended  # at this scale some row needs more images (C&W with 3 steps rarely succeeds)


def test_report_has_fidelity_table4_identity_and_why_section(tiny_job):
    exp, cfg, out, _ = tiny_job
    md = (out / "report.md").read_text()
    doc = json.loads((out / "report.json").read_text())
    assert md.index("## Fidelity") < md.index("# MNIST-5k") < md.index("## Why masks change class (MNIST-5k)")
    assert "TNR is 1 by construction" in md and "Perturbation size (MNIST-5k)" in md
    assert "The best detector the thesis's method reaches here (MNIST-5k)" in md
    why = doc["datasets"]["mnist"]["why"]
    assert len(why["cells"]) == 9 and why["best"] in why["cells"]  # 4 LANs × 2 f2 + raw masks
    assert {s["eps"] for s in why["size"]} == {0.05, 0.1, 0.2, 0.3}
    for key, r in doc["datasets"]["mnist"]["rates"].items():
        if key.endswith("/table4") and r["successes"]:
            assert r["tnr"]["value"] == 1.0  # by construction: f1(x) = f2(g(x)) = y on every kept benign image
    first = next(c for c in doc["comparisons"] if c["caption"].startswith("Why masks change class (MNIST-5k), the "))
    assert "LeNet-5, standardised" in first["rows"][0]["f2"] and len(first["rows"]) == 9


def test_report_rebuilds_byte_for_byte_from_the_store(tiny_job, tmp_path, monkeypatch):
    from spatialadv.attacks.base import Attack
    from spatialadv.eval.store import ResultStore
    from spatialadv.experiments import rebuild

    exp, cfg, out, _ = tiny_job
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    md, js = (copy / "report.md").read_bytes(), (copy / "report.json").read_bytes()
    figures = json.loads(js)["figures"]
    assert figures
    for p in [copy / "report.md", copy / "report.json", *copy.glob("*.png")]:
        p.unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("the report must be built from the store alone")

    monkeypatch.setattr(Attack, "__call__", refuse)
    monkeypatch.setattr(ResultStore, "add", refuse)
    monkeypatch.setattr(ResultStore, "add_items", refuse)
    doc = rebuild(copy)
    assert (copy / "report.md").read_bytes() == md and (copy / "report.json").read_bytes() == js
    assert doc["figures"] == figures and all((copy / f).is_file() for f in figures)
