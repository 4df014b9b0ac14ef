"""Camera-loop throughput with asynchronous captioning vs segmentation alone (issue 8).

    python benchmarks/bench_throughput.py [--artifacts DIR] [--frames 90] [--rounds 6] [--caption-every 30]

One Runtime, the same pre-generated frames (runtime.profile.generated_frames over llmformer.data.frames.demo_frame: 360x480, a scene cut every 30
frames) and the same vocabulary in every condition; each condition is the camera loop (runtime.camera.
run_loop, overlays drawn) run for --warmup frames, then --frames measured frames (steady-state FPS), in
short blocks:

  alone       the caption function returns a fixed caption at once and the policy never refreshes it:
              segmentation with priors, no captioner work
  async-cpu   every --caption-every frames, a caption that costs >= 5 frames of segmentation on the CPU:
              the build's real (tiny) captioner run k times per caption, k chosen from the measured costs
              (one tiny caption is shorter than a frame), then the same fixed caption returned
  async-wait  the same caption cost spent waiting (threading.Event.wait), as a GPU or remote LLM would
              leave the CPU free
  busy-cpu    as async-cpu with a caption every frame: the worker never idles (worst case)

Each round runs alone, X, alone, Y, alone, Z, alone (X, Y, Z rotating from round to round); a condition's
ratio is its FPS over the mean of the two "alone" blocks beside it, and the median over rounds is
reported. Short interleaved blocks keep a shared machine's changing load (other jobs) from landing on one
condition.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from runtime.camera import run_loop  # noqa: E402
from runtime.captioning import CaptionPolicy  # noqa: E402
from llmformer.data.frames import DEMO_SCENES, demo_frame  # noqa: E402
from runtime.profile import generated_frames  # noqa: E402

CAPTION, _ = DEMO_SCENES[0]
VOCABULARY = list(dict.fromkeys(n for _, names in DEMO_SCENES for n in names))


def ensure_artifacts(folder: Path) -> Path:
    if not (folder / "manifest.json").is_file():
        from export.build_engines import build, parse_args

        build(parse_args(["--preset", "demo", "--out", str(folder)]))
    return folder


def loop_fps(rt, frames: list[np.ndarray], warmup: int, policy: CaptionPolicy, caption_fn) -> dict:
    rt.start_captioning(policy, caption_fn=caption_fn)
    try:
        run_loop(rt, frames[:warmup], VOCABULARY, render=True)
        rt.captioning.worker.wait_idle(120)   # the first caption belongs to the warm-up
        stats = run_loop(rt, frames[warmup:], VOCABULARY, render=True)
    finally:
        rt.stop_captioning(timeout=120)
    return {"fps": stats.fps(), "frames": stats.frames, "seconds": stats.seconds, "captions": stats.captions,
            "captions_per_min": stats.captions_per_min}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "demo")
    ap.add_argument("--frames", type=int, default=90, help="measured frames per block (condition and round)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--caption-every", type=int, default=30)
    ap.add_argument("--min-caption-frames", type=float, default=5.0, help="a caption costs at least this many frames")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    print(f"machine: {machine()}")
    rt = runtime.load(ensure_artifacts(args.artifacts), threads=args.threads)
    if rt.captioner is None:
        raise SystemExit(f"{args.artifacts} has no captioner: build the demo preset with one")
    frames = list(generated_frames([demo_frame(i, (360, 480)) for i in range(8)], args.warmup + args.frames))
    fixed = CaptionPolicy(every_frames=None, every_seconds=None, scene_change=None)

    # Costs, each alone: a frame of the loop, and one caption of the real captioner.
    base = loop_fps(rt, frames, args.warmup, fixed, lambda features: CAPTION)
    frame_s = 1.0 / base["fps"]
    features = rt.encode_image(frames[0])
    one = []
    for _ in range(7):
        t0 = time.perf_counter()
        rt.caption(features)
        one.append(time.perf_counter() - t0)
    one_caption_s = float(np.median(one))
    k = max(1, math.ceil(args.min_caption_frames * frame_s / one_caption_s))
    caption_s = k * one_caption_s
    print(f"rt: {rt}; ORT {args.threads} threads per engine; {len(VOCABULARY)} classes; 360x480 frames")
    print(f"one frame of the loop alone: {1e3 * frame_s:.1f} ms; one tiny caption: {1e3 * one_caption_s:.1f} ms "
          f"-> a caption here = {k} tiny captions = {1e3 * caption_s:.0f} ms = {caption_s / frame_s:.1f} frames")

    def cpu_caption(features):
        for _ in range(k):
            rt.caption(features)
        return CAPTION

    def waiting_caption(features):
        threading.Event().wait(caption_s)
        return CAPTION

    refresh = CaptionPolicy(every_frames=args.caption_every, scene_change=None, timeout_s=600)
    busy = CaptionPolicy(every_frames=1, scene_change=None, timeout_s=600)
    conditions = {"alone": (fixed, lambda features: CAPTION), "async-cpu": (refresh, cpu_caption),
                  "async-wait": (refresh, waiting_caption), "busy-cpu": (busy, cpu_caption)}
    rounds: list[dict[str, dict]] = []
    others = [n for n in conditions if n != "alone"]
    for r in range(args.rounds):
        # alone, X, alone, Y, alone, Z, alone: each X is compared with the "alone" blocks on both sides.
        order = others[r % len(others):] + others[:r % len(others)]
        alone = [loop_fps(rt, frames, args.warmup, *conditions["alone"])]
        results = {}
        for name in order:
            results[name] = loop_fps(rt, frames, args.warmup, *conditions[name])
            alone.append(loop_fps(rt, frames, args.warmup, *conditions["alone"]))
            results[name]["ratio"] = results[name]["fps"] / ((alone[-2]["fps"] + alone[-1]["fps"]) / 2)
        results["alone"] = {**alone[0], "fps": float(np.mean([a["fps"] for a in alone])), "ratio": 1.0,
                            "blocks": [a["fps"] for a in alone]}
        rounds.append(results)
        print(f"round {r + 1}: alone " + "/".join(f"{a['fps']:.2f}" for a in alone) + " FPS; "
              + ", ".join(f"{n} {results[n]['fps']:.2f} FPS ({results[n]['ratio']:.2f})" for n in others))
    rt.close()

    print(f"\nsteady-state FPS over {args.frames}-frame blocks, median of {args.rounds} rounds; ratio to the "
          f"'alone' blocks on either side (median, min-max); caption = {caption_s / frame_s:.1f} frames, every "
          f"{args.caption_every} frames ('busy-cpu': every frame)")
    print(f"{'condition':<12}{'FPS':>8}{'ratio':>8}{'min-max':>13}{'captions/min':>14}")
    summary = {}
    for name in conditions:
        fps = float(np.median([r[name]["fps"] for r in rounds]))
        ratios = [r[name]["ratio"] for r in rounds]
        ratio = float(np.median(ratios))
        cpm = float(np.median([r[name]["captions_per_min"] for r in rounds]))
        summary[name] = {"fps": fps, "ratio": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "captions_per_min": cpm}
        print(f"{name:<12}{fps:8.2f}{ratio:8.2f}{min(ratios):7.2f}-{max(ratios):.2f}{cpm:14.1f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(), "frame_ms": 1e3 * frame_s,
                                         "one_caption_ms": 1e3 * one_caption_s, "k": k,
                                         "caption_frames": caption_s / frame_s, "summary": summary,
                                         "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
