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

This module is the scene vocabulary (names, colors, patterns, splits) and the recipe that composes the
steps, each in a module of its own: `llmformer.data.layout` plans positions and occlusion,
`llmformer.data.shapes` draws the masks, `llmformer.data.textures` paints backgrounds and objects,
`llmformer.data.relations` reads relations from the masks and `llmformer.data.captions` writes the two
captions. The order of their random draws is part of the format: one rng per scene, used in a fixed
sequence, so reordering calls here changes every scene of a seed.

numpy + OpenCV only (no torch): the torch-free runtime demo generates its frames with it.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from llmformer.data.captions import canonical_caption, group_relations, varied_caption
from llmformer.data.layout import Group, place_objects
from llmformer.data.relations import Geom, relations_from_geoms
from llmformer.data.textures import fine_noise, jitter, object_patch, texture

__all__ = ["OBJECT_NAMES", "HELDOUT_NAMES", "BACKGROUND_NAMES", "SPLITS", "IGNORE", "COLORS", "PATTERNS",
           "SceneObject", "Scene", "split_classes", "make_scene", "SyntheticScenes"]

# Every name is a noun that spaCy's small English model tags as a noun in the caption templates
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
PATTERNS = ("plain", "striped", "dotted", "checkered")

# Colors an object never has on a background (it would vanish into the texture).
_FORBIDDEN = {"grass": {"green"}, "sand": {"yellow", "white"}, "water": {"blue"}, "wall": {"red", "orange"},
              "floor": {"orange"}, "carpet": {"purple", "gray"}}
# Pattern ink: dark on light colors, light on dark ones.
_LIGHT = {"yellow", "white", "pink", "orange"}
_SPLIT_STREAM = {"train": 0, "val": 1, "heldout": 2}


def split_classes(split: str) -> list[str]:
    """Class names of a split in label order: train/val = OBJECT_NAMES + BACKGROUND_NAMES; heldout =
    OBJECT_NAMES + HELDOUT_NAMES + BACKGROUND_NAMES."""
    _check_split(split)
    held = HELDOUT_NAMES if split == "heldout" else ()
    return [*OBJECT_NAMES, *held, *BACKGROUND_NAMES]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")


# -- scenes --------------------------------------------------------------------------------------------
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
    # llmformer.data.relations.PREDICATES ("contains" is stated as the inverse "inside"); the background
    # is not among them.

    @property
    def names(self) -> list[str]:
        """Object names with repeats, then the background: what the caption mentions."""
        return [o.name for o in self.objects] + [self.background]


# -- planning ------------------------------------------------------------------------------------------
def _plan_groups(split: str, rng: np.random.Generator, allowed_colors: list[str]) -> list[Group]:
    """What a scene contains, before anything is placed: 1-4 objects as groups of one kind (names drawn
    without repeats from the split's vocabulary, a held-out name first in "heldout"), each with a color
    from `allowed_colors`, a size and a pattern."""
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
        groups.append(Group(name, count, color, size, pattern))
    return groups



# -- making a scene ------------------------------------------------------------------------------------
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
    placed = place_objects(groups, h, w, rng)
    if not placed:                      # cannot happen with one object on an empty frame; be safe anyway
        raise RuntimeError(f"no object could be placed in scene {split}/{index}")

    image = texture(background, h, w, rng)
    noise = fine_noise(rng, h, w)
    labels = np.full((h, w), class_id[background], np.uint8)
    inst = np.zeros((h, w), np.uint8)
    objects: list[SceneObject] = []
    geoms = [Geom(p.drawn.mask, p.drawn.hull, p.x0, p.y0) for p in placed]
    for k, p in enumerate(placed):
        g = groups[p.group]
        g.members.append(k)
        rgb = jitter(COLORS[g.color], rng, 14)
        dh, dw = p.drawn.mask.shape
        sl = (slice(p.y0, p.y0 + dh), slice(p.x0, p.x0 + dw))
        ink = (30, 30, 30) if g.color in _LIGHT else (245, 245, 245)
        patch = object_patch(rgb, ink, g.pattern, noise[sl], rng)
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

    relations = relations_from_geoms(geoms, min(h, w))
    grel = group_relations(relations, groups)
    order = sorted(range(len(groups)), key=lambda i: (min(placed[k].x0 + placed[k].drawn.mask.shape[1] / 2
                                                          for k in groups[i].members), groups[i].name))
    canonical, canonical_triples = canonical_caption(groups, grel, background, order)
    caption, triples = varied_caption(groups, grel, background, rng)
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
