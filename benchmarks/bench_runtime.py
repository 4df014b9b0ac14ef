"""`segment()` on ONNX Runtime vs PyTorch: same artifacts, same frames, same machine, one run.

    python benchmarks/bench_runtime.py [--presets demo edge] [--frames 20] [--threads 2]

Builds artifacts/<preset> first where it is missing. Prints p50/p95 per stage and the PyTorch/ORT ratio
(above 1 means ONNX Runtime is faster). Each backend runs in a fresh process, twice, in the order
ORT, torch, ORT, torch: in one process ONNX Runtime's pinned thread pools slow torch's OpenMP threads by
an order of magnitude, and alternating spreads any change in machine load over both backends.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import runtime  # noqa: E402
from benchmarks.common import machine, pct  # noqa: E402
from llmformer.data.frames import DEMO_SCENES, demo_frame  # noqa: E402

STAGES = ["preprocess", "vision", "parse", "text", "segment", "postprocess", "total"]


def run(folder: Path, backend: str, frames: int, threads: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    with runtime.load(folder, backend=backend, threads=threads) as rt:
        for i in range(frames + 2):
            caption, vocab = DEMO_SCENES[i % len(DEMO_SCENES)]
            seg = rt.segment(demo_frame(i, (480, 640)), vocabulary=vocab, caption=caption)
            if i >= 2:  # the first frames warm caches and allocators
                for s in STAGES:
                    times[s].append(seg.timings.get(s, 0.0))
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["demo", "edge"])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(f"machine: {machine()}; fp32, {args.threads} threads, 640x480 frames, {args.frames} frames each")
    for preset in args.presets:
        folder = ROOT / "artifacts" / preset
        if not (folder / "manifest.json").is_file():
            from export.build_engines import build, parse_args

            build(parse_args(["--preset", preset, "--out", str(folder)]))
        results = {b: {s: [] for s in STAGES} for b in ("onnxruntime", "torch")}
        for _ in range(2):
            for b in results:
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    times = pool.submit(run, folder, b, args.frames // 2, args.threads).result()
                for s in STAGES:
                    results[b][s] += times[s]
        print(f"\npreset {preset}: ms per stage, p50 / p95")
        print(f"{'stage':<12}{'onnxruntime':>20}{'torch':>20}{'torch/ort (p50)':>18}")
        for s in STAGES:
            o, t = results["onnxruntime"][s], results["torch"][s]
            ratio = pct(t, 50) / pct(o, 50) if pct(o, 50) > 0 else float("nan")
            print(f"{s:<12}{pct(o, 50):10.1f} /{pct(o, 95):7.1f}{pct(t, 50):12.1f} /{pct(t, 95):7.1f}{ratio:15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
