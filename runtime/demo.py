"""The main job on the embedded default: segment a few generated frames and write overlay PNGs.

    python -m runtime.demo [ARTIFACTS] [--out DIR] [--frames N] [--backend onnxruntime|torch|tensorrt]

With trained weights (the demo preset ships them) the frames are synthetic validation scenes
(llmformer.data.synthetic): the build's captioner describes each one, the caption's priors guide the segmenter over
the scenes' class names, and each frame's pixel accuracy against the ground truth is printed beside the
caption. A build with random weights segments generated frames with scripted captions instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

import runtime
from runtime.visualize import visualize

SCENES = [
    ("a red ball next to a blue box on a wooden table", ["ball", "box", "table"]),
    ("two green bottles in front of a yellow wall", ["bottle", "wall"]),
    ("a small dog sitting on a gray couch in a living room", ["dog", "couch", "room"]),
    ("a white car parked beside a tree on the street", ["car", "tree", "street"]),
]


def demo_frame(index: int, size: tuple[int, int] = (360, 480)) -> np.ndarray:
    """A synthetic RGB frame: a textured background and a few filled shapes, deterministic per index."""
    rng = np.random.default_rng(index)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(40, 200, 3)
    frame = (base + 30 * np.sin(xx / rng.uniform(8, 30))[..., None] * np.cos(yy / rng.uniform(8, 30))[..., None])
    frame = np.clip(frame, 0, 255).astype(np.uint8)
    for _ in range(3):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(w // 5, 4 * w // 5)), int(rng.integers(h // 5, 4 * h // 5))
        r = int(rng.integers(min(h, w) // 10, min(h, w) // 4))
        if rng.random() < 0.5:
            cv2.circle(frame, (cx, cy), r, color, -1)
        else:
            cv2.rectangle(frame, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    return frame


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="?", default="artifacts/demo", type=Path)
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    stages = ["preprocess", "vision", "caption", "parse", "text", "segment", "postprocess", "total"]
    with runtime.load(args.artifacts, backend=args.backend, threads=args.threads) as rt:
        random = [n for n, c in rt.manifest["components"].items() if c.get("random_weights")]
        trained = not random and rt.captioner is not None
        print(f"{rt}: {args.frames} {'synthetic validation scenes' if trained else 'generated frames'} -> {args.out}/")
        print(f"{'frame':<7}" + "".join(f"{s:>12}" for s in stages) + ("   pixel acc  caption" if trained else
                                                                      "   classes found") + "  (ms per stage)")
        for i in range(args.frames):
            if trained:
                from llmformer.data.synthetic import make_scene

                scene = make_scene("val", i)
                frame = scene.image
                seg = rt.segment(frame, vocabulary=scene.classes)      # caption=None: the captioner describes it
                accuracy = float((seg.labels == scene.labels).mean() * 100)
                tail = f"   {accuracy:8.1f}%  {seg.caption!r}"
            else:
                caption, vocabulary = SCENES[i % len(SCENES)]
                frame = demo_frame(i)
                seg = rt.segment(frame, vocabulary=vocabulary, caption=caption)
                tail = f"   {[seg.classes[c] for c in np.unique(seg.labels[seg.labels >= 0])]}"
            path = args.out / f"frame_{i:03d}.png"
            cv2.imwrite(str(path), cv2.cvtColor(visualize(frame, seg), cv2.COLOR_RGB2BGR))
            print(f"{i:<7}" + "".join(f"{seg.timings.get(s, 0.0):12.1f}" for s in stages) + tail)
        if random:
            print(f"note: {', '.join(random)} have random weights, so the masks are not meaningful yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
