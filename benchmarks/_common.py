"""What every benchmark script records about its run: the machine and load at the start, the JSON at the end."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def run_info(threads: int) -> dict:
    """Machine, processor, torch version, thread count and the load average at the start."""
    return {"machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "threads": threads, "load_avg_start": os.getloadavg()}


def write_results(res: dict, out: str) -> int:
    """Add the load average at the end, write ``res`` as JSON to ``out`` (parents created); returns 0."""
    res["load_avg_end"] = os.getloadavg()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0
