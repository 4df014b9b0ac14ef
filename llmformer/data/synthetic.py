"""Synthetic scenes, generated on the fly: shapes on textured backgrounds, label maps and captions.

    scene = make_scene("train", 7)           # deterministic in (split, index, seed)
    scene.image        # (256, 256, 3) uint8 RGB
    scene.labels       # (256, 256) uint8 index into scene.classes (every pixel has a class)
    scene.caption      # "On the sand, a small dotted purple hexagon sits inside a large white heart."
    scene.canonical_caption   # "A small dotted purple hexagon inside a large white heart, on sand."

Each frame has 1-4 objects (mostly 2-3; sometimes two or three of one kind, which captions count: "two
yellow stars") named from a vocabulary of shapes, each with a color, a size ("small": 10-18% of the frame
side, "large": 25-36%) and a pattern (plain, striped, dotted, checkered, in a second color), on one of
six procedural "stuff" textures that are classes too (grass, sand, water, brick wall -> "wall", wooden
floor -> "floor", carpet). Objects are drawn in z-order without anti-aliasing, so the label map is exactly
the pixels that carry each object's colors, occlusion included; every object keeps >= 40% of its area
visible, so what the caption says is there is there.

Relations come from the geometry of the final layout (`relations_from_masks`), never from the plan that
placed the objects: "inside" (drawn over a larger object and within its outline), "on" (its bottom edge
touches the other's top edge), else "left of" / "right of" / "above" / "below" / "next to" from box
centers and gaps. The caption is written from that scene graph: `caption` with templates drawn at random
(several phrasings per relation, counts, plurals, background first, last or as its own sentence),
`canonical_caption` with one fixed phrasing (objects left to right, attributes always in the order size,
pattern, color; the first two objects and the background in one sentence, each later object in a
sentence of its own), the target a captioner can be trained to reproduce exactly. Both parse back to
the scene's object names with runtime.priors.parse (object F1 >= 0.99 over 300 scenes per split).

Splits: "train" and "val" draw the same vocabulary (OBJECT_NAMES) from disjoint random streams;
"heldout" scenes contain at least one of HELDOUT_NAMES, shapes never seen in training, named in the
caption with their attributes ("a small red octagon"), to exercise the open-vocabulary path.

numpy + OpenCV only (no torch): the torch-free runtime demo generates its frames with it.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

__all__ = ["OBJECT_NAMES", "HELDOUT_NAMES", "BACKGROUND_NAMES", "SPLITS", "IGNORE", "COLORS", "SIZES", "PATTERNS",
           "PREDICATES", "SceneObject", "Scene", "split_classes", "make_scene", "SyntheticScenes",
           "relations_from_masks", "plural"]

# Every name is a noun that spaCy's small English model tags as a noun in the caption templates below
# (checked with runtime.priors.parse: "plus" and "ellipse" fail, "trapezoid" and "kite" fail in ~5% of
# captions ("a pink trapezoid" is read as two adjectives), so none of them is used).
OBJECT_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "ring", "diamond", "hexagon",
                                 "pentagon", "crescent", "arrow", "cross", "rectangle", "cloud")
HELDOUT_NAMES: tuple[str, ...] = ("octagon", "parallelogram", "semicircle")
BACKGROUND_NAMES: tuple[str, ...] = ("grass", "sand", "water", "wall", "floor", "carpet")
SPLITS = ("train", "val", "heldout")
IGNORE = 255

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 80, 215), "yellow": (240, 215, 40),
    "purple": (125, 50, 165), "orange": (245, 135, 25), "white": (240, 240, 240), "black": (25, 25, 25),
    "pink": (245, 135, 185), "gray": (125, 125, 125)}
SIZES = {"small": (0.10, 0.18), "large": (0.25, 0.36)}        # longest side of the object / frame side
PATTERNS = ("plain", "striped", "dotted", "checkered")
PREDICATES = ("left of", "right of", "above", "below", "on", "inside", "next to")

# Colors an object never has on a background (it would vanish into the texture).
_FORBIDDEN = {"grass": {"green"}, "sand": {"yellow", "white"}, "water": {"blue"}, "wall": {"red", "orange"},
              "floor": {"orange"}, "carpet": {"purple", "gray"}}
# Pattern ink: dark on light colors, light on dark ones.
_LIGHT = {"yellow", "white", "pink", "orange"}
# Shapes a small object can sit inside (their outline is round or blocky enough around the center).
_CONTAINERS = {"circle", "square", "hexagon", "pentagon", "octagon", "heart", "ring", "cloud"}
_SPLIT_STREAM = {"train": 0, "val": 1, "heldout": 2}
_MIN_VISIBLE = 0.4


def split_classes(split: str) -> list[str]:
    """Class names of a split in label order: train/val = OBJECT_NAMES + BACKGROUND_NAMES; heldout =
    OBJECT_NAMES + HELDOUT_NAMES + BACKGROUND_NAMES."""
    _check_split(split)
    held = HELDOUT_NAMES if split == "heldout" else ()
    return [*OBJECT_NAMES, *held, *BACKGROUND_NAMES]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


def plural(name: str) -> str:
    return name + "es" if name.endswith(("s", "x", "sh", "ch")) else name + "s"


# -- results -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SceneObject:
    name: str
    color: str                       # a COLORS key (the drawn RGB is jittered around it: see `rgb`)
    size: str                        # "small" | "large"
    pattern: str                     # "plain" | "striped" | "dotted" | "checkered"
    box: tuple[int, int, int, int]   # (x0, y0, x1, y1) of the whole shape in pixels, x1/y1 exclusive
    rgb: tuple[int, int, int] = (0, 0, 0)
    visible: float = 1.0             # fraction of the shape's pixels not occluded by later objects


@dataclasses.dataclass
class Scene:
    image: np.ndarray                # (H, W, 3) uint8 RGB
    labels: np.ndarray               # (H, W) uint8 index into classes; no IGNORE pixels (drawn without anti-aliasing)
    classes: list[str]               # split_classes(split)
    objects: list[SceneObject]       # in z-order: later ones are drawn over earlier ones
    relations: list[tuple[int, str, int]]   # (subject, predicate, object) indices into objects, from geometry
    background: str
    caption: str                     # varied templates
    canonical_caption: str           # one fixed phrasing of the same scene graph
    split: str
    seed: int
    index: int = 0
    instances: np.ndarray | None = None      # (H, W) uint8: 0 background, k + 1 where objects[k] is visible
    caption_triples: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    canonical_triples: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    # (subject name, predicate, object name) the caption / canonical caption states, predicate as in
    # PREDICATES ("contains" is stated as the inverse "inside"); the background is not among them.

    @property
    def names(self) -> list[str]:
        """Object names with repeats, then the background: what the caption mentions."""
        return [o.name for o in self.objects] + [self.background]


# -- shapes --------------------------------------------------------------------------------------------
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


# Upright shapes keep their identity only when not rotated (a rotated square is a diamond).
_NO_ROTATION = {"square", "rectangle", "diamond", "triangle", "arrow", "cross", "parallelogram", "semicircle", "cloud"}
_SHIFT = 3                           # cv2 fixed-point bits: sub-pixel vertex positions, no anti-aliasing


@dataclasses.dataclass
class _Drawn:
    mask: np.ndarray                 # (h, w) bool: the shape's ink
    hull: np.ndarray                 # (h, w) bool: the shape with its holes filled ("inside a ring")


def _rasterize(name: str, side: float, rng: np.random.Generator) -> _Drawn:
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
    return _Drawn(mask.astype(bool), hull.astype(bool))


def _frac(v: np.ndarray) -> np.ndarray:
    """v mod 1 (numpy's float % is several times slower than floor)."""
    return v - np.floor(v)


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


# -- backgrounds (procedural textures) -----------------------------------------------------------------
_NOISE_BANK: dict[tuple[int, int], np.ndarray] = {}


def _fine_noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 standard normal noise: a random window of a fixed bank (drawing 65k normals per
    frame would cost more than the rest of the texture), so still deterministic in the scene's rng."""
    bank = _NOISE_BANK.get((h, w))
    if bank is None:
        bank = _NOISE_BANK.setdefault((h, w), np.random.default_rng(20240917).standard_normal((2 * h, 2 * w), dtype=np.float32))
    y0, x0 = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
    return bank[y0:y0 + h, x0:x0 + w]


def _jitter(rgb, rng: np.random.Generator, amount: int = 15) -> np.ndarray:
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


def _texture(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    s = min(h, w) / 256.0                                    # texture scale follows the frame size
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    fine = _fine_noise(rng, h, w)
    if name == "grass":
        base = _jitter((70, 135, 50), rng)
        blades = cv2.resize(rng.uniform(-1, 1, (max(2, int(h / (7 * s))), w)).astype(np.float32), (w, h),
                            interpolation=cv2.INTER_LINEAR)  # vertical streaks
        return _compose(1.0 + 0.22 * blades + 0.12 * _smooth_noise(rng, h, w, (5, 5)) + 0.05 * fine, base)
    if name == "sand":
        base = _jitter((205, 185, 140), rng)
        a, lam = rng.uniform(0, math.pi), rng.uniform(5, 9) * s
        ripple = np.sin((x * (math.cos(a) / lam)) + y * (math.sin(a) / lam) + 3 * _smooth_noise(rng, h, w, (4, 4)))
        return _compose(1.0 + 0.04 * ripple + 0.07 * fine, base)
    if name == "water":
        base = _jitter((35, 95, 170), rng, 12)
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
        return _compose(1.0 + _gather(tones, row, col) + 0.04 * fine, _jitter((160, 62, 45), rng, 12),
                        overlay=mortar, overlay_rgb=_jitter((185, 180, 170), rng, 8) / (1.0 + tones.mean()))
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
        return _compose(tone, _jitter((150, 100, 55), rng, 12))
    if name == "carpet":
        base = _jitter((95, 80, 120), rng, 12)
        fibers = cv2.GaussianBlur(fine, (3, 3), 0.8)
        p = rng.uniform(24, 40) * s
        motif = ((np.floor((x + y) / p) + np.floor((x - y) / p)).astype(np.int32) & 1).astype(np.float32)
        return _compose(1.0 + 0.16 * fibers + 0.06 * motif + 0.05 * _smooth_noise(rng, h, w, (4, 4)), base)
    raise KeyError(name)


# -- relations from geometry ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Geom:
    """One object's full (unoccluded) shape: a local mask placed at (x0, y0) in the frame."""
    mask: np.ndarray                 # (h, w) bool
    hull: np.ndarray                 # (h, w) bool, holes filled
    x0: int
    y0: int

    def __post_init__(self):
        rows, cols = self.mask.any(1), self.mask.any(0)
        r, c = np.flatnonzero(rows), np.flatnonzero(cols)
        self.box = (self.x0 + int(c[0]), self.y0 + int(r[0]), self.x0 + int(c[-1]) + 1, self.y0 + int(r[-1]) + 1)
        self.center = ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)
        self.area = int(self.mask.sum())
        h = self.mask.shape[0]
        # Per frame column of the box: the highest and lowest ink row (-1 where the column is empty).
        m = self.mask[:, c[0]:c[-1] + 1]
        col = cols[c[0]:c[-1] + 1]
        self.top = np.where(col, self.y0 + m.argmax(0), -1)
        self.bottom = np.where(col, self.y0 + h - 1 - m[::-1].argmax(0), -1)


def _overlap_count(a: _Geom, b: _Geom) -> int:
    """Pixels of a's mask inside b's hull."""
    x0, y0 = max(a.x0, b.x0), max(a.y0, b.y0)
    x1 = min(a.x0 + a.mask.shape[1], b.x0 + b.hull.shape[1])
    y1 = min(a.y0 + a.mask.shape[0], b.y0 + b.hull.shape[0])
    if x1 <= x0 or y1 <= y0:
        return 0
    ma = a.mask[y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
    hb = b.hull[y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
    return int(np.count_nonzero(ma & hb))


def relations_from_masks(masks: list[np.ndarray], hulls: list[np.ndarray] | None = None,
                         frame: int | None = None) -> list[tuple[int, str, int]]:
    """Relations between objects given their full (unoccluded) masks, (H, W) bool each, in z-order.

    For each ordered pair (i, j), at most one predicate, the first that holds of:
      "inside": i is drawn after j, i's box lies within j's box, >= 95% of i lies within j's outline
                (`hulls`: the masks with holes filled; default the masks) and i is under half j's area;
      "on":     i's lowest pixels touch j's highest ones (a gap of -3..2 rows over >= 25% of i's
                columns) and i's center is above j's;
      else from the box centers, with a margin of 6% of the frame side, the larger of |dx| and |dy|
      decides: "next to" when side by side (box gap <= 8% of the frame, vertical overlap >= half the
      shorter box), else "left of" / "right of"; "above" / "below".
    """
    hulls = masks if hulls is None else hulls
    geoms = []
    for m, hl in zip(masks, hulls):
        m, hl = np.asarray(m, bool), np.asarray(hl, bool)
        ys, xs = np.nonzero(hl | m)
        if len(ys) == 0:
            raise ValueError("an object mask is empty")
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        geoms.append(_Geom(m[y0:y1, x0:x1], hl[y0:y1, x0:x1], int(x0), int(y0)))
    return _relations(geoms, frame or (min(masks[0].shape) if masks else 0))


def _relations(geoms: list[_Geom], frame: int) -> list[tuple[int, str, int]]:
    margin = 0.06 * frame
    out = []
    for i, gi in enumerate(geoms):
        bi = gi.box
        for j, gj in enumerate(geoms):
            if i == j:
                continue
            bj = gj.box
            if (i > j and bi[0] >= bj[0] and bi[1] >= bj[1] and bi[2] <= bj[2] and bi[3] <= bj[3]
                    and gi.area < 0.5 * gj.area and _overlap_count(gi, gj) >= 0.95 * gi.area):
                out.append((i, "inside", j))
                continue
            c0, c1 = max(bi[0], bj[0]), min(bi[2], bj[2])           # shared frame columns
            if c1 > c0 and gi.center[1] < gj.center[1]:
                bottom = gi.bottom[c0 - bi[0]:c1 - bi[0]]
                top = gj.top[c0 - bj[0]:c1 - bj[0]]
                shared = (bottom >= 0) & (top >= 0)
                if shared.sum() >= 0.25 * (bi[2] - bi[0]):
                    gap = int((top[shared] - bottom[shared]).min()) - 1   # 0: j's ink starts on the next row
                    if -3 <= gap <= 2:
                        out.append((i, "on", j))
                        continue
            dx, dy = gi.center[0] - gj.center[0], gi.center[1] - gj.center[1]
            if abs(dx) >= abs(dy):
                if abs(dx) < margin:
                    continue
                gap_x = max(bj[0] - bi[2], bi[0] - bj[2])
                overlap_y = min(bi[3], bj[3]) - max(bi[1], bj[1])
                if gap_x <= 0.08 * frame and overlap_y >= 0.5 * min(bi[3] - bi[1], bj[3] - bj[1]):
                    out.append((i, "next to", j))
                else:
                    out.append((i, "left of" if dx < 0 else "right of", j))
            elif abs(dy) >= margin:
                out.append((i, "above" if dy < 0 else "below", j))
    return out


# -- layout --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Group:
    name: str
    count: int
    color: str
    size: str
    pattern: str
    members: list[int] = dataclasses.field(default_factory=list)


def _plan_groups(split: str, rng: np.random.Generator, allowed_colors: list[str]) -> list[_Group]:
    n_objects = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.40, 0.33, 0.12]))
    counts = [1] * n_objects
    if n_objects >= 2 and rng.random() < 0.3:          # two (or three) of a kind
        k = 3 if n_objects >= 3 and rng.random() < 0.25 else 2
        counts = [k] + [1] * (n_objects - k)
    pool = list(OBJECT_NAMES)
    if split == "heldout":
        first = [str(rng.choice(HELDOUT_NAMES))]
        rest = [n for n in OBJECT_NAMES + HELDOUT_NAMES if n != first[0]]
        names = first + [str(n) for n in rng.choice(rest, len(counts) - 1, replace=False)]
        rng.shuffle(names)
    else:
        names = [str(n) for n in rng.choice(pool, len(counts), replace=False)]
    colors = [str(c) for c in rng.choice(allowed_colors, len(counts), replace=False)]
    groups = []
    for name, count, color in zip(names, counts, colors):
        size = "large" if rng.random() < 0.45 else "small"
        if count == 3:
            size = "small"
        pattern = str(rng.choice(PATTERNS, p=[0.4, 0.2, 0.2, 0.2]))
        groups.append(_Group(name, count, color, size, pattern))
    return groups


