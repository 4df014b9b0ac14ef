"""Postprocessing (`runtime.frames.semantic_map`: Mask2Former semantic inference in numpy/OpenCV) before and
after the chunked resize of issue 16, in one run, on this machine's CPU.

    python benchmarks/bench_postprocess.py [--repeats 15] [--vocab 20 128 129 256] [--json out.json]

Inputs are the segmenter's outputs at the presets' real shapes, random: demo Q=16 queries with 64 x 64 masks
(frame_size 256 at mask stride 4), edge Q=50 with 96 x 96 (384 / 4); frames 360 x 480 and 480 x 640 (H x W);
vocabularies of 20 (a small user list), 128 (OpenCV 5's channel limit), 129 and 256 (the build's maximum).

Three implementations of the same function, timed interleaved (one call of each per round) so load on the
shared cores hits them alike:
- before: the implementation as it was (copied below): one cv2.resize of up to 512 channels, which OpenCV 5
  refuses above 128 (`m->dims <= 2`); on OpenCV 4.x it runs;
- after: runtime.frames.semantic_map: resize in chunks of <= 128 channels, cv2.transpose, exact reductions
  merged across chunks;
- queries first: the alternative the issue names: resize the Q sigmoid masks to the frame, then the class
  product at full size (the same maths, other rounding; Q <= 128 channels).

Also per case: whether after's labels and scores are bitwise equal to before's (where before runs), the share
of pixels on which queries-first's labels agree with after's, and the peak of numpy/OpenCV allocations per
call (tracemalloc, in a separate untimed call). A figure, not a test: nothing here passes or fails on time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import machine, pct  # noqa: E402
from llmformer.presets import get_preset  # noqa: E402
from runtime.frames import _softmax, semantic_map  # noqa: E402

FRAMES = ((360, 480), (480, 640))          # (H, W)
VOCABULARIES = (20, 128, 129, 256)


def semantic_map_before(mask_logits: np.ndarray, class_logits: np.ndarray,
                        size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """runtime.frames.semantic_map as it was before issue 16 (commit ea26061), verbatim."""
    probs = _softmax(class_logits.astype(np.float32), -1)[:, :-1]                 # (Q, V)
    sig = 1.0 / (1.0 + np.exp(-np.clip(mask_logits.astype(np.float32), -60.0, 60.0)))   # (Q, h, w)
    Q, h, w = sig.shape
    scores = (probs.T @ sig.reshape(Q, h * w)).reshape(-1, h, w)                  # (V, h, w)
    V = scores.shape[0]
    H, W = size
    hwc = scores.transpose(1, 2, 0)
    chunks = [cv2.resize(np.ascontiguousarray(hwc[..., i:i + 512]), (W, H), interpolation=cv2.INTER_LINEAR)
              .reshape(H, W, -1) for i in range(0, V, 512)]
    up = np.ascontiguousarray(np.concatenate(chunks, -1).transpose(2, 0, 1))     # (V, H, W)
    labels = up.argmax(0).astype(np.int32)
    share = up.max(0) / np.maximum(up.sum(0), 1e-12)
    counts = np.bincount(labels.ravel(), minlength=V)
    sums = np.bincount(labels.ravel(), weights=share.ravel(), minlength=V)
    per_class = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    return labels, per_class


def semantic_map_queries_first(mask_logits: np.ndarray, class_logits: np.ndarray,
                               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The alternative: resize the Q per-query masks, then the class product per pixel (Q <= 128 here)."""
    probs = _softmax(class_logits.astype(np.float32), -1)[:, :-1]                 # (Q, V)
    sig = 1.0 / (1.0 + np.exp(-np.clip(mask_logits.astype(np.float32), -60.0, 60.0)))   # (Q, h, w)
    Q, V = probs.shape
    H, W = size
    up = cv2.resize(np.ascontiguousarray(sig.transpose(1, 2, 0)), (W, H), interpolation=cv2.INTER_LINEAR)
    scores = up.reshape(H * W, Q) @ probs                                        # (H*W, V)
    labels = scores.argmax(-1).astype(np.int32)
    rows = cv2.transpose(scores)                                                 # (V, H*W)
    share = rows.max(0) / np.maximum(rows.sum(0), 1e-12)
    counts = np.bincount(labels, minlength=V)
    sums = np.bincount(labels, weights=share, minlength=V)
    per_class = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)
    return labels.reshape(H, W), per_class


