"""What the Triton server runs, without Triton: request checks, batching across requests, per-stream captions.

`runtime.serve` binds these to PyTriton; `runtime.client` reads the same tensor names. Nothing here imports
pytriton or tritonclient, so it is tested (and importable) where they are not installed.

Requests -> `Batcher.submit(job)` (one thread per request, as Triton's model instances call in) -> a queue
-> one worker thread per Runtime gathers up to `max_batch` jobs, waiting at most `max_delay_s` after the
first -> `Runtime.segment_batch` -> each job's own result or error. A job is checked before it is queued
(`check_request`), so a malformed request fails alone and never the batch it would have joined.

Captions per stream (`StreamCaptions`), keyed by the request's `stream_id`: the newest caption of that
stream is used without waiting; every `caption_every` frames the stream's newest frame is handed to one
caption worker, which keeps only the newest pending frame per stream (a slow captioner never queues stale
frames). A stream's first frame without a vocabulary waits for its caption (there is nothing else to label
with); with a vocabulary it is segmented with the vocabulary alone. No stream id and no caption: the frame is
captioned synchronously, as `Runtime.segment(frame)` does.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from engines.errors import LLMFormerError
from runtime.frames import check_frame
from runtime.pipeline import check_segment_args

log = logging.getLogger("llmformer_edge.serve")

SEGMENT_MODEL = "llmformer_segment"
CAPTION_MODEL = "llmformer_caption"
MAX_STREAM_ID = 128        # characters
MAX_NAME_BYTES = 800       # one vocabulary name, UTF-8 (names are at most 200 characters)
MAX_CAPTION_BYTES = 16384


class Tensors:
    """The served models' tensor names, defined once for the server and the client."""

    FRAME = "frame"              # UINT8 (H, W, 3) RGB
    VOCABULARY = "vocabulary"    # BYTES (V,) optional
    CAPTION = "caption"          # BYTES (1,) optional in; out: the caption used ("" with a vocabulary alone)
    STREAM_ID = "stream_id"      # BYTES (1,) optional
    LABELS = "labels"            # INT32 (H, W)
    CLASSES = "classes"          # BYTES (V,)
    SCORES = "scores"            # FP32 (V,)
    TIMINGS = "timings"          # BYTES (1,) JSON: ms per stage, batch size, queue wait


class RequestError(LLMFormerError, ValueError):
    """A request the server refuses (its message goes back to that client alone)."""


