"""Synthetic scenes (llmformer.data.synthetic): determinism, splits, label maps, relations from geometry, and
captions that the runtime's caption parser reads back to the scene's objects."""
import collections
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmformer.data.captions import plural
from llmformer.data.layout import SIZES
from llmformer.data.relations import PREDICATES, relations_from_masks
from llmformer.data.synthetic import (_FORBIDDEN, BACKGROUND_NAMES, COLORS, HELDOUT_NAMES, IGNORE, OBJECT_NAMES, SPLITS,
                                      SyntheticScenes, make_scene, split_classes)

ROOT = Path(__file__).resolve().parents[1]
PARSER_F1_GATE = 0.97


@pytest.fixture(scope="module")
def scenes():
    return {split: [make_scene(split, i, size=128) for i in range(60)] for split in SPLITS}


# -- determinism and splits ------------------------------------------------------------------------------
def test_same_arguments_give_identical_scenes():
    a, b = make_scene("train", 5), make_scene("train", 5)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert (a.caption, a.canonical_caption, a.relations) == (b.caption, b.canonical_caption, b.relations)
    assert a.objects == b.objects


def test_different_index_or_seed_gives_a_different_scene():
    base = make_scene("train", 5)
    for other in (make_scene("train", 6), make_scene("train", 5, seed=1)):
        assert not np.array_equal(base.image, other.image)


def test_train_and_val_draw_from_disjoint_streams(scenes):
    train = {s.image.tobytes() for s in scenes["train"]}
    assert not any(s.image.tobytes() in train for s in scenes["val"])
    assert sum(t.caption == v.caption for t, v in zip(scenes["train"], scenes["val"])) == 0


def test_heldout_names_appear_only_in_heldout_scenes(scenes):
    for split in ("train", "val"):
        for s in scenes[split]:
            assert not {o.name for o in s.objects} & set(HELDOUT_NAMES)
            assert not set(s.caption.lower().replace(".", " ").replace(",", " ").split()) & set(HELDOUT_NAMES)
    for s in scenes["heldout"]:
        held = {o.name for o in s.objects} & set(HELDOUT_NAMES)
        assert held, s.caption
        for name in held:                               # named with its noun, so the open vocabulary sees it
            assert name in s.caption and name in s.canonical_caption


def test_class_lists():
    assert len(OBJECT_NAMES) >= 12 and 2 <= len(HELDOUT_NAMES) <= 4 and 4 <= len(BACKGROUND_NAMES) <= 6
    assert len(set(OBJECT_NAMES + HELDOUT_NAMES + BACKGROUND_NAMES)) == len(OBJECT_NAMES + HELDOUT_NAMES + BACKGROUND_NAMES)
    assert split_classes("train") == split_classes("val") == list(OBJECT_NAMES + BACKGROUND_NAMES)
    assert split_classes("heldout") == list(OBJECT_NAMES + HELDOUT_NAMES + BACKGROUND_NAMES)
    with pytest.raises(ValueError, match="train, val, heldout"):
        split_classes("test")


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown split 'training'"):
        make_scene("training", 0)


def test_dataset_indexes_like_make_scene():
    ds = SyntheticScenes("val", 3, size=96, seed=2)
    assert len(ds) == 3 and ds.classes == split_classes("val")
    assert ds[1].caption == make_scene("val", 1, size=96, seed=2).caption
    assert ds[-1].index == 2
    with pytest.raises(IndexError):
        ds[3]
    assert [s.index for s in ds] == [0, 1, 2]


# -- pictures and label maps -----------------------------------------------------------------------------
def test_label_map_is_every_pixel_a_class_of_the_split(scenes):
    for split, items in scenes.items():
        for s in items:
            assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
            assert s.labels.shape == (128, 128) and s.labels.dtype == np.uint8
            assert s.labels.max() < len(s.classes) and not (s.labels == IGNORE).any()
            assert s.classes == split_classes(split)


def test_every_object_is_labelled_and_at_least_40_percent_visible(scenes):
    for s in (s for items in scenes.values() for s in items):
        assert 1 <= len(s.objects) <= 4
        for k, o in enumerate(s.objects):
            mine = s.instances == k + 1
            assert o.visible >= 0.4, (s.split, s.index, o)
            assert mine.sum() > 0 and (s.labels[mine] == s.classes.index(o.name)).all()
        bg = s.instances == 0
        assert (s.labels[bg] == s.classes.index(s.background)).all()


def test_object_pixels_carry_the_object_color():
    # Plain objects: every labelled pixel is the object's color (up to shading and noise); no
    # anti-aliased border pixels blend into the background.
    checked = 0
    for i in range(40):
        s = make_scene("train", i)
        for k, o in enumerate(s.objects):
            if o.pattern != "plain":
                continue
            px = s.image[s.instances == k + 1].astype(int)
            assert np.abs(px - np.array(o.rgb)).max() <= 40, (i, o)
            checked += 1
    assert checked >= 20


def test_some_objects_are_partly_occluded(scenes):
    occluded = [o for items in scenes.values() for s in items for o in s.objects if o.visible < 0.99]
    assert len(occluded) >= 10


def test_small_and_large_are_visibly_different(scenes):
    side = {"small": [], "large": []}
    for s in (s for items in scenes.values() for s in items):
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            side[o.size].append(max(x1 - x0, y1 - y0) / 128)
    assert max(side["small"]) <= SIZES["small"][1] * 1.1 + 1 / 128
    assert max(side["small"]) < min(side["large"])
    assert np.median(side["large"]) > 1.8 * np.median(side["small"])


