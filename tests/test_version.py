import os
import subprocess
import sys
import tomllib
from pathlib import Path

import spatialadv

ROOT = Path(__file__).resolve().parents[1]


def test_version_single_sourced_from_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert spatialadv.__version__ == declared


def test_cli_version_prints_it_without_importing_torch():
    code = ("import sys\nfrom spatialadv.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"spatialadv {spatialadv.__version__}"
