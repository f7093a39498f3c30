"""Helpers for the Python blocks executed when the documentation is built (markdown-exec)."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path


def experiment_options(name: str) -> str:
    """The command's help line and its options (from the experiment's Config) as Markdown."""
    from spatialadv.experiments import experiments

    exp = experiments()[name]
    lines = [f"`spatialadv reproduce {name}`: {exp.help}.", "", "| option | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(exp.config):
        default = getattr(exp.config, f.name)
        if isinstance(default, tuple):
            default = " ".join(str(v) for v in default)
        meaning = str(f.metadata.get("help", "")).replace("|", "\\|")
        lines.append(f"| `--{f.name.replace('_', '-')}` | `{default}` | {meaning} |")
    if exp.papers:
        from spatialadv.references import cite

        lines += ["", "Cites: " + "; ".join(cite(k) for k in exp.papers) + "."]
    return "\n".join(lines)


def png_html(path: str | Path, width: int = 640) -> str:
    """An inline ``<img>`` of a PNG written by an executed block (the site needs no extra files)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{Path(path).name}" width="{width}" src="data:image/png;base64,{data}">'
