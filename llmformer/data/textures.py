"""The pixel colors of synthetic scenes: the six procedural "stuff" backgrounds (grass, sand, water,
brick wall, wooden floor, carpet) and the paint of an object (a jittered flat color under soft light,
with a plain, striped, dotted or checkered pattern in a second color).

Its own module because colors never decide a label: every function here fills pixels whose class is
already fixed by a mask from `llmformer.data.shapes`, so textures can change without touching the label
maps, the layout or the captions. Everything draws from the scene's rng, so frames stay deterministic.

numpy + OpenCV only. Several spots are written for speed (channel loops, flat gathers, a noise bank);
their docstrings say what the plain version costs.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["fine_noise", "jitter", "object_patch", "texture"]

_NOISE_BANK: dict[tuple[int, int], np.ndarray] = {}


def fine_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 standard normal noise: a random window of a fixed bank (drawing 65k normals per
    frame would cost more than the rest of the texture), so still deterministic in the scene's rng."""
    bank = _NOISE_BANK.get((h, w))
    if bank is None:
        bank = _NOISE_BANK.setdefault((h, w), np.random.default_rng(20240917).standard_normal((2 * h, 2 * w), dtype=np.float32))
    y0, x0 = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
    return bank[y0:y0 + h, x0:x0 + w]


