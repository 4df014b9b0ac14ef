"""The camera loop: capture -> segment (captions refreshed asynchronously) -> overlay -> display / video / PNGs.

    python -m runtime.camera ARTIFACTS --source 0|FILE|RTSP_URL|GSTREAMER_PIPELINE
        [--vocabulary dog,couch,floor] [--caption-every 30] [--scene-change 0.15] [--caption TEXT]
        [--display | --headless] [--out-video out.avi] [--out-dir frames/] [--max-frames N] [--no-drop]
    python -m runtime.camera --server http://host:8000 --stream-id cam0 --source ...   (a runtime.serve server
        segments; the same overlays; see docs/serving.md)

Sources (OpenCV VideoCapture): an int is a camera index (V4L2 /dev/videoN), a string with "!" a GStreamer
pipeline (cv2.CAP_GSTREAMER; OpenCV must be built with GStreamer, as JetPack's is, unlike the PyPI
wheels), "scheme://..." a network stream (RTSP, HTTP; FFmpeg), anything else a video file. The Jetson
CSI camera (Argus) is a GStreamer pipeline that ends in BGR at an appsink:

    --source "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=1280, height=720,
              framerate=30/1 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert !
              video/x-raw, format=BGR ! appsink drop=1 max-buffers=1"

Frames arrive in OpenCV's BGR (or gray/BGRA from some devices) and are converted to RGB with
runtime.frames.to_rgb. Live sources (cameras, streams, pipelines) are read on a thread that keeps only
the newest frame, so a segmenter slower than the camera works on fresh frames instead of a growing
backlog (`--no-drop` processes every frame); files are read frame by frame.

Captions: with a captioner in the build and no --caption, captions are refreshed asynchronously (every
--caption-every frames and on a scene change) and the loop never waits for them once the first exists;
with a --vocabulary it does not wait for the first either. `--caption-every 0` runs no captioner at all:
the frames are segmented with the --vocabulary alone. Ctrl-C, `q`/Esc in the window, --max-frames and the
end of the stream all stop the loop cleanly: outputs are finalized, the caption worker joined, the capture
released, and the runtime closed.

Failures: one `error: ...` line on stderr, exit status 2 for a wrong command line (checked before anything
opens: option ranges, a missing artifact folder or video file, an output that cannot be written) and 1 for a
failed run (a camera that does not open, a backend that is not installed); --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.errors import LLMFormerError
from runtime.commands import (CommandParser, UsageError, artifact_folder, bounded, output_file, output_folder,
                              run_command)
from runtime.frames import FrameError, to_rgb
from runtime.profiling import NULL_SPAN

log = logging.getLogger("llmformer_edge")


class SourceError(LLMFormerError, RuntimeError):
    """A frame source or output that cannot be opened; the message says which and what to do."""


# -- sources ------------------------------------------------------------------------------------------
def parse_source(source: int | str) -> tuple[str, int | str]:
    """("camera", index) | ("gstreamer", pipeline) | ("stream", url) | ("file", path)."""
    if isinstance(source, (int, np.integer)):
        return "camera", int(source)
    text = str(source).strip()
    if not text:
        raise SourceError("the source is empty: pass a camera index, a video file, a stream URL or a GStreamer "
                          "pipeline")
    if text.isdigit():
        return "camera", int(text)
    if "!" in text:
        return "gstreamer", text
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return "stream", text
    return "file", text


def gstreamer_available() -> bool:
    match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper() == "YES")


def open_capture(source: int | str) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for the source, or SourceError saying why it could not be opened."""
    kind, value = parse_source(source)
    if kind == "gstreamer":
        if not gstreamer_available():
            raise SourceError(f"the source is a GStreamer pipeline but this OpenCV ({cv2.__version__}) was built "
                              f"without GStreamer: use JetPack's OpenCV (or build OpenCV with -DWITH_GSTREAMER=ON)")
        cap = cv2.VideoCapture(value, cv2.CAP_GSTREAMER)
    elif kind == "file":
        if not Path(value).is_file():
            raise SourceError(f"video file {value} does not exist (a camera is an index like 0, a stream a URL "
                              f"like rtsp://host/path)")
        cap = cv2.VideoCapture(value)
    else:
        cap = cv2.VideoCapture(value)
    if not cap.isOpened():
        cap.release()
        hint = {"camera": "is it connected, and free (not open in another program)? ls /dev/video*",
                "stream": "is the URL reachable? for RTSP over TCP set "
                          "OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp",
                "gstreamer": "run the pipeline with gst-launch-1.0 (ending in fakesink) to see the error",
                "file": "is it a video OpenCV's FFmpeg can decode?"}[kind]
        raise SourceError(f"cannot open {kind} source {value!r}: {hint}")
    return cap


