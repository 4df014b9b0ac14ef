"""`load()` and `Runtime`: an artifact folder turned into `segment(frame)`.

The stages are separate calls with small typed results, so a camera loop can cache the text side and
run only the image side per frame:

    encode_image(frame) -> ImageFeatures        every frame (vision tower + segmenter input)
    parse_caption(text) -> Priors               when the caption changes
    embed(priors, vocabulary) -> PriorEmbeddings  text encoder behind a phrase cache
    decode(features, embeddings) -> Segmentation
    segment(frame, vocabulary=None, caption=None) composes them.

Threads: `segment()` takes a per-Runtime lock, so calls from several threads are safe and run one at a
time (no speed-up: use one Runtime per thread for parallel work). The stage calls above take no lock.
Profiling: set `rt.profiler = runtime.profiling.Profiler()` to record every stage as a span.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.base import BACKENDS, DeviceTensor, Engine, backend_importable, check_engine_options, create_engine
from engines.contract import (CAPTIONER_DECODER, CAPTIONER_EMBED, CAPTIONER_VISION, FRAME_PREPROCESS, SEGMENTER,
                              SEMANTIC_MAP, TEXT_ENCODER, VERIFY_LEVELS, VISION_TOWER, Manifest, read_manifest)
from engines.errors import EngineError, LLMFormerError, ManifestError
from runtime.frames import check_frame, semantic_map, to_pixels, to_tensor
from runtime.profiling import NULL_SPAN

log = logging.getLogger("llmformer_edge")


class RuntimeInputError(LLMFormerError, ValueError):
    """An argument of `load()` or a Runtime call that cannot be used; the message says which, why and the fix."""


class InputTypeError(RuntimeInputError, TypeError):
    """An argument of the wrong type. Both a RuntimeInputError (so a ValueError, as every bad argument here)
    and the TypeError a caller would expect for it."""


# Where a frame is preprocessed and postprocessed (load(frame_path=...)): "device" runs the build's frame graphs
# (FRAME_PREPROCESS, SEMANTIC_MAP) on the engines' device, so a frame crosses once (uint8) and only labels and
# scores come back; "host" runs runtime/frames.py (numpy/OpenCV); "auto" is what measured faster
# (benchmarks/README.md, "The frame path on the device"): on a GPU both graphs; on the CPU, where nothing crosses a
# bus, OpenCV's preprocessing (2x faster than the graph there) and the semantic graph from CPU_GRAPH_MIN_VOCAB
# classes on (the graph upsamples 4 candidates per mask cell whatever V is; OpenCV resizes up to ~6 channels about as
# fast as the graph's 4: on the 2-core benchmark machine the graph was 1.15-1.35x faster at 640 x 480 from 4 classes,
# but only from 8 at 1280 x 720, 0.8-0.9x below).
FRAME_PATHS = ("auto", "device", "host")
CPU_GRAPH_MIN_VOCAB = 8
# Intra-op threads of the frame graphs' engines unless load(threads=...) says otherwise: on the CPU they are chains of
# short memory-bound operators, and ONNX Runtime's pool waking a second thread per operator made the semantic graph
# 1.6-1.9x slower than one thread on the 2-core benchmark machine with another job running (benchmarks/README.md).
FRAME_GRAPH_THREADS = 1

# The input contract (README, "Input contract"): what each public call takes, checked where it is called,
# before a frame is preprocessed or an engine runs.
MAX_NAME_CHARS = 200     # a class name is a word or short phrase; the text encoder reads ~max_length tokens of it


def _got(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_text(value: Any, name: str) -> str:
    """`value` as a str of valid Unicode (a caption, a question): a wrong type is an InputTypeError, a lone
    surrogate (which no tokenizer can encode) a RuntimeInputError. Control characters are allowed: the caption
    parser reads them as spaces (runtime.priors.clean_caption), and the captioner's byte-level tokenizer encodes
    any valid Unicode."""
    from runtime.decode import invalid_unicode

    if not isinstance(value, str):
        hint = ": pass its .text" if isinstance(getattr(value, "text", None), str) else ""
        raise InputTypeError(f"{name} must be a str or None, got {_got(value)}{hint}")
    bad = invalid_unicode(value)
    if bad:
        raise RuntimeInputError(f"{name} {bad}")
    return value


@dataclass
class ImageFeatures:
    """One tower pass. The tower's outputs stay on the vision engine's device (DeviceTensors: host memory on
    the CPU) until the segmenter and the captioner read them there; they are valid until the vision engine's
    next run (a TensorRT engine writes every frame into the same buffers)."""

    frame_size: tuple[int, int]          # (H, W) of the caller's frame
    segmenter_input: DeviceTensor | np.ndarray | None      # (1, 3, S, S) float32
    vision_hidden_states: DeviceTensor | np.ndarray | None  # (n_layers, 1, T, C)
    image_embeds: DeviceTensor | np.ndarray | None = None   # (1, N, E_llm) for the captioner, same tower pass
    timings: dict[str, float] = field(default_factory=dict)
    # The checked RGB frame (not a copy), kept where the captioner was trained to see frames otherwise than
    # the segmenter's stretched square (a LLaVA checkpoint's pad-to-square): a caption then preprocesses it
    # its own way and pays a tower pass of its own, only when a caption is made.
    rgb: np.ndarray | None = None
    # The frame on the engines' device ((1, H, W, 3) uint8) where the frame graphs preprocessed it; the semantic
    # graph reads its shape there.
    frame_tensor: DeviceTensor | None = None


@dataclass
class PriorEmbeddings:
    classes: list[str]                   # the vocabulary, in label order
    vocabulary: np.ndarray               # (V, E)
    objects: np.ndarray                  # (K, E), K >= 1 (padding where there are no priors)
    attributes: np.ndarray               # (K, E), zero where an object has no attribute
    valid: np.ndarray                    # (K,) float32
    relation: np.ndarray                 # (K, K) float32
    prior_classes: list[int | None] = field(default_factory=list)  # each prior object's class, if any
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Segmentation:
    labels: np.ndarray                   # (H, W) int32 index into `classes`; -1 = unlabeled (no classes)
    classes: list[str]
    scores: np.ndarray                   # (V,) float32, see runtime.frames.semantic_map
    caption: str | None
    priors: Any | None                   # runtime.priors.Priors when a caption was parsed
    timings: dict[str, float]            # milliseconds per stage
    # The segmenter's raw outputs, for debugging and parity checks; None where they stay on a GPU (the frame graphs
    # postprocess them there: bringing them back would be the transfer the graphs avoid).
    mask_logits: np.ndarray | None = None   # (Q, h, w)
    class_logits: np.ndarray | None = None  # (Q, V+1)
    frame: int | None = None                # this frame's index (segment() calls on this Runtime, from 0)
    caption_frame: int | None = None        # index of the frame the captioner described (None: no captioner)
    caption_age_s: float | None = None      # seconds since that frame was captured (0 when captioned now)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


@dataclass
class _FrameJob:
    """One frame between its tower pass and the segmenter (Runtime._text_side), shared by segment() and
    segment_batch(); `done` once it has its Segmentation."""

    image: ImageFeatures
    t0: float                            # when the frame's segment() (or its batch) began
    caption: str | None
    priors: Any | None
    extra: dict[str, Any]                # Segmentation's frame, caption_frame, caption_age_s
    timings: dict[str, float]            # parse, caption / caption_wait
    emb: PriorEmbeddings | None = None
    done: Segmentation | None = None


class Runtime:
    """Runs one artifact folder on one backend. Use `load()` to make one."""

    def __init__(self, folder: Path, manifest: Manifest, backend: str, engines: dict[str, Engine],
                 cache_size: int = 4096, map_threshold: float = 0.5, parser_model: str | None = None,
                 frame_path: str = "auto"):
        from tokenizers import Tokenizer

        from runtime.vocabulary import CachedEncoder

        self.folder, self.manifest, self.backend, self.engines = folder, manifest, backend, engines
        self.max_length = manifest.max_length
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / manifest.tokenizer.file))
        except Exception as exc:  # tokenizers raises a bare Exception ("EOF while parsing") that names no file
            raise ManifestError(f"{folder / manifest.tokenizer.file} cannot be read as a tokenizer ({exc}); rebuild "
                                f"with `python export/build_engines.py --out {folder}`") from exc
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(length=self.max_length)
        self.text_cache = CachedEncoder(self._encode_uncached, size=cache_size)
        self.map_threshold = float(map_threshold)
        # The spaCy pipeline the build recorded, unless the caller names another.
        self.parser_model = parser_model or manifest.parser
        self.pre = manifest.preprocess
        segmenter = manifest.components[SEGMENTER.component]
        self.text_dim = int(segmenter.input(SEGMENTER.vocab_embeddings).shape[1])
        # The build's ranges: how many class names and caption objects one segmenter call takes.
        self.max_vocab = (segmenter.input(SEGMENTER.vocab_embeddings).max_shape or (1 << 30,))[0]
        self.max_priors = (segmenter.input(SEGMENTER.object_embeddings).max_shape or (1, 1 << 30))[1]
        self.max_batch = manifest.max_batch   # frames one vision/segmenter call takes (1: the build has no batch axis)
        # Whether segment_batch runs its frames max_batch to a graph call, or loops over segment(): batched on a GPU,
        # where one call of B frames replaces B launches of small kernels; a loop on the CPU, where ONNX Runtime's
        # kernels are compute-bound at one frame already: batches of 4 and 8 measured 0.94-1.07x the loop's frames/s
        # on the 2-core benchmark machine, no gain beyond run-to-run noise (benchmarks/README.md, "Batches of
        # frames"). Set it to choose.
        self.batch_graphs = self.max_batch > 1 and engines[manifest.vision_component].tensor_device != "cpu"
        # With a captioner, its vision graph (tower + projector) is the one tower pass per frame, unless the
        # captioner sees frames preprocessed otherwise: then captions pay a second pass, only when they run.
        self.vision_name = manifest.vision_component
        caption_pre = manifest.preprocess.get(CAPTIONER_VISION.component)
        self.caption_pre = caption_pre if caption_pre is not None and caption_pre.mode != "stretch" else None
        self._init_frame_path(frame_path)
        self._resident: dict[tuple[str, str], tuple[np.ndarray, DeviceTensor]] = {}
        self._frame_upload: DeviceTensor | None = None
        self.frames = 0                  # frames segmented so far
        self.captioning = None           # runtime.captioning.AsyncCaptioner while asynchronous captioning runs
        self.profiler = None             # a runtime.profiling.Profiler records each stage as a span
        self._caption_newest = None      # async: (PublishedCaption, Priors) of the newest caption, parsed once
        self._caption_usable = None      # async: the same for the newest caption that names objects
        self._segment_lock = threading.Lock()
        self._caption_lock = threading.Lock()
        self.captioner = None
        if manifest.captioner is not None:
            from runtime.decode import CaptionDecoder

            info = manifest.captioner
            self.captioner = CaptionDecoder.from_files(
                folder / info.tokenizer.file, folder / info.prompt.file,
                engines[CAPTIONER_EMBED.component], engines[CAPTIONER_DECODER.component],
                vision=engines[CAPTIONER_VISION.component], max_context=info.max_context)

    # -- text side -----------------------------------------------------------------------------------
    def _encode_uncached(self, phrases: list[str]) -> np.ndarray:
        if not phrases:
            return np.zeros((0, self.text_dim), np.float32)
        engine = self.engines[TEXT_ENCODER.component]
        ids_spec = next(s for s in engine.inputs if s.name == TEXT_ENCODER.input_ids)
        batch = int(ids_spec.max_shape[0]) if ids_spec.max_shape else len(phrases)
        out = []
        for i in range(0, len(phrases), batch):
            enc = self.tokenizer.encode_batch(phrases[i:i + batch])
            feeds = {TEXT_ENCODER.input_ids: np.asarray([e.ids for e in enc], np.int64),
                     TEXT_ENCODER.attention_mask: np.asarray([e.attention_mask for e in enc], np.int64)}
            out.append(engine(feeds)[TEXT_ENCODER.text_embeddings])
        return np.concatenate(out, 0).astype(np.float32)

    def encode_text(self, phrases: Sequence[str]) -> np.ndarray:
        """(n, E) L2-normalized embeddings, through the phrase cache."""
        return self.text_cache(list(phrases))

    def parse_caption(self, caption: str):
        """A caption (str) -> runtime.Priors: its objects, their attributes and the relations between them."""
        from runtime.nlp import load_nlp
        from runtime.priors import parse

        return parse(check_text(caption, "caption"), nlp=load_nlp(self.parser_model))

    def _span(self, name: str):
        """A profiler span for one stage, or a shared no-op when profiling is off."""
        return NULL_SPAN if self.profiler is None else self.profiler.span(name)

    def embed(self, priors, vocabulary: Sequence[str] | None) -> PriorEmbeddings:
        """Embeddings of the priors and the vocabulary. With no vocabulary the priors' objects are the
        vocabulary (open vocabulary without candidate classes). With one, each prior object is mapped to
        the nearest class name (cosine >= `map_threshold`) and keyed by that name's embedding, so the
        caption's "puppy" steers queries to the class "dog"; unmapped objects keep their own embedding."""
        from runtime.priors import Priors

        if priors is not None and not isinstance(priors, Priors):
            raise InputTypeError(f"priors must be the runtime.Priors of parse_caption(text), or None, got "
                                 f"{_got(priors)}")
        if vocabulary is not None:
            vocabulary = check_vocabulary(vocabulary, self.max_vocab)
        elif priors is None:
            raise RuntimeInputError("embed() needs priors, a vocabulary or both: pass "
                                    "embed(rt.parse_caption(text), vocabulary=[...])")
        with self._span("text"):
            return self._embed(priors, vocabulary)

    def _embed(self, priors, vocabulary: Sequence[str] | None) -> PriorEmbeddings:
        from runtime.vocabulary import prior_arrays

        t0 = time.perf_counter()
        hits0, misses0 = self.text_cache.hits, self.text_cache.misses
        objects = list(priors.objects) if priors is not None else []
        if vocabulary is None:
            from runtime.vocabulary import open_vocabulary

            classes = open_vocabulary(priors) if priors is not None else []
            if not classes:
                raise RuntimeInputError("no vocabulary was given and the caption names no objects: pass "
                                        "vocabulary=[...] class names")
        else:
            classes = check_vocabulary(vocabulary)
        if len(classes) > self.max_vocab:
            raise RuntimeInputError(f"vocabulary has {len(classes)} names; this build takes at most "
                                    f"{self.max_vocab}: rebuild with a larger range")
        max_priors = self.max_priors
        if len(objects) > max_priors:
            log.warning("caption has %d objects; keeping the first %d this build takes", len(objects), max_priors)
            objects = objects[:max_priors]
        vocab = self.encode_text(classes)
        obj, att, valid, relation, mapping = prior_arrays(priors, classes, self.encode_text, self.text_dim,
                                                          self.map_threshold, max_priors)
        looked = (self.text_cache.hits - hits0) + (self.text_cache.misses - misses0)
        timings = {"text": _ms(t0), "text_cache_hit_rate": ((self.text_cache.hits - hits0) / looked) if looked else 1.0}
        return PriorEmbeddings(classes, vocab, obj, att, valid, relation, mapping, timings)

    # -- image side ----------------------------------------------------------------------------------
    def _init_frame_path(self, frame_path: str) -> None:
        """Which stages run the frame graphs (see FRAME_PATHS): `device_preprocess`, `device_postprocess` ("always",
        "never", or for postprocessing on the CPU "vocab" = from CPU_GRAPH_MIN_VOCAB classes on)."""
        have = all(c.component in self.engines for c in (FRAME_PREPROCESS, SEMANTIC_MAP))
        if frame_path == "device" and not have:
            raise RuntimeInputError(f"frame_path='device' needs the frame graphs and the build in {self.folder} has "
                                    f"none (built with --host-postprocess, or before them; the torch backend runs "
                                    f"none): rebuild without --host-postprocess, or pass frame_path='auto'")
        self.frame_path = frame_path
        self.device_preprocess = self.device_postprocess = "never"
        if have and frame_path != "host":
            on_gpu = self.engines[SEMANTIC_MAP.component].tensor_device != "cpu"
            self.device_preprocess = "always" if frame_path == "device" or on_gpu else "never"
            self.device_postprocess = "always" if frame_path == "device" or on_gpu else "vocab"
            spec = self.manifest.components[FRAME_PREPROCESS.component].input(FRAME_PREPROCESS.image)
            self._graph_frame_max = tuple(spec.max_shape[1:3]) if spec.max_shape else (1 << 30, 1 << 30)

    def _fits_graphs(self, size: tuple[int, int]) -> bool:
        """Whether a frame of `size` (H, W) is within the range the frame graphs were built for."""
        return size[0] <= self._graph_frame_max[0] and size[1] <= self._graph_frame_max[1]

    def _upload_frame(self, rgb: np.ndarray) -> DeviceTensor:
        """The frame as (1, H, W, 3) uint8 on the frame graphs' device: the one host -> device copy of a frame (one
        buffer, kept while frames keep their size)."""
        engine = self.engines[FRAME_PREPROCESS.component]
        shape = (1, *rgb.shape)
        if self._frame_upload is None or self._frame_upload.shape != shape:
            self._frame_upload = engine.allocate(FRAME_PREPROCESS.image, shape)
        self._frame_upload.write(rgb[None])
        return self._frame_upload

    def _resident_input(self, engine: Engine, name: str, array: np.ndarray) -> DeviceTensor:
        """`array` as a tensor on `engine`'s device, copied there only when it differs from the last one given for
        `name`: the vocabulary and prior embeddings change when the vocabulary or the caption does, not per frame."""
        key = (engine.name, name)
        held = self._resident.get(key)
        if held is not None and held[0].shape == array.shape:
            if not np.array_equal(held[0], array):
                # Same shape, new values (streams alternating vocabularies): rewrite the buffer in place rather
                # than free and allocate device memory every frame.
                held[1].write(np.ascontiguousarray(array, held[1].dtype))
                held[0][...] = array
            return held[1]
        tensor = engine.allocate(name, array.shape)
        tensor.write(np.ascontiguousarray(array, tensor.dtype))
        self._resident[key] = (array.copy(), tensor)
        return tensor

    def encode_image(self, frame: np.ndarray) -> ImageFeatures:
        t0 = time.perf_counter()
        with self._span("preprocess"):
            rgb = check_frame(frame)
            upload = None
            if self.device_preprocess == "always" and self._fits_graphs(rgb.shape[:2]):
                # One uint8 frame to the device; both normalized inputs are made there and stay there.
                upload = self._upload_frame(rgb)
                out = self.engines[FRAME_PREPROCESS.component].run_bound({FRAME_PREPROCESS.image: upload})
                pixels, seg_in = out[FRAME_PREPROCESS.pixel_values], out[FRAME_PREPROCESS.frame]
            else:
                v, s = self.pre[VISION_TOWER.component], self.pre[SEGMENTER.component]
                pixels = to_tensor(rgb, v.size, v.mean, v.std)
                seg_in = to_tensor(rgb, s.size, s.mean, s.std)
        t_pre = _ms(t0)
        t1 = time.perf_counter()
        with self._span("vision"):
            # The tower and the captioner's vision graph name their input and hidden states alike; the outputs
            # stay on the engine's device for the segmenter and the captioner.
            out = self.engines[self.vision_name].run_bound({VISION_TOWER.pixel_values: pixels})
        own_pass = self.caption_pre is not None   # the captioner sees the frame its own way (see _image_embeds)
        return ImageFeatures(rgb.shape[:2], seg_in, out[VISION_TOWER.vision_hidden_states],
                             None if own_pass else out.get(CAPTIONER_VISION.image_embeds),
                             {"preprocess": t_pre, "vision": _ms(t1)}, rgb if own_pass else None, upload)

    def _image_embeds(self, image: ImageFeatures, own: bool = False) -> DeviceTensor | np.ndarray:
        """The captioner's image embeddings of `image`: from the frame's tower pass, or from a pass of their
        own on the captioner's preprocessing. `own`: in tensors that the vision engine's next run cannot
        overwrite (for the caption worker), and leaving the frame's hidden states untouched."""
        vision = self.engines[CAPTIONER_VISION.component]
        if image.image_embeds is None:
            if image.rgb is None:
                raise RuntimeInputError("these ImageFeatures carry no image embeddings: make them with encode_image()")
            # Every output bound to fresh tensors: the vision graph's shapes for one frame, and the engine's own
            # buffers (the frame's hidden states, on TensorRT) stay as the segmenter left them.
            outputs = {s.name: vision.allocate(s.name, s.one_frame) for s in vision.outputs}
            return vision.run_bound({CAPTIONER_VISION.pixel_values: to_pixels(image.rgb, self.caption_pre)},
                                    outputs)[CAPTIONER_VISION.image_embeds]
        embeds = image.image_embeds
        if own and isinstance(embeds, DeviceTensor):
            copy = vision.allocate(CAPTIONER_VISION.image_embeds, embeds.shape)
            copy.write(embeds)
            embeds = copy
        return embeds

    def caption(self, frame: np.ndarray | ImageFeatures, question: str | None = None, **options: Any):
        """Describe the frame with the captioner (greedy; `options`: max_new_tokens, repetition_penalty).
        Pass the ImageFeatures of `encode_image` to reuse its tower pass. Returns runtime.decode.Caption.
        Thread-safe: captions run one at a time (the caption worker's included), and a frame's tower pass
        is serialized with segment()'s."""
        from runtime.decode import check_generation_options

        if self.captioner is None:
            raise RuntimeInputError("this build has no captioner: rebuild with one (the demo preset has a tiny "
                                    "one; others take --captioner DIR), or pass caption=...")
        options = check_generation_options(options, "Runtime.caption()")
        if question is not None:
            self.captioner.check_question(check_text(question, "question"))
        if isinstance(frame, ImageFeatures):
            image = frame
        else:
            with self._segment_lock:
                image = self.encode_image(frame)
        with self._caption_lock:
            return self.captioner.caption_embeds(self._image_embeds(image), question,
                                                 vision_s=image.timings["vision"] / 1000, **options)

    def _traced(self, caption_fn, payload):
        """caption_fn(payload) inside a "caption" span, with prefill/decode spans from its Caption."""
        prof = self.profiler
        if prof is None:
            return caption_fn(payload)
        with prof.span("caption") as span:
            result = caption_fn(payload)
        prof.record_caption(span.start, result)
        return result

    def decode(self, image: ImageFeatures, emb: PriorEmbeddings, caption: str | None = None,
               priors=None) -> Segmentation:
        """The segmenter on one frame's ImageFeatures (encode_image) and its PriorEmbeddings (embed)."""
        from runtime.priors import Priors

        if not isinstance(image, ImageFeatures):
            raise InputTypeError(f"image must be the ImageFeatures of encode_image(frame), got {_got(image)}")
        if image.segmenter_input is None or image.vision_hidden_states is None:
            raise RuntimeInputError("these ImageFeatures carry no segmenter input (a caption worker's copy): pass "
                                    "the ImageFeatures of encode_image(frame)")
        if not isinstance(emb, PriorEmbeddings):
            raise InputTypeError(f"emb must be the PriorEmbeddings of embed(priors, vocabulary), got {_got(emb)}")
        if caption is not None:
            check_text(caption, "caption")
        if priors is not None and not isinstance(priors, Priors):
            raise InputTypeError(f"priors must be a runtime.Priors or None, got {_got(priors)}")
        t0 = time.perf_counter()
        segmenter = self.engines[SEGMENTER.component]
        feeds = {SEGMENTER.frame: image.segmenter_input, SEGMENTER.vision_hidden_states: image.vision_hidden_states}
        for name, array in ((SEGMENTER.object_embeddings, emb.objects[None]),
                            (SEGMENTER.attribute_embeddings, emb.attributes[None]),
                            (SEGMENTER.prior_valid, emb.valid[None]), (SEGMENTER.relation_graph, emb.relation[None]),
                            (SEGMENTER.vocab_embeddings, emb.vocabulary)):
            feeds[name] = self._resident_input(segmenter, name, array) if self._device_frames else array
        on_device = self._postprocess_on_device(image, len(emb.classes))
        with self._span("segment"):
            out = segmenter.run_bound(feeds)
            masks, classes = out[SEGMENTER.mask_logits], out[SEGMENTER.class_logits]
            if not on_device:
                masks, classes = masks.to_numpy()[0], classes.to_numpy()[0]
        t_seg = _ms(t0)
        t1 = time.perf_counter()
        labels, scores, masks, classes = self._semantic(image, masks, classes, on_device)
        timings = {**image.timings, **emb.timings, "segment": t_seg, "postprocess": _ms(t1)}
        return Segmentation(labels, list(emb.classes), scores, caption, priors, timings, masks, classes)

    def _semantic(self, image: ImageFeatures, masks, classes, on_device: bool):
        """One frame's labels and scores from its segmenter outputs: on the device, masks (1, Q, h, w) and classes
        (1, Q, V+1) as tensors; else as numpy (Q, h, w) and (Q, V+1). Returns them with the raw outputs for the
        caller (None where they stay on a GPU)."""
        with self._span("postprocess"):
            if on_device:
                frame = image.frame_tensor
                if frame is None:   # preprocessed on the host (the CPU): the graph reads only its shape
                    frame = DeviceTensor.from_array(np.empty((1, *image.frame_size, 3), np.uint8))
                sem = self.engines[SEMANTIC_MAP.component].run_bound(
                    {SEMANTIC_MAP.mask_logits: masks, SEMANTIC_MAP.class_logits: classes, SEMANTIC_MAP.image: frame})
                labels = sem[SEMANTIC_MAP.labels].to_numpy()[0].astype(np.int32)
                scores = sem[SEMANTIC_MAP.scores].to_numpy()
                # On the CPU the raw outputs are host memory already: a copy for the caller, nothing crosses a bus.
                masks, classes = ((np.array(masks.on_host()[0]), np.array(classes.on_host()[0]))
                                  if masks.device == "cpu" else (None, None))
            else:
                labels, scores = semantic_map(masks, classes, image.frame_size)
        return labels, scores, masks, classes

    @property
    def _device_frames(self) -> bool:
        """Whether frames go through the frame graphs at all (then small inputs are kept on the device too)."""
        return self.device_postprocess != "never"

    def _postprocess_on_device(self, image: ImageFeatures, vocabulary: int) -> bool:
        if self.device_postprocess == "never" or not self._fits_graphs(image.frame_size):
            return False
        return self.device_postprocess == "always" or vocabulary >= CPU_GRAPH_MIN_VOCAB

    def segment(self, frame: np.ndarray, vocabulary: Sequence[str] | None = None,
                caption: str | None = None) -> Segmentation:
        """Segment one H x W x 3 uint8 RGB frame (any size; each frame may differ: labels come back at the
        frame's own size). Grayscale and RGBA frames are refused with a FrameError: convert them with
        runtime.frames.to_rgb() (the camera loop does).

        `vocabulary`: the class names to label with; None means the caption's objects. It may change from
        one call to the next. `caption`: a description of the frame whose priors guide the segmenter; None
        asks the build's captioner (synchronously, from the same tower pass), and a build without one then
        needs a vocabulary.

        With asynchronous captioning on (`start_captioning()`, `load(..., captioning=CaptionPolicy())`)
        and caption=None, the frame's image embeddings go to the caption worker when the policy says so, and
        the newest published caption is used without waiting; only before the first caption does
        first_frame="wait" wait for it ("vocabulary": segment with the vocabulary alone). A captioner that
        fails or times out leaves the last caption in use. A caption that names no objects (an LLM's "It is
        very nice.") gives no priors: with a vocabulary the frame is segmented with the vocabulary alone;
        without one the newest caption that named objects stays in use, and before any did, the frame is
        left unlabeled (-1). The result's `caption_frame` / `caption_age_s` say which frame's caption was
        used and how old it is.

        Thread-safe: concurrent calls are serialized by a lock (frame indices follow the order they ran in)."""
        vocabulary, caption = self._check_segment_args(vocabulary, caption)
        with self._segment_lock, self._span("total"):
            return self._segment(frame, vocabulary, caption)

    def segment_batch(self, frames: Sequence[np.ndarray], vocabularies: Sequence[Sequence[str] | None] | None = None,
                      captions: Sequence[str | None] | None = None) -> list[Segmentation]:
        """One Segmentation per frame, each equal to `segment(frames[i], vocabularies[i], captions[i])`.

        Frames may differ in size and each may have its own vocabulary and caption (None: as in segment()).
        Every argument of every frame is checked before any frame runs, so a bad one fails the call without a
        half-done batch. The batch holds the lock once: no other thread's frame runs between its frames.

        With a build whose graphs have a batch axis (`build_engines.py --max-batch B`, `self.max_batch`) and
        `self.batch_graphs` (engines on a GPU), up to B frames share one vision-graph call and one segmenter call
        (more are split into calls of B):
        - sizes: each frame is preprocessed on its own to the graphs' fixed square, and postprocessed on its own
          back to its size, as in segment();
        - captions: each frame's caption and priors are its own; the priors are padded to the largest count in the
          call and the padding masked out (prior_valid: the mask one frame's padding already has);
        - vocabularies: the call takes the union of the frames' vocabularies as its one vocabulary input, and each
          frame gets back the class logits of its own classes plus "no object" (a class's logit depends on that
          class's embedding alone, so this is segment()'s result up to float rounding). Frames whose union would
          exceed the build's vocabulary range go to separate segmenter calls.
        The text side is shared through the phrase cache, so a vocabulary repeated across the batch is encoded once.
        Builds without a batch axis (before it, or --max-batch 1), and engines on the CPU unless `batch_graphs` is
        set (see its note in __init__: batching measured no faster there), run the frames one after another."""
        if isinstance(frames, np.ndarray) or not isinstance(frames, Sequence):
            raise InputTypeError(f"frames must be a list of H x W x 3 frames (one call per frame: segment()), "
                                 f"got {_got(frames)}")
        n = len(frames)
        per_frame = {}
        for name, values in (("vocabularies", vocabularies), ("captions", captions)):
            if values is None:
                values = [None] * n
            elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise InputTypeError(f"{name} must be a list with one entry per frame (None for the default), "
                                     f"got {_got(values)}")
            if len(values) != n:
                raise RuntimeInputError(f"{name} has {len(values)} entries for {n} frames: pass one per frame")
            per_frame[name] = list(values)
        checked = []
        for i, frame in enumerate(frames):
            try:
                check_frame(frame)
                vocabulary, caption = per_frame["vocabularies"][i], per_frame["captions"][i]
                checked.append(self._check_segment_args(vocabulary, caption))
            except LLMFormerError as exc:
                try:
                    named = type(exc)(f"frame {i} of the batch: {exc}")
                except TypeError:   # an error type with a constructor of its own: keep it as it is
                    raise exc from None
                raise named from exc
        with self._segment_lock:
            out, step = [], self.max_batch if self.batch_graphs else 1
            for i in range(0, n, step):
                with self._span("total"):
                    if min(n, i + step) - i > 1:
                        out += self._segment_batched(frames[i:i + step], checked[i:i + step])
                    else:
                        out.append(self._segment(frames[i], *checked[i]))
            return out

    def _check_segment_args(self, vocabulary, caption) -> tuple[list[str] | None, str | None]:
        return check_segment_args(vocabulary, caption, self.max_vocab,
                                  self.captioner is not None or self.captioning is not None)

    def _segment(self, frame: np.ndarray, vocabulary: Sequence[str] | None, caption: str | None) -> Segmentation:
        t0 = time.perf_counter()
        job = self._text_side(self.encode_image(frame), vocabulary, caption, t0)
        if job.done is None:
            self._finish(job, self.decode(job.image, job.emb, job.caption, job.priors))
        return job.done

    def _text_side(self, image: ImageFeatures, vocabulary: Sequence[str] | None, caption: str | None,
                   t0: float) -> _FrameJob:
        """Everything of a frame between its tower pass and the segmenter: its index, the caption (given, made now, or
        the asynchronous captioner's), its priors and their embeddings. A frame with nothing to label with comes back
        finished (`done`)."""
        index, self.frames = self.frames, self.frames + 1
        t_caption = caption_frame = caption_age = None
        caption_key = "caption"  # async mode: "caption_wait", the time segment() spent on the captioner
        from_captioner = False
        priors, t_parse = None, 0.0
        captioning = self.captioning  # one read: stop_captioning() from another thread may clear it
        if caption is None and captioning is not None:
            t2 = time.perf_counter()
            with self._span("caption_wait"):  # ~0 except while waiting for the first caption
                published = self._async_caption(captioning, index, image, vocabulary is not None)
            t_caption, caption_key = _ms(t2), "caption_wait"
            if published is not None:
                t1 = time.perf_counter()
                used, priors = self._use_caption(published, vocabulary is not None)
                t_parse = _ms(t1)
                caption, caption_frame, from_captioner = used.text, used.frame, True
                caption_age = max(0.0, captioning.clock() - used.captured_at)
        else:
            if caption is None and self.captioner is not None:
                t2 = time.perf_counter()
                caption = self._traced(self.caption, image).text
                t_caption = _ms(t2)
                caption_frame, caption_age, from_captioner = index, 0.0, True
            t1 = time.perf_counter()
            if caption is not None:
                with self._span("parse"):
                    priors = self.parse_caption(caption)
            t_parse = _ms(t1)
        job = _FrameJob(image, t0, caption, priors, {"frame": index, "caption_frame": caption_frame,
                                                     "caption_age_s": caption_age}, {"parse": t_parse})
        if t_caption is not None:
            job.timings[caption_key] = t_caption
        if vocabulary is None and from_captioner and not priors.objects:
            # The captioner named nothing: there is no class to label with. A camera loop must not stop
            # on that, so every pixel is -1 (unlabeled) and the caller sees the caption that caused it.
            log.warning("the caption %r names no objects and no vocabulary was given: frame left unlabeled", caption)
            self._finish(job, Segmentation(np.full(image.frame_size, -1, np.int32), [], np.zeros(0, np.float32),
                                           caption, priors, dict(image.timings)))
        else:
            job.emb = self.embed(priors, vocabulary)
        return job

    @staticmethod
    def _finish(job: _FrameJob, seg: Segmentation) -> None:
        for key, value in job.extra.items():
            setattr(seg, key, value)
        seg.timings.update(job.timings)
        seg.timings["total"] = _ms(job.t0)
        job.done = seg

    # -- batches -------------------------------------------------------------------------------------
    def _segment_batched(self, frames: Sequence[np.ndarray],
                         checked: Sequence[tuple[list[str] | None, str | None]]) -> list[Segmentation]:
        """segment() on up to max_batch frames with one vision-graph call and one segmenter call per vocabulary
        group (see segment_batch); each frame's text side and postprocessing run on their own, as in segment()."""
        t0 = time.perf_counter()
        images, seg_in, hidden = self._encode_batch([check_frame(f) for f in frames])
        jobs = [self._text_side(image, vocabulary, caption, t0)
                for image, (vocabulary, caption) in zip(images, checked)]
        # Frames share the segmenter call's one vocabulary input (the union of theirs): a group's union stays within
        # the build's vocabulary range.
        groups, names = [], set()
        for slot, job in enumerate(jobs):
            if job.done is not None:
                continue
            if not groups or len(names | set(job.emb.classes)) > self.max_vocab:
                groups.append([])
                names = set()
            groups[-1].append((slot, job))
            names |= set(job.emb.classes)
        for group in groups:
            self._decode_group(group, seg_in, hidden, len(frames))
        return [job.done for job in jobs]

    def _encode_batch(self, rgbs: list[np.ndarray]) -> tuple[list[ImageFeatures], DeviceTensor, DeviceTensor]:
        """encode_image on checked frames with one vision-graph call: per-frame ImageFeatures (the image embeddings a
        view of the frame's row), the segmenter's batched frame input (B, 3, S, S) and hidden states (L, B, T, C)."""
        n, v, s = len(rgbs), self.pre[VISION_TOWER.component], self.pre[SEGMENTER.component]
        vision, segmenter = self.engines[self.vision_name], self.engines[SEGMENTER.component]
        pixels = vision.allocate(VISION_TOWER.pixel_values, (n, 3, v.size, v.size))
        seg_in = segmenter.allocate(SEGMENTER.frame, (n, 3, s.size, s.size))
        uploads, t_pre = [None] * n, [0.0] * n
        for i, rgb in enumerate(rgbs):
            t0 = time.perf_counter()
            with self._span("preprocess"):
                if self.device_preprocess == "always" and self._fits_graphs(rgb.shape[:2]):
                    uploads[i] = self._upload_frame(rgb)
                    out = self.engines[FRAME_PREPROCESS.component].run_bound({FRAME_PREPROCESS.image: uploads[i]})
                    frame_pixels, frame_in = out[FRAME_PREPROCESS.pixel_values], out[FRAME_PREPROCESS.frame]
                else:
                    frame_pixels = to_tensor(rgb, v.size, v.mean, v.std)
                    frame_in = to_tensor(rgb, s.size, s.mean, s.std)
                pixels.write(frame_pixels, 0, i)
                seg_in.write(frame_in, 0, i)
            t_pre[i] = _ms(t0)
        t1 = time.perf_counter()
        with self._span("vision"):
            out = vision.run_bound({VISION_TOWER.pixel_values: pixels})
        t_vision = _ms(t1)
        hidden, embeds = out[VISION_TOWER.vision_hidden_states], out.get(CAPTIONER_VISION.image_embeds)
        own_pass = self.caption_pre is not None
        captioning = self.captioning
        # Only the scene-change test of asynchronous captioning reads a frame's hidden states outside the segmenter.
        states = hidden.on_host() if captioning is not None and captioning.policy.scene_change is not None else None
        images = [ImageFeatures(rgb.shape[:2], None, None if states is None else states[:, i:i + 1],
                                None if own_pass or embeds is None else embeds.rows(i, i + 1),
                                {"preprocess": t_pre[i], "vision": t_vision}, rgb if own_pass else None, uploads[i])
                  for i, rgb in enumerate(rgbs)]
        return images, seg_in, hidden

    def _decode_group(self, group: list[tuple[int, _FrameJob]], seg_in: DeviceTensor, hidden: DeviceTensor,
                      frames: int) -> None:
        """One segmenter call on a group of the batch's frames (`slot`: a frame's row in seg_in and hidden): priors
        padded to the group's largest K (prior_valid masks the padding, as for one frame), the union of their
        vocabularies as the one vocabulary input, and each frame's class logits taken back to its own classes and
        "no object" column. Finishes each job with its Segmentation."""
        t0 = time.perf_counter()
        slots = [slot for slot, _ in group]
        embs = [job.emb for _, job in group]
        if slots != list(range(frames)):   # part of the batch (several groups, unlabeled frames): gathered on the host
            seg_in, hidden = seg_in.on_host()[slots], np.ascontiguousarray(hidden.on_host()[:, slots])
        n, k = len(group), max(e.objects.shape[0] for e in embs)
        objects, attributes = (np.zeros((n, k, self.text_dim), np.float32) for _ in range(2))
        valid, relation = np.zeros((n, k), np.float32), np.zeros((n, k, k), np.float32)
        union: dict[str, int] = {}
        rows = []
        for b, e in enumerate(embs):
            m = e.objects.shape[0]
            objects[b, :m], attributes[b, :m], valid[b, :m], relation[b, :m, :m] = (e.objects, e.attributes, e.valid,
                                                                                    e.relation)
            for name, row in zip(e.classes, e.vocabulary):
                if name not in union:
                    union[name] = len(rows)
                    rows.append(row)
        feeds = {SEGMENTER.frame: seg_in, SEGMENTER.vision_hidden_states: hidden, SEGMENTER.object_embeddings: objects,
                 SEGMENTER.attribute_embeddings: attributes, SEGMENTER.prior_valid: valid,
                 SEGMENTER.relation_graph: relation, SEGMENTER.vocab_embeddings: np.stack(rows)}
        with self._span("segment"):
            out = self.engines[SEGMENTER.component].run_bound(feeds)
        masks, classes = out[SEGMENTER.mask_logits], out[SEGMENTER.class_logits]
        t_seg = _ms(t0)
        host_classes = None
        for b, ((_, job), e) in enumerate(zip(group, embs)):
            t1 = time.perf_counter()
            columns = [union[name] for name in e.classes] + [len(rows)]   # its classes, then "no object"
            frame_masks, frame_classes = masks.rows(b, b + 1), classes.rows(b, b + 1)
            if columns != list(range(len(rows) + 1)):
                if host_classes is None:   # (B, Q, V+1) floats: small beside the masks, which stay where they are
                    host_classes = classes.on_host()
                frame_classes = DeviceTensor.from_array(np.ascontiguousarray(host_classes[b:b + 1][..., columns]))
            on_device = self._postprocess_on_device(job.image, len(e.classes))
            if not on_device:
                frame_masks, frame_classes = frame_masks.to_numpy()[0], frame_classes.to_numpy()[0]
            labels, scores, raw_masks, raw_classes = self._semantic(job.image, frame_masks, frame_classes, on_device)
            timings = {**job.image.timings, **e.timings, "segment": t_seg, "postprocess": _ms(t1)}
            self._finish(job, Segmentation(labels, list(e.classes), scores, job.caption, job.priors, timings,
                                           raw_masks, raw_classes))

    # -- asynchronous captioning ---------------------------------------------------------------------
    def _async_caption(self, captioning, index: int, image: ImageFeatures, has_vocabulary: bool):
        from runtime.captioning import pooled_signature

        def payload() -> ImageFeatures:
            # What the worker gets: the image embeddings, not the frame, in a tensor of their own (the vision
            # engine may write the next frame's into the one it returned while the worker still reads).
            return ImageFeatures(image.frame_size, None, None, self._image_embeds(image, own=True),
                                 {"vision": image.timings.get("vision", 0.0)})

        signature = None
        if captioning.policy.scene_change is not None:  # the hidden states come to the host only for this
            hidden = image.vision_hidden_states
            signature = pooled_signature(hidden.on_host() if isinstance(hidden, DeviceTensor) else hidden)
        published, _ = captioning.step(index, payload, signature)
        if published is None and not has_vocabulary:
            err = captioning.worker.last_error
            raise RuntimeInputError(
                "no caption is ready for this frame and no vocabulary was given: pass vocabulary=[...], or use "
                "first_frame='wait'" + (f" (the captioner failed: {type(err).__name__}: {err})" if err else ""))
        if published is None:
            log.info("no caption yet: frame %d is segmented with the vocabulary alone", index)
        return published

    def _use_caption(self, published, has_vocabulary: bool):
        """The (PublishedCaption, Priors) to segment with, each caption parsed once: the newest caption; but
        with no vocabulary, where it names no objects (nothing to label with), the newest one that did."""
        if self._caption_newest is None or self._caption_newest[0].seq != published.seq:
            with self._span("parse"):
                self._caption_newest = (published, self.parse_caption(published.text))
            if self._caption_newest[1].objects:
                self._caption_usable = self._caption_newest
            elif self._caption_usable is not None and not has_vocabulary:
                log.warning("the caption of frame %d names no objects (%r): segmenting with the caption of "
                            "frame %d", published.frame, published.text[:80], self._caption_usable[0].frame)
        if has_vocabulary or self._caption_usable is None:
            return self._caption_newest
        return self._caption_usable

    def start_captioning(self, policy=None, caption_fn=None, question: str | None = None, **options: Any):
        """Caption asynchronously from now on (see runtime.captioning): one worker thread runs the
        captioner's embed/decoder engines on the image embeddings segment() hands it, per `policy`
        (a CaptionPolicy; default CaptionPolicy()). `caption_fn(ImageFeatures) -> Caption | str`
        replaces the build's captioner (default: `self.caption(features, question, **options)`).
        Returns the AsyncCaptioner; stop with stop_captioning() or close()."""
        from runtime.captioning import AsyncCaptioner, CaptionPolicy
        from runtime.decode import check_generation_options

        check_policy(policy, "policy")
        if caption_fn is not None and not callable(caption_fn):
            raise InputTypeError(f"caption_fn must be a function ImageFeatures -> Caption | str, or None (the "
                                 f"build's captioner), got {_got(caption_fn)}")
        if caption_fn is not None and (question is not None or options):
            given = ["question"] * (question is not None) + sorted(options)
            raise RuntimeInputError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} to the build's "
                                    f"captioner, which caption_fn replaces: drop {'it' if len(given) == 1 else 'them'}, "
                                    f"or pass {'it' if len(given) == 1 else 'them'} inside caption_fn")
        if caption_fn is None:
            if self.captioner is None:
                raise RuntimeInputError("this build has no captioner to run asynchronously: pass caption_fn=...")
            options = check_generation_options(options, "Runtime.start_captioning()")
            if question is not None:
                self.captioner.check_question(check_text(question, "question"))

            def caption_fn(features: ImageFeatures):
                return self.caption(features, question, **options)

        def traced(features: ImageFeatures):
            return self._traced(caption_fn, features)

        self.stop_captioning()
        with self._segment_lock:  # not while a segment() in another thread uses the caption state
            self._caption_newest = self._caption_usable = None
            self.captioning = AsyncCaptioner(traced, policy or CaptionPolicy()).start()
        return self.captioning

    def stop_captioning(self, timeout: float | None = 10.0) -> None:
        """Stop and join the caption worker (no-op when asynchronous captioning is off)."""
        captioning, self.captioning = self.captioning, None
        if captioning is not None:
            captioning.stop(timeout)

    # -- lifetime ------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Load the caption parser and run every engine once, so the first real frame pays for neither
        (spaCy takes seconds to load; backends allocate on their first run)."""
        from runtime.nlp import load_nlp

        load_nlp(self.parser_model)
        size = self.pre[SEGMENTER.component].size
        self.segment(np.zeros((size, size, 3), np.uint8), vocabulary=["object"])
        self.frames = 0  # the caller's first frame is frame 0

    def close(self) -> None:
        self.stop_captioning()
        for engine in self.engines.values():
            engine.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Runtime({str(self.folder)!r}, backend={self.backend!r}, preset={self.manifest.preset_name!r})"


def check_segment_args(vocabulary, caption, max_vocab: int | None,
                       has_captioner: bool) -> tuple[list[str] | None, str | None]:
    """segment()'s vocabulary and caption, checked (the rules runtime.serving applies to a request too):
    the vocabulary as check_vocabulary returns it, the caption as text; something to label with."""
    if vocabulary is not None:
        vocabulary = check_vocabulary(vocabulary, max_vocab)   # a generator is read here, once
    if caption is not None:
        caption = check_text(caption, "caption")
        if vocabulary is None and not any(ch.isalpha() for ch in caption):
            raise RuntimeInputError(f"no vocabulary was given and the caption {caption[:80]!r} names no objects: "
                                    f"pass vocabulary=[...] class names, or a caption that names some")
    if vocabulary is None and caption is None and not has_captioner:
        raise RuntimeInputError("pass vocabulary=[class names], caption='a description of the frame', or both "
                                "(this build has no captioner)")
    return vocabulary, caption


def check_vocabulary(vocabulary: Iterable[str], max_names: int | None = None) -> list[str]:
    """The class names as a list: unique (duplicates dropped, order kept), surrounding whitespace stripped.

    Takes a list, tuple or any other iterable of str (a generator is read once, here; at most `max_names` + 1
    names are read from it); a str, bytes or a mapping is refused. Each name must be non-empty after
    stripping, valid Unicode (no lone surrogate), free of control characters (a name is one line of text)
    and at most MAX_NAME_CHARS long."""
    if isinstance(vocabulary, (str, bytes)):
        raise InputTypeError(f"vocabulary must be a list of class names, got the string {vocabulary!r}: "
                             f"pass [{vocabulary!r}]")
    try:
        if isinstance(vocabulary, Mapping):
            raise TypeError
        names_in = iter(vocabulary)
    except TypeError:
        raise InputTypeError(f"vocabulary must be a list of class names (str) or None, got {_got(vocabulary)}: "
                             f"pass e.g. vocabulary=['dog', 'couch']") from None
    names = list(names_in if max_names is None else itertools.islice(names_in, max_names + 1))
    if not names:
        raise RuntimeInputError("vocabulary is empty: pass at least one class name, or vocabulary=None to use "
                                "the caption's objects")
    if max_names is not None and len(names) > max_names:
        count = f"{len(vocabulary)}" if hasattr(vocabulary, "__len__") else f"over {max_names}"
        raise RuntimeInputError(f"vocabulary has {count} names; this build takes at most {max_names}: pass fewer, "
                                f"or rebuild with a larger range")
    from runtime.decode import invalid_unicode

    out = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise InputTypeError(f"vocabulary[{i}] must be a str (a class name), got {_got(name)}: class names "
                                 f"must be non-empty strings")
        bad = invalid_unicode(name)
        if bad:
            raise RuntimeInputError(f"vocabulary[{i}] {bad}")
        name = name.strip()
        if not name:
            raise RuntimeInputError(f"vocabulary[{i}] is empty or blank: class names must be non-empty strings; "
                                    f"drop it")
        control = next((ch for ch in name if unicodedata.category(ch) == "Cc"), None)
        if control is not None:
            raise RuntimeInputError(f"vocabulary[{i}] {name[:40]!r} holds the control character {control!r}: a "
                                    f"class name is one line of text; remove it")
        if len(name) > MAX_NAME_CHARS:
            raise RuntimeInputError(f"vocabulary[{i}] is {len(name)} characters long; class names take at most "
                                    f"{MAX_NAME_CHARS} (a word or a short phrase): shorten it")
        out.append(name)
    return list(dict.fromkeys(out))


def check_policy(policy: Any, name: str = "captioning") -> None:
    """None or a runtime.CaptionPolicy (its own fields are checked when it is made)."""
    from runtime.captioning import CaptionPolicy

    if policy is not None and not isinstance(policy, CaptionPolicy):
        raise InputTypeError(f"{name} must be a runtime.CaptionPolicy or None, got {_got(policy)}: pass e.g. "
                             f"{name}=runtime.CaptionPolicy(every_frames=30, scene_change=0.15)")


_LOAD_ARGUMENTS = ("path", "backend", "threads", "cache_size", "map_threshold", "parser_model", "warmup",
                   "captioning", "verify", "frame_path")


def _check_load_arguments(path, backend, threads, cache_size, map_threshold, parser_model, warmup, captioning,
                          verify, engine_options: Mapping[str, Any], frame_path: str = "auto") -> None:
    """load()'s input contract, checked before the folder is read."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"path must be an artifact folder (str or os.PathLike), got {_got(path)}")
    if not os.fspath(path):
        raise RuntimeInputError("path is empty: pass the artifact folder build_engines.py wrote, e.g. "
                                "runtime.load('artifacts/demo')")
    if backend is not None and not isinstance(backend, str):
        raise InputTypeError(f"backend must be one of {', '.join(BACKENDS)} or None (pick one), got {_got(backend)}")
    if threads is not None:
        if not _is_int(threads):
            raise InputTypeError(f"threads must be an int >= 1 or None (the backend's default), got {_got(threads)}")
        if threads < 1:
            raise RuntimeInputError(f"threads must be >= 1, or None for the backend's default, got {threads}")
    if not _is_int(cache_size):
        raise InputTypeError(f"cache_size must be an int >= 0 (phrases kept; 0 turns the cache off), got "
                             f"{_got(cache_size)}")
    if cache_size < 0:
        raise RuntimeInputError(f"cache_size must be >= 0 (phrases kept; 0 turns the cache off), got {cache_size}")
    if not _is_real(map_threshold):
        raise InputTypeError(f"map_threshold must be a number in [-1, 1] (a cosine similarity), got "
                             f"{_got(map_threshold)}")
    if not (math.isfinite(map_threshold) and -1.0 <= map_threshold <= 1.0):
        raise RuntimeInputError(f"map_threshold is a cosine similarity and must be in [-1, 1] (default 0.5; 1 maps "
                                f"only exact matches), got {map_threshold}")
    if parser_model is not None:
        if not isinstance(parser_model, (str, os.PathLike)):
            raise InputTypeError(f"parser_model must be a spaCy pipeline name or path (str), or None (the build's), "
                                 f"got {_got(parser_model)}")
        if not os.fspath(parser_model).strip():
            raise RuntimeInputError("parser_model is empty: pass a spaCy pipeline name such as 'en_core_web_sm', "
                                    "or None for the one the build recorded")
    if not isinstance(warmup, (bool, np.bool_)):
        raise InputTypeError(f"warmup must be True or False, got {_got(warmup)}")
    check_policy(captioning, "captioning")
    if not isinstance(verify, str) or verify not in VERIFY_LEVELS:
        raise RuntimeInputError(f"verify must be one of {', '.join(repr(v) for v in VERIFY_LEVELS)} (default 'fast'), "
                                f"got {_got(verify)}")
    if not isinstance(frame_path, str) or frame_path not in FRAME_PATHS:
        raise RuntimeInputError(f"frame_path must be one of {', '.join(repr(v) for v in FRAME_PATHS)} (default 'auto'), "
                                f"got {_got(frame_path)}")
    if backend in BACKENDS:   # an unknown name is refused by load() itself
        check_engine_options(backend, engine_options, "runtime.load()", also_known=_LOAD_ARGUMENTS)
    else:
        check_engine_options(None, engine_options, "runtime.load()", also_known=_LOAD_ARGUMENTS)


