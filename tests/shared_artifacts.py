"""Tiny demo-preset artifacts built once per test session and shared by the runtime test modules
(test_profiling, test_camera, test_overlay, test_hardening): one ~10 s build instead of one per module."""
from __future__ import annotations

from pathlib import Path

_BUILT: dict[str, Path] = {}


def tiny_artifacts_once(tmp_path_factory) -> Path:
    """The folder of tiny_preset() built by export.build_engines, built on the first call of the session.
    Treat it as read-only: copy it before altering files."""
    if "tiny" not in _BUILT:
        from conftest import tiny_preset
        from export.build_engines import build, parse_args

        out = tmp_path_factory.mktemp("shared_artifacts") / "tiny"
        build(parse_args(["--out", str(out)]), preset=tiny_preset())
        _BUILT["tiny"] = out
    return _BUILT["tiny"]
