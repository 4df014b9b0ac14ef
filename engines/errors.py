"""The project's error root. Every error llmformer-edge raises inherits `LLMFormerError`, and also the
builtin base a caller would catch without knowing this project (`ValueError` for bad arguments,
`FileNotFoundError` for a missing folder, `RuntimeError` for a backend that cannot run), so both
`except LLMFormerError` and `except ValueError` keep working.

It lives in `engines/`, the lowest package, so that every other package (runtime, export, calibration,
llmformer) can import it without importing anything heavy.
"""
from __future__ import annotations

__all__ = ["LLMFormerError", "EngineError", "ManifestError"]


class LLMFormerError(Exception):
    """Base of every error this project raises; the message says what was wrong and what to do."""


class EngineError(LLMFormerError, RuntimeError):
    """An engine could not be created or run; the message says what to do."""


class ManifestError(LLMFormerError, RuntimeError):
    """An artifact folder is missing, altered or incompatible; the message names the file or key."""