@dataclasses.dataclass
class _Placed:
    group: int
    drawn: _Drawn
    x0: int
    y0: int


def _fits(h: int, w: int, d: _Drawn, x0: int, y0: int) -> bool:
    return x0 >= 0 and y0 >= 0 and x0 + d.mask.shape[1] <= w and y0 + d.mask.shape[0] <= h


def _occlusion_ok(inst: np.ndarray, visible: list[int], areas: list[int], d: _Drawn, x0: int, y0: int) -> bool:
    """Drawing d at (x0, y0) leaves every earlier object >= _MIN_VISIBLE visible."""
    region = inst[y0:y0 + d.mask.shape[0], x0:x0 + d.mask.shape[1]][d.mask]
    if not region.any():
        return True
    hidden = np.bincount(region, minlength=len(visible) + 1)[1:]
    return all(v - c >= _MIN_VISIBLE * a for v, c, a in zip(visible, hidden, areas))


def _box_overlap(a, b) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _layout(groups: list[_Group], h: int, w: int, rng: np.random.Generator) -> list[_Placed]:
    """Objects in z-order. Some pairs are built to sit inside / on one another; the rest are placed at
    random with bounded overlap. An object that finds no place is dropped (its group shrinks)."""
    side = min(h, w)
    # Which pairs to build: (kind, dependent group, anchor group).
    links: list[tuple[str, int, int]] = []
    singles = [i for i, g in enumerate(groups) if g.count == 1]
    if len(groups) >= 2 and rng.random() < 0.3:
        containers = [i for i in singles if groups[i].name in _CONTAINERS]
        if containers:
            c = int(rng.choice(containers))
            inner = [i for i in singles if i != c]
            if inner:
                k = int(rng.choice(inner))
                groups[c].size, groups[k].size = "large", "small"
                links.append(("inside", k, c))
    if len(groups) >= 2 and rng.random() < 0.3:
        used = {i for _, a, b in links for i in (a, b)}
        free = [i for i in singles if i not in used]
        if len(free) >= 2:
            a, b = (int(i) for i in rng.choice(free, 2, replace=False))
            links.append(("on", a, b))
    dependents = {a: (kind, b) for kind, a, b in links}
    anchors = {b: a for _, a, b in links}
    order = [int(i) for i in rng.permutation(len(groups)) if int(i) not in dependents]
    seq: list[int] = []
    for g in order:                     # a dependent is drawn right after its anchor
        seq.append(g)
        if g in anchors:
            seq.append(anchors[g])

    sides = {}
    for gi, g in enumerate(groups):
        lo, hi = SIZES[g.size]
        sides[gi] = rng.uniform(lo, hi) * side
    if links and links[0][0] == "inside":
        _, k, c = links[0]
        sides[c] = rng.uniform(0.30, 0.36) * side
        sides[k] = sides[c] * rng.uniform(0.36, 0.46)

    # How much the boxes of freely placed objects may overlap (occlusion), over the smaller box's area.
    allowance = rng.uniform(0.05, 0.3)
    inst = np.zeros((h, w), np.uint8)
    placed: list[_Placed] = []
    visible: list[int] = []
    areas: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    anchor_at: dict[int, int] = {}         # group -> index in placed of its (single) object
    for gi in seq:
        for _ in range(groups[gi].count):
            d = _rasterize(groups[gi].name, sides[gi] * rng.uniform(0.93, 1.07), rng)
            dh, dw = d.mask.shape
            spot = None
            link = dependents.get(gi)
            if link is not None and link[1] in anchor_at:
                spot = _linked_spot(link[0], placed[anchor_at[link[1]]], d, h, w, rng)
                if spot is not None and not (_fits(h, w, d, *spot) and _occlusion_ok(inst, visible, areas, d, *spot)):
                    spot = None
            if spot is None and boxes and rng.random() < 0.35:
                # Partly in front of an earlier object, for occlusion (still >= 40% of it visible).
                b = boxes[int(rng.integers(len(boxes)))]
                for _ in range(15):
                    cx = (b[0] + b[2]) / 2 + rng.uniform(-0.8, 0.8) * (b[2] - b[0] + dw) / 2
                    cy = (b[1] + b[3]) / 2 + rng.uniform(-0.8, 0.8) * (b[3] - b[1] + dh) / 2
                    x0 = min(max(round(cx - dw / 2), 0), w - dw)
                    y0 = min(max(round(cy - dh / 2), 0), h - dh)
                    box = (x0, y0, x0 + dw, y0 + dh)
                    if (0.05 < _box_overlap(box, b) and all(_box_overlap(box, o) <= 0.6 for o in boxes)
                            and _occlusion_ok(inst, visible, areas, d, x0, y0)):
                        spot = (x0, y0)
                        break
            if spot is None:
                for _ in range(40):
                    x0, y0 = int(rng.integers(0, w - dw + 1)), int(rng.integers(0, h - dh + 1))
                    box = (x0, y0, x0 + dw, y0 + dh)
                    if all(_box_overlap(box, b) <= allowance for b in boxes) and _occlusion_ok(inst, visible, areas, d, x0, y0):
                        spot = (x0, y0)
                        break
            if spot is None:
                continue
            x0, y0 = spot
            region = inst[y0:y0 + dh, x0:x0 + dw]
            hidden = np.bincount(region[d.mask], minlength=len(placed) + 1)[1:]
            visible = [v - c for v, c in zip(visible, hidden)]
            region[d.mask] = len(placed) + 1
            anchor_at.setdefault(gi, len(placed))
            placed.append(_Placed(gi, d, x0, y0))
            visible.append(int(d.mask.sum()))
            areas.append(int(d.mask.sum()))
            boxes.append((x0, y0, x0 + dw, y0 + dh))
    return placed


