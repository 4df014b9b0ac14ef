"""The artifact manifest: what `build_engines.py` writes and `runtime.load()` reads.

A folder is valid when `manifest.json` exists, has a format version this code reads, and every file it
lists exists with the recorded sha256. The manifest is written last and atomically, so a build killed
half-way leaves either the previous valid folder or no manifest at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

FORMAT = "llmformer-edge/artifacts"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
REBUILD_HINT = "rebuild with `python export/build_engines.py --out {folder}`"


class ManifestError(RuntimeError):
    """An artifact folder is missing, altered or incompatible; the message names the file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(folder: Path, name: str) -> dict[str, Any]:
    path = Path(folder) / name
    return {"file": name, "sha256": sha256_file(path), "size": path.stat().st_size}


def iter_file_entries(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every {"file", "sha256", "size"} entry, wherever it sits in the manifest."""
    def walk(node):
        if isinstance(node, dict):
            if {"file", "sha256"} <= node.keys():
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    yield from walk(manifest)


def atomic_write_bytes(path: Path, data: bytes) -> None:
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


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    path = Path(folder) / MANIFEST_NAME
    atomic_write_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def read_manifest(folder: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Load and validate `folder/manifest.json`; with `verify`, check every listed file's sha256."""
    folder = Path(folder)
    hint = REBUILD_HINT.format(folder=folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"artifact folder {folder} does not exist: build it with "
                            f"`python export/build_engines.py --out {folder}`")
    if not path.is_file():
        raise ManifestError(f"{path} is missing: the folder holds no finished build (a build may have been "
                            f"interrupted); {hint}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); {hint}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path} is not an llmformer-edge manifest (format must be '{FORMAT}')")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ManifestError(f"{path} has format version {version}, newer than this runtime reads "
                            f"({FORMAT_VERSION}): upgrade llmformer-edge, or {hint} with this version")
    if verify:
        for entry in iter_file_entries(manifest):
            file = folder / entry["file"]
            if not file.is_file():
                raise ManifestError(f"{entry['file']} is listed in {path} but missing from {folder}; {hint}")
            if file.stat().st_size != entry.get("size", file.stat().st_size) or sha256_file(file) != entry["sha256"]:
                raise ManifestError(f"{entry['file']} in {folder} was altered after the build (sha256 mismatch); {hint}")
    return manifest
