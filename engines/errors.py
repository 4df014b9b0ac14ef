"""The project's error root. Every error llmformer-edge raises inherits `LLMFormerError`, and also the
builtin base a caller would catch without knowing this project (`ValueError` for bad arguments,
`FileNotFoundError` for a missing folder, `RuntimeError` for a backend that cannot run), so both
`except LLMFormerError` and `except ValueError` keep working.

It lives in `engines/`, the lowest package, so that every other package (runtime, export, calibration,
llmformer) can import it without importing anything heavy.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["LLMFormerError", "EngineError", "ManifestError", "OptionError"]


class LLMFormerError(Exception):
    """Base of every error this project raises; the message says what was wrong and what to do."""


class EngineError(LLMFormerError, RuntimeError):
    """An engine could not be created or run; the message says what to do."""


class ManifestError(LLMFormerError, RuntimeError):
    """An artifact folder is missing, altered or incompatible; the message names the file or key."""


class OptionError(LLMFormerError, TypeError):
    """A keyword option the call does not take (a typo, or an option of another backend), or an option
    value of the wrong type; the message names it and, for a likely typo, the option that was meant."""

    @classmethod
    def unexpected(cls, caller: str, names: Iterable[str], known: Iterable[str], takes: Iterable[str] | None = None,
                   note: str = "") -> "OptionError":
        """The error for unknown keyword `names` given to `caller` ("runtime.load()"): each close match in
        `known` is suggested, and the message lists `takes` (default: `known`), the options the call accepts."""
        names, known = sorted(names), sorted(set(known))
        parts = []
        for name in names:
            close = difflib.get_close_matches(name, [k for k in known if k != name], n=1, cutoff=0.6)
            parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        takes = sorted(set(known if takes is None else takes))
        return cls(f"{caller} got an unexpected option{'s' if len(names) > 1 else ''} {', '.join(parts)}"
                   f"{note}; it takes: {', '.join(takes) or 'none'}")
