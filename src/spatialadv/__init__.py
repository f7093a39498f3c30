"""spatialadv: adversarial examples beyond L_p norms (spatial flows, baselines, evaluation)."""

from importlib.metadata import PackageNotFoundError, version

try:  # single source: pyproject.toml's [project] version, recorded in the installed package's metadata
    __version__ = version("spatialadv")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

del PackageNotFoundError, version