IMPLEMENTATIONS = {"before": semantic_map_before, "after": semantic_map, "queries_first": semantic_map_queries_first}


def peak_mb(fn, *args) -> float:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def bench_case(masks: np.ndarray, classes: np.ndarray, size: tuple[int, int], repeats: int) -> dict:
    args = (masks, classes, size)
    out, errors = {}, {}
    for name, fn in IMPLEMENTATIONS.items():      # warm-up, the results compared, and the allocation peak
        try:
            out[name] = fn(*args)
        except cv2.error as exc:
            errors[name] = str(exc).strip().split("error: ", 1)[-1]
    times = {name: [] for name in out}
    for _ in range(repeats):
        for name in out:
            t = time.perf_counter()
            IMPLEMENTATIONS[name](*args)
            times[name].append((time.perf_counter() - t) * 1e3)
    row = {name: {"ms_median": statistics.median(v), "ms_p90": pct(v, 90),
                  "peak_mb": peak_mb(IMPLEMENTATIONS[name], *args)} for name, v in times.items()}
    row["errors"] = errors
    if "before" in out:
        (la, sa), (lb, sb) = out["after"], out["before"]
        row["after_bitwise_equal_before"] = bool(np.array_equal(la, lb) and np.array_equal(sa, sb))
        row["speedup"] = row["before"]["ms_median"] / row["after"]["ms_median"]
    row["queries_first_label_agreement"] = float((out["queries_first"][0] == out["after"][0]).mean())
    return row


def fmt(row: dict, name: str) -> str:
    return f"{row[name]['ms_median']:.1f}" if name in row else "fails"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--vocab", type=int, nargs="+", default=list(VOCABULARIES))
    ap.add_argument("--presets", nargs="+", default=["demo", "edge"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    command = "python benchmarks/bench_postprocess.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {"machine": machine(), "opencv": cv2.__version__, "numpy": np.__version__, "command": command,
              "cases": []}
    print(report["machine"])
    print(f"OpenCV {cv2.__version__}, numpy {np.__version__}, {args.repeats} interleaved rounds, median ms per call")
    print(f"{'preset':<6} {'Q':>3} {'masks':>7} {'frame':>9} {'V':>4} {'before':>8} {'after':>8} {'q-first':>8} "
          f"{'speed-up':>8} {'equal':>6} {'q-first agree':>13} {'peak MB before/after/q-first':>29}")
    rng = np.random.default_rng(0)
    for preset in args.presets:
        seg = get_preset(preset).segmenter
        Q, m = seg.queries, seg.frame_size // seg.mask_stride
        for size in FRAMES:
            for V in args.vocab:
                # Trained models' logits: masks reach +-100 (mostly far from 0), classes a few units apart.
                masks = (rng.standard_normal((Q, m, m)) * 8).astype(np.float32)
                classes = (rng.standard_normal((Q, V + 1)) * 3).astype(np.float32)
                row = bench_case(masks, classes, size, args.repeats)
                row.update(preset=preset, queries=Q, masks=[m, m], frame=list(size), vocabulary=V)
                report["cases"].append(row)
                peaks = "/".join(f"{row[n]['peak_mb']:.0f}" if n in row else "-" for n in IMPLEMENTATIONS)
                speed = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
                equal = {True: "yes", False: "NO"}.get(row.get("after_bitwise_equal_before"), "-")
                print(f"{preset:<6} {Q:>3} {m:>3}x{m:<3} {size[0]:>4}x{size[1]:<4} {V:>4} {fmt(row, 'before'):>8} "
                      f"{fmt(row, 'after'):>8} {fmt(row, 'queries_first'):>8} {speed:>8} {equal:>6} "
                      f"{row['queries_first_label_agreement'] * 100:>12.2f}% {peaks:>29}", flush=True)
                for name, err in row["errors"].items():
                    print(f"       {name} fails: {err}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
