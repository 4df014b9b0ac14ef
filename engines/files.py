"""File primitives every writer and reader of an artifact folder uses: a streaming sha256, a cheap
fingerprint, and an atomic write."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FINGERPRINT_BLOCK = 1 << 20       # bytes read at each of the fingerprint's places
FINGERPRINT_PLACES = 8            # head, tail and evenly spaced blocks between


def fingerprint_file(path: str | os.PathLike) -> str:
    """sha256 over the size and FINGERPRINT_PLACES blocks of 1 MiB (the head, the tail, evenly spaced ones
    between): at most 8 MiB read whatever the size, so a 10 GB decoder is checked in milliseconds. It
    catches a truncated, extended, replaced or half-copied file; an edit inside an unread stretch that keeps
    the size is only caught by the full sha256 (`verify="full"`)."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= FINGERPRINT_BLOCK * FINGERPRINT_PLACES:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            last = size - FINGERPRINT_BLOCK
            for k in range(FINGERPRINT_PLACES):   # k = 0 is the head, the last one ends at the last byte
                f.seek(last * k // (FINGERPRINT_PLACES - 1))
                h.update(f.read(FINGERPRINT_BLOCK))
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a killed writer never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
