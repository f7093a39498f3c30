"""The runnable examples in examples/ run end to end at their --quick settings."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, output", [
    ("attack_with_stadv.py", "flow.png"),
    ("audit_safetensors.py", "report.json"),
    ("certify_rotations.py", "certificates.json"),
])
def test_example_runs(script, output, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
               MPLBACKEND="Agg", SPATIALADV_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--out", str(tmp_path / "out"), "--quick"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "out" / output).is_file()