def _linked_spot(kind: str, anchor: _Placed, d: _Drawn, h: int, w: int, rng) -> tuple[int, int] | None:
    aw = anchor.drawn.mask.shape[1]
    dh, dw = d.mask.shape
    if kind == "inside":
        ys, xs = np.nonzero(anchor.drawn.hull)
        cx, cy = anchor.x0 + xs.mean(), anchor.y0 + ys.mean()
        j = 0.04 * aw
        return round(cx - dw / 2 + rng.uniform(-j, j)), round(cy - dh / 2 + rng.uniform(-j, j))
    # "on": centered somewhere over the anchor's middle, lowered until its bottom touches the anchor's top.
    x0 = round(anchor.x0 + aw / 2 + rng.uniform(-0.25, 0.25) * aw - dw / 2)
    x0 = min(max(x0, 0), w - dw)
    cols_a = anchor.drawn.mask.any(0)
    top_a = np.where(cols_a, anchor.drawn.mask.argmax(0), -1)
    cols_d = d.mask.any(0)
    bottom_d = np.where(cols_d, dh - 1 - d.mask[::-1].argmax(0), -1)
    diffs = []
    for c in range(dw):                          # frame column x0 + c
        ac = x0 + c - anchor.x0
        if 0 <= ac < aw and top_a[ac] >= 0 and bottom_d[c] >= 0:
            diffs.append(anchor.y0 + top_a[ac] - bottom_d[c])
    if len(diffs) < 0.25 * dw:
        return None
    return x0, int(min(diffs)) - int(rng.integers(0, 2))     # touching, or 1 px into the anchor


