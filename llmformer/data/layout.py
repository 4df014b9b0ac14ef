"""Where the objects of a synthetic scene go: sizes, positions and z-order, with occlusion bounded so
that every object keeps >= 40% of its area visible.

Its own module because placement is the one step that trades realism (overlaps, objects on and inside
others) against what a caption can honestly state (an object hidden behind another is not "there").
It works on the scene's plan (`Group`s: which shapes, how many, what size) and returns drawn shapes at
frame positions; it paints nothing and names no relations (`llmformer.data.relations` reads those from
the result).

numpy only (shapes are rasterized by `llmformer.data.shapes`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmformer.data.shapes import CONTAINERS, Drawn, rasterize

__all__ = ["SIZES", "Group", "Placed", "place_objects"]

SIZES = {"small": (0.10, 0.18), "large": (0.25, 0.36)}        # longest side of the object / frame side
_MIN_VISIBLE = 0.4


@dataclasses.dataclass
class Group:
    """One kind of object in a scene's plan: `count` objects of one name, color, size and pattern.
    `place_objects` may change `size` (a containment pair is made large + small) and drop objects that
    find no place; make_scene then fills `members` (indices of the placed objects) and the captions
    describe the group as one noun phrase ("two small yellow stars")."""
    name: str
    count: int
    color: str
    size: str
    pattern: str
    members: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Placed:
    """One placed object, in z-order in place_objects' result."""
    group: int                       # index into the groups
    drawn: Drawn                     # its mask and hull, (dh, dw) each
    x0: int                          # frame position of the drawn canvas's top-left pixel
    y0: int


def _fits(h: int, w: int, d: Drawn, x0: int, y0: int) -> bool:
    return x0 >= 0 and y0 >= 0 and x0 + d.mask.shape[1] <= w and y0 + d.mask.shape[0] <= h


def _occlusion_ok(inst: np.ndarray, visible: list[int], areas: list[int], d: Drawn, x0: int, y0: int) -> bool:
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


def place_objects(groups: list[Group], h: int, w: int, rng: np.random.Generator) -> list[Placed]:
    """Objects in z-order. Some pairs are built to sit inside / on one another; the rest are placed at
    random with bounded overlap. An object that finds no place is dropped (its group shrinks)."""
    side = min(h, w)
    # Which pairs to build: (kind, dependent group, anchor group).
    links: list[tuple[str, int, int]] = []
    singles = [i for i, g in enumerate(groups) if g.count == 1]
    if len(groups) >= 2 and rng.random() < 0.3:
        containers = [i for i in singles if groups[i].name in CONTAINERS]
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
    placed: list[Placed] = []
    visible: list[int] = []
    areas: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    anchor_at: dict[int, int] = {}         # group -> index in placed of its (single) object
    for gi in seq:
        for _ in range(groups[gi].count):
            d = rasterize(groups[gi].name, sides[gi] * rng.uniform(0.93, 1.07), rng)
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
            placed.append(Placed(gi, d, x0, y0))
            visible.append(int(d.mask.sum()))
            areas.append(int(d.mask.sum()))
            boxes.append((x0, y0, x0 + dw, y0 + dh))
    return placed


def _linked_spot(kind: str, anchor: Placed, d: Drawn, h: int, w: int, rng) -> tuple[int, int] | None:
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
