"""Shared helpers for the benchmark scripts: machine description (runtime.profiling.machine) and percentiles."""
from __future__ import annotations

import numpy as np

from runtime.profiling import machine  # noqa: F401  (re-exported: one description for benchmarks, profiles, TRAINING.json)


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))