# -- captions ------------------------------------------------------------------------------------------
_PHRASES = {          # after a noun, or after "is/are"
    "left of": ["to the left of", "on the left of", "on the left side of"],
    "right of": ["to the right of", "on the right of", "on the right side of"],
    "above": ["above", "over", "floating above", "hovering over"],
    "below": ["below", "under", "beneath", "underneath"],
    "on": ["on", "on top of", "sitting on", "resting on", "standing on"],
    "inside": ["inside", "in", "within", "placed inside", "inside of"],
    "next to": ["next to", "beside", "near", "close to"],
}
# Finite verbs (singular, plural) for the "X sits on Y" frame. Not "hovers", "floats" or "lies": spaCy
# tags them as nouns after a noun ("a pink pentagon hovers over" -> the object "pentagon hover").
_VERBS = {
    "above": [("sits above", "sit above")],
    "below": [("sits below", "sit below")],
    "on": [("sits on", "sit on"), ("rests on", "rest on"), ("stands on", "stand on")],
    "inside": [("sits inside", "sit inside")],
    "next to": [("sits next to", "sit next to"), ("stands beside", "stand beside")],
}
_CANONICAL = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below",
              "on": "on", "inside": "inside", "next to": "next to"}
# Background: after the objects ("... on grass"), as a sentence lead ("On the grass, ..."), as a noun
# ("The background is grass."), and in the canonical caption. Always its class name as the head noun.
_BG_TAIL = {
    "grass": ["on grass", "on the grass", "in the grass", "on green grass"],
    "sand": ["on sand", "on the sand", "on beige sand", "in the sand"],
    "water": ["on water", "on the water", "on blue water", "floating on water"],
    "wall": ["in front of a brick wall", "against a brick wall", "in front of a red brick wall", "against a wall"],
    "floor": ["on a wooden floor", "on the wooden floor", "on a wood floor", "on the floor"],
    "carpet": ["on a carpet", "on the carpet", "on a soft carpet", "on a patterned carpet"],
}
_BG_LEAD = {
    "grass": ["on the grass", "on green grass", "in the grass"],
    "sand": ["on the sand", "in the sand"],
    "water": ["on the water", "on blue water"],
    "wall": ["in front of a brick wall", "against a brick wall"],
    "floor": ["on a wooden floor", "on the wooden floor"],
    "carpet": ["on a carpet", "on the carpet"],
}
_BG_NOUN = {"grass": ["grass", "green grass"], "sand": ["sand", "beige sand"], "water": ["water", "blue water"],
            "wall": ["a brick wall", "a red brick wall"], "floor": ["a wooden floor", "a wood floor"],
            "carpet": ["a carpet", "a soft carpet"]}
