"""Per-stage profiling: timed spans per thread, percentiles, a Chrome trace, NVTX ranges, memory.

    prof = Profiler()
    rt.profiler = prof                  # Runtime.segment() and the caption worker record their stages
    ...
    prof.summary()                      # {stage: StageStats(count, mean/p50/p95/p99/max ms, threads)}
    prof.write_chrome_trace("trace.json")   # open in https://ui.perfetto.dev or chrome://tracing

A span is (stage name, start, duration, thread). With no profiler set the runtime's hot path pays one
attribute test per stage. NVTX ranges (shown by Nsight Systems) are pushed around each span where the
`nvtx` package is importable, or torch's CUDA NVTX where torch is already imported and sees a GPU;
otherwise they are no-ops. This module never imports torch itself.

Bytes moved: each engine counts its host <-> device transfers (engines.base.IOCounter); `engine_io()` reads
them for a Runtime's engines, and caption spans carry their caption's bytes (`io_bytes`, host <-> device), so a
report gives bytes per frame and per generated token.

Memory is read from /proc on Linux (current RSS, open file descriptors, OS threads) and `resource`
(peak RSS), with psutil where /proc is missing; device memory from NVML (nvidia-ml-py) or torch where
either is importable and a GPU is visible, else "n/a".
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["machine", "Span", "StageStats", "Profiler", "NULL_SPAN", "nvtx_range", "host_memory", "device_memory",
           "open_fds", "os_threads", "engine_io", "io_per_frame"]


def machine() -> str:
    """CPU model, usable cores, OS, and the load average at start (it says whether other work shared the
    cores while the benchmark ran), with today's date."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"
    return (f"{cpu}, {usable} usable cores ({os.cpu_count()} logical), {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}, load average {load} at start, {_dt.date.today().isoformat()}")


@dataclass(frozen=True)
class Span:
    name: str
    start: float                # time.perf_counter() seconds
    duration: float             # seconds
    thread_id: int              # threading.get_ident() of the thread that ran it
    thread_name: str
    args: dict[str, Any] | None = None


@dataclass(frozen=True)
class StageStats:
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    threads: tuple[str, ...]    # names of the threads the stage ran on


class _NullSpan:
    """The shared no-op context manager used when profiling is off."""

    __slots__ = ()

    def __enter__(self) -> "_NullSpan":
        return self

    def __exit__(self, *exc) -> bool:
        return False


NULL_SPAN = _NullSpan()


# -- NVTX ---------------------------------------------------------------------------------------------
_nvtx_api: tuple | None = None
_nvtx_checked = False


def _nvtx() -> tuple | None:
    """(push(name), pop()) from the `nvtx` package or torch.cuda.nvtx, or None. Looked up once."""
    global _nvtx_api, _nvtx_checked
    if not _nvtx_checked:
        _nvtx_checked = True
        try:
            import nvtx  # PyPI `nvtx`, NVIDIA's Python NVTX bindings

            _nvtx_api = (lambda name: nvtx.push_range(name), nvtx.pop_range)
        except ImportError:
            torch = sys.modules.get("torch")  # only where torch is already loaded: never import it here
            try:
                if torch is not None and torch.cuda.is_available():
                    _nvtx_api = (torch.cuda.nvtx.range_push, torch.cuda.nvtx.range_pop)
            except Exception:  # a broken CUDA install must not break profiling
                _nvtx_api = None
    return _nvtx_api


@contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    """An NVTX push/pop around the block where NVTX is available; nothing otherwise."""
    api = _nvtx()
    if api is None:
        yield
        return
    api[0](name)
    try:
        yield
    finally:
        api[1]()


# -- the profiler -------------------------------------------------------------------------------------
class _SpanContext:
    __slots__ = ("profiler", "name", "args", "start", "_nvtx")

    def __init__(self, profiler: "Profiler", name: str, args: dict[str, Any] | None):
        self.profiler, self.name, self.args = profiler, name, args
        self.start = 0.0
        self._nvtx = profiler._nvtx

    def __enter__(self) -> "_SpanContext":
        if self._nvtx is not None:
            self._nvtx[0](self.name)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        end = time.perf_counter()
        if self._nvtx is not None:
            self._nvtx[1]()
        self.profiler.record(self.name, self.start, end - self.start, args=self.args)
        return False


