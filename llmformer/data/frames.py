"""Generated frames with scripted captions: inputs for builds without trained weights (random models
have nothing to recognise, so any frame will do), FP16 measurement and calibration when no images are
given, the profiler's generated video, and tests. Deterministic per index; numpy + OpenCV only.

For scenes with ground truth (labels, objects, captions) use `llmformer.data.synthetic`.
"""
from __future__ import annotations

import cv2
import numpy as np

# (caption, the classes it names): what the demo and calibration pass with generated frames.
DEMO_SCENES = [
    ("a red ball next to a blue box on a wooden table", ["ball", "box", "table"]),
    ("two green bottles in front of a yellow wall", ["bottle", "wall"]),
    ("a small dog sitting on a gray couch in a living room", ["dog", "couch", "room"]),
    ("a white car parked beside a tree on the street", ["car", "tree", "street"]),
]


def demo_frame(index: int, size: tuple[int, int] = (360, 480)) -> np.ndarray:
    """A synthetic RGB frame (H, W, 3) uint8: a textured background and a few filled shapes."""
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