def jitter(rgb, rng: np.random.Generator, amount: int = 15) -> np.ndarray:
    """(3,) float32: rgb moved by up to `amount` per channel, so no two frames share an exact color."""
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Value noise in about [-1, 1]: a coarse random grid upsampled (cubic to 32 px, then linear: a
    direct cubic upsampling to the frame costs ten times more)."""
    g = rng.uniform(-1, 1, cells).astype(np.float32)
    g = cv2.resize(g, (32, 32), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR)


def _compose(tone: np.ndarray, base: np.ndarray, add: np.ndarray | None = None,
             overlay: np.ndarray | None = None, overlay_rgb: np.ndarray | None = None) -> np.ndarray:
    """uint8 (h, w, 3) image = base color x tone (+ add), with `overlay` pixels in overlay_rgb x tone.
    Channel by channel: broadcasting a (h, w, 1) x (3,) product is several times slower."""
    chans = []
    for c in range(3):
        v = tone * base[c]
        if overlay is not None:
            v = np.where(overlay, tone * overlay_rgb[c], v)
        if add is not None:
            v += add
        np.clip(v, 0, 255, out=v)
        chans.append(v.astype(np.uint8))
    return cv2.merge(chans)


def _gather(table: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """table[row[:, None], col] through a flat index (numpy's 2-D fancy indexing is 4x slower)."""
    return np.take(table.ravel(), row[:, None] * table.shape[1] + col)


def _frac(v: np.ndarray) -> np.ndarray:
    """v mod 1 (numpy's float % is several times slower than floor)."""
    return v - np.floor(v)


# -- objects -------------------------------------------------------------------------------------------
def _pattern_mask(kind: str, h: int, w: int, period: float, rng: np.random.Generator) -> np.ndarray | None:
    """Where the second color goes inside an object's box (None for plain)."""
    if kind == "plain":
        return None
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    if kind == "striped":
        a = rng.choice([0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4])
        u = x * (math.cos(a) / period) + (y * (math.sin(a) / period) + rng.uniform(0, 1))
        return _frac(u) < 0.4
    if kind == "checkered":
        cell = period * 0.6
        return (np.floor(x / cell).astype(np.int32) + np.floor(y / cell).astype(np.int32)) % 2 == 1
    # dotted: a grid of dots, every other row shifted by half a period
    p = period
    odd = np.floor(y / p) % 2
    dx = _frac(x / p + odd / 2) - 0.5
    dy = _frac(y / p) - 0.5
    return dx * dx + dy * dy <= 0.28 ** 2


def object_patch(rgb: np.ndarray, ink: tuple[int, int, int], pattern: str, noise: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 paint for an object's box, (h, w) = noise.shape: flat `rgb` under a soft light
    gradient and sensor noise (`noise`: the frame's fine noise under the box, so an object shares the
    background's grain), the pattern in `ink` (jittered here). The caller copies it through the mask."""
    dh, dw = noise.shape
    gy, gx = rng.uniform(-0.08, 0.08, 2)
    shade = (1.0 + gx * np.linspace(-1, 1, dw, dtype=np.float32)[None, :]
             + gy * np.linspace(-1, 1, dh, dtype=np.float32)[:, None]) + 0.02 * noise
    pm = _pattern_mask(pattern, dh, dw, max(5.0, 0.22 * max(dh, dw)), rng)
    return _compose(shade, rgb, overlay=pm, overlay_rgb=jitter(ink, rng, 10))


# -- backgrounds ---------------------------------------------------------------------------------------
def texture(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) uint8 RGB: the background `name` (one of BACKGROUND_NAMES), its features (blades, ripples,
    bricks, planks) sized for a 256 px frame and scaled with the frame side."""
    s = min(h, w) / 256.0                                    # texture scale follows the frame size
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    fine = fine_noise(rng, h, w)
    if name == "grass":
        base = jitter((70, 135, 50), rng)
        blades = cv2.resize(rng.uniform(-1, 1, (max(2, int(h / (7 * s))), w)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_LINEAR)  # vertical streaks
        return _compose(1.0 + 0.22 * blades + 0.12 * _smooth_noise(rng, h, w, (5, 5)) + 0.05 * fine, base)
    if name == "sand":
        base = jitter((205, 185, 140), rng)
        a, lam = rng.uniform(0, math.pi), rng.uniform(5, 9) * s
        ripple = np.sin((x * (math.cos(a) / lam)) + y * (math.sin(a) / lam) + 3 * _smooth_noise(rng, h, w, (4, 4)))
        return _compose(1.0 + 0.04 * ripple + 0.07 * fine, base)
    if name == "water":
        base = jitter((35, 95, 170), rng, 12)
        lam, mu = rng.uniform(10, 18) * s, rng.uniform(30, 60) * s
        sway = (0.5 * math.pi) * np.sin(x * (2 * math.pi / mu) + rng.uniform(0, 2 * math.pi))
        wave = np.sin(y * (2 * math.pi / lam) + sway + 2 * _smooth_noise(rng, h, w, (4, 4)))
        crest = np.clip(wave - 0.85, 0, None) * 400           # crests catch the light
        return _compose(1.0 + 0.12 * wave + 0.03 * fine, base, add=crest)
    if name == "wall":
        bh = rng.uniform(13, 20) * s
        bw = bh * rng.uniform(2.0, 2.6)
        row = (np.arange(h) / bh).astype(np.int64)
        odd = (row % 2 == 1)[:, None]
        xs = np.arange(w) + rng.uniform(0, bw)
        xs_odd = xs + bw / 2
        col = np.where(odd, (xs_odd / bw).astype(np.int64)[None], (xs / bw).astype(np.int64)[None])
        tones = rng.uniform(-0.14, 0.14, (row.max() + 1, int(col.max()) + 1)).astype(np.float32)
        m = 2 * s + 0.5
        mortar = ((np.arange(h) % bh) < m)[:, None] | np.where(odd, (xs_odd % bw < m)[None], (xs % bw < m)[None])
        return _compose(1.0 + _gather(tones, row, col) + 0.04 * fine, jitter((160, 62, 45), rng, 12),
                        overlay=mortar, overlay_rgb=jitter((185, 180, 170), rng, 8) / (1.0 + tones.mean()))
    if name == "floor":
        ph = rng.uniform(20, 32) * s
        row = (np.arange(h) / ph).astype(np.int64)
        length = rng.uniform(90, 160) * s
        offsets = rng.uniform(0, length, row.max() + 1).astype(np.float32)
        q = (x + offsets[row][:, None]) / length
        segf = np.floor(q)
        seg = segf.astype(np.int64)
        tones = rng.uniform(-0.12, 0.12, (row.max() + 1, int(seg.max()) + 1)).astype(np.float32)
        grain = np.sin(y * (2 * math.pi / (rng.uniform(3, 5) * s)) + 5 * _smooth_noise(rng, h, w, (3, 6)))
        t = 1.0 + 0.5 * s
        seam = ((np.arange(h) % ph) < t)[:, None] | ((q - segf) < t / length)
        tone = 1.0 + _gather(tones, row, seg) + 0.06 * grain + 0.03 * fine
        np.putmask(tone, seam, tone * 0.55)
        return _compose(tone, jitter((150, 100, 55), rng, 12))
    if name == "carpet":
        base = jitter((95, 80, 120), rng, 12)
        fibers = cv2.GaussianBlur(fine, (3, 3), 0.8)
        p = rng.uniform(24, 40) * s
        motif = ((np.floor((x + y) / p) + np.floor((x - y) / p)).astype(np.int32) & 1).astype(np.float32)
        return _compose(1.0 + 0.16 * fibers + 0.06 * motif + 0.05 * _smooth_noise(rng, h, w, (4, 4)), base)
    raise KeyError(name)
