"""Accuracy of a built artifact folder through the deployed `segment()`, on the synthetic splits.

    python -m runtime.evaluate ARTIFACTS [--split val heldout] [--scenes 200] [--backend onnxruntime]
                                         [--json OUT]

For each split it reports mIoU and pixel accuracy in three settings:
  given/gt       the split's class names as the vocabulary, priors from the scene's own caption
  given/model    the same vocabulary, priors from the build's captioner (the deployed chain)
  open/model     no vocabulary: the classes are the captioner's object nouns (open vocabulary); a
                 predicted name scores only where it is the ground-truth class's name
and, for the captioner, caption exact-match against the scene's canonical caption and object-prior F1
(the parsed caption's object names against the scene's objects and background, as multisets).
Torch-free: it runs wherever the runtime runs (a Jetson included).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

IGNORE = 255


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


def scene_objects(scene) -> list[str]:
    return [o.name for o in scene.objects] + [scene.background]


def evaluate_split(rt, split: str, scenes: int, seed: int = 0, log=print) -> dict[str, Any]:
    from llmformer.data.synthetic import SyntheticScenes

    data = SyntheticScenes(split, scenes, size=int(rt.manifest["preprocess"]["segmenter"]["size"]), seed=seed)
    classes = list(data.classes)
    index = {c: i for i, c in enumerate(classes)}
    given_gt, given_model, open_model = Confusion(len(classes)), Confusion(len(classes)), Confusion(len(classes))
    exact, parsed, truth = 0, [], []
    t0 = time.perf_counter()
    for i in range(len(data)):
        scene = data[i]
        seg = rt.segment(scene.image, vocabulary=classes, caption=scene.caption)
        given_gt.add(seg.labels, scene.labels)
        truth.append(scene_objects(scene))
        if rt.captioner is None:
            continue
        image = rt.encode_image(scene.image)
        text = rt.caption(image).text
        exact += text.strip() == scene.canonical_caption.strip()
        priors = rt.parse_caption(text)
        parsed.append(list(priors.names))
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
                           "seconds": round(time.perf_counter() - t0, 1)}
    if rt.captioner is not None:
        out.update(given_model=given_model.summary(classes), open_model=open_model.summary(classes),
                   caption_exact_match=exact / len(data) * 100, object_prior_f1=object_f1(parsed, truth))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", type=Path)
    ap.add_argument("--split", nargs="+", default=["val", "heldout"], choices=("train", "val", "heldout"))
    ap.add_argument("--scenes", type=int, default=200, help="scenes per split")
    ap.add_argument("--seed", type=int, default=0, help="scene seed (the training used 0)")
    ap.add_argument("--backend", default=None, choices=("onnxruntime", "torch", "tensorrt"))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    import runtime

    results: dict[str, Any] = {"artifacts": str(args.artifacts)}
    with runtime.load(args.artifacts, backend=args.backend, threads=args.threads) as rt:
        results["backend"] = rt.backend
        results["precision"] = rt.manifest.get("precision", "fp32")
        for split in args.split:
            r = evaluate_split(rt, split, args.scenes, args.seed)
            results[split] = r
            line = f"{split:8s} given/gt mIoU {r['given_gt']['miou']:6.2f}  pixel acc {r['given_gt']['pixel_accuracy']:6.2f}"
            if "given_model" in r:
                line += (f" | given/model {r['given_model']['miou']:6.2f} | open/model {r['open_model']['miou']:6.2f}"
                         f" | caption exact {r['caption_exact_match']:5.1f}% object F1 {r['object_prior_f1']:5.1f}")
            print(line, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
