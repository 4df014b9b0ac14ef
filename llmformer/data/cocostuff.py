"""COCO-Stuff (164k) from a folder: images, label maps and captions, with the same item interface as
llmformer.data.synthetic.SyntheticScenes, so one training entry point takes either.

Folder layout (what the official downloads unpack to, plus COCO-Stuff's labels.txt and optional captions):

    ROOT/
      labels.txt                    COCO-Stuff's own label list, one "id: name" per line:
                                    "0: unlabeled", "1: person", ..., "182: wood"
                                    (https://github.com/nightrome/cocostuff/blob/master/labels.txt)
      images/train2017/*.jpg        COCO 2017 images (train2017.zip, val2017.zip), e.g. 000000000009.jpg
      images/val2017/*.jpg
      annotations/train2017/*.png   stuffthingmaps_trainval2017.zip: one PNG per image, same stem, single
      annotations/val2017/*.png     channel uint8: pixel = labels.txt id - 1 (0..181), 255 = unlabeled
      captions/train2017.json       optional: {"000000000009": "A caption.", ...} (or a list of captions
      captions/val2017.json         per stem, the first one used), e.g. from COCO captions or an LLM

Labels: each labels.txt id except 0 ("unlabeled") becomes a class, in id order; the 11 COCO thing ids
that COCO-Stuff lists but never annotates (street sign, hat, shoe, eye glasses, plate, mirror, window,
desk, door, blender, hair brush) are dropped when labels.txt names them as the official list does, so
the official file gives the usual 171 classes (80 things + 91 stuff). Pixel values whose id is not a
class, and 255, map to IGNORE (255). `classes` keeps labels.txt's names ("wall-brick"); `prompts` has
readable ones for a text encoder ("brick wall").

Without a captions file (or without an entry for an image) the caption is made from the classes
present, largest area first: "a photo of a person, a dog and grass".

numpy + OpenCV + stdlib only, like llmformer.data.synthetic.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from engines.errors import LLMFormerError
from llmformer.data.synthetic import BACKGROUND_NAMES, HELDOUT_NAMES, IGNORE, OBJECT_NAMES, make_scene

__all__ = ["CocoStuff", "CocoStuffItem", "CocoStuffLayoutError", "read_labels", "readable_name",
           "caption_from_classes", "synthetic_label_ids", "write_cocostuff_layout", "LAYOUT", "COCO_UNANNOTATED"]

LAYOUT = """\
    ROOT/labels.txt                    "id: name" lines (COCO-Stuff's labels.txt: 0: unlabeled ... 182: wood)
    ROOT/images/{split}/*.jpg          images
    ROOT/annotations/{split}/*.png     uint8 label maps, same stems: pixel = id - 1, 255 = unlabeled
    ROOT/captions/{split}.json         optional {"<image stem>": "caption", ...}"""

# COCO thing ids listed in COCO-Stuff's labels.txt without any annotation (COCO-Stuff README, "Labels").
COCO_UNANNOTATED = {12: "street sign", 26: "hat", 29: "shoe", 30: "eye glasses", 45: "plate", 66: "mirror",
                    68: "window", 69: "desk", 71: "door", 83: "blender", 91: "hair brush"}
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Uncountable class names: no article in a caption made from classes ("a dog on grass").
_MASS = {"grass", "sand", "water", "snow", "sky", "dirt", "gravel", "mud", "moss", "fog", "clouds", "leaves",
         "straw", "pavement", "paper", "plastic", "metal", "wood", "cardboard", "cloth", "clothes", "textile",
         "food", "fruit", "salad", "vegetable", "stone", "sea", "hay", "rock", "ground", "furniture", "broccoli",
         "water drops", "skis", "scissors", "stairs", "foliage", "concrete", "marble", "tile"}
_READABLE = {"playingfield": "playing field", "waterdrops": "water drops", "window-blind": "window blind",
             "tv": "television", "hair drier": "hair dryer"}


class CocoStuffLayoutError(LLMFormerError, FileNotFoundError):
    """The folder does not have COCO-Stuff's layout; the message names the path and the layout."""


@dataclasses.dataclass
class CocoStuffItem:
    image: np.ndarray            # (H, W, 3) uint8 RGB
    labels: np.ndarray           # (H, W) uint8 index into classes, IGNORE (255) = unlabeled
    classes: list[str]
    caption: str
    canonical_caption: str       # the same caption (COCO-Stuff has one kind)
    split: str
    path: Path                   # the image file
    caption_source: str          # "file" (captions/{split}.json) or "classes" (made from the label map)


def _layout_error(problem: str) -> CocoStuffLayoutError:
    return CocoStuffLayoutError(f"{problem}\nA COCO-Stuff folder must look like this:\n{LAYOUT}")


def read_labels(path: str | Path) -> dict[int, str]:
    """labels.txt as {id: name}, in file order; raises naming the file and line for a malformed line."""
    path = Path(path)
    if not path.is_file():
        raise _layout_error(f"{path} not found: the label list of the folder")
    out: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, name = line.partition(":")
        if not sep or not key.strip().isdigit() or not name.strip():
            raise ValueError(f"{path}:{n}: expected 'id: name' (e.g. '1: person'), got {line!r}")
        i = int(key)
        if i in out:
            raise ValueError(f"{path}:{n}: id {i} is listed twice ({out[i]!r} and {name.strip()!r})")
        out[i] = name.strip()
    return out


def readable_name(name: str) -> str:
    """A COCO-Stuff class name as a text encoder should read it: "wall-brick" -> "brick wall",
    "sky-other" -> "sky", "mirror-stuff" -> "mirror", "floor-wood" -> "wood floor"."""
    if name in _READABLE:
        return _READABLE[name]
    for suffix in ("-other", "-stuff", "-merged"):
        name = name.removesuffix(suffix)
    if "-" in name:
        head, _, modifier = name.partition("-")
        name = f"{modifier} {head}"
    return _READABLE.get(name, name)


def _article(noun: str) -> str:
    if noun in _MASS:
        return noun
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def caption_from_classes(names: list[str]) -> str:
    """"a photo of a person, a dog and grass" from class names (largest first)."""
    words = [_article(readable_name(n)) for n in names]
    if not words:
        return "a photo"
    if len(words) == 1:
        return f"a photo of {words[0]}"
    return f"a photo of {', '.join(words[:-1])} and {words[-1]}"


class CocoStuff:
    """COCO-Stuff images of one split with label maps in contiguous class indices (see the module
    docstring for the folder layout). items[i] -> CocoStuffItem; `size` resizes image (area) and labels
    (nearest) to size x size, None keeps each image's own size."""

    def __init__(self, root: str | Path, split: str = "train2017", size: int | None = None,
                 labels: str | Path | None = None, max_caption_classes: int = 6):
        self.root = Path(root)
        self.split = split
        self.size = None if size is None else int(size)
        self.max_caption_classes = max_caption_classes
        if not self.root.is_dir():
            raise _layout_error(f"COCO-Stuff folder {self.root} does not exist")
        labels_path = Path(labels) if labels is not None else self.root / "labels.txt"
        ids = read_labels(labels_path)
        self.ids: list[int] = []          # labels.txt id of each class
        for i, name in ids.items():
            if i == 0 or COCO_UNANNOTATED.get(i) == name:
                continue
            if not 1 <= i <= 255:
                raise ValueError(f"{labels_path}: id {i} ({name!r}) is outside 1..255, which a uint8 map cannot hold")
            self.ids.append(i)
        self.ids.sort()
        self.classes: list[str] = [ids[i] for i in self.ids]
        self.prompts: list[str] = [readable_name(n) for n in self.classes]
        # pixel value (id - 1) -> class index; everything else (255 = unlabeled, unlisted ids) -> IGNORE
        self.lut = np.full(256, IGNORE, np.uint8)
        for k, i in enumerate(self.ids):
            self.lut[i - 1] = k

        image_dir = self.root / "images" / split
        ann_dir = self.root / "annotations" / split
        if not image_dir.is_dir():
            found = sorted(p.name for p in (self.root / "images").iterdir() if p.is_dir()) \
                if (self.root / "images").is_dir() else []
            raise _layout_error(f"image folder {image_dir} not found (splits under {self.root / 'images'}: "
                                f"{', '.join(found) or 'none'})")
        if not ann_dir.is_dir():
            raise _layout_error(f"annotation folder {ann_dir} not found (the label maps for {image_dir})")
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        annotations = {p.stem for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
        missing = [p for p in self.images if p.stem not in annotations]
        if missing:
            raise _layout_error(f"{len(missing)} image(s) in {image_dir} have no label map in {ann_dir}, e.g. "
                                f"{missing[0].name} needs {ann_dir / (missing[0].stem + '.png')}")
        self.annotation_dir = ann_dir

        self.captions: dict[str, str] = {}
        captions_path = self.root / "captions" / f"{split}.json"
        if captions_path.is_file():
            try:
                raw = json.loads(captions_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{captions_path} is not valid JSON ({e}); expected "
                                 '{"<image stem>": "caption", ...}') from e
            if not isinstance(raw, dict):
                raise ValueError(f"{captions_path} must map image stems to captions: "
                                 '{"<image stem>": "caption", ...}')
            for stem, text in raw.items():
                if isinstance(text, list):
                    text = next((t for t in text if isinstance(t, str) and t.strip()), None)
                if isinstance(text, str) and text.strip():
                    self.captions[str(stem)] = text.strip()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> CocoStuffItem:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0:
            i += len(self.images)
        if not 0 <= i < len(self.images):
            raise IndexError(f"index {i} out of range for {len(self.images)} images")
        path = self.images[i]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {path}")
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        ann_path = self.annotation_dir / f"{path.stem}.png"
        raw = cv2.imread(str(ann_path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise ValueError(f"cannot read label map {ann_path}")
        if raw.ndim != 2 or raw.dtype != np.uint8:
            raise ValueError(f"label map {ann_path} is {raw.dtype} with shape {raw.shape}: expected a single-channel "
                             "uint8 PNG (pixel = labels.txt id - 1, 255 = unlabeled), as in stuffthingmaps_trainval2017")
        if raw.shape != image.shape[:2]:
            raise ValueError(f"label map {ann_path} is {raw.shape[1]}x{raw.shape[0]} but image {path} is "
                             f"{image.shape[1]}x{image.shape[0]}")
        labels = self.lut[raw]
        if self.size is not None:
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
            labels = cv2.resize(labels, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
        caption = self.captions.get(path.stem)
        source = "file"
        if caption is None:
            counts = np.bincount(labels.ravel(), minlength=256)[:len(self.classes)]
            present = [int(k) for k in np.argsort(-counts, kind="stable") if counts[k] > 0]
            caption = caption_from_classes([self.classes[k] for k in present[:self.max_caption_classes]])
            source = "classes"
        return CocoStuffItem(image, labels, self.classes, caption, caption, self.split, path, source)

    def __repr__(self) -> str:
        return f"CocoStuff({str(self.root)!r}, split={self.split!r}, {len(self)} images, {len(self.classes)} classes)"


# -- a synthetic folder in COCO-Stuff's layout (for tests) ----------------------------------------------
def synthetic_label_ids() -> dict[int, str]:
    """The ids write_cocostuff_layout gives the synthetic classes, laid out like COCO-Stuff's: shapes
    ("things", training and held-out) from 1, backgrounds ("stuff") from 92, so the ids are not
    contiguous and the reader's remapping is exercised."""
    ids = {0: "unlabeled"}
    for k, name in enumerate(OBJECT_NAMES + HELDOUT_NAMES):
        ids[1 + k] = name
    for k, name in enumerate(BACKGROUND_NAMES):
        ids[92 + k] = name
    return ids


def write_cocostuff_layout(root: str | Path, n: int, split: str = "train2017", seed: int = 0, size: int = 256,
                           scenes: str | None = None) -> Path:
    """Writes n synthetic scenes (llmformer.data.synthetic) in COCO-Stuff's layout under root: images/{split}/*.jpg,
    annotations/{split}/*.png (pixel = id - 1, as stuffthingmaps), labels.txt (synthetic_label_ids()) and
    captions/{split}.json (each scene's varied caption). `scenes` picks the synthetic split ("train",
    "val", "heldout"; default "val" for a split named val*, else "train"). Returns root."""
    root = Path(root)
    scene_split = scenes or ("val" if split.startswith("val") else "train")
    ids = synthetic_label_ids()
    value = {name: i - 1 for i, name in ids.items() if i > 0}
    image_dir, ann_dir, cap_dir = root / "images" / split, root / "annotations" / split, root / "captions"
    for d in (image_dir, ann_dir, cap_dir):
        d.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("".join(f"{i}: {name}\n" for i, name in ids.items()), encoding="utf-8")
    lut = None
    captions = {}
    for k in range(n):
        scene = make_scene(scene_split, k, size=size, seed=seed)
        if lut is None:
            lut = np.array([value[c] for c in scene.classes] + [255] * (256 - len(scene.classes)), np.uint8)
        stem = f"{k:012d}"
        cv2.imwrite(str(image_dir / f"{stem}.jpg"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(ann_dir / f"{stem}.png"), lut[scene.labels])
        captions[stem] = scene.caption
    (cap_dir / f"{split}.json").write_text(json.dumps(captions, indent=1), encoding="utf-8")
    return root