class Profiler:
    """Collects spans from any thread (appends are locked). Keeps the newest `max_spans` spans.
    `nvtx`: push NVTX ranges around spans (None: where NVTX is available)."""

    def __init__(self, max_spans: int = 1_000_000, nvtx: bool | None = None):
        self._spans: deque[Span] = deque(maxlen=max_spans)
        self._lock = threading.Lock()
        self.origin = time.perf_counter()      # time 0 of the trace
        self.dropped = 0
        api = _nvtx() if nvtx is None or nvtx else None
        if nvtx and api is None:
            raise RuntimeError("NVTX was asked for but neither the `nvtx` package nor torch with CUDA is available: "
                               "pip install nvtx, or pass nvtx=None")
        self._nvtx = api

    @property
    def nvtx(self) -> bool:
        return self._nvtx is not None

    def span(self, name: str, **args: Any) -> _SpanContext:
        """`with profiler.span("vision"):` times the block on the calling thread."""
        return _SpanContext(self, name, args or None)

    def record(self, name: str, start: float, duration: float, thread: threading.Thread | None = None,
               args: dict[str, Any] | None = None) -> None:
        """Add a span measured elsewhere (start in perf_counter seconds, duration in seconds)."""
        t = thread or threading.current_thread()
        span = Span(name, start, max(0.0, duration), t.ident or 0, t.name, args)
        with self._lock:
            if len(self._spans) == self._spans.maxlen:
                self.dropped += 1
            self._spans.append(span)

    def spans(self, name: str | None = None) -> list[Span]:
        with self._lock:
            spans = list(self._spans)
        return spans if name is None else [s for s in spans if s.name == name]

    def durations_ms(self, name: str) -> np.ndarray:
        return np.asarray([s.duration * 1e3 for s in self.spans(name)], np.float64)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self.dropped = 0
        self.origin = time.perf_counter()

    # -- reports ------------------------------------------------------------------------------------
    def summary(self) -> dict[str, StageStats]:
        """Per stage name, in order of first appearance: count and mean/p50/p95/p99/max milliseconds."""
        by_name: dict[str, list[Span]] = {}
        for s in self.spans():
            by_name.setdefault(s.name, []).append(s)
        out = {}
        for name, spans in by_name.items():
            ms = np.asarray([s.duration * 1e3 for s in spans], np.float64)
            p50, p95, p99 = np.percentile(ms, [50, 95, 99])
            out[name] = StageStats(len(ms), float(ms.mean()), float(p50), float(p95), float(p99), float(ms.max()),
                                   tuple(dict.fromkeys(s.thread_name for s in spans)))
        return out

    def table(self, stages: list[str] | None = None) -> str:
        """The summary as a fixed-width text table (milliseconds)."""
        summary = self.summary()
        names = [n for n in (stages or summary) if n in summary]
        lines = [f"{'stage':<18}{'count':>7}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  thread"]
        for n in names:
            s = summary[n]
            lines.append(f"{n:<18}{s.count:>7}{s.mean_ms:9.2f}{s.p50_ms:9.2f}{s.p95_ms:9.2f}{s.p99_ms:9.2f}"
                         f"{s.max_ms:9.2f}  {', '.join(s.threads)}")
        return "\n".join(lines)

    def chrome_trace(self) -> dict[str, Any]:
        """The spans as Chrome trace events (complete "X" events, microseconds from `origin`, one row per
        thread, named by "M" metadata events): load in Perfetto or chrome://tracing."""
        pid = os.getpid()
        spans = sorted(self.spans(), key=lambda s: s.start)
        events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                                         "args": {"name": "llmformer-edge"}}]
        tids: dict[int, int] = {}
        for s in spans:
            if s.thread_id not in tids:
                tids[s.thread_id] = len(tids) + 1   # small stable numbers read better than idents
                events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tids[s.thread_id],
                               "args": {"name": s.thread_name}})
        for s in spans:
            event = {"name": s.name, "cat": "stage", "ph": "X", "pid": pid, "tid": tids[s.thread_id],
                     "ts": round((s.start - self.origin) * 1e6, 3), "dur": round(s.duration * 1e6, 3)}
            if s.args:
                event["args"] = s.args
            events.append(event)
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write_chrome_trace(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.chrome_trace()))
        return path

    def record_caption(self, start: float, caption: Any) -> None:
        """Spans for a caption's prefill and decode, from the timings a runtime.decode.Caption carries
        (placed from `start`, when the caption call began; its own tokenization before prefill is
        well under a millisecond)."""
        timings = getattr(caption, "timings", None)
        if timings is None or not hasattr(timings, "prefill_s"):
            return
        decode = float(sum(timings.decode_s))
        io = getattr(caption, "io", None)   # runtime.decode.CaptionIO: host <-> device bytes of each phase
        prefill_args = {"tokens": timings.prompt_tokens}
        decode_args = {"tokens": len(timings.decode_s)}
        if io is not None:
            prefill_args["io_bytes"] = io.prefill.host_device
            decode_args["io_bytes"] = io.decode.host_device
        self.record("caption_prefill", start, timings.prefill_s, args=prefill_args)
        self.record("caption_decode", start + timings.prefill_s, decode, args=decode_args)