def load(path: str | Path, backend: str | None = None, threads: int | None = None,
         cache_size: int = 4096, map_threshold: float = 0.5, parser_model: str | None = None,
         warmup: bool = True, captioning=None, verify: str = "fast", frame_path: str = "auto",
         **engine_options: Any) -> Runtime:
    """Validate an artifact folder (manifest, format version, files) and open it on `backend`.

    `backend=None` takes the folder's recorded backend where it is installed, else ONNX Runtime.
    `cache_size`: phrases kept in the text-embedding cache. `map_threshold`: cosine similarity above
    which a caption object is taken for a vocabulary class. `parser_model`: a spaCy pipeline name
    (default: the one the build recorded). `warmup`: load the parser and run each engine once now.
    `captioning`: a runtime.captioning.CaptionPolicy turns on asynchronous captioning (after the warmup);
    None (default) keeps segment() captioning synchronously. `verify`: how the folder's files are checked
    against the manifest: "fast" (sizes and a fingerprint of at most 8 MiB per file), "full" (every byte's
    sha256, as recorded at build) or "off" (see engines.contract.read_manifest). `engine_options`: the
    backend's own (engines.base.ENGINE_OPTIONS: onnxruntime providers/spin, torch device, tensorrt
    plugins/cuda_graph); any other keyword is an OptionError (a TypeError) naming it. Every argument is
    checked before the folder is read (README, "Input contract"). `frame_path`: where frames are preprocessed
    and postprocessed: "device" (the build's frame graphs, on the engines' device), "host" (numpy/OpenCV) or
    "auto" (what measured faster: see FRAME_PATHS; a build without the graphs, or the torch backend, uses the
    host)."""
    _check_load_arguments(path, backend, threads, cache_size, map_threshold, parser_model, warmup, captioning,
                          verify, engine_options, frame_path)
    folder = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise EngineError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    if parser_model is not None:
        parser_model = os.fspath(parser_model)
    manifest = read_manifest(folder, verify=verify)
    if captioning is not None and manifest.captioner is None:
        raise RuntimeInputError(f"captioning={captioning!r} needs a captioner and the build in {folder} has none: "
                                f"rebuild with one, or pass captioning=None and give segment() a vocabulary")
    if backend is None:
        # TensorRT where it is installed, a GPU is visible and the folder has engines; else the recorded
        # backend where installed; else ONNX Runtime, whose default providers prefer TensorRT / CUDA EPs.
        from engines.tensorrt_engine import tensorrt_usable

        usable, why = tensorrt_usable(manifest)
        recorded = manifest.backend
        if usable:
            backend = "tensorrt"
        elif recorded != "tensorrt" and backend_importable(recorded):
            backend = recorded
        else:
            if recorded != "onnxruntime":
                log.warning("artifacts were built for %s, which cannot run here (%s); using onnxruntime", recorded,
                            why if recorded == "tensorrt" else "not installed")
            backend = "onnxruntime"
        # The options were checked against every backend's; now against the one chosen, which may not take them.
        check_engine_options(backend, engine_options, "runtime.load()", also_known=_LOAD_ARGUMENTS)
    engines: dict[str, Engine] = {}
    try:
        for name, comp in manifest.components.items():
            frame_graph = name in (FRAME_PREPROCESS.component, SEMANTIC_MAP.component)
            if backend == "torch" and frame_graph:
                continue   # plain ONNX graphs with no PyTorch module: the torch backend preprocesses on the host
            engines[name] = create_engine(backend, name, folder, comp, **engine_options,
                                          threads=FRAME_GRAPH_THREADS if frame_graph and threads is None else threads)
        rt = Runtime(folder, manifest, backend, engines, cache_size=cache_size, map_threshold=map_threshold,
                     parser_model=parser_model, frame_path=frame_path)
        if warmup:
            rt.warmup()
        if captioning is not None:
            rt.start_captioning(captioning)
    except BaseException:
        for engine in engines.values():  # sessions and device buffers opened before the failure
            engine.close()
        raise
    return rt
