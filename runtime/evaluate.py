"""Accuracy of a built artifact folder through the deployed `segment()`, on scene folders.

    python -m llmformer.data.scene_folder scenes/val --split val --scenes 200       # where PyTorch's side is
    python -m runtime.evaluate ARTIFACTS --data scenes/val [scenes/heldout] [--scenes N] [--backend onnxruntime]
                                         [--json OUT]

A scene folder holds `scenes.json` and the images and label maps it names:

    {"format": "llmformer-edge/scenes", "version": 1, "split": "val", "classes": ["circle", ...],
     "ignore": 255, "scenes": [{"image": "images/000000.png", "labels": "labels/000000.png",
                                "caption": "...", "canonical_caption": "...", "objects": ["star", "grass"]}]}

`labels` is a single-channel PNG of indices into `classes` (`ignore` = unlabeled); `caption` gives the
priors of the given/gt setting; `canonical_caption` and `objects` (names with repeats, what a caption
should mention) score the captioner and are optional. `llmformer.data.scene_folder` writes the synthetic
splits in this layout; the evaluation reads files only, so it runs wherever the runtime runs.

For each folder it reports mIoU and pixel accuracy in four settings:
  given/gt       the split's class names as the vocabulary, priors from the scene's own caption
  given/none     the same vocabulary, no caption (null priors): what the segmenter does without the LLM
  given/model    the same vocabulary, priors from the build's captioner (the deployed chain)
  open/model     no vocabulary: the classes are the captioner's object nouns (open vocabulary); a
                 predicted name scores only where it is the ground-truth class's name
and, for the captioner, caption exact-match against the scene's canonical caption and object-prior F1
(the parsed caption's object names against the scene's objects and background, as multisets).
Torch-free: it runs wherever the runtime runs (a Jetson included).

Failures: one `error: ...` line on stderr, exit status 2 for a wrong command line or scene folder (checked
before the runtime loads: a missing artifact folder, an unreadable scenes.json, a --json that cannot be
written) and 1 for a failed run; --debug shows the traceback.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.errors import LLMFormerError
from runtime.commands import CommandParser, artifact_folder, bounded, existing_folder, output_file, run_command
from runtime.priors import Priors

IGNORE = 255
SCENES_FILE = "scenes.json"
SCENES_FORMAT = "llmformer-edge/scenes"


class SceneFolderError(LLMFormerError, ValueError):
    """A scene folder that cannot be read; the message names the file and the key."""


@dataclass
class EvalScene:
    image: np.ndarray                  # (H, W, 3) uint8 RGB
    labels: np.ndarray                 # (H, W) uint8 index into the folder's classes, IGNORE = unlabeled
    caption: str
    canonical_caption: str | None
    objects: list[str] | None


class SceneFolder:
    """A scene folder (see the module docstring), read lazily: folder[i] is an EvalScene."""

    def __init__(self, folder: str | Path, limit: int | None = None):
        self.folder = Path(folder)
        path = self.folder / SCENES_FILE
        if not path.is_file():
            raise SceneFolderError(f"{path} is missing: write a scene folder with `python -m llmformer.data.scene_folder "
                                   f"{self.folder} --split val` or lay out your own (see runtime/evaluate.py)")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SceneFolderError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != SCENES_FORMAT:
            raise SceneFolderError(f"{path} is not a scene folder index (format must be '{SCENES_FORMAT}')")
        self.classes = meta.get("classes")
        if not (isinstance(self.classes, list) and self.classes and all(isinstance(c, str) for c in self.classes)):
            raise SceneFolderError(f"{path}: classes must be a non-empty list of names")
        self.split = str(meta.get("split", self.folder.name))
        self.ignore = meta.get("ignore", IGNORE)
        if not isinstance(self.ignore, int) or isinstance(self.ignore, bool) or not 0 <= self.ignore <= 255:
            raise SceneFolderError(f"{path}: ignore must be a label value in 0..255, got {self.ignore!r}")
        self.records = meta.get("scenes")
        if not isinstance(self.records, list) or not self.records:
            raise SceneFolderError(f"{path}: scenes must be a non-empty list")
        for i, r in enumerate(self.records):
            if not (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("image", "labels", "caption"))):
                raise SceneFolderError(f"{path}: scenes[{i}] needs image, labels and caption strings")
        self.records = self.records[:limit]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> EvalScene:
        import cv2

        r = self.records[i]
        bgr = cv2.imread(str(self.folder / r["image"]), cv2.IMREAD_COLOR)
        labels = cv2.imread(str(self.folder / r["labels"]), cv2.IMREAD_UNCHANGED)
        for name, array in ((r["image"], bgr), (r["labels"], labels)):
            if array is None:
                raise SceneFolderError(f"{self.folder / name} cannot be read as an image")
        if labels.ndim != 2 or labels.shape != bgr.shape[:2]:
            raise SceneFolderError(f"{self.folder / r['labels']}: labels must be one channel of the image's size "
                                   f"{bgr.shape[:2]}, got {labels.shape}")
        labels = np.where(labels == self.ignore, IGNORE, labels).astype(np.uint8)
        return EvalScene(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), labels, r["caption"], r.get("canonical_caption"),
                         r.get("objects"))


class Confusion:
    """A confusion matrix over `n` classes; ground truth IGNORE (and predictions outside [0, n)) are skipped
    or counted as wrong, respectively."""

    def __init__(self, n: int):
        self.n = n
        self.matrix = np.zeros((n, n + 1), np.int64)   # last column: a prediction that is no class here

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred).astype(np.int64).ravel()
        gt = np.asarray(gt).astype(np.int64).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
        keep = (gt != IGNORE) & (gt >= 0) & (gt < self.n)
        pred, gt = pred[keep], gt[keep]
        pred = np.where((pred >= 0) & (pred < self.n), pred, self.n)
        self.matrix += np.bincount(gt * (self.n + 1) + pred, minlength=self.n * (self.n + 1)).reshape(self.n, self.n + 1)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both ground truth and predictions."""
        tp = np.diag(self.matrix[:, :self.n]).astype(np.float64)
        gt = self.matrix.sum(1)
        pred = self.matrix[:, :self.n].sum(0)
        union = gt + pred - tp
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def summary(self, classes: Sequence[str]) -> dict[str, Any]:
        iou = self.iou()
        total = self.matrix.sum()
        return {"miou": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else 0.0,
                "pixel_accuracy": float(np.trace(self.matrix[:, :self.n]) / max(total, 1) * 100),
                "iou": {c: (None if np.isnan(v) else round(float(v) * 100, 2)) for c, v in zip(classes, iou)}}