def engine_io(engines: dict[str, Any]) -> dict[str, Any]:
    """Each engine's bytes moved so far (engines.base.IOBytes), by name; engines without a counter are left out."""
    return {name: e.io.snapshot() for name, e in engines.items() if getattr(e, "io", None) is not None}


def io_per_frame(before: dict[str, Any], after: dict[str, Any], frames: int) -> dict[str, Any]:
    """Bytes per frame between two `engine_io` readings: host <-> device in all (`total`, what the JSON report
    calls engine_io_bytes_per_frame) and per engine and direction."""
    frames = max(int(frames), 1)
    by_engine = {}
    for name, now in after.items():
        moved = now - before[name] if name in before else now
        by_engine[name] = {k: v / frames for k, v in moved.as_dict().items()}
    total = sum(d["host_to_device"] + d["device_to_host"] for d in by_engine.values())
    return {"total": total, "by_engine": by_engine}


def stats_dict(summary: dict[str, StageStats]) -> dict[str, dict[str, Any]]:
    """The summary as plain JSON-ready dicts."""
    return {name: {**asdict(s), "threads": list(s.threads)} for name, s in summary.items()}


# -- memory, threads, file descriptors ----------------------------------------------------------------
def _proc_rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # optional: only where /proc is missing (macOS, Windows)

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def host_memory() -> dict[str, float | None]:
    """Resident memory of this process now and at its peak, in MiB (None where it cannot be read)."""
    rss = _proc_rss_bytes()
    peak = None
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss / 1024.0 if sys.platform != "darwin" else maxrss / 2**20  # KiB on Linux, bytes on macOS
    except (ImportError, OSError):
        pass
    return {"rss_mib": None if rss is None else rss / 2**20, "peak_rss_mib": peak}


def device_memory() -> dict[str, Any] | None:
    """GPU memory where a GPU API is importable and sees a device: NVML (whole device) or torch (this
    process's allocator). None otherwise, reported as "n/a"."""
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
            return {"source": "nvml (device 0, all processes)", "used_mib": info.used / 2**20,
                    "total_mib": info.total / 2**20}
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return {"source": "torch (this process)", "used_mib": torch.cuda.memory_allocated() / 2**20,
                    "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    except Exception:
        pass
    return None


def open_fds() -> int | None:
    """Open file descriptors of this process (None where /proc/self/fd and psutil are missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    try:
        import psutil

        return psutil.Process().num_fds()
    except Exception:
        return None


def os_threads() -> int:
    """OS threads of this process, the native pools of ONNX Runtime and OpenCV included (/proc), else
    Python threads only."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()
