"""Soak: the camera loop for 10,000 frames with captions refreshing; memory, threads and file descriptors.

    python benchmarks/bench_soak.py [--artifacts DIR] [--frames 10000] [--warmup 500] [--every 1000] [--json OUT]

The demo preset on ONNX Runtime, runtime.camera.run_loop with overlays drawn, generated 360x480 frames
(runtime.profile.generated_frames over llmformer.data.frames.demo_frame: a scene cut every 30 frames), no vocabulary: the classes are each
caption's objects, so the vocabulary changes with every caption. Captions refresh asynchronously every
--caption-every frames and on scene changes, through the build's real (tiny, random) captioner; its text is
noise, so the caption function returns the demo scenes' captions in turn after running it, as a trained
captioner would name objects. Resident memory (RSS), OS threads (ONNX Runtime's pools included), Python
threads and open file descriptors are sampled after --warmup frames and every --every frames.
Passes when RSS grows < 2% from the warm-up sample to the end and threads and descriptors do not grow.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime  # noqa: E402

import runtime  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from runtime.camera import run_loop  # noqa: E402
from runtime.captioning import CaptionPolicy  # noqa: E402
from llmformer.data.frames import DEMO_SCENES, demo_frame  # noqa: E402
from runtime.profile import generated_frames  # noqa: E402
from runtime.profiling import host_memory, open_fds, os_threads  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "demo")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--every", type=int, default=1000, help="sample every N frames")
    ap.add_argument("--caption-every", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.artifacts / "manifest.json").is_file():
        from export.build_engines import build, parse_args

        build(parse_args(["--preset", "demo", "--out", str(args.artifacts)]))

    print(f"machine: {machine()}; onnxruntime {onnxruntime.__version__}", flush=True)
    samples: list[dict] = []
    captions = {"n": 0}
    with runtime.load(args.artifacts, threads=args.threads) as rt:
        def caption_fn(features):
            rt.caption(features)                     # the real decode loop: its cost and its allocations
            captions["n"] += 1
            return DEMO_SCENES[captions["n"] % len(DEMO_SCENES)][0]

        rt.start_captioning(CaptionPolicy(every_frames=args.caption_every, scene_change=0.15), caption_fn=caption_fn)
        window = {"t": time.perf_counter()}

        def sample(i, frame, seg, image):
            n = i + 1
            if n != args.warmup and (n < args.warmup or (n - args.warmup) % args.every) and n != args.frames:
                return
            now = time.perf_counter()
            worker = rt.captioning.worker
            row = {"frame": n, "rss_mib": host_memory()["rss_mib"], "os_threads": os_threads(),
                   "py_threads": threading.active_count(), "fds": open_fds(), "captions": worker.completed,
                   "caption_errors": worker.errors, "classes": len(seg.classes),
                   "fps": (n - samples[-1]["frame"]) / (now - window["t"]) if samples else None}
            window["t"] = now
            samples.append(row)
            print(f"frame {n:>6}: RSS {row['rss_mib']:8.1f} MiB, threads {row['os_threads']} OS / "
                  f"{row['py_threads']} Python, fds {row['fds']}, captions {row['captions']}"
                  + (f", {row['fps']:.2f} FPS" if row["fps"] else ""), flush=True)

        print(f"{rt}: {args.frames} frames, captions every {args.caption_every} frames and on scene changes",
              flush=True)
        stats = run_loop(rt, generated_frames([demo_frame(i, (360, 480)) for i in range(8)]), None, max_frames=args.frames, render=True,
                         on_result=sample)
        peak = host_memory()["peak_rss_mib"]
    warm, end = samples[0], samples[-1]
    after = samples[1:]
    growth = 100.0 * (end["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"]
    worst = max(100.0 * (s["rss_mib"] - warm["rss_mib"]) / warm["rss_mib"] for s in after) if after else 0.0
    checks = {"rss_growth_below_2pct": growth < 2.0,
              "no_thread_growth": all(s["os_threads"] <= warm["os_threads"] for s in after),
              "no_fd_growth": all(s["fds"] is not None and s["fds"] <= warm["fds"] for s in after)}
    print(f"\n{stats.frames} frames in {stats.seconds / 60:.1f} min ({stats.fps():.2f} FPS), stopped by "
          f"{stats.stopped_by}; {stats.captions} captions ({stats.captions_per_min:.1f}/min), "
          f"{stats.caption_errors} failed, {stats.skipped} frames skipped")
    print(f"RSS after {warm['frame']} frames {warm['rss_mib']:.1f} MiB -> end {end['rss_mib']:.1f} MiB: "
          f"{growth:+.2f}% (largest {worst:+.2f}%), peak {peak:.1f} MiB; OS threads {warm['os_threads']} -> "
          f"{end['os_threads']}; fds {warm['fds']} -> {end['fds']}")
    for name, ok in checks.items():
        print(f"{'OK  ' if ok else 'FAIL'} {name}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "onnxruntime": onnxruntime.__version__,
                                         "frames": stats.frames, "seconds": stats.seconds, "fps": stats.fps(),
                                         "captions": stats.captions, "rss_growth_pct": growth,
                                         "largest_growth_pct": worst, "peak_rss_mib": peak, "checks": checks,
                                         "samples": samples}, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