def object_f1(predicted: Sequence[Sequence[str]], truth: Sequence[Sequence[str]]) -> float:
    """F1 of object names as multisets, summed over scenes."""
    tp = fp = fn = 0
    for p, t in zip(predicted, truth):
        cp, ct = Counter(p), Counter(t)
        common = sum((cp & ct).values())
        tp, fp, fn = tp + common, fp + sum(cp.values()) - common, fn + sum(ct.values()) - common
    return 2 * tp / max(2 * tp + fp + fn, 1) * 100


def evaluate_folder(rt, data: SceneFolder) -> dict[str, Any]:
    """Every setting's mIoU and pixel accuracy on one scene folder (and the captioner's scores)."""
    classes = list(data.classes)
    index = {c: i for i, c in enumerate(classes)}
    given_gt, given_none = Confusion(len(classes)), Confusion(len(classes))
    given_model, open_model = Confusion(len(classes)), Confusion(len(classes))
    no_priors = Priors(caption="")
    exact, scored_captions, parsed, truth = 0, 0, [], []
    t0 = time.perf_counter()
    for i in range(len(data)):
        scene = data[i]
        seg = rt.segment(scene.image, vocabulary=classes, caption=scene.caption)
        given_gt.add(seg.labels, scene.labels)
        image = rt.encode_image(scene.image)
        given_none.add(rt.decode(image, rt.embed(no_priors, classes)).labels, scene.labels)
        if rt.captioner is None:
            continue
        text = rt.caption(image).text
        if scene.canonical_caption is not None:
            exact += text.strip() == scene.canonical_caption.strip()
            scored_captions += 1
        priors = rt.parse_caption(text)
        if scene.objects is not None:
            parsed.append(list(priors.names))
            truth.append(list(scene.objects))
        emb = rt.embed(priors, classes)
        given_model.add(rt.decode(image, emb).labels, scene.labels)
        if priors.objects:
            emb = rt.embed(priors, None)
            labels = rt.decode(image, emb).labels
            # A predicted name counts where it is a class of this split, by exact name.
            lut = np.asarray([index.get(c, -1) for c in emb.classes] + [-1], np.int64)
            open_model.add(lut[np.where(labels >= 0, labels, len(emb.classes))], scene.labels)
        else:
            open_model.add(np.full(scene.labels.shape, -1), scene.labels)
    out: dict[str, Any] = {"scenes": len(data), "classes": classes, "given_gt": given_gt.summary(classes),
                           "given_none": given_none.summary(classes),
                           "seconds": round(time.perf_counter() - t0, 1)}
    if rt.captioner is not None:
        out.update(given_model=given_model.summary(classes), open_model=open_model.summary(classes),
                   caption_exact_match=exact / scored_captions * 100 if scored_captions else None,
                   object_prior_f1=object_f1(parsed, truth) if truth else None)
    return out


