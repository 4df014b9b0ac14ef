"""Greedy caption decoding over the `Engine` interface: prefill, then one token at a time on a KV cache
that is allocated once per caption. Torch-free: the tokenizer is `tokenizers`, the graphs are Engines.

    decoder = CaptionDecoder.from_files(tokenizer_file, prompt_file, embed=..., decoder=..., vision=...)
    caption = decoder.caption(pixel_values, "What is on the table?")        # runs the vision engine
    caption = decoder.caption_embeds(image_embeds)   # the vision pass was already run for the segmenter

The cache: per layer a key and a value buffer (1, Hkv, prompt + max_new_tokens - 1, D), zeroed once per
caption. The decoder graph takes the whole buffer as its past with an attention mask over the filled
slots, and returns the keys/values of the token it was fed, which are written into their slot. No step
allocates, grows or concatenates the cache; the price is attending over at most `max_new_tokens` empty
(masked) slots, which is small beside the prompt's hundreds of image tokens.

Where it lives: every tensor of the loop (the cache, the attention mask, the step's embedding, presents and
logits) is allocated once per caption on the decoder's device (`Engine.allocate`, in the graph's dtype) and
passed by `Engine.run_bound`, so the cache never leaves that device: ONNX Runtime binds it through IOBinding,
TensorRT by device pointer. A decode step moves, host <-> device, the token id, its position and one mask
slot in (8 bytes each) and the last position's logits out (V x 4 bytes): O(1) in the cache length. The new
keys/values are copied on the device into their slot (2 x layers x Hkv x D elements). `Caption.io` has the
counts (engines.base.IOBytes), and the profiler reports them per token.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import DeviceTensor, Engine, IOBytes, total_io
from engines.contract import CAPTIONER_DECODER, CAPTIONER_EMBED, CAPTIONER_VISION
from engines.errors import LLMFormerError
from runtime.profiling import nvtx_range

DEFAULT_MAX_NEW_TOKENS = 64


class CaptionError(LLMFormerError, ValueError):
    """A caption cannot be made from these inputs; the message says what to change."""


GENERATION_OPTIONS = ("max_new_tokens", "repetition_penalty")   # what caption(**options) takes


def check_generation_options(options: Mapping[str, Any], caller: str = "caption()") -> dict[str, Any]:
    """`options` for caption()/caption_embeds(), checked before any engine runs: an unknown name is an
    OptionError naming it; max_new_tokens must be an int >= 1 and repetition_penalty a finite number > 0 (1 =
    off), else a CaptionError. Returns them, numbers as Python ints/floats."""
    from engines.errors import OptionError

    unknown = [k for k in options if k not in GENERATION_OPTIONS]
    if unknown:
        raise OptionError.unexpected(caller, unknown, GENERATION_OPTIONS)
    out = dict(options)
    if "max_new_tokens" in out:
        n = out["max_new_tokens"]
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise CaptionError(f"max_new_tokens must be an int >= 1 (default {DEFAULT_MAX_NEW_TOKENS}), got "
                               f"{type(n).__name__} {n!r}")
        out["max_new_tokens"] = int(n)
    if "repetition_penalty" in out:
        r = out["repetition_penalty"]
        if (isinstance(r, (bool, np.bool_)) or not isinstance(r, (int, float, np.integer, np.floating))
                or not math.isfinite(r) or r <= 0):
            raise CaptionError(f"repetition_penalty must be a finite number > 0 (1 = off, 1.1-1.3 discourages "
                               f"repeats), got {type(r).__name__} {r!r}")
        out["repetition_penalty"] = float(r)
    return out


def invalid_unicode(text: str) -> str | None:
    """Why `text` is not valid Unicode text (a lone surrogate, which no tokenizer can encode: text decoded with
    errors='surrogateescape', or a JSON '\\ud800'), or None when it is."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"holds a lone surrogate {text[exc.start]!r} at index {exc.start} (not valid Unicode): decode "
                f"bytes with errors='replace', or drop it")
    return None


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes the prompt, and which tokens end the answer. `template` holds {system},
    {image} and {question}; {image} becomes one image token per image embedding."""

    system: str
    template: str
    image_token: str
    stop_tokens: tuple[str, ...]
    default_question: str

    def __post_init__(self) -> None:
        for placeholder in ("{image}", "{question}"):
            if self.template.count(placeholder) != 1:
                raise CaptionError(f"prompt template must contain {placeholder} exactly once: {self.template!r}")
        if not self.stop_tokens:
            raise CaptionError("prompt format has no stop tokens")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PromptFormat:
        keys = {f.name for f in fields(cls)}
        missing, unknown = sorted(keys - set(d)), sorted(set(d) - keys)
        if missing or unknown:
            raise CaptionError(f"prompt format: missing keys {missing}, unknown keys {unknown}")
        return cls(**{**d, "stop_tokens": tuple(d["stop_tokens"])})

    @classmethod
    def load(cls, path: str | Path) -> PromptFormat:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise CaptionError(f"cannot read the prompt format {path}: {exc}") from exc

    def render(self, question: str) -> str:
        return self.template.format(system=self.system, image=self.image_token, question=question)


@dataclass
class CaptionTimings:
    vision_s: float                 # the vision engine (0 when image embeddings were passed in)
    prefill_s: float                # embedding + decoder over the prompt, to the first token
    decode_s: list[float]           # one entry per token after the first
    prompt_tokens: int

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        total = sum(self.decode_s)
        return len(self.decode_s) / total if total > 0 else float("nan")

    @property
    def total_s(self) -> float:
        return self.vision_s + self.prefill_s + sum(self.decode_s)

    def as_dict(self) -> dict[str, float]:
        """Milliseconds, for a Result's timings."""
        return {"caption_vision_ms": 1e3 * self.vision_s, "caption_prefill_ms": 1e3 * self.prefill_s,
                "caption_decode_ms": 1e3 * sum(self.decode_s),
                "caption_decode_ms_per_token": 1e3 * float(np.mean(self.decode_s)) if self.decode_s else 0.0}


