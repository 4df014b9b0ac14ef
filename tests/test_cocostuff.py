"""The COCO-Stuff folder reader (llmformer.data.cocostuff), tested on synthetic scenes written in COCO-Stuff's
layout: label ids remapped to contiguous classes, captions read, and clear errors for broken folders."""
import json

import cv2
import numpy as np
import pytest

from llmformer.data.cocostuff import (COCO_UNANNOTATED, CocoStuff, CocoStuffLayoutError, caption_from_classes, read_labels,
                            readable_name, synthetic_label_ids, write_cocostuff_layout)
from llmformer.data.synthetic import IGNORE, make_scene


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_cocostuff_layout(root, 4, split="train2017", size=96)
    write_cocostuff_layout(root, 2, split="val2017", size=96)
    return root


def test_round_trip_remaps_ids_to_contiguous_classes(root):
    ds = CocoStuff(root, "train2017")
    ids = synthetic_label_ids()
    assert len(ds) == 4
    assert ds.classes == [ids[i] for i in sorted(ids) if i > 0]          # ids 1..17 and 92..97, contiguous
    for k in range(len(ds)):
        item, scene = ds[k], make_scene("train", k, size=96)
        names = np.array(ds.classes)[item.labels]
        assert (names == np.array(scene.classes)[scene.labels]).all()
        assert item.caption == item.canonical_caption == scene.caption and item.caption_source == "file"
        assert item.image.shape == (96, 96, 3) and item.image.dtype == np.uint8
        assert np.abs(item.image.astype(int) - scene.image).mean() < 8        # JPEG, RGB order kept
        assert item.split == "train2017" and item.path.name == f"{k:012d}.jpg"


def test_val_split_and_resize(root):
    ds = CocoStuff(root, "val2017", size=48)
    item = ds[1]
    assert item.image.shape == (48, 48, 3) and item.labels.shape == (48, 48)
    assert item.caption == make_scene("val", 1, size=96).caption
    assert set(np.unique(item.labels)) <= set(range(len(ds.classes)))


def test_unlabeled_and_unlisted_ids_map_to_ignore(tmp_path):
    write_cocostuff_layout(tmp_path, 1, size=64)
    png = tmp_path / "annotations" / "train2017" / f"{0:012d}.png"
    raw = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    raw[:4] = 255                      # unlabeled
    raw[4:8] = 49                      # id 50: not in the synthetic labels.txt
    raw[8:12] = 91                     # id 92: the first background ("stuff") class
    cv2.imwrite(str(png), raw)
    ds = CocoStuff(tmp_path)
    labels = ds[0].labels
    assert (labels[:8] == IGNORE).all()
    assert (labels[8:12] == ds.classes.index(synthetic_label_ids()[92])).all()


def test_official_labels_drop_the_unannotated_coco_ids(tmp_path):
    names = {0: "unlabeled", **{i: f"class{i}" for i in range(1, 183)}, **COCO_UNANNOTATED,
             171: "wall-brick", 157: "sky-other"}
    (tmp_path / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in names.items()))
    for sub in ("images/train2017", "annotations/train2017"):
        (tmp_path / sub).mkdir(parents=True)
    raw = np.full((8, 8), 255, np.uint8)
    raw[0, :4] = 170                   # id 171
    raw[1, :4] = 11                    # id 12: "street sign", listed but never annotated
    cv2.imwrite(str(tmp_path / "images/train2017/1.jpg"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "annotations/train2017/1.png"), raw)
    ds = CocoStuff(tmp_path)
    assert len(ds.classes) == 171 and "street sign" not in ds.classes
    item = ds[0]
    assert ds.classes[item.labels[0, 0]] == "wall-brick" and (item.labels[1] == IGNORE).all()
    assert ds.prompts[ds.classes.index("wall-brick")] == "brick wall"
    assert item.caption == "a photo of a brick wall" and item.caption_source == "classes"


def test_caption_made_from_classes_when_no_captions_file(tmp_path):
    write_cocostuff_layout(tmp_path, 2, size=64)
    (tmp_path / "captions" / "train2017.json").unlink()
    item, scene = CocoStuff(tmp_path)[0], make_scene("train", 0, size=64)
    assert item.caption_source == "classes" and item.caption.startswith("a photo of ")
    for name in {o.name for o in scene.objects} | {scene.background}:
        assert name in item.caption
    assert caption_from_classes(["person", "dog", "grass"]) == "a photo of a person, a dog and grass"
    assert readable_name("sky-other") == "sky" and readable_name("floor-wood") == "wood floor"


# -- broken layouts --------------------------------------------------------------------------------------
def test_missing_folder_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(CocoStuffLayoutError, match="does not exist") as e:
        CocoStuff(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "annotations/{split}/*.png" in str(e.value)


def test_missing_labels_txt_is_a_clear_error(tmp_path):
    write_cocostuff_layout(tmp_path, 1, size=64)
    (tmp_path / "labels.txt").unlink()
    with pytest.raises(CocoStuffLayoutError, match="labels.txt not found") as e:
        CocoStuff(tmp_path)
    assert "id: name" in str(e.value)


def test_image_without_annotation_names_both_paths(tmp_path):
    write_cocostuff_layout(tmp_path, 2, size=64)
    (tmp_path / "annotations" / "train2017" / f"{1:012d}.png").unlink()
    with pytest.raises(CocoStuffLayoutError, match=f"{1:012d}.jpg needs .*{1:012d}.png"):
        CocoStuff(tmp_path)


def test_missing_split_lists_the_splits_there(root):
    with pytest.raises(CocoStuffLayoutError, match="train2017, val2017"):
        CocoStuff(root, "test2017")


def test_malformed_labels_line_names_file_and_line(tmp_path):
    (tmp_path / "labels.txt").write_text("0: unlabeled\n1 person\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: expected 'id: name'"):
        read_labels(tmp_path / "labels.txt")


def test_color_annotation_png_is_rejected(tmp_path):
    write_cocostuff_layout(tmp_path, 1, size=64)
    png = tmp_path / "annotations" / "train2017" / f"{0:012d}.png"
    cv2.imwrite(str(png), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="single-channel"):
        CocoStuff(tmp_path)[0]


def test_captions_file_must_be_a_mapping(tmp_path):
    write_cocostuff_layout(tmp_path, 1, size=64)
    (tmp_path / "captions" / "train2017.json").write_text(json.dumps(["a caption"]))
    with pytest.raises(ValueError, match="image stems"):
        CocoStuff(tmp_path)
