"""Shared helpers for the benchmark scripts: machine description and percentiles."""
from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path

import numpy as np


def machine() -> str:
    """CPU model, usable cores, OS, and the load average at start (it says whether other work shared the
    cores while the benchmark ran), with today's date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {usable} usable cores ({os.cpu_count()} logical), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, load average {load} at start, {_dt.date.today().isoformat()}")


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