class FrameSource:
    """RGB frames from a VideoCapture (or any object with read()/release()/get()), as an iterator.

    `latest=True` (default for live sources): a reader thread keeps only the newest frame; `dropped`
    counts the frames replaced before they were read. `latest=False`: every frame in order.
    Iteration ends at the end of the stream; close() (or `with`) stops the thread and releases the capture."""

    def __init__(self, capture: Any, latest: bool = False, name: str = "source"):
        self.capture, self.latest, self.name = capture, latest, name
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else None
        self.read_frames = self.dropped = 0
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._ended = self._closed = False
        self._thread: threading.Thread | None = None
        if latest:
            self._thread = threading.Thread(target=self._reader, name="frame-reader", daemon=True)
            self._thread.start()

    @classmethod
    def open(cls, source: int | str, latest: bool | None = None) -> "FrameSource":
        """Open a source (see parse_source); `latest` defaults to True for all but files."""
        kind, _ = parse_source(source)
        return cls(open_capture(source), latest=(kind != "file") if latest is None else latest, name=str(source))

    def _grab(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        return to_rgb(frame, "bgr") if ok and frame is not None and frame.size else None

    def _reader(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
            try:
                frame = self._grab()
            except Exception as exc:  # a broken device ends the stream, it does not kill the loop silently
                log.warning("%s: reading a frame failed: %s: %s", self.name, type(exc).__name__, exc)
                frame = None
            with self._cond:
                if frame is None:
                    self._ended = True
                else:
                    self.read_frames += 1
                    self.dropped += int(self._frame is not None)
                    self._frame = frame
                self._cond.notify_all()
                if self._ended:
                    return

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next frame (the newest one with `latest`), or None at the end of the stream (or, with
        `latest`, when `timeout` seconds pass without one). A live source ends at its first failed read."""
        if not self.latest:
            if self._closed:
                return None
            frame = self._grab()
            self.read_frames += int(frame is not None)
            return frame
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._ended or self._closed, timeout)
            frame, self._frame = self._frame, None
        return frame

    def __iter__(self) -> Iterator[np.ndarray]:
        while (frame := self.read()) is not None:
            yield frame

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # a read() stuck in the driver: releasing under it could crash
                log.warning("%s: the reader did not stop within %s s; the capture is left open", self.name, timeout)
                return
        self.capture.release()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- outputs ------------------------------------------------------------------------------------------
class VideoSink:
    """Overlays to a video file (MJPG for .avi, mp4v for .mp4). The size is the first frame's; later
    frames of another size are resized to it (a video has one size)."""

    FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "MJPG"}

    def __init__(self, path: str | Path, fps: float = 30.0):
        self.path, self.fps = Path(path), float(fps)
        if self.path.suffix.lower() not in self.FOURCC:
            raise SourceError(f"output video {self.path}: use a .avi, .mp4 or .mkv file name")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.written = 0

    def write(self, image: np.ndarray, index: int) -> bool:
        h, w = image.shape[:2]
        if self.writer is None:
            self.size = (w, h)
            fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[self.path.suffix.lower()])
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise SourceError(f"cannot write video {self.path} ({self.FOURCC[self.path.suffix.lower()]}): "
                                  f"try a .avi name (MJPG), or --out-dir for PNGs")
        if (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.written += 1
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class PngSink:
    """Overlays as DIR/frame_000000.png, one per frame, each at its frame's size."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0

    def write(self, image: np.ndarray, index: int) -> bool:
        path = self.folder / f"frame_{index:06d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise SourceError(f"cannot write {path}: is the folder writable and the disk not full?")
        self.written += 1
        return True

    def close(self) -> None:
        pass


class DisplaySink:
    """Overlays in a window (cv2.imshow). write() returns False when `q` or Esc was pressed."""

    def __init__(self, title: str = "llmformer-edge"):
        self.title = title
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SourceError(f"cannot open a window: this OpenCV ({cv2.__version__}) has no GUI support "
                              f"(opencv-python-headless?) or there is no display. Run with --headless and "
                              f"--out-video/--out-dir, or install opencv-python") from exc
        self.written = 0

    def write(self, image: np.ndarray, index: int) -> bool:
        cv2.imshow(self.title, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.written += 1
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


# -- the loop -----------------------------------------------------------------------------------------
@dataclass
class LoopStats:
    frames: int = 0                  # frames segmented
    skipped: int = 0                 # frames refused (FrameError / RuntimeInputError), logged
    seconds: float = 0.0             # wall time of the loop
    captions: int = 0                # captions published while the loop ran
    caption_errors: int = 0
    caption_timeouts: int = 0
    stopped_by: str = ""             # "end of stream", "max frames", "interrupted", "quit"
    started: float = 0.0             # perf_counter() when the loop began
    frame_ends: list[float] = field(default_factory=list, repr=False)  # perf_counter() after each frame

    def fps(self, skip: int = 0) -> float:
        """Frames per second after the first `skip` frames (steady state: the rate between the end of
        frame `skip - 1` and the last), from the loop's start when skip is 0."""
        ends = self.frame_ends[skip - 1:] if skip else [self.started] + self.frame_ends
        if len(ends) < 2 or ends[-1] <= ends[0]:
            return float("nan")
        return (len(ends) - 1) / (ends[-1] - ends[0])

    @property
    def captions_per_min(self) -> float:
        return 60.0 * self.captions / self.seconds if self.seconds > 0 else float("nan")


def run_loop(rt, frames: Iterable[np.ndarray], vocabulary: list[str] | None = None, caption: str | None = None,
             sinks: Iterable[Any] = (), max_frames: int | None = None, render: bool | None = None,
             on_result: Callable[[int, np.ndarray, Any, np.ndarray | None], Any] | None = None) -> LoopStats:
    """Segment every frame `frames` yields with `rt` and hand overlays to `sinks`; returns LoopStats.

    `render`: draw overlays (default: when there are sinks or on_result). `on_result(i, frame, seg,
    overlay)` is called per frame; returning False stops the loop. A frame segment() refuses (FrameError,
    RuntimeInputError) is logged and skipped. Ctrl-C stops the loop (stopped_by "interrupted"); sinks are
    closed in every case. The caller owns `rt` and the source (use `with`). With `rt.profiler` set, the
    loop records "capture", "overlay" and "output" spans beside segment()'s."""
    from runtime.pipeline import RuntimeInputError
    from runtime.visualize import visualize

    sinks = list(sinks)
    render = bool(sinks or on_result) if render is None else render
    stats = LoopStats()
    worker = rt.captioning.worker if rt.captioning is not None else None
    base = (worker.completed, worker.errors, worker.timeouts) if worker is not None else (0, 0, 0)
    prof = getattr(rt, "profiler", None)
    span = prof.span if prof is not None else (lambda name: NULL_SPAN)
    stats.started = start = time.perf_counter()
    it = iter(frames)
    try:
        while max_frames is None or stats.frames < max_frames:
            with span("capture"):
                frame = next(it, None)
            if frame is None:
                stats.stopped_by = "end of stream"
                break
            try:
                seg = rt.segment(frame, vocabulary=vocabulary, caption=caption)
            except (FrameError, RuntimeInputError) as exc:
                stats.skipped += 1
                if stats.skipped == 1 or stats.skipped % 100 == 0:
                    log.warning("frame skipped (%d so far): %s", stats.skipped, exc)
                continue
            image = None
            if render:
                with span("overlay"):
                    image = visualize(frame, seg)
            keep = True
            with span("output"):
                for sink in sinks:
                    keep = sink.write(image, stats.frames) and keep
            if on_result is not None and on_result(stats.frames, frame, seg, image) is False:
                keep = False
            stats.frames += 1
            stats.frame_ends.append(time.perf_counter())
            if not keep:
                stats.stopped_by = "quit"
                break
        else:
            stats.stopped_by = "max frames"
    except KeyboardInterrupt:
        stats.stopped_by = "interrupted"
        log.info("interrupted: stopping the loop")
    finally:
        stats.seconds = time.perf_counter() - start
        for sink in sinks:
            sink.close()
        worker = rt.captioning.worker if rt.captioning is not None else None
        if worker is not None:
            stats.captions = worker.completed - base[0]
            stats.caption_errors = worker.errors - base[1]
            stats.caption_timeouts = worker.timeouts - base[2]
    return stats


# -- command line -------------------------------------------------------------------------------------
def add_runtime_args(ap: argparse.ArgumentParser, artifacts_optional: bool = False) -> None:
    """The arguments the camera loop and the profiler share. Every value is checked here, when the command
    line is parsed (a usage error, exit status 2), before anything is opened or loaded."""
    ap.add_argument("artifacts", type=artifact_folder, nargs="?" if artifacts_optional else None,
                    help="artifact folder (export/build_engines.py --out)")
    ap.add_argument("--backend", default=None, choices=["onnxruntime", "torch", "tensorrt"])
    ap.add_argument("--threads", type=bounded(int, 1), default=None, help="intra-op threads per engine (>= 1)")
    ap.add_argument("--vocabulary", type=vocabulary_option, default=None,
                    help="comma-separated class names (default: the captions' objects)")
    ap.add_argument("--caption", type=caption_option, default=None,
                    help="a fixed caption for every frame (no captioner runs)")
    ap.add_argument("--caption-every", type=bounded(int, 0), default=30,
                    help="refresh the caption every N frames, asynchronously; 0: no captioner runs, frames are "
                         "segmented with --vocabulary (or --caption) alone")
    ap.add_argument("--scene-change", type=bounded(float, 0, 2, what="a cosine distance"), default=0.15,
                    help="also refresh on a scene change of this cosine distance, in (0, 2] (0: off)")
    ap.add_argument("--caption-timeout", type=bounded(float, 0, low_open=True), default=30.0,
                    help="drop captions slower than this (s, > 0)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def vocabulary_option(text: str) -> str:
    """argparse type of --vocabulary: the text, once it is known to name at least one class."""
    try:
        parse_vocabulary(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--vocabulary ")) from None
    return text


def caption_option(text: str) -> str:
    """argparse type of --caption: a description with at least one word."""
    if not any(ch.isalpha() for ch in text):
        raise argparse.ArgumentTypeError(f"the caption {text!r} is empty or has no words: describe the frame, "
                                         f"e.g. 'a dog on a couch', or leave --caption out")
    return text


def parse_vocabulary(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--vocabulary {text!r} names no class: pass comma-separated names, e.g. dog,couch")
    return names


# The caption segment() gets with --caption-every 0: it names no objects, so the frame is segmented with the
# vocabulary alone and the build's captioner is never asked (caption=None would caption synchronously).
NO_CAPTION = ""


def start_runtime(args: argparse.Namespace):
    """runtime.load() with the shared arguments, asynchronous captioning started as they say. Returns
    (Runtime, vocabulary, caption): the caption to pass to segment()/run_loop (args.caption, NO_CAPTION with
    --caption-every 0, else None: the captioner's). An impossible combination is a UsageError."""
    import runtime
    from runtime.captioning import CaptionPolicy

    vocabulary = parse_vocabulary(args.vocabulary)
    caption = args.caption
    if caption is None and args.caption_every == 0:
        if vocabulary is None:
            raise UsageError("--caption-every 0 runs no captioner: pass --vocabulary and/or --caption")
        caption = NO_CAPTION
    rt = runtime.load(args.artifacts, backend=args.backend, threads=args.threads)
    try:
        if caption is None:
            if rt.captioner is None:
                if vocabulary is None:
                    raise UsageError(f"{args.artifacts} has no captioner: pass --vocabulary and/or --caption")
                log.warning("this build has no captioner: segmenting with the vocabulary alone")
            else:
                rt.start_captioning(CaptionPolicy(
                    every_frames=args.caption_every, scene_change=args.scene_change or None,
                    first_frame="wait" if vocabulary is None else "vocabulary", timeout_s=args.caption_timeout))
    except BaseException:
        rt.close()
        raise
    return rt, vocabulary, caption


def check_source(source: str, option: str = "--source") -> None:
    """The usage errors of a source argument, found before anything is opened: an empty one, a video file
    that does not exist."""
    try:
        kind, value = parse_source(source)
    except SourceError as exc:
        raise UsageError(f"{option}: {exc}") from None
    if kind == "file" and not Path(value).is_file():
        raise UsageError(f"{option}: video file {value} does not exist (a camera is an index like 0, a stream a "
                         f"URL like rtsp://host/path)")


def video_file(text: str) -> Path:
    """argparse type of --out-video: a writable file name with a suffix VideoSink knows."""
    path = output_file(text)
    if path.suffix.lower() not in VideoSink.FOURCC:
        raise argparse.ArgumentTypeError(f"{path}: use a .avi (MJPG), .mp4 or .mkv file name")
    return path


def main(argv=None) -> int:
    """The command; one `error:` line and status 2 (usage) or 1 (run) on failure (runtime.commands)."""
    return run_command(_main, argv)


def _main(argv) -> int:
    ap = CommandParser(prog="python -m runtime.camera", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(ap, artifacts_optional=True)
    ap.add_argument("--server", default=None, metavar="URL",
                    help="segment on a `python -m runtime.serve` server (http://host:8000 or grpc://host:8001) "
                         "instead of a local build; captions are the server's, kept per --stream-id")
    ap.add_argument("--stream-id", default=None, help="with --server: this stream's name there (default: --source)")
    ap.add_argument("--source", default="0", help="camera index, video file, stream URL or GStreamer pipeline")
    ap.add_argument("--max-frames", type=bounded(int, 1), default=None, help="stop after N frames (>= 1)")
    ap.add_argument("--display", action="store_true",
                    help="show overlays in a window, q/Esc quits (the default when no output is given)")
    ap.add_argument("--headless", action="store_true",
                    help="never open a window; with no --out-video/--out-dir only statistics are printed")
    ap.add_argument("--out-video", type=video_file, default=None, help="write overlays to a video (.avi: MJPG)")
    ap.add_argument("--out-dir", type=output_folder, default=None, help="write overlays as PNGs to this folder")
    ap.add_argument("--fps", type=bounded(float, 0, low_open=True), default=None,
                    help="output video frame rate, > 0 (default: the source's)")
    ap.add_argument("--no-drop", action="store_true", help="process every frame of a live source")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    if args.display and args.headless:
        ap.error("--display and --headless exclude each other")
    if args.caption_every == 0 and args.caption is None and args.vocabulary is None:
        ap.error("--caption-every 0 runs no captioner: pass --vocabulary and/or --caption")
    if (args.server is None) == (args.artifacts is None):
        ap.error("pass an artifact folder or --server URL" + (", not both" if args.server else ""))
    if args.server is not None and (args.backend or args.threads):
        ap.error("--backend and --threads are the server's own options (python -m runtime.serve) with --server")
    if args.stream_id is not None and args.server is None:
        ap.error("--stream-id names a stream on a server: pass --server URL too")
    check_source(args.source)
    display = args.display or not (args.headless or args.out_video or args.out_dir)

    source = FrameSource.open(args.source, latest=False if args.no_drop else None)
    sinks: list[Any] = []
    try:
        with source:
            if display:
                try:
                    sinks.append(DisplaySink())
                except SourceError as exc:  # fixed on the command line: --headless
                    raise UsageError(str(exc)) from exc
            if args.out_video is not None:
                sinks.append(VideoSink(args.out_video, args.fps or source.fps or 30.0))
            if args.out_dir is not None:
                sinks.append(PngSink(args.out_dir))
            if args.server is not None:
                from runtime.client import RemoteRuntime

                rt = RemoteRuntime(args.server, args.stream_id or args.source)
                if not rt.ready():
                    rt.close()
                    raise SourceError(f"no ready server at {args.server} (start one: python -m runtime.serve "
                                      f"ARTIFACTS)")
                vocabulary, caption = parse_vocabulary(args.vocabulary), args.caption
            else:
                rt, vocabulary, caption = start_runtime(args)
            with rt:
                print(f"{rt}: {args.source} -> {', '.join(type(s).__name__ for s in sinks) or 'no output'}")
                stats = run_loop(rt, source, vocabulary, caption, sinks, args.max_frames)
    finally:
        for sink in sinks:  # run_loop closed them already, except where it never ran
            sink.close()
    print(f"stopped: {stats.stopped_by}; {stats.frames} frames in {stats.seconds:.1f} s ({stats.fps():.2f} FPS), "
          f"{stats.skipped} skipped, {source.dropped} dropped by the reader; captions: {stats.captions} "
          f"({stats.captions_per_min:.1f}/min), {stats.caption_errors} failed, {stats.caption_timeouts} timed out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
