"""Runtime.segment_batch of B frames against a loop of segment() over the same frames, in one run, interleaved.

    python benchmarks/bench_batch.py ARTIFACTS [--batches 4 8] [--rounds 10] [--size 480x640] [--threads N]
                                     [--baseline DIR] [--json out.json]

The frames are the build's samples (manifest `samples`), each with its own caption and vocabulary, so a batch mixes
vocabularies and priors as a server's streams do; `--size` resizes them (default: as shipped). Each round times, for
each B, the loop and the batch on the same B frames one after the other, so load on shared cores hits both alike.
`--baseline DIR`: also time the loop on a build without a batch axis (`build_engines.py --max-batch 1`), to see what
the batch axis costs segment(). Reported: median ms per call and per frame, and loop / batch (> 1: batching is
faster). Figures, not tests: nothing here passes or fails on time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.common import machine  # noqa: E402


def sample_inputs(rt, count: int, size: tuple[int, int] | None):
    """`count` (frame, vocabulary, caption) from the build's samples, cycled; frames resized to `size` (H, W)."""
    samples = rt.manifest.samples
    if not samples:
        raise SystemExit(f"{rt.folder} has no samples to run on")
    out = []
    for i in range(count):
        s = samples[i % len(samples)]
        frame = cv2.cvtColor(cv2.imread(str(rt.folder / s.frame.file)), cv2.COLOR_BGR2RGB)
        if size is not None:
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        out.append((frame, list(s.vocabulary), s.caption))
    return out


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--batches", nargs="+", type=int, default=[4, 8])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--size", default=None, help="HxW to resize the sample frames to (default: as shipped)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    ap.add_argument("--baseline", type=Path, default=None, help="a build of the same model with --max-batch 1")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    size = tuple(int(x) for x in args.size.split("x")) if args.size else None

    rt = runtime.load(args.artifacts, backend="onnxruntime", threads=args.threads, providers=["CPUExecutionProvider"])
    rt.batch_graphs = True   # what is measured: on the CPU segment_batch loops unless told (Runtime.batch_graphs)
    base = None if args.baseline is None else runtime.load(args.baseline, backend="onnxruntime", threads=args.threads,
                                                            providers=["CPUExecutionProvider"])
    if max(args.batches) > rt.max_batch:
        print(f"note: {args.artifacts} takes {rt.max_batch} frames per call; larger batches are split")
    inputs = sample_inputs(rt, max(args.batches), size)
    calls = {}
    for b in args.batches:
        frames, vocabularies, captions = (list(x) for x in zip(*inputs[:b]))
        calls[f"loop {b}"] = lambda f=frames, v=vocabularies, c=captions: [rt.segment(*a) for a in zip(f, v, c)]
        calls[f"batch {b}"] = lambda f=frames, v=vocabularies, c=captions: rt.segment_batch(f, v, c)
        if base is not None:
            calls[f"loop {b}, no batch axis"] = (lambda f=frames, v=vocabularies, c=captions:
                                                 [base.segment(*a) for a in zip(f, v, c)])
    for fn in calls.values():      # first calls allocate (ONNX Runtime plans per shape) and load the parser
        fn()
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            times[name].append(timed(fn))

    info = machine()
    frame_desc = f"{size[0]}x{size[1]}" if size else "the samples' own size"
    print(f"{info}; {rt.manifest.preset_name} build, "
          f"{rt.manifest.precision}, ONNX Runtime CPU; frames {frame_desc}, {args.rounds} rounds, medians")
    result = {"machine": info, "artifacts": str(args.artifacts), "precision": rt.manifest.precision,
              "size": frame_desc, "rounds": args.rounds, "max_batch": rt.max_batch, "rows": []}
    print(f"{'call':<24}{'ms/call':>10}{'ms/frame':>10}{'frames/s':>10}{'loop/batch':>12}")
    for name, values in times.items():
        b = int(name.split()[1].rstrip(","))
        med = statistics.median(values)
        ratio = statistics.median(times[f"loop {b}"]) / med if name.startswith("batch") else None
        print(f"{name:<24}{med:>10.1f}{med / b:>10.1f}{1000 * b / med:>10.1f}"
              f"{'' if ratio is None else f'{ratio:.2f}x':>12}")
        result["rows"].append({"call": name, "frames": b, "ms_per_call": round(med, 2),
                               "ms_per_frame": round(med / b, 2), "loop_over_batch": ratio})
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    rt.close()
    if base is not None:
        base.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