@dataclass(frozen=True)
class CaptionIO:
    """Bytes the caption's engines (embed, prefill, decoder) moved: `prefill` (prompt ids, image embeddings,
    positions, the first logits, the cache's set-up) and `decode` (all steps after the first token)."""

    prefill: IOBytes
    decode: IOBytes
    steps: int                      # decode steps (tokens after the first)

    @property
    def bytes_per_token(self) -> float:
        """Host <-> device bytes per decode step (nan without steps)."""
        return self.decode.host_device / self.steps if self.steps else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"prefill": self.prefill.as_dict(), "decode": self.decode.as_dict(), "steps": self.steps,
                "bytes_per_token": self.bytes_per_token}


@dataclass
class Caption:
    text: str                       # the answer, special tokens dropped, stripped
    token_ids: list[int]            # generated ids, without the stop token
    question: str
    stop_reason: str                # "stop_token", "max_new_tokens" or "context" (the context is full)
    timings: CaptionTimings = field(repr=False)
    io: CaptionIO | None = field(default=None, repr=False)


class KVCache:
    """Key and value tensors per layer, (1, Hkv, capacity, D), on the decoder's device in its dtype, zeroed,
    filled slot by slot."""

    def __init__(self, engine: Engine, names: Sequence[str], heads: int, head_dim: int, capacity: int):
        self.buffers = {n: engine.allocate(n, (1, heads, capacity, head_dim)) for n in names}
        self.capacity = capacity

    def write(self, presents: Sequence[DeviceTensor], start: int) -> None:
        """Store the keys/values (1, Hkv, S, D) of tokens start..start+S-1 (in the order of `names`): one strided
        copy per tensor, of the new tokens only."""
        for buffer, present in zip(self.buffers.values(), presents):
            if present.dtype != buffer.dtype:   # a graph whose presents differ from its past: cast through the host
                present = present.to_numpy().astype(buffer.dtype)
            buffer.write(present, axis=2, start=start)