def _strings(array: Any, name: str, max_bytes: int) -> list[str]:
    """A BYTES tensor as a list of str (UTF-8), each at most `max_bytes` bytes."""
    values = np.asarray(array).reshape(-1)
    out = []
    for i, value in enumerate(values):
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogatepass")
        if not isinstance(value, (bytes, np.bytes_)):
            raise RequestError(f"{name}[{i}] must be BYTES (UTF-8 text), got {type(value).__name__}")
        if len(value) > max_bytes:
            raise RequestError(f"{name}[{i}] is {len(value)} bytes; at most {max_bytes}")
        try:
            out.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RequestError(f"{name}[{i}] is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    return out


def _one_string(array: Any, name: str, max_bytes: int) -> str | None:
    if array is None:
        return None
    values = _strings(array, name, max_bytes)
    if len(values) != 1:
        raise RequestError(f"{name} must hold one string (shape [1]), got {len(values)}")
    return values[0]


@dataclass
class Job:
    """One request: checked inputs, and where its result or error goes."""

    frame: np.ndarray                    # (H, W, 3) uint8
    vocabulary: list[str] | None
    caption: str | None
    stream_id: str | None
    queued_at: float = field(default_factory=time.perf_counter)
    result: Any = None
    error: BaseException | None = None
    batch_size: int = 0
    queue_ms: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


def check_request(inputs: dict[str, Any], max_vocab: int, has_captioner: bool = True) -> Job:
    """A Job from one request's named inputs, or a RequestError / the runtime's own input error naming the
    tensor. Every check a frame would meet inside the batch is made here, before it is queued."""
    frame = inputs.get(Tensors.FRAME)
    if frame is None:
        raise RequestError(f"the request has no '{Tensors.FRAME}' input (UINT8, H x W x 3 RGB)")
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise RequestError(f"'{Tensors.FRAME}' must be UINT8 H x W x 3 RGB, got {frame.dtype}")
    frame = check_frame(frame)
    vocabulary = inputs.get(Tensors.VOCABULARY)
    if vocabulary is not None:
        count = np.asarray(vocabulary).size
        if count > max_vocab:   # before decoding a flood of names
            raise RequestError(f"'{Tensors.VOCABULARY}' has {count} names; this build takes at most {max_vocab}")
        vocabulary = _strings(vocabulary, Tensors.VOCABULARY, MAX_NAME_BYTES)
    caption = _one_string(inputs.get(Tensors.CAPTION), Tensors.CAPTION, MAX_CAPTION_BYTES)
    # segment()'s own rules, so that nothing a frame meets inside the batch can fail it there
    vocabulary, caption = check_segment_args(vocabulary, caption, max_vocab, has_captioner)
    stream_id = _one_string(inputs.get(Tensors.STREAM_ID), Tensors.STREAM_ID, 4 * MAX_STREAM_ID)
    if stream_id is not None:
        stream_id = stream_id.strip()
        if not stream_id or len(stream_id) > MAX_STREAM_ID or not stream_id.isprintable():
            raise RequestError(f"'{Tensors.STREAM_ID}' must be 1 to {MAX_STREAM_ID} printable characters, got "
                               f"{stream_id[:40]!r}")
    return Job(frame, vocabulary, caption, stream_id)


def segmentation_outputs(job: Job) -> dict[str, np.ndarray]:
    """A finished job's Segmentation as the model's outputs."""
    seg = job.result
    if not seg.classes:
        # (an empty tensor cannot cross PyTriton's shared memory either)
        raise RequestError(f"the caption {(seg.caption or '')[:80]!r} names no objects and no vocabulary was given: "
                           f"nothing to label with; send a vocabulary")
    timings = {k: round(float(v), 3) for k, v in seg.timings.items() if isinstance(v, (int, float))}
    timings.update(batch_size=job.batch_size, queue=round(job.queue_ms, 3))
    return {
        Tensors.LABELS: np.ascontiguousarray(seg.labels, np.int32),
        Tensors.CLASSES: np.array([c.encode("utf-8") for c in seg.classes], dtype=np.object_),
        Tensors.SCORES: np.ascontiguousarray(seg.scores, np.float32),
        Tensors.CAPTION: np.array([(seg.caption or "").encode("utf-8")], dtype=np.object_),
        Tensors.TIMINGS: np.array([json.dumps(timings).encode("utf-8")], dtype=np.object_),
    }


# -- per-stream captions ----------------------------------------------------------------------------------
@dataclass
class _Stream:
    caption: str | None = None
    frames: int = 0                      # frames seen since the caption was asked for
    pending: np.ndarray | None = None    # the newest frame waiting for the caption worker
    in_flight: bool = False


class StreamCaptions:
    """Caption state per stream_id (at most `max_streams`, least recently seen dropped first) and one worker
    thread that captions each stream's newest pending frame with `caption_fn(frame) -> str`."""

    def __init__(self, caption_fn, caption_every: int = 30, max_streams: int = 1024):
        self.caption_fn, self.caption_every, self.max_streams = caption_fn, caption_every, max_streams
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._lock = threading.Condition()
        self._stop = False
        self.completed = self.errors = 0
        self._thread = threading.Thread(target=self._work, name="stream-captions", daemon=True)
        self._thread.start()

    def caption_for(self, stream_id: str, frame: np.ndarray, has_vocabulary: bool) -> str | None:
        """The stream's newest caption for this frame (None: none yet), asking for a fresh one when due.
        Without a vocabulary and before the stream's first caption, captions this frame now."""
        with self._lock:
            state = self._streams.get(stream_id)
            if state is None:
                state = self._streams[stream_id] = _Stream()
                while len(self._streams) > self.max_streams:
                    self._streams.popitem(last=False)
            self._streams.move_to_end(stream_id)
            state.frames += 1
            # Due every `caption_every` frames; before the stream's first caption, whenever none is on its way.
            due = (not state.in_flight if state.caption is None else state.frames >= self.caption_every)
            caption = state.caption
            if caption is None and not has_vocabulary:
                state.frames = 0
            elif due:
                state.frames = 0
                # Latest-frame policy (an older pending frame is dropped); a copy: the request's input lives in
                # PyTriton's shared memory, which the next request may reuse once this one is answered.
                state.pending = frame.copy()
                self._lock.notify()
        if caption is None and not has_vocabulary:
            caption = self.caption_fn(frame)
            self.publish(stream_id, caption)
        return caption

    def publish(self, stream_id: str, caption: str | None) -> None:
        """The stream's new caption (None: the caption failed, the last one stays)."""
        with self._lock:
            state = self._streams.get(stream_id)
            if state is not None:
                state.in_flight = False
                if caption is not None:
                    state.caption = caption

    def streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stop and not any(s.pending is not None for s in self._streams.values()):
                    self._lock.wait()
                if self._stop:
                    return
                # the stream that has waited longest since it was last seen goes first (OrderedDict order)
                stream_id, state = next((k, s) for k, s in self._streams.items() if s.pending is not None)
                frame, state.pending, state.in_flight = state.pending, None, True
            try:
                text = self.caption_fn(frame)
            except Exception as exc:   # a failing captioner leaves the stream's last caption in use
                self.errors += 1
                log.warning("caption for stream %r failed: %s: %s", stream_id, type(exc).__name__, exc)
                self.publish(stream_id, None)
                continue
            self.completed += 1
            self.publish(stream_id, text)

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout)


