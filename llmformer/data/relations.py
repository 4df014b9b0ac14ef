"""Relations between the objects of a synthetic scene, read from the geometry of the final layout.

Its own module, apart from `llmformer.data.layout`, so that relations can only come from the pixels: the
layout builds some pairs to sit inside / on one another, but a build can fail (the object lands
elsewhere) and free placement makes relations nobody planned, so captions state what this module finds
in the masks, never what the layout intended. `relations_from_masks` is also usable on any full-frame
masks (the tests call it on hand-drawn boxes).

numpy only.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["PREDICATES", "Geom", "relations_from_geoms", "relations_from_masks"]

PREDICATES = ("left of", "right of", "above", "below", "on", "inside", "next to")


@dataclasses.dataclass
class Geom:
    """One object's full (unoccluded) shape: a local mask placed at (x0, y0) in the frame, with what the
    predicates look at precomputed: box (x0, y0, x1, y1) in frame pixels, center, area, and per box column
    the top / bottom ink row."""
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


def _overlap_count(a: Geom, b: Geom) -> int:
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
        geoms.append(Geom(m[y0:y1, x0:x1], hl[y0:y1, x0:x1], int(x0), int(y0)))
    return relations_from_geoms(geoms, frame or (min(masks[0].shape) if masks else 0))


def relations_from_geoms(geoms: list[Geom], frame: int) -> list[tuple[int, str, int]]:
    """`relations_from_masks` on masks already cut to their boxes (make_scene has them from the layout,
    so it skips a full-frame scan per object); `frame`: the frame side the margins are fractions of."""
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