def summary_line(split: str, r: dict[str, Any]) -> str:
    line = f"{split:8s} given/gt mIoU {r['given_gt']['miou']:6.2f}  pixel acc {r['given_gt']['pixel_accuracy']:6.2f}"
    if "given_none" in r:
        line += f" | given/none {r['given_none']['miou']:6.2f}"
    if "given_model" in r:
        line += f" | given/model {r['given_model']['miou']:6.2f} | open/model {r['open_model']['miou']:6.2f}"
        if r["caption_exact_match"] is not None:
            line += f" | caption exact {r['caption_exact_match']:5.1f}%"
        if r["object_prior_f1"] is not None:
            line += f" object F1 {r['object_prior_f1']:5.1f}"
    return line


def main(argv=None) -> int:
    """The command; one `error:` line and status 2 (usage, a bad scene folder) or 1 (run) on failure."""
    return run_command(_main, argv, usage=(SceneFolderError,))


def _main(argv) -> int:
    ap = CommandParser(prog="python -m runtime.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", type=artifact_folder)
    ap.add_argument("--data", type=existing_folder, nargs="+", required=True, metavar="SCENE_FOLDER",
                    help="scene folders (see above; `python -m llmformer.data.scene_folder` writes the synthetic ones)")
    ap.add_argument("--scenes", type=bounded(int, 1), default=None,
                    help="evaluate only the first N scenes of each folder (>= 1)")
    ap.add_argument("--backend", default=None, choices=("onnxruntime", "torch", "tensorrt"))
    ap.add_argument("--threads", type=bounded(int, 1), default=None, help="intra-op threads per engine (>= 1)")
    ap.add_argument("--frame-path", default="auto", choices=("auto", "device", "host"),
                    help="where frames are pre/postprocessed: runtime.load(frame_path=...) (default auto)")
    ap.add_argument("--json", type=output_file, default=None, help="write the results here")
    args = ap.parse_args(argv)
    import runtime

    results: dict[str, Any] = {"artifacts": str(args.artifacts)}
    folders = [SceneFolder(d, args.scenes) for d in args.data]  # every folder checked before any work
    with runtime.load(args.artifacts, backend=args.backend, threads=args.threads, frame_path=args.frame_path) as rt:
        results["backend"] = rt.backend
        results["precision"] = rt.manifest.precision
        for data in folders:
            r = results[data.split] = evaluate_folder(rt, data)
            print(summary_line(data.split, r), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