class CaptionDecoder:
    """Greedy LLaVA decoding over Engine objects (any backend).

    `embed`: input_ids -> inputs_embeds. `decoder`: the graph of `export.captioner.export_decoder`, used for
    prefill and decode; pass `prefill` too where prefill has its own engine (a TensorRT profile).
    `vision`: pixels -> image_embeds (+ the segmenter's hidden states), needed only by `caption()`.
    `max_context`: prompt + generated tokens; defaults to the decoder's attention_mask range."""

    def __init__(self, embed: Engine, decoder: Engine, tokenizer: Any, prompt: PromptFormat, *,
                 vision: Engine | None = None, prefill: Engine | None = None, max_context: int | None = None):
        self.embed, self.decoder, self.vision = embed, decoder, vision
        self.prefill = prefill or decoder
        self.tokenizer, self.prompt = tokenizer, prompt
        d = CAPTIONER_DECODER

        past = [n for n in decoder.input_names if n.startswith("past_key_values.")]
        self.n_layers = len(past) // 2
        self.past_names, self.present_names = d.past(self.n_layers), d.present(self.n_layers)
        if set(past) != set(self.past_names) or not set(self.present_names) <= set(decoder.output_names):
            raise CaptionError(f"{decoder.name}: not a captioner decoder graph (inputs {decoder.input_names})")
        spec = next(s for s in decoder.inputs if s.name == self.past_names[0])
        heads, head_dim = spec.shape[1], spec.shape[3]
        if not (isinstance(heads, int) and isinstance(head_dim, int)):
            raise CaptionError(f"{decoder.name}: the cache's heads and head size must be fixed, got {spec.shape}")
        self.kv_heads, self.head_dim, self.kv_dtype = heads, head_dim, np.dtype(spec.dtype)

        mask = next(s for s in decoder.inputs if s.name == d.attention_mask)
        if max_context is None:
            if mask.max_shape is None:
                raise CaptionError(f"{decoder.name}: its specs carry no maximum length; pass max_context")
            max_context = mask.max_shape[1]
        elif mask.max_shape is not None and max_context > mask.max_shape[1]:
            raise CaptionError(f"{decoder.name}: max_context {max_context} is over the {mask.max_shape[1]} "
                               f"tokens the graph was built for")
        self.max_context = int(max_context)

        self.image_token_id = self._token_id(prompt.image_token)
        self.stop_ids = {self._token_id(t) for t in prompt.stop_tokens}

    @classmethod
    def from_files(cls, tokenizer_file: str | Path, prompt_file: str | Path, embed: Engine, decoder: Engine,
                   **kwargs: Any) -> CaptionDecoder:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise CaptionError(f"cannot read the captioner tokenizer {tokenizer_file}: {exc}") from exc
        return cls(embed, decoder, tokenizer, PromptFormat.load(prompt_file), **kwargs)

    def _token_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise CaptionError(f"the prompt format's token {token!r} is not in the captioner tokenizer")
        return int(i)

    # ------------------------------------------------------------------------------------------ prompt

    def check_question(self, question: str | None) -> str:
        if question is None:
            return self.prompt.default_question
        if not isinstance(question, str):
            raise CaptionError(f"question must be a str or None, got {type(question).__name__}")
        if not question.strip():
            raise CaptionError(f"question is empty: pass None to ask {self.prompt.default_question!r}")
        bad = invalid_unicode(question)
        if bad:
            raise CaptionError(f"question {bad}")
        if self.prompt.image_token in question:
            raise CaptionError(f"question contains the image token {self.prompt.image_token!r}; the image "
                               f"is placed by the prompt template")
        return question

    def prompt_ids(self, question: str | None, image_tokens: int) -> np.ndarray:
        """The prompt's token ids (L,) int64, the image token repeated once per image embedding."""
        ids = np.asarray(self.tokenizer.encode(self.prompt.render(self.check_question(question))).ids, np.int64)
        at = np.flatnonzero(ids == self.image_token_id)
        if len(at) != 1:
            raise CaptionError(f"the prompt must hold the image token once, it holds it {len(at)} times")
        return np.concatenate([ids[:at[0]], np.full(image_tokens, self.image_token_id, np.int64), ids[at[0] + 1:]])

    # ---------------------------------------------------------------------------------------- captions

    def caption(self, pixel_values: np.ndarray, question: str | None = None, *,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, repetition_penalty: float = 1.0) -> Caption:
        """pixel_values (1, 3, S, S) float32, normalized for the tower -> Caption."""
        if self.vision is None:
            raise CaptionError("this CaptionDecoder has no vision engine: pass vision=..., or call "
                               "caption_embeds() with the image embeddings")
        self.check_question(question)  # fail before spending a vision pass
        check_generation_options({"max_new_tokens": max_new_tokens, "repetition_penalty": repetition_penalty},
                                 "caption()")
        start = time.perf_counter()
        # On the vision engine's device: the image embeddings go to the embed engine's without the host.
        out = self.vision.run_bound({CAPTIONER_VISION.pixel_values: pixel_values})
        image_embeds = out[CAPTIONER_VISION.image_embeds]
        vision_s = time.perf_counter() - start
        return self.caption_embeds(image_embeds, question, max_new_tokens=max_new_tokens,
                                   repetition_penalty=repetition_penalty, vision_s=vision_s)

    def caption_embeds(self, image_embeds: np.ndarray | DeviceTensor, question: str | None = None, *,
                       max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, repetition_penalty: float = 1.0,
                       vision_s: float = 0.0) -> Caption:
        """image_embeds (1, N, E) from the vision engine (a numpy array, or a DeviceTensor left on its device by
        `vision.run_bound`) -> Caption (greedy)."""
        options = check_generation_options({"max_new_tokens": max_new_tokens,
                                            "repetition_penalty": repetition_penalty}, "caption_embeds()")
        max_new_tokens, repetition_penalty = options["max_new_tokens"], options["repetition_penalty"]
        if not (isinstance(image_embeds, (np.ndarray, DeviceTensor)) and image_embeds.ndim == 3
                and image_embeds.shape[0] == 1):
            raise CaptionError(f"image_embeds must be a (1, N, E) array, got "
                               f"{getattr(image_embeds, 'shape', type(image_embeds).__name__)}")
        question = self.check_question(question)
        ids = self.prompt_ids(question, image_embeds.shape[1])
        L = len(ids)
        if L > self.max_context - 1:
            raise CaptionError(
                f"the prompt is {L} tokens ({image_embeds.shape[1]} image tokens, the template and the question), "
                f"over the {self.max_context - 1} this captioner takes (context {self.max_context}): "
                f"shorten the question")
        budget = min(int(max_new_tokens), self.max_context - L)
        d = CAPTIONER_DECODER
        engines = (self.embed, self.prefill, self.decoder)
        io_start = total_io(engines)

        start = time.perf_counter()
        with nvtx_range("caption_prefill"):  # Nsight Systems rows; no-ops without NVTX
            is_image = ids == self.image_token_id
            # Image tokens are looked up as id 0 and then overwritten (their own row may not exist in the table):
            # they are one run in the prompt, so the image embeddings are one block copy into it, on the device.
            embeds = self._embed(np.where(is_image, 0, ids)[None])            # (1, L, E) on the embed engine
            if isinstance(image_embeds, DeviceTensor) and image_embeds.dtype != embeds.dtype:
                image_embeds = image_embeds.to_numpy()
            if isinstance(image_embeds, np.ndarray):
                image_embeds = image_embeds.astype(embeds.dtype, copy=False)
            embeds.write(image_embeds, axis=1, start=int(np.argmax(is_image)))
            # Prefill's past: one masked slot (TensorRT profiles cannot take a length-0 past).
            empty = self.prefill.allocate(self.past_names[0], (1, self.kv_heads, 1, self.head_dim))
            out = self.prefill.run_bound({d.inputs_embeds: embeds,
                                          d.attention_mask: np.concatenate([[0], np.ones(L)])[None].astype(np.int64),
                                          d.position_ids: np.arange(L, dtype=np.int64)[None],
                                          **{n: empty for n in self.past_names}})
            cache = KVCache(self.decoder, self.past_names, self.kv_heads, self.head_dim, max(1, L + budget - 1))
            cache.write([out[n] for n in self.present_names], 0)
            logits = out[d.logits].to_numpy()
            seen = None
            if repetition_penalty != 1.0:   # as transformers does: over every id so far, prompt included
                seen = np.zeros(logits.shape[-1], bool)
                seen[ids] = True
            token = self._select(logits, seen, repetition_penalty)
            # The decode loop's tensors, once per caption: mask over the cache slots then the fed token.
            mask = self.decoder.allocate(d.attention_mask, (1, cache.capacity + 1))
            initial = np.zeros((1, cache.capacity + 1), np.int64)
            initial[0, :L] = 1
            initial[0, -1] = 1
            mask.write(initial)
            step_embeds = self.embed.allocate(CAPTIONER_EMBED.inputs_embeds, (1, 1, embeds.shape[2]))
            step_out = {n: self.decoder.allocate(n, (1, self.kv_heads, 1, self.head_dim)) for n in self.present_names}
            step_out[d.logits] = self.decoder.allocate(d.logits, logits.shape)
        prefill_s = time.perf_counter() - start
        io_prefill = total_io(engines)

        generated, decode_s = [token], []
        position = np.zeros((1, 1), np.int64)
        slot = np.ones((1, 1), np.int64)
        with nvtx_range("caption_decode"):
            while token not in self.stop_ids and len(generated) < budget:
                start = time.perf_counter()
                n = L + len(generated) - 1                          # the fed token's position and cache slot
                position[0, 0] = n
                self.embed.run_bound({CAPTIONER_EMBED.input_ids: np.array([[token]], np.int64)},
                                     {CAPTIONER_EMBED.inputs_embeds: step_embeds})
                out = self.decoder.run_bound({d.inputs_embeds: step_embeds, d.attention_mask: mask,
                                              d.position_ids: position, **cache.buffers}, step_out)
                cache.write([out[name] for name in self.present_names], n)
                mask.write(slot, axis=1, start=n)
                token = self._select(out[d.logits].to_numpy(), seen, repetition_penalty)
                generated.append(token)
                decode_s.append(time.perf_counter() - start)
        io = CaptionIO(io_prefill - io_start, total_io(engines) - io_prefill, len(decode_s))

        if token in self.stop_ids:
            generated.pop()
            reason = "stop_token"
        else:
            reason = "max_new_tokens" if budget == max_new_tokens else "context"
        text = self.tokenizer.decode(generated, skip_special_tokens=True).strip()
        return Caption(text, [int(t) for t in generated], question, reason,
                       CaptionTimings(vision_s, prefill_s, decode_s, L), io)

    def _embed(self, ids: np.ndarray) -> DeviceTensor:
        return self.embed.run_bound({CAPTIONER_EMBED.input_ids: ids})[CAPTIONER_EMBED.inputs_embeds]

    @staticmethod
    def _select(logits: np.ndarray, seen: np.ndarray | None, penalty: float) -> int:
        """Greedy choice from logits (1, 1, V), after transformers' repetition penalty when `seen` is set."""
        scores = logits[0, -1].astype(np.float32)
        if seen is not None:
            s = scores[seen]
            scores[seen] = np.where(s < 0, s * penalty, s / penalty)
            token = int(np.argmax(scores))
            seen[token] = True
            return token
        return int(np.argmax(scores))