_BG_CANONICAL = {"grass": "on grass", "sand": "on sand", "water": "on water", "wall": "in front of a brick wall",
                 "floor": "on a wooden floor", "carpet": "on a carpet"}
_NUMBER = {1: "a", 2: "two", 3: "three"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _noun(g: _Group) -> str:
    return plural(g.name) if g.count > 1 else g.name


def _np_canonical(g: _Group) -> str:
    # Pattern before color: spaCy reads "red striped circle" as the noun "red" or the one attribute
    # "red striped"; "striped red circle" parses as two attributes.
    words = [g.size] + ([g.pattern] if g.pattern != "plain" else []) + [g.color, _noun(g)]
    det = _article(words[0]) if g.count == 1 else _NUMBER[g.count]
    return " ".join([det] + words)


def _np_varied(g: _Group, rng) -> str:
    words = [g.color, _noun(g)]
    if g.pattern != "plain" and rng.random() < 0.85:
        words.insert(0, g.pattern)
    # A count right before a pattern word is lost by spaCy ("two striped red circles" parses as one
    # circle), so counted groups always say their size ("two small striped red circles").
    if g.count > 1 or rng.random() < 0.65:
        words.insert(0, g.size)
    if g.count == 1:
        det = _article(words[0])
    elif g.count == 2 and rng.random() < 0.15:
        det = "a pair of"
    else:
        det = _NUMBER[g.count]
    return " ".join([det] + words)


def _group_relations(rels: list[tuple[int, str, int]], groups: list[_Group]) -> dict[tuple[int, int], str]:
    """A predicate between two groups when it holds for every pair of their members."""
    of = {}
    for s, p, o in rels:
        of[(s, o)] = p
    out = {}
    for a, ga in enumerate(groups):
        for b, gb in enumerate(groups):
            if a == b:
                continue
            preds = {of.get((s, o)) for s in ga.members for o in gb.members}
            if len(preds) == 1 and None not in preds:
                out[(a, b)] = preds.pop()
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _be(g: _Group, np_: str = "") -> str:
    return "are" if g.count > 1 and not np_.startswith("a pair") else "is"


def _canonical_caption(groups: list[_Group], grel, bg: str, order: list[int]):
    """One fixed phrasing. Groups left to right, each with all its attributes in one order (size,
    pattern, color). The first sentence names the first two groups and how they relate, and the
    background: "A small red circle to the left of a large blue square, on grass." Each later group gets
    a sentence relating it to the nearest earlier group it has a relation with: "Two small yellow stars
    are above the square." / "The square is inside a large white heart." / "There is also a ...".
    Separate sentences, because spaCy spreads a preposition over a whole comma list of noun phrases."""
    triples = []
    o0 = order[0]
    head, rest = _np_canonical(groups[o0]), order[1:]
    if len(order) >= 2:
        o1 = order[1]
        rest = order[2:]
        if (o0, o1) in grel:
            head = f"{head} {_CANONICAL[grel[(o0, o1)]]} {_np_canonical(groups[o1])}"
            triples.append((groups[o0].name, grel[(o0, o1)], groups[o1].name))
        elif grel.get((o1, o0)) == "inside":
            head = f"{_np_canonical(groups[o1])} inside {_np_canonical(groups[o0])}"
            triples.append((groups[o1].name, "inside", groups[o0].name))
        else:
            head = f"{head} and {_np_canonical(groups[o1])}"
    sentences = [f"{_cap(head)}, {_BG_CANONICAL[bg]}."]
    for gi in rest:
        g = groups[gi]
        earlier = order[:order.index(gi)]
        sentence = f"There {_be(g)} also {_np_canonical(g)}."
        for prev in reversed(earlier):
            ref = f"the {_noun(groups[prev])}"
            if (gi, prev) in grel:
                sentence = f"{_cap(_np_canonical(g))} {_be(g)} {_CANONICAL[grel[(gi, prev)]]} {ref}."
                triples.append((g.name, grel[(gi, prev)], groups[prev].name))
                break
            if grel.get((prev, gi)) == "inside":
                sentence = f"{_cap(ref)} {_be(groups[prev])} inside {_np_canonical(g)}."
                triples.append((groups[prev].name, "inside", g.name))
                break
        sentences.append(sentence)
    return " ".join(sentences), triples


def _varied_caption(groups: list[_Group], grel, bg: str, rng):
    """Randomly chosen templates: the first two related groups as one phrase or clause, each later group
    as a clause referring back ("..., and a blue square is next to the circle"), the background as a
    tail, a lead or its own sentence."""
    order = [int(i) for i in rng.permutation(len(groups))]
    triples = []
    if len(groups) >= 2 and grel:            # start with a related pair, either way round
        a, b = list(grel)[int(rng.integers(len(grel)))]
        order = [a, b] + [i for i in order if i not in (a, b)]
    first = groups[order[0]]
    np_first = _np_varied(first, rng)
    rest = order[1:]
    if len(groups) >= 2 and (order[0], order[1]) in grel:
        a, b = order[0], order[1]
        pred = grel[(a, b)]
        triples.append((groups[a].name, pred, groups[b].name))
        np_b = _np_varied(groups[b], rng)
        kind = _pick(rng, ["phrase", "phrase", "copula", "there"] + (["verb"] if pred in _VERBS else []))
        if kind == "phrase":
            head = f"{np_first} {_pick(rng, _PHRASES[pred])} {np_b}"
        elif kind == "copula":
            head = f"{np_first} {_be(first, np_first)} {_pick(rng, _PHRASES[pred])} {np_b}"
        elif kind == "there":
            head = f"there {_be(first, np_first)} {np_first} {_pick(rng, _PHRASES[pred])} {np_b}"
        else:
            head = f"{np_first} {_pick(rng, _VERBS[pred])[1 if _be(first, np_first) == 'are' else 0]} {np_b}"
        rest = order[2:]
    elif len(groups) >= 2 and grel.get((order[1], order[0])) == "inside":
        a, b = order[0], order[1]              # a contains b
        triples.append((groups[b].name, "inside", groups[a].name))
        kind = "phrase"
        head = f"{np_first} {_pick(rng, ['containing', 'that contains', 'with'])} {_np_varied(groups[b], rng)}"
        rest = order[2:]
    else:
        kind = _pick(rng, ["phrase", "there"])
        head = np_first if kind == "phrase" else f"there {_be(first, np_first)} {np_first}"
    mentioned = [i for i in order if i not in rest]
    for gi in rest:
        g = groups[gi]
        np_g = _np_varied(g, rng)
        options = [(grel[(gi, m)], m) for m in mentioned if (gi, m) in grel]
        if options:
            pred, m = options[int(rng.integers(len(options)))]
            triples.append((g.name, pred, groups[m].name))
            ref = f"the {_noun(groups[m])}"
            style = _pick(rng, ["and", "sentence", "with"])
            if style == "and":
                head += f", and {np_g} {_be(g, np_g)} {_pick(rng, _PHRASES[pred])} {ref}"
            elif style == "sentence":
                head += ". " + _cap(f"{np_g} {_be(g, np_g)} {_pick(rng, _PHRASES[pred])} {ref}")
            else:
                head += f", with {np_g} {_pick(rng, _PHRASES[pred])} {ref}"
        elif _pick(rng, ["and", "also"]) == "and":
            head += f", and {np_g}"
        else:
            head += f". There {_be(g, np_g)} also {np_g}"
        mentioned.append(gi)
    # "A picture of ..." / "This image shows ..." only wrap a noun phrase, not a clause.
    mode = _pick(rng, ["tail", "tail", "lead", "sentence"] + (["frame"] if kind == "phrase" else []))
    if mode == "lead":
        text = f"{_cap(_pick(rng, _BG_LEAD[bg]))}, {head}."
    elif mode == "sentence":
        text = _cap(head) + ". " + _pick(rng, [f"The background is {_pick(rng, _BG_NOUN[bg])}.",
                                                f"Everything is {_pick(rng, _BG_TAIL[bg])}."])
    elif mode == "frame":
        text = _cap(_pick(rng, ["this image shows ", "the picture shows ", "a picture of "]) + head) \
            + f", {_pick(rng, _BG_TAIL[bg])}."
    else:
        text = _cap(head) + _pick(rng, [", ", " "]) + _pick(rng, _BG_TAIL[bg]) + "."
    return text, triples


# -- scenes --------------------------------------------------------------------------------------------
def make_scene(split: str, index: int, size: int = 256, seed: int = 0) -> Scene:
    """One synthetic scene, deterministic in (split, index, size, seed). Splits draw from disjoint random
    streams (numpy SeedSequence([seed, split, index]))."""
    _check_split(split)
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_STREAM[split], int(index)]))
    classes = split_classes(split)
    class_id = {c: i for i, c in enumerate(classes)}
    h = w = int(size)

    background = str(rng.choice(BACKGROUND_NAMES))
    allowed = [c for c in COLORS if c not in _FORBIDDEN[background]]
    groups = _plan_groups(split, rng, allowed)
    placed = _layout(groups, h, w, rng)
    if not placed:                      # cannot happen with one object on an empty frame; be safe anyway
        raise RuntimeError(f"no object could be placed in scene {split}/{index}")

    image = _texture(background, h, w, rng)
    noise = _fine_noise(rng, h, w)
    labels = np.full((h, w), class_id[background], np.uint8)
    inst = np.zeros((h, w), np.uint8)
    objects: list[SceneObject] = []
    geoms = [_Geom(p.drawn.mask, p.drawn.hull, p.x0, p.y0) for p in placed]
    for k, p in enumerate(placed):
        g = groups[p.group]
        g.members.append(k)
        rgb = _jitter(COLORS[g.color], rng, 14)
        dh, dw = p.drawn.mask.shape
        sl = (slice(p.y0, p.y0 + dh), slice(p.x0, p.x0 + dw))
        # Flat color under a soft light gradient and sensor noise, the pattern in a second color.
        gy, gx = rng.uniform(-0.08, 0.08, 2)
        shade = (1.0 + gx * np.linspace(-1, 1, dw, dtype=np.float32)[None, :]
                 + gy * np.linspace(-1, 1, dh, dtype=np.float32)[:, None]) + 0.02 * noise[sl]
        pm = _pattern_mask(g.pattern, dh, dw, max(5.0, 0.22 * max(dh, dw)), rng)
        ink = _jitter((30, 30, 30) if g.color in _LIGHT else (245, 245, 245), rng, 10)
        patch = _compose(shade, rgb, overlay=pm, overlay_rgb=ink)
        m = p.drawn.mask
        np.copyto(image[sl], patch, where=m[..., None])
        labels[sl][m] = class_id[g.name]
        inst[sl][m] = k + 1
        objects.append(SceneObject(g.name, g.color, g.size, g.pattern, geoms[k].box, tuple(int(v) for v in rgb)))
    for k, (o, g) in enumerate(zip(objects, geoms)):
        o.visible = np.count_nonzero(inst[g.box[1]:g.box[3], g.box[0]:g.box[2]] == k + 1) / g.area
    groups = [g for g in groups if g.members]
    for g in groups:
        g.count = len(g.members)

    relations = _relations(geoms, min(h, w))
    grel = _group_relations(relations, groups)
    order = sorted(range(len(groups)), key=lambda i: (min(placed[k].x0 + placed[k].drawn.mask.shape[1] / 2
                                                          for k in groups[i].members), groups[i].name))
    canonical, canonical_triples = _canonical_caption(groups, grel, background, order)
    caption, triples = _varied_caption(groups, grel, background, rng)
    return Scene(image=image, labels=labels, classes=classes, objects=objects, relations=relations,
                 background=background, caption=caption, canonical_caption=canonical, split=split, seed=int(seed),
                 index=int(index), instances=inst, caption_triples=triples, canonical_triples=canonical_triples)


class SyntheticScenes:
    """A map-style dataset of synthetic scenes (no torch): scenes[i] is make_scene(split, i, size, seed)."""

    def __init__(self, split: str, length: int, size: int = 256, seed: int = 0):
        _check_split(split)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.split, self.length, self.size, self.seed = split, int(length), int(size), int(seed)
        self.classes = split_classes(split)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Scene:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} scenes")
        return make_scene(self.split, int(i), self.size, self.seed)

    def __repr__(self) -> str:
        return f"SyntheticScenes({self.split!r}, length={self.length}, size={self.size}, seed={self.seed})"