def test_object_colors_stand_out_from_the_background(scenes):
    for s in (s for items in scenes.values() for s in items):
        for o in s.objects:
            assert o.color in COLORS and o.color not in _FORBIDDEN[s.background]


# -- relations from geometry -----------------------------------------------------------------------------
def _box(x0, y0, x1, y1, size=128):
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_relations_left_right_above_below():
    rel = relations_from_masks([_box(5, 50, 25, 70), _box(90, 50, 110, 70)])
    assert set(rel) == {(0, "left of", 1), (1, "right of", 0)}
    rel = relations_from_masks([_box(50, 5, 70, 25), _box(50, 90, 70, 110)])
    assert set(rel) == {(0, "above", 1), (1, "below", 0)}


def test_relations_next_to_when_side_by_side_and_close():
    rel = relations_from_masks([_box(20, 50, 50, 80), _box(54, 52, 84, 82)])
    assert set(rel) == {(0, "next to", 1), (1, "next to", 0)}


def test_relations_on_when_touching_from_above():
    # The upper box's last row is 59, the lower one's first row is 60: touching.
    rel = relations_from_masks([_box(40, 60, 100, 110), _box(55, 40, 85, 60)])
    assert (1, "on", 0) in rel and (0, "below", 1) in rel
    # A 10-pixel gap is "above", not "on".
    rel = relations_from_masks([_box(40, 60, 100, 110), _box(55, 30, 85, 50)])
    assert (1, "above", 0) in rel and (1, "on", 0) not in rel


def test_relations_inside_needs_drawing_order_and_the_outline():
    big, small = _box(30, 30, 100, 100), _box(55, 55, 70, 70)
    assert (1, "inside", 0) in relations_from_masks([big, small])
    assert not any(p == "inside" for _, p, _ in relations_from_masks([small, big]))   # drawn behind it
    yy, xx = np.mgrid[0:128, 0:128]
    r = np.hypot(yy - 64, xx - 64)
    ring, hull = (r <= 40) & (r >= 25), r <= 40
    dot = r <= 8
    assert (1, "inside", 0) in relations_from_masks([ring, dot], [hull, dot])        # in the ring's hole
    assert not any(p == "inside" for _, p, _ in relations_from_masks([ring, dot]))   # outline without hole-filling


def test_scene_relations_use_known_predicates_and_valid_indices(scenes):
    seen = collections.Counter()
    for s in (s for items in scenes.values() for s in items):
        for a, p, b in s.relations:
            assert p in PREDICATES and 0 <= a < len(s.objects) and 0 <= b < len(s.objects) and a != b
            seen[p] += 1
    assert set(seen) == set(PREDICATES), seen      # every predicate occurs in 180 scenes


# -- captions ----------------------------------------------------------------------------------------------
def test_captions_mention_every_object_with_counts(scenes):
    for s in (s for items in scenes.values() for s in items):
        counts = collections.Counter(o.name for o in s.objects)
        for text in (s.caption, s.canonical_caption):
            words = text.lower().replace(".", " ").replace(",", " ").split()
            assert s.background in words, text
            for name, n in counts.items():
                assert (name if n == 1 else plural(name)) in words, text
                if n > 1:
                    assert {"two": 2, "three": 3, "pair": 2}.keys() & set(words), text


def test_canonical_caption_says_every_attribute_in_fixed_order(scenes):
    for s in (s for items in scenes.values() for s in items):
        for o in s.objects:
            noun = o.name if sum(p.name == o.name for p in s.objects) == 1 else plural(o.name)
            words = [o.size] + ([o.pattern] if o.pattern != "plain" else []) + [o.color, noun]
            assert " ".join(words) in s.canonical_caption, s.canonical_caption


def test_captions_are_varied():
    captions = [make_scene("train", i).caption for i in range(40)]
    starts = {c.split()[0] for c in captions}
    assert len(starts) >= 4                          # "A", "There", "On", "Two", "This", ...


def _name_counts(priors):
    c = collections.Counter()
    for o in priors.objects:
        c[o.name] += o.count or 1
    return c


def test_parser_recovers_objects_and_colors(scenes):
    from runtime.priors import parse
    for kind in ("caption", "canonical_caption"):
        tp = fp = fn = colors = found = 0
        for split in SPLITS:
            for s in scenes[split][:20]:
                priors = parse(getattr(s, kind))
                truth, got = collections.Counter(s.names), _name_counts(priors)
                hit = sum((truth & got).values())
                tp, fp, fn = tp + hit, fp + sum(got.values()) - hit, fn + sum(truth.values()) - hit
                attrs = {o.name: " ".join(o.attributes) for o in priors.objects}
                colors += len(s.objects)
                found += sum(o.color in attrs.get(o.name, "").split() for o in s.objects)
        f1 = 2 * tp / (2 * tp + fp + fn)
        assert f1 >= PARSER_F1_GATE, f"{kind}: object F1 {f1:.3f}"
        assert found / colors >= 0.95, f"{kind}: color recall {found / colors:.3f}"


# -- torch-free --------------------------------------------------------------------------------------------
def test_data_package_imports_without_torch():
    code = ("import sys, llmformer.data, llmformer.data.synthetic, llmformer.data.cocostuff; "
            "llmformer.data.make_scene('train', 0, size=64); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
