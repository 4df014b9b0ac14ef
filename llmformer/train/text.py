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
    """A captioner's mistakes, for the segmenter to learn that priors can be wrong: each caption is withheld
    with probability `dropout` (null priors, as when the runtime has no caption) and each object in a kept one
    is renamed to another of `names` with probability `swap` (the demo captioner's errors are wrong shape
    names: benchmarks/README.md). Attributes and relations stay. Without it the segmenter learns to outline
    whatever the caption names and finds nothing by sight (issue 15's given/none row)."""

    def __init__(self, dropout: float, swap: float, names: Sequence[str], rng: np.random.Generator):
        self.dropout, self.swap, self.names, self.rng = dropout, swap, list(names), rng

    def __call__(self, priors: Priors) -> Priors:
        if self.rng.random() < self.dropout:
            return Priors(caption="")
        objects = []
        for o in priors.objects:
            if o.name in self.names and self.rng.random() < self.swap:
                others = [n for n in self.names if n != o.name]
                o = dataclasses.replace(o, name=others[self.rng.integers(len(others))])
            objects.append(o)
        return dataclasses.replace(priors, objects=objects)


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
