"""Shared helpers for the benchmark scripts: machine description and percentiles."""
from __future__ import annotations

import datetime as _dt
import os
import platform

import numpy as np


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {_dt.date.today().isoformat()}"


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
