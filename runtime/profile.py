"""Profile the camera loop: per-stage p50/p95/p99, FPS, captions/min, cache hit rate, memory; JSON and trace.

    python -m runtime.profile ARTIFACTS [--frames N] [--video FILE | --camera N] [--json OUT] [--trace OUT]
        [--vocabulary a,b] [--caption TEXT] [--caption-every 30] [--warmup 5] [--size 360x480] [--no-overlay]

Without --video/--camera the frames are made from the build's sample frames (`samples/` in the artifact
folder, resized to --size): a scene cut every 30 frames, the picture panning 2 px per frame in between, and
the samples' class names as the vocabulary unless --vocabulary is given. Stages: capture, preprocess, vision, caption_wait, parse, text, segment,
postprocess, total (one segment() call), overlay, output on the loop's thread; caption, caption_prefill,
caption_decode on the caption worker's. Bytes moved between host and device (engines.base.IOBytes): per frame
over all engines (`engine_io_bytes_per_frame`, captioning included) and per generated caption token
(`caption_io_bytes_per_token`: the decode loop only, the KV cache staying on the device). The Chrome trace
(--trace) shows both threads side by side: open it in https://ui.perfetto.dev. On a GPU with the `nvtx` package,
`nsys profile python -m runtime.profile ...` shows the same stages as NVTX ranges.

Failures: one `error: ...` line on stderr, exit status 2 for a wrong command line (checked before anything
runs: option ranges, a missing artifact folder or video, a --json/--trace path that cannot be written) and 1
for a failed run; --debug shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from runtime.camera import FrameSource, SourceError, add_runtime_args, check_source, run_loop, start_runtime
from runtime.commands import CommandParser, bounded, output_file, run_command
from runtime.profiling import (Profiler, device_memory, engine_io, host_memory, io_per_frame, machine, open_fds,
                               os_threads, stats_dict)

LOOP_STAGES = ["capture", "preprocess", "vision", "caption_wait", "caption", "parse", "text", "segment",
               "postprocess", "total", "overlay", "output"]
WORKER_STAGES = ["caption", "caption_prefill", "caption_decode"]
SCENE_FRAMES = 30   # generated frames per scene


def sample_frames(artifacts: Path, size: tuple[int, int]) -> tuple[list[np.ndarray], list[str]]:
    """The build's sample frames resized to `size` (H, W), and the union of their vocabularies."""
    import cv2

    from engines.contract import read_manifest
    from runtime.demo import read_sample

    manifest = read_manifest(artifacts, verify="off")  # runtime.load() verifies the hashes
    frames = [cv2.resize(read_sample(Path(artifacts), s)[0], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
              for s in manifest.samples]
    if not frames:
        raise SourceError(f"{artifacts} has no sample frames to generate a video from: pass --video/--camera, or "
                          f"rebuild it with `python export/build_engines.py --out {artifacts}`")
    return frames, list(dict.fromkeys(n for s in manifest.samples for n in s.vocabulary))


def generated_frames(scenes: list[np.ndarray], count: int | None = None) -> Iterator[np.ndarray]:
    """Frames as a video: a new scene every SCENE_FRAMES frames, panning 2 px per frame."""
    i = 0
    while count is None or i < count:
        scene = scenes[(i // SCENE_FRAMES) % len(scenes)]
        yield np.roll(scene, 2 * (i % SCENE_FRAMES), axis=1)
        i += 1


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HxW, e.g. 360x480, got {text!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"--size must be at least 8x8, got {text!r}")
    return h, w


def profile(rt, frames: Iterator[np.ndarray], count: int, vocabulary: list[str] | None, caption: str | None,
            warmup: int = 5, overlay: bool = True, profiler: Profiler | None = None) -> dict[str, Any]:
    """Run the camera loop for `warmup` frames unmeasured, then `count` frames with a profiler; return the
    report (what --json writes)."""
    prof = profiler or Profiler()
    if warmup:
        run_loop(rt, frames, vocabulary, caption, max_frames=warmup, render=overlay)
        if rt.captioning is not None:  # the first caption's cost belongs to the warm-up
            rt.captioning.worker.wait_idle(60.0)
    hits0, misses0 = rt.text_cache.hits, rt.text_cache.misses
    engines = getattr(rt, "engines", {})
    prof.clear()
    io0 = engine_io(engines)
    rt.profiler = prof
    try:
        stats = run_loop(rt, frames, vocabulary, caption, max_frames=count, render=overlay)
    finally:
        rt.profiler = None
    io = io_per_frame(io0, engine_io(engines), stats.frames)
    hits, misses = rt.text_cache.hits - hits0, rt.text_cache.misses - misses0
    summary = prof.summary()
    decode = prof.spans("caption_decode")
    tokens = sum(s.args["tokens"] for s in decode if s.args)
    decode_s = sum(s.duration for s in decode)
    io_tokens = sum(s.args["tokens"] for s in decode if s.args and "io_bytes" in s.args)
    io_decode = sum(s.args["io_bytes"] for s in decode if s.args and "io_bytes" in s.args)
    device = device_memory()
    return {
        "runtime": repr(rt), "backend": rt.backend, "preset": rt.manifest.preset_name,
        "python": platform.python_version(), "platform": platform.platform(), "machine": machine(),
        "frames": stats.frames, "skipped": stats.skipped, "seconds": stats.seconds, "stopped_by": stats.stopped_by,
        "fps": stats.fps(), "fps_steady": stats.fps(min(5, max(stats.frames - 2, 0))),
        "captions": stats.captions, "captions_per_min": stats.captions_per_min,
        "caption_errors": stats.caption_errors, "caption_timeouts": stats.caption_timeouts,
        "caption_decode_tokens_per_s": tokens / decode_s if decode_s > 0 else None,
        "caption_io_bytes_per_token": io_decode / io_tokens if io_tokens else None,
        "engine_io_bytes_per_frame": io["total"] if stats.frames else None,
        "engine_io_bytes_per_frame_by_engine": io["by_engine"],
        "text_cache_hit_rate": hits / (hits + misses) if hits + misses else None,
        "host_memory_mib": host_memory(), "device_memory": device if device is not None else "n/a",
        "threads": os_threads(), "open_fds": open_fds(), "nvtx": prof.nvtx, "spans_dropped": prof.dropped,
        "stages": stats_dict(summary),
    }


def format_report(report: dict[str, Any]) -> str:
    def ms_row(name: str, s: dict[str, Any]) -> str:
        return (f"{name:<18}{s['count']:>7}{s['mean_ms']:9.2f}{s['p50_ms']:9.2f}{s['p95_ms']:9.2f}"
                f"{s['p99_ms']:9.2f}{s['max_ms']:9.2f}  {', '.join(s['threads'])}")

    stages = report["stages"]
    order = [n for n in LOOP_STAGES + WORKER_STAGES if n in stages] + [n for n in stages if n not in
                                                                       LOOP_STAGES + WORKER_STAGES]
    lines = [f"{report['runtime']}: {report['frames']} frames ({report['stopped_by']}), ms per stage",
             f"{'stage':<18}{'count':>7}{'mean':>9}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  thread"]
    lines += [ms_row(n, stages[n]) for n in dict.fromkeys(order)]
    mem, dev = report["host_memory_mib"], report["device_memory"]

    def num(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines += [
        f"FPS {report['fps']:.2f} (steady {report['fps_steady']:.2f}); {report['skipped']} frames skipped",
        f"captions: {report['captions']} ({report['captions_per_min']:.1f}/min), {report['caption_errors']} failed, "
        f"{report['caption_timeouts']} timed out; decode {num(report['caption_decode_tokens_per_s'], '.1f')} tokens/s",
        f"text cache hit rate: {num(report['text_cache_hit_rate'], '.3f')}",
        f"host<->device: {_bytes(report['engine_io_bytes_per_frame'])} per frame (all engines), "
        f"{_bytes(report['caption_io_bytes_per_token'])} per caption token",
        f"host memory: RSS {num(mem['rss_mib'], '.1f')} MiB, peak {num(mem['peak_rss_mib'], '.1f')} MiB; "
        f"device memory: {dev if isinstance(dev, str) else json.dumps(dev)}",
        f"threads {report['threads']}, open fds {num(report['open_fds'], 'd')}, "
        f"NVTX {'on' if report['nvtx'] else 'off'}",
    ]
    return "\n".join(lines)


def _bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    if n < 1024:
        return f"{n:.0f} B"
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MiB"


def main(argv=None) -> int:
    """The command; one `error:` line and status 2 (usage) or 1 (run) on failure (runtime.commands)."""
    return run_command(_main, argv)


def _main(argv) -> int:
    ap = CommandParser(prog="python -m runtime.profile", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(ap)
    ap.add_argument("--frames", type=bounded(int, 1), default=100, help="frames measured (after --warmup), >= 1")
    ap.add_argument("--warmup", type=bounded(int, 0), default=5, help="frames run before measuring, >= 0")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--video", default=None, help="a video file (every frame in order)")
    src.add_argument("--camera", type=bounded(int, 0), default=None, help="a camera index (newest frame each time)")
    ap.add_argument("--size", type=_size, default=(360, 480), help="HxW of generated frames")
    ap.add_argument("--no-overlay", action="store_true", help="do not draw overlays")
    ap.add_argument("--json", type=output_file, default=None, help="write the report here")
    ap.add_argument("--trace", type=output_file, default=None, help="write a Chrome trace here (Perfetto)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    if args.json is not None and args.trace is not None and args.json.resolve() == args.trace.resolve():
        ap.error(f"--json and --trace name the same file {args.json}")
    if args.video is not None:
        check_source(args.video, "--video")

    source = None
    if args.video is not None or args.camera is not None:
        source = FrameSource.open(args.video if args.video is not None else args.camera)
        frames: Iterator[np.ndarray] = iter(source)
    else:
        scenes, names = sample_frames(args.artifacts, args.size)
        if args.vocabulary is None and args.caption is None and names:
            args.vocabulary = ",".join(names)
            print(f"generated frames; vocabulary: {args.vocabulary}")
        frames = generated_frames(scenes)
    prof = Profiler()
    try:
        rt, vocabulary, caption = start_runtime(args)
        with rt:
            report = profile(rt, frames, args.frames, vocabulary, caption, args.warmup,
                             overlay=not args.no_overlay, profiler=prof)
    finally:
        if source is not None:
            source.close()
    print(format_report(report))
    if "segment" not in report["stages"]:
        print("note: no frame reached the segmenter: the captions named no objects (a random-weight captioner's "
              "do not); pass --vocabulary")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"report: {args.json}")
    if args.trace is not None:
        prof.write_chrome_trace(args.trace)
        print(f"trace: {args.trace} (open in https://ui.perfetto.dev)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
