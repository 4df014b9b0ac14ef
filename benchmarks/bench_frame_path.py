"""segment() per stage with the host frame path (numpy/OpenCV) and the device frame path (the frame graphs), in one
run, interleaved, on one artifact folder; and the host <-> device bytes each moves per frame.

    python benchmarks/bench_frame_path.py ARTIFACTS [--rounds 10] [--vocab 10] [--sizes 480x640 720x1280]
                                          [--paths host device auto] [--json out.json]

Each path is its own Runtime on the same folder (runtime.load(frame_path=...)); one call of each per round, so
load on shared cores hits them alike. Reported: median ms per stage, bytes per frame (engines' IOCounters), and the
share of pixels whose label differs from the host path's. Figures, not tests: nothing here passes or fails on time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from engines.base import total_io  # noqa: E402
from llmformer.data.frames import demo_frame  # noqa: E402

NAMES = ["dog", "couch", "ball", "box", "table", "wall", "floor", "sky", "tree", "grass", "person", "chair",
         "window", "door", "lamp", "rug", "plant", "cup", "book", "shelf"]
STAGES = ("preprocess", "vision", "segment", "postprocess", "total")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=10, choices=range(1, len(NAMES) + 1), metavar="1..20")
    ap.add_argument("--sizes", nargs="+", default=["480x640", "720x1280"])
    ap.add_argument("--paths", nargs="+", default=["host", "device"], choices=("host", "device", "auto"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    vocabulary, caption = NAMES[:args.vocab], "a dog on a couch near a table"
    rts = {p: runtime.load(args.artifacts, frame_path=p, threads=args.threads) for p in args.paths}
    report = {"machine": machine(), "artifacts": str(args.artifacts), "vocab": args.vocab, "rounds": args.rounds,
              "cases": []}
    for text in args.sizes:
        h, w = (int(v) for v in text.split("x"))
        frame = demo_frame(3, (h, w))
        times = {p: {s: [] for s in STAGES} for p in rts}
        moved, labels = {}, {}
        for p, rt in rts.items():          # warm: first call at this size, embeddings uploaded
            rt.segment(frame, vocabulary=vocabulary, caption=caption)
        for _ in range(args.rounds):
            for p, rt in rts.items():
                before = total_io(rt.engines.values())
                seg = rt.segment(frame, vocabulary=vocabulary, caption=caption)
                moved[p] = (total_io(rt.engines.values()) - before).as_dict()
                labels[p] = seg.labels
                for s in STAGES:
                    times[p][s].append(seg.timings[s])
        for p in rts:
            case = {"size": [h, w], "path": p, "ms": {s: statistics.median(v) for s, v in times[p].items()},
                    "bytes_per_frame": moved[p],
                    "labels_differ_from_host": float((labels[p] != labels["host"]).mean()) if "host" in labels else None}
            report["cases"].append(case)
            print(f"{h}x{w} {p:<7} " + " ".join(f"{s} {case['ms'][s]:6.1f}" for s in STAGES) +
                  f" | h2d {moved[p]['host_to_device']:>8} d2h {moved[p]['device_to_host']:>8}"
                  + (f" | labels differ {case['labels_differ_from_host']:.4%}" if case["labels_differ_from_host"]
                     is not None else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for rt in rts.values():
        rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
