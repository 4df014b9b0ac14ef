"""Shared helpers for the benchmark scripts (and the server tests): machine description
(runtime.profiling.machine), percentiles, free loopback ports."""
from __future__ import annotations

import socket

import numpy as np

from runtime.profiling import machine  # noqa: F401  (re-exported: one description for benchmarks, profiles, TRAINING.json)


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports free on 127.0.0.1 right now (for servers started on loopback)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
