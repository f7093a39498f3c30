"""``spatialadv reproduce smooth-defenses`` end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from spatialadv.cli import main
from spatialadv.experiments.smooth_defenses import ATTACKS, PAPER, Config, transfer_attacks


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_smooth_defenses_tiny_end_to_end(cache, one_thread):
    out = cache / "smd"
    args = ["reproduce", "smooth-defenses", "--out", str(out), "--n", "3", "--epochs", "1", "--max-train", "300",
            "--steps", "2", "--binary-search-steps", "1", "--quiet"]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    wb = rep["white_box"]
    for model in ("c4", "c4/ll-at", "c4/bilateral"):
        assert {f"{model}/{a}" for a in ATTACKS} <= set(wb)
        assert all(wb[f"{model}/{a}"]["N"] == 3 for a in ATTACKS)
    assert set(rep["transfer"]) == set(ATTACKS)
    for a in ATTACKS:  # a transferred example can only fool a target model when it is not the clean image
        t = rep["transfer"][a]
        assert 0.0 <= t["bilateral"]["P_suc"] <= 1.0 and 0.0 <= t["ll-at"]["P_suc"] <= 1.0
    md = (out / "report.md").read_text()
    assert "Table 2" in md and "Table 3" in md and "Adaptive" in md
    assert "0.15 / 4.53" in md and "0.99 / 2.39" in md  # the paper's Table 2 beside ours
    assert "ImageNet" in md
    assert main(args) == 0 and json.loads((out / "report.json").read_text())["white_box"] == wb  # resumed: same numbers


def test_transfer_attacks_use_one_distortion_target_and_bad_config_raises():
    atk = transfer_attacks()
    assert set(atk) == set(ATTACKS) and set(PAPER["table2"]) == set(ATTACKS)
    assert atk["FGSM"].eps == 0.3 and atk["PGD2"].eps == 5.0 and atk["C&W"].binary_search_steps == 1
    with pytest.raises(ValueError, match="at-weight"):
        Config(at_weight=1.5)
