"""Text side of the priors: a phrase -> embedding cache, and mapping prior objects to a vocabulary.

Pure numpy. The encoder itself is whatever callable the runtime holds (a TensorRT / ONNX Runtime text
encoder engine); this module only caches it and compares its outputs.

    encode = CachedEncoder(engine_encode, size=4096)
    idx = map_to_vocabulary(priors, ["dog", "car", "sofa"], encode)   # "puppy" -> 0, "couch" -> 2

Captions change far more slowly than frames, and consecutive captions share most of their objects, so
the same few dozen phrases are encoded again and again; the cache turns that into dictionary look-ups.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["CachedEncoder", "map_to_vocabulary", "open_vocabulary", "cosine_similarity", "prior_arrays"]

Encode = Callable[[list[str]], np.ndarray]


class CachedEncoder:
    """LRU cache in front of a batch text encoder: `encode(list[str]) -> (n, E) array`.

    A call looks every phrase up, encodes the misses (deduplicated, in one batch call), and returns
    (n, E) float32 rows in the order asked. Counters: each phrase asked for is one hit or one miss;
    `hit_rate` = hits / (hits + misses). Thread-safe: the captioner thread and the frame loop may share
    one cache (a call holds the lock while it encodes, so concurrent misses are not encoded twice).
    `size` = 0 turns caching off (every phrase is encoded every time), for comparisons."""

    def __init__(self, encode: Encode, size: int = 4096):
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.encode, self.size = encode, int(size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.dim: int | None = None          # E, known after the first encode
        self.hits = 0
        self.misses = 0

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, phrase: str) -> bool:
        return phrase in self._cache

    def clear(self) -> None:
        """Forget every embedding and reset the counters (e.g. after swapping the text encoder)."""
        with self._lock:
            self._cache.clear()
            self.dim = None
            self.hits = self.misses = 0

    def __call__(self, phrases: Sequence[str]) -> np.ndarray:
        if isinstance(phrases, str):
            raise TypeError("CachedEncoder takes a list of phrases, not a str (wrap it: [phrase])")
        phrases = list(phrases)
        with self._lock:
            if not phrases:
                return np.zeros((0, self.dim or 0), np.float32)
            found: dict[str, np.ndarray | None] = {}
            missing: list[str] = []
            for p in phrases:
                if p in found:
                    continue                     # asked twice in one call: encoded (or fetched) once
                if p in self._cache:
                    self._cache.move_to_end(p)
                    found[p] = self._cache[p]
                else:
                    found[p] = None              # placeholder until the batch comes back
                    missing.append(p)
            if missing:
                fresh = self._encode(missing)
                for p, row in zip(missing, fresh, strict=True):
                    row = row.copy()             # its own buffer: an evicted row frees its memory
                    row.flags.writeable = False
                    found[p] = row
                    if self.size:
                        self._cache[p] = row
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
            # Counted once the encoder has succeeded, so a failing call leaves the counters as they were.
            self.misses += len(missing)
            self.hits += len(phrases) - len(missing)
            # np.stack copies: a caller writing into the result cannot corrupt the cache.
            return np.stack([found[p] for p in phrases]).astype(np.float32, copy=False)

    def _encode(self, phrases: list[str]) -> np.ndarray:
        out = np.asarray(self.encode(phrases))
        if out.ndim != 2 or out.shape[0] != len(phrases):
            raise ValueError(f"text encoder returned shape {out.shape} for {len(phrases)} phrases; "
                             f"expected ({len(phrases)}, E)")
        if self.dim is not None and out.shape[1] != self.dim:
            raise ValueError(f"text encoder returned width {out.shape[1]}, cached embeddings have {self.dim}: "
                             "call clear() after changing the encoder")
        self.dim = out.shape[1]
        return out.astype(np.float32, copy=False)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, E) x (m, E) -> (n, m) cosine similarities; a zero vector has similarity 0 to everything."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def _names(priors: Any) -> list[str]:
    """Object names of a Priors, or a plain list of names."""
    if priors is None:
        return []
    if hasattr(priors, "objects"):
        return [o.name for o in priors.objects]
    return [str(n) for n in priors]


def open_vocabulary(priors: Any) -> list[str]:
    """The vocabulary when the user gives none: the caption's object names, unique, in order."""
    return list(dict.fromkeys(_names(priors)))


def map_to_vocabulary(priors: Any, vocabulary: Sequence[str] | None, embed: Encode,
                      threshold: float = 0.5) -> list[int | None]:
    """For each prior object, the index of the nearest vocabulary name by cosine similarity of their
    embeddings, or None when the best similarity is below `threshold` (so "puppy" helps "dog", but an
    object the vocabulary has no word for helps nothing). An exact name match (case-insensitive) wins
    without embeddings. With no vocabulary (None or empty), the vocabulary is `open_vocabulary(priors)`
    and each object maps to its own name there.

    `priors`: a Priors or a list of names. `embed`: list[str] -> (n, E), e.g. a CachedEncoder."""
    names = _names(priors)
    if not names:
        return []
    if not vocabulary:
        own = {n: i for i, n in enumerate(open_vocabulary(names))}
        return [own[n] for n in names]
    vocabulary = list(vocabulary)
    exact = {}
    for i, v in enumerate(vocabulary):
        exact.setdefault(v.strip().lower(), i)
    result: list[int | None] = [exact.get(n.strip().lower()) for n in names]
    todo = [k for k, r in enumerate(result) if r is None]
    if not todo:
        return result
    sims = cosine_similarity(embed([names[k] for k in todo]), embed(vocabulary))   # (len(todo), V)
    sims = np.where(np.isfinite(sims), sims, -np.inf)                               # NaN never matches
    best = sims.argmax(axis=1)
    for row, k in enumerate(todo):
        if sims[row, best[row]] >= threshold:
            result[k] = int(best[row])
    return result


def prior_arrays(priors: Any, classes: Sequence[str], embed: Encode, dim: int, threshold: float = 0.5,
                 max_priors: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int | None]]:
    """The segmenter's prior inputs for one caption: objects (K, E), attributes (K, E), valid (K,),
    relation (K, K) and each object's vocabulary index (or None), K = max(objects, 1); only the first
    `max_priors` objects (and the relations among them) are kept.

    Each object is mapped to the nearest class name (`map_to_vocabulary`) and keyed by that name's
    embedding, so "puppy" steers queries to "dog"; an unmapped object keeps its own. An object's
    attributes are one phrase ("small red"); no attribute is a zero row. The runtime and training both
    build their inputs here, so a model is trained on exactly what it is fed when deployed."""
    objects = list(priors.objects)[:max_priors] if priors is not None else []
    K = max(len(objects), 1)  # the graph takes at least one prior slot: padding, masked out
    obj = np.zeros((K, dim), np.float32)
    att = np.zeros((K, dim), np.float32)
    valid = np.zeros((K,), np.float32)
    relation = np.zeros((K, K), np.float32)
    if not objects:
        return obj, att, valid, relation, []
    names = [o.name for o in objects]
    attrs = [" ".join(o.attributes) for o in objects]
    mapping = map_to_vocabulary(names, classes, embed, threshold)
    obj[:len(objects)] = embed([classes[m] if m is not None else n for n, m in zip(names, mapping)])
    with_attr = [i for i, a in enumerate(attrs) if a]
    if with_attr:
        att[with_attr] = embed([attrs[i] for i in with_attr])
    valid[:len(objects)] = 1.0
    n = len(objects)
    relation[:n, :n] = priors.relation_graph()[:n, :n]
    return obj, att, valid, relation, mapping
