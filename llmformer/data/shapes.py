"""The shapes of synthetic scenes as pixel masks: one outline per object name (the 14 training shapes and
the 3 held-out ones), rasterized at a given size.

Its own module because a shape's mask is the ground truth of everything after it: an object's label
pixels are exactly the pixels of its mask that no later object covers (no anti-aliasing, so no mixed
pixels), and relations are read from these masks. Which shapes a scene contains and where they go is
`llmformer.data.layout`'s business, not this one's.

numpy + OpenCV only.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

__all__ = ["CONTAINERS", "Drawn", "rasterize"]

# Shapes a small object can sit inside (their outline is round or blocky enough around the center).
CONTAINERS = {"circle", "square", "hexagon", "pentagon", "octagon", "heart", "ring", "cloud"}
# Upright shapes keep their identity only when not rotated (a rotated square is a diamond).
_NO_ROTATION = {"square", "rectangle", "diamond", "triangle", "arrow", "cross", "parallelogram", "semicircle", "cloud"}
_SHIFT = 3                           # cv2 fixed-point bits: sub-pixel vertex positions, no anti-aliasing


def _ngon(n: int, r: float = 1.0, phase: float = -math.pi / 2, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1) / 16.0


def _shape(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """A shape as polygons in unit coordinates (y down), each filled with 1 (ink) or 0 (a hole), in order."""
    if name == "circle":
        return [(_ngon(64), 1)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 1)]
    if name == "rectangle":
        r = np.array([[-1, -0.5], [1, -0.5], [1, 0.5], [-1, 0.5]], float)
        return [(r[:, ::-1] if rng.random() < 0.3 else r, 1)]
    if name == "triangle":
        return [(np.array([[0, -1], [1, 0.75], [-1, 0.75]], float), 1)]
    if name == "star":
        return [(_star(), 1)]
    if name == "heart":
        return [(_heart(), 1)]
    if name == "ring":
        return [(_ngon(64), 1), (_ngon(64, 0.55), 0)]
    if name == "diamond":
        return [(np.array([[0, -1], [0.65, 0], [0, 1], [-0.65, 0]], float), 1)]
    if name == "hexagon":
        return [(_ngon(6, phase=0.0), 1)]
    if name == "pentagon":
        return [(_ngon(5), 1)]
    if name == "octagon":
        return [(_ngon(8, phase=math.pi / 8), 1)]
    if name == "crescent":
        return [(_ngon(64), 1), (_ngon(64, 0.85, cx=0.45, cy=-0.1), 0)]
    if name == "arrow":
        a = np.array([[-1, -0.22], [0.15, -0.22], [0.15, -0.6], [1, 0], [0.15, 0.6], [0.15, 0.22], [-1, 0.22]])
        k = int(rng.integers(4))      # pointing right, down, left or up
        rot = np.array([[0.0, 1.0], [-1.0, 0.0]])    # a quarter turn
        return [(a @ np.linalg.matrix_power(rot, k), 1)]
    if name == "cross":
        w = 0.32
        return [(np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1], [-w, 1], [-w, w],
                           [-1, w], [-1, -w], [-w, -w]], float), 1)]
    if name == "cloud":
        return [(_ngon(40, 0.42, cx=-0.55, cy=0.1), 1), (_ngon(40, 0.55, cx=0.0, cy=-0.15), 1),
                (_ngon(40, 0.42, cx=0.55, cy=0.1), 1),
                (np.array([[-0.55, 0.1], [0.55, 0.1], [0.55, 0.52], [-0.55, 0.52]], float), 1)]
    if name == "parallelogram":
        p = np.array([[-1, -0.55], [0.4, -0.55], [1, 0.55], [-0.4, 0.55]], float)
        return [(p * np.array([-1.0, 1.0]) if rng.random() < 0.5 else p, 1)]
    if name == "semicircle":
        t = np.linspace(math.pi, 2 * math.pi, 33)
        return [(np.stack([np.cos(t), 0.5 + np.sin(t)], 1), 1)]
    raise KeyError(name)


@dataclasses.dataclass
class Drawn:
    mask: np.ndarray                 # (h, w) bool: the shape's ink
    hull: np.ndarray                 # (h, w) bool: the shape with its holes filled ("inside a ring")


def rasterize(name: str, side: float, rng: np.random.Generator) -> Drawn:
    """The shape scaled so its longest side is `side` pixels, on a tight local canvas."""
    polys = _shape(name, rng)
    if name not in _NO_ROTATION:
        a = rng.uniform(-0.25, 0.25)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        polys = [(p @ rot.T, v) for p, v in polys]
    pts = np.concatenate([p for p, _ in polys])
    lo, hi = pts.min(0), pts.max(0)
    scale = (side - 1) / float((hi - lo).max())
    w, h = (np.ceil((hi - lo) * scale).astype(int) + 1)
    mask = np.zeros((h, w), np.uint8)
    hull = np.zeros((h, w), np.uint8)
    for p, v in polys:
        q = np.round((p - lo) * scale * (1 << _SHIFT)).astype(np.int32)
        cv2.fillPoly(mask, [q], int(v), lineType=cv2.LINE_8, shift=_SHIFT)
        if v:
            cv2.fillPoly(hull, [q], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return Drawn(mask.astype(bool), hull.astype(bool))