# -- batching across requests ------------------------------------------------------------------------------
_STOP = object()


class Batcher:
    """Jobs from many request threads, run in batches of up to `max_batch` on one worker per Runtime."""

    def __init__(self, runtimes: Sequence[Any], max_batch: int = 8, max_delay_s: float = 0.002,
                 streams: StreamCaptions | None = None):
        self.runtimes, self.max_batch, self.max_delay_s, self.streams = list(runtimes), max_batch, max_delay_s, streams
        self._queue: queue.Queue = queue.Queue()
        self.batches = self.frames = 0
        self._closed = False
        self._state = threading.Lock()    # _closed with the queue; the counters
        self._threads = [threading.Thread(target=self._work, args=(rt,), name=f"batcher-{i}", daemon=True)
                         for i, rt in enumerate(self.runtimes)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job, timeout: float | None = None) -> Job:
        """Queue `job` and wait for it; raises its error (the runtime's input error, or RequestError)."""
        with self._state:   # with close(): a job is queued before the stop signals or refused, never after
            if self._closed:
                raise RequestError("the server is shutting down")
            self._queue.put(job)
        if not job.done.wait(timeout):
            raise RequestError(f"no result within {timeout:g} s")
        if job.error is not None:
            raise job.error
        return job

    def _gather(self) -> list[Job] | None:
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.max_delay_s
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)     # for the next worker; this one finishes its batch first
                break
            batch.append(job)
        return batch

    def _work(self, rt) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                self._queue.put(_STOP)
                return
            now = time.perf_counter()
            for job in batch:
                job.batch_size, job.queue_ms = len(batch), (now - job.queued_at) * 1000.0
            self._run(rt, batch)

    def _caption(self, job: Job) -> str | None:
        if job.caption is not None or job.stream_id is None or self.streams is None:
            return job.caption
        return self.streams.caption_for(job.stream_id, job.frame, job.vocabulary is not None)

    def _run(self, rt, batch: list[Job]) -> None:
        ready = []
        for job in batch:
            try:
                ready.append((job, self._caption(job)))
            except Exception as exc:
                job.finish(error=exc)
        if not ready:
            return
        try:
            results = rt.segment_batch([j.frame for j, _ in ready], [j.vocabulary for j, _ in ready],
                                       [c for _, c in ready])
        except Exception:
            # Checked jobs should not fail; if one does, run them one by one so it fails alone.
            for job, caption in ready:
                try:
                    job.finish(rt.segment(job.frame, job.vocabulary, caption))
                except Exception as exc:
                    job.finish(error=exc)
            return
        with self._state:
            self.batches += 1
            self.frames += len(ready)
        for (job, _), seg in zip(ready, results):
            job.finish(seg)

    def close(self, timeout: float = 10.0) -> None:
        """Finish the queued jobs, then stop the workers."""
        with self._state:
            self._closed = True
            self._queue.put(_STOP)
        for t in self._threads:
            t.join(timeout)
        while True:   # anything queued after the workers left gets an error, not a hang
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.finish(error=RequestError("the server is shutting down"))

