"""The text side of training: captions -> priors (the runtime's spaCy parser) -> prior tensors (the
runtime's `prior_arrays`) with the frozen text encoder behind the runtime's phrase cache, so the segmenter
is trained on exactly the inputs the deployed runtime feeds it."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from llmformer.presets import Preset
from llmformer.text_encoder import build_text_encoder, tokenizer_file
from runtime.nlp import load_nlp
from runtime.priors import Priors, parse
from runtime.vocabulary import CachedEncoder, prior_arrays


class PriorNoise:
    """A captioner's mistakes, for the segmenter to learn that priors can be wrong or incomplete: each caption is
    withheld with probability `dropout` (null priors, as when the runtime has no caption); each object of `names` in
    a kept one is left out with probability `drop` (with its relations) and each one kept is renamed to another of
    `names` with probability `swap`. Attributes and the background stay. The demo captioner's mistakes on the
    training split are mostly shapes it does not name (23%), then wrong names (18%): benchmarks/README.md. Without
    withheld captions the segmenter learns to outline whatever the caption names and finds nothing by sight (issue
    15's given/none row); without left-out objects it learns that what a caption does not name is not there."""

    def __init__(self, dropout: float, swap: float, names: Sequence[str], rng: np.random.Generator,
                 drop: float = 0.0):
        self.dropout, self.swap, self.drop, self.names, self.rng = dropout, swap, drop, list(names), rng

    def __call__(self, priors: Priors) -> Priors:
        if self.rng.random() < self.dropout:
            return Priors(caption="")
        objects, keep = list(priors.objects), []
        for i, o in enumerate(objects):
            if o.name in self.names:
                if self.drop and self.rng.random() < self.drop:   # no draw at 0: the same stream as before
                    continue
                if self.rng.random() < self.swap:
                    others = [n for n in self.names if n != o.name]
                    objects[i] = dataclasses.replace(o, name=others[self.rng.integers(len(others))])
            keep.append(i)
        return dataclasses.replace(priors, objects=objects).select(keep)


class TextSide:
    def __init__(self, preset: Preset, map_threshold: float = 0.5):
        from tokenizers import Tokenizer

        self.encoder = build_text_encoder(preset.text_encoder).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file(preset.text_encoder)))
        self.tokenizer.enable_truncation(preset.text_encoder.max_length)
        self.tokenizer.enable_padding(length=preset.text_encoder.max_length)
        self.dim = preset.text_encoder.embed_dim
        self.cache = CachedEncoder(self._encode, size=1 << 16)
        self.map_threshold = map_threshold
        self.nlp = load_nlp()

    @torch.no_grad()
    def _encode(self, phrases: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(phrases)
        ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
        return self.encoder(ids, mask).numpy()

    def vocabulary(self, classes: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.cache(list(classes)))

    def priors(self, captions: Sequence[str], classes: Sequence[str], noise: "PriorNoise | None" = None):
        """A batch of captions -> (objects, attributes, valid, relation) padded to the batch's largest K,
        and the parsed Priors (after `noise`, when given)."""
        parsed = [parse(c, nlp=self.nlp) for c in captions]
        if noise is not None:
            parsed = [noise(p) for p in parsed]
        arrays = [prior_arrays(p, classes, self.cache, self.dim, self.map_threshold) for p in parsed]
        K = max(a[0].shape[0] for a in arrays)
        B = len(arrays)
        obj = np.zeros((B, K, self.dim), np.float32)
        att = np.zeros((B, K, self.dim), np.float32)
        valid = np.zeros((B, K), np.float32)
        rel = np.zeros((B, K, K), np.float32)
        for b, (o, a, v, r, _) in enumerate(arrays):
            k = o.shape[0]
            obj[b, :k], att[b, :k], valid[b, :k], rel[b, :k, :k] = o, a, v, r
        return tuple(torch.from_numpy(x) for x in (obj, att, valid, rel)), parsed
