"""``spatialadv reproduce stadv-defenses`` end to end on a tiny configuration."""

from __future__ import annotations

import json

import pytest

from spatialadv.cli import main
from spatialadv.experiments.stadv_defenses import DEFENSES, PAPER, TRANSFERRED, Config, attacks


def test_stadv_defenses_tiny_end_to_end(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("SPATIALADV_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "std"
    args = ["reproduce", "stadv-defenses", "--out", str(out), "--n", "3", "--models", "mnist-b", "--epochs", "1",
            "--at-epochs", "1", "--max-train", "200", "--pgd-steps", "1", "--quiet"]
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n"] == {"mnist-b": 3}
    for d in DEFENSES:
        cells = rep["table3"][f"mnist-b/{d}"]
        assert set(cells) == set(TRANSFERRED)
        for a, cell in cells.items():
            for rate in (cell["transfer"], cell["white_box"]):  # a count out of the N = 3 attacked images
                assert 3 * rate == pytest.approx(round(3 * rate))
            if a != "FGSM":  # unbounded C&W and stAdv crafted on the defended model itself break every image
                assert cell["white_box"] == 1.0, (d, a)
            assert cell["paper"] == PAPER["table3"][("mnist-b", d)][TRANSFERRED.index(a)]
    t5 = rep["table5"]["mnist-b"]
    assert t5["paper"] == 64.22 and t5["adaptive_success"] == 1.0  # stAdv Table 5: the adaptive attack succeeds on nearly all
    models = rep["models"]
    assert {f"mnist-b/{k}" for k in ("plain", *DEFENSES)} <= set(models)
    assert all(m["train_seconds"] > 0 for m in models.values())
    md = (out / "report.md").read_text()
    assert "Table 3" in md and "Table 5" in md and "Convention:" in md
    assert "(50.17)" in md and "64.22" in md  # the paper's numbers beside ours
    assert main(args) == 0 and json.loads((out / "report.json").read_text())["table3"] == rep["table3"]  # resumed


def test_attacks_and_config_checks():
    atk = attacks(0.3)
    assert set(TRANSFERRED) < set(atk) and atk["FGSM"].eps == 0.3 and atk["stAdv"].tau == 0.05
    with pytest.raises(ValueError, match="filter-size"):
        Config(filter_size=4)
    with pytest.raises(ValueError, match="eps"):
        Config(eps=1.5)
