"""Asynchronous captioning: the captioner runs beside the camera loop and `segment()` uses the latest priors.

    policy = CaptionPolicy(every_frames=30, every_seconds=None, scene_change=0.15, first_frame="wait")
    rt = runtime.load(folder, captioning=policy)        # or rt.start_captioning(policy)
    with rt:
        for frame in camera:
            seg = rt.segment(frame)                     # never waits on the captioner once it has a caption
            seg.caption, seg.caption_frame, seg.caption_age_s

Parts (each usable alone):

- `CaptionWorker`: one daemon thread that captions the most recent payload it was handed, never a backlog.
  A newer `submit()` replaces a pending one, so the worker lags by at most one request. Each result is
  published as a `PublishedCaption` (sequence number, the frame index and the time it was captured from).
  A caption function that raises is logged and counted; the last published caption stays. One that runs
  past `timeout_s` is logged while it runs and its result is dropped when it returns (counted as a
  timeout): the last published caption stays, and no second caption starts beside it (one thread).
- `CaptionScheduler`: the refresh policy, deciding per frame whether to submit it: every N frames, every
  T seconds, or on a scene change measured on the vision-tower features the frame already has (cosine
  distance between mean-pooled hidden states of the frame and of the frame last submitted).
- `AsyncCaptioner`: both, plus the first-frame rule, as `Runtime.segment()` uses them.

Threads: the worker runs only the caption function (for a Runtime: the captioner's embed/decoder
engines, on image embeddings that `segment()` already computed in its one tower pass), the calling thread
runs the vision tower, text encoder and segmenter. Engines are not guaranteed safe for concurrent runs of
the same engine, so the Runtime serializes `segment()` calls with one lock and `caption()` calls (the
worker's included) with another.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engines.errors import LLMFormerError

log = logging.getLogger("llmformer_edge")

FIRST_FRAME_MODES = ("wait", "vocabulary")


def _is_real(v: Any) -> bool:
    """An int or float (numpy's too), not a bool (True is 1 to Python, never a number of frames or seconds)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class CaptionPolicyError(LLMFormerError, ValueError):
    """A CaptionPolicy field with a value it cannot take; the message names the field and what it takes."""


@dataclass(frozen=True)
class CaptionPolicy:
    """When a frame is sent to the captioner.

    `every_frames`: refresh when this many frames have passed since the last submission (None: never
    on a count). `every_seconds`: refresh when this much time has passed since the last submission (None:
    never on time). `scene_change`: refresh when the cosine distance (0..2) between the mean-pooled
    vision features of the frame and of the last submitted frame reaches this (None: off).
    `first_frame`: until the first caption exists, "wait" blocks `segment()` for it (at most
    `first_wait_s` seconds, None: no limit); "vocabulary" segments with the vocabulary alone (an error
    when no vocabulary was passed). `timeout_s`: a caption running longer than this times out: it is
    logged while it runs, and its result is dropped when it returns (it describes a frame older than
    the timeout allows); segmentation goes on with the last priors meanwhile. A thread cannot be
    cancelled, so the caption is not killed, and no other caption starts until it returns."""

    every_frames: int | None = 30
    every_seconds: float | None = None
    scene_change: float | None = 0.15
    first_frame: str = "wait"
    first_wait_s: float | None = 120.0
    timeout_s: float | None = 30.0

    def __post_init__(self) -> None:
        # Each field is checked here, so a bad policy fails where it is written, not frames later in a worker.
        every = self.every_frames
        if every is not None:
            if isinstance(every, (bool, np.bool_)) or not isinstance(every, (int, np.integer)):
                raise CaptionPolicyError(f"CaptionPolicy.every_frames must be an int >= 1 (caption every N frames) "
                                         f"or None (never on a count), got {type(every).__name__} {every!r}")
            if every < 1:
                raise CaptionPolicyError(f"CaptionPolicy.every_frames must be >= 1 (caption every N frames) or None "
                                         f"(never on a count), got {every}")
            object.__setattr__(self, "every_frames", int(every))
        for name, meaning in (("every_seconds", "never on time"), ("first_wait_s", "no limit"),
                              ("timeout_s", "no timeout")):
            v = getattr(self, name)
            if v is None:
                continue
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                raise CaptionPolicyError(f"CaptionPolicy.{name} must be a finite number of seconds > 0, or None "
                                         f"({meaning}), got {type(v).__name__} {v!r}")
            object.__setattr__(self, name, float(v))
        v = self.scene_change
        if v is not None:
            if not _is_real(v) or not 0 < v <= 2:
                raise CaptionPolicyError(f"CaptionPolicy.scene_change is a cosine distance in (0, 2] (0.15 is a "
                                         f"good start), or None (off), got {type(v).__name__} {v!r}")
            object.__setattr__(self, "scene_change", float(v))
        if not isinstance(self.first_frame, str) or self.first_frame not in FIRST_FRAME_MODES:
            raise CaptionPolicyError(f"CaptionPolicy.first_frame must be one of {FIRST_FRAME_MODES}, got "
                                     f"{self.first_frame!r}")


@dataclass(frozen=True)
class PublishedCaption:
    seq: int                  # 1, 2, ... in publication order
    frame: int                # index of the frame the caption was made from
    captured_at: float        # the clock's time when that frame was submitted
    published_at: float       # the clock's time when the caption was ready
    caption: Any              # what the caption function returned (runtime.decode.Caption, or a str)
    reason: str | None = None  # why the frame was submitted ("first", "frames", "seconds", "scene", ...)

    @property
    def text(self) -> str:
        return self.caption if isinstance(self.caption, str) else self.caption.text


class CaptionTimeout(LLMFormerError, TimeoutError):
    """A caption took longer than the policy's timeout_s; its result was dropped."""


@dataclass
class _Request:
    payload: Any
    frame: int
    captured_at: float
    reason: str | None


class CaptionWorker:
    """One daemon thread captioning the newest submission (latest-frame policy, no backlog).

    `caption_fn(payload)` returns a Caption (anything with `.text`) or a str. `clock`: the time source for
    `captured_at`/`published_at` (time.monotonic). `timeout_s`: a caption that took longer is dropped
    (counted in `timeouts`, `last_error` a CaptionTimeout). Use as a context manager or start()/stop()."""

    def __init__(self, caption_fn: Callable[[Any], Any], clock: Callable[[], float] = time.monotonic,
                 name: str = "caption-worker", timeout_s: float | None = None):
        self.caption_fn, self.clock, self.name, self.timeout_s = caption_fn, clock, name, timeout_s
        self._cond = threading.Condition()
        self._pending: _Request | None = None
        self._running: _Request | None = None
        self._running_since: float | None = None
        self._latest: PublishedCaption | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.submitted = self.replaced = self.completed = self.errors = self.timeouts = 0
        self.last_error: BaseException | None = None

    # -- lifetime ------------------------------------------------------------------------------------
    def start(self) -> "CaptionWorker":
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("this CaptionWorker was already started")
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Drop any pending request, stop the thread and join it. True when the thread has ended (False:
        the caption function is still running after `timeout`; the daemon thread ends when it returns)."""
        with self._cond:
            self._stopping = True
            self._pending = None
            self._cond.notify_all()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("the caption worker did not stop within %s s (a caption is still running)", timeout)
            return False
        return True

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "CaptionWorker":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests ------------------------------------------------------------------------------------
    def submit(self, payload: Any, frame: int, captured_at: float | None = None, reason: str | None = None) -> bool:
        """Hand the worker a payload to caption; it replaces any request not yet started. Returns True
        when it replaced one."""
        req = _Request(payload, int(frame), self.clock() if captured_at is None else captured_at, reason)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the caption worker is stopped")
            replaced = self._pending is not None
            self._pending = req
            self.submitted += 1
            self.replaced += int(replaced)
            self._cond.notify_all()
        return replaced

    def latest(self) -> PublishedCaption | None:
        """The newest published caption (never waits)."""
        return self._latest

    @property
    def idle(self) -> bool:
        with self._cond:
            return self._pending is None and self._running is None

    @property
    def pending_frame(self) -> int | None:
        """The frame of the request waiting to start (at most one: the newest), or None."""
        with self._cond:
            return None if self._pending is None else self._pending.frame

    def running_for(self) -> tuple[int, float] | None:
        """(frame, seconds) of the caption in progress, or None."""
        with self._cond:
            if self._running is None:
                return None
            return self._running.frame, self.clock() - self._running_since

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted request is done (published or failed). True when idle."""
        with self._cond:
            return self._cond.wait_for(lambda: self._stopping or (self._pending is None and self._running is None),
                                       timeout)

    def wait_for(self, seq: int = 1, timeout: float | None = None) -> PublishedCaption | None:
        """Wait until a caption with sequence number >= seq is published (None on timeout or stop)."""
        with self._cond:
            self._cond.wait_for(lambda: self._stopping or (self._latest is not None and self._latest.seq >= seq),
                                timeout)
            latest = self._latest
        return latest if latest is not None and latest.seq >= seq else None

    # -- the thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._pending is not None)
                if self._stopping:
                    return
                req, self._pending = self._pending, None
                self._running, self._running_since = req, self.clock()
                started = self._running_since
            try:
                result = self.caption_fn(req.payload)
                if not isinstance(result, str) and not isinstance(getattr(result, "text", None), str):
                    raise TypeError(f"the caption function returned {type(result).__name__}, not a Caption or str")
            except Exception as exc:  # logged; the last published caption stays in use
                log.warning("captioning frame %d failed: %s: %s; segmentation keeps the last priors", req.frame,
                            type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                with self._cond:
                    self.errors += 1
                    self.last_error = exc
                    self._running = self._running_since = None
                    self._cond.notify_all()
                continue
            took = self.clock() - started
            if self.timeout_s is not None and took > self.timeout_s:
                log.warning("the caption of frame %d took %.1f s, over the %s s timeout: dropped; segmentation "
                            "keeps the last priors (raise CaptionPolicy.timeout_s if captions are this slow)",
                            req.frame, took, self.timeout_s)
                with self._cond:
                    self.timeouts += 1
                    self.last_error = CaptionTimeout(f"the caption of frame {req.frame} took {took:.1f} s, over "
                                                     f"the {self.timeout_s} s timeout")
                    self._running = self._running_since = None
                    self._cond.notify_all()
                continue
            with self._cond:
                seq = (self._latest.seq if self._latest is not None else 0) + 1
                self._latest = PublishedCaption(seq, req.frame, req.captured_at, self.clock(), result, req.reason)
                self.completed += 1
                self._running = self._running_since = None
                self._cond.notify_all()


def pooled_signature(vision_hidden_states: np.ndarray | None) -> np.ndarray | None:
    """A cheap scene descriptor: the tower's hidden states (n_layers, 1, T, C) mean-pooled over tokens,
    per layer, flattened to one float32 vector."""
    if vision_hidden_states is None:
        return None
    h = np.asarray(vision_hidden_states, np.float32)
    return h.reshape(-1, h.shape[-2], h.shape[-1]).mean(axis=1).ravel() if h.ndim >= 2 else h.ravel()


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos(a, b), in [0, 2]; 0 for two zero vectors, 1 when only one is zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    return float(1.0 - np.dot(a, b) / (na * nb))


class CaptionScheduler:
    """The refresh policy: `decide()` says why a frame is due for a caption (or None); `submitted()`
    records a submission (it becomes the reference for counts, times and scene changes)."""

    def __init__(self, policy: CaptionPolicy):
        self.policy = policy
        self.last_frame: int | None = None
        self.last_time: float | None = None
        self.reference: np.ndarray | None = None
        self.last_distance: float | None = None

    def decide(self, frame: int, now: float, signature: np.ndarray | None = None) -> str | None:
        p = self.policy
        self.last_distance = None
        if self.last_frame is None:
            return "first"
        if p.every_frames is not None and frame - self.last_frame >= p.every_frames:
            return "frames"
        if p.every_seconds is not None and now - self.last_time >= p.every_seconds:
            return "seconds"
        if p.scene_change is not None and signature is not None and self.reference is not None:
            self.last_distance = cosine_distance(signature, self.reference)
            if self.last_distance >= p.scene_change:
                return "scene"
        return None

    def submitted(self, frame: int, now: float, signature: np.ndarray | None = None) -> None:
        self.last_frame, self.last_time, self.reference = frame, now, signature


class AsyncCaptioner:
    """A CaptionWorker driven by a CaptionScheduler, with the first-frame rule. `step()` is what
    `Runtime.segment()` calls per frame, from one thread."""

    def __init__(self, caption_fn: Callable[[Any], Any], policy: CaptionPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.policy = policy or CaptionPolicy()
        self.clock = clock
        self.scheduler = CaptionScheduler(self.policy)
        self.worker = CaptionWorker(caption_fn, clock=clock, timeout_s=self.policy.timeout_s)
        self._warned_stall: int | None = None

    def start(self) -> "AsyncCaptioner":
        self.worker.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> bool:
        return self.worker.stop(timeout)

    def step(self, frame: int, payload: Any | Callable[[], Any], signature: np.ndarray | None = None,
             now: float | None = None) -> tuple[PublishedCaption | None, str | None]:
        """Submit the frame when the policy says so, then return (the newest caption, the submit reason).
        Never waits once a caption exists; before that, with first_frame="wait", waits for the first
        (None when it failed or did not come within `first_wait_s`). `payload` may be a callable making
        the payload, called only when the frame is submitted."""
        now = self.clock() if now is None else now
        latest = self.worker.latest()
        reason = self.scheduler.decide(frame, now, signature)
        if latest is None and reason is None and self.worker.idle:
            reason = "retry"  # no caption yet and the last attempt failed: try again with this frame
        if reason is not None:
            self.worker.submit(payload() if callable(payload) else payload, frame, now, reason)
            self.scheduler.submitted(frame, now, signature)
        if latest is None and self.policy.first_frame == "wait":
            if not self.worker.wait_idle(self.policy.first_wait_s):
                log.warning("no first caption within %s s", self.policy.first_wait_s)
            latest = self.worker.latest()
        self._check_stall()
        return latest, reason

    def _check_stall(self) -> None:
        if self.policy.timeout_s is None:
            return
        running = self.worker.running_for()
        if running is not None and running[1] > self.policy.timeout_s and self._warned_stall != running[0]:
            self._warned_stall = running[0]
            log.warning("the captioner has run %.1f s on frame %d (timeout %s s): its caption will be dropped; "
                        "segmenting with the last priors", running[1], running[0], self.policy.timeout_s)
