"""What the captioner's mistakes cost the segmenter: a build's captions against each scene's true caption, and
vocabulary-given mIoU with the priors edited after parsing, so each kind of mistake is priced on its own.

    python benchmarks/bench_caption_errors.py BUILD --data SCENE_FOLDER [SCENE_FOLDER ...] [--json OUT]

Captions are compared as sets of kinds (names parsed by the runtime's parser; the background counts as a kind):
precision, recall, the share of true kinds not named at all, the share named as another kind (as many of the missed
kinds as the caption has names that are not in the scene) and names of nothing (the names left over). mIoU rows, the
split's class names as the vocabulary (runtime/evaluate.py's given/* settings):
  true             the scene's caption (given/gt)
  none             no caption (given/none)
  model            the build's caption (given/model)
  model, right     the build's caption without the objects whose name is not in the scene (what wrong names cost)
  true, named      the true caption without the kinds the build's caption does not name (with the row above:
                   what its attributes and relations cost; against `true`: what the kinds it leaves out cost)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

ROWS = ("true", "none", "model", "model, right", "true, named")


def evaluate(rt, data) -> dict:
    from runtime.evaluate import Confusion
    from runtime.priors import Priors

    classes = list(data.classes)
    conf = {row: Confusion(len(classes)) for row in ROWS}
    kinds = right = named = missed = renamed = 0
    for i in range(len(data)):
        scene = data[i]
        image = rt.encode_image(scene.image)
        true = rt.parse_caption(scene.caption)
        model = rt.parse_caption(rt.caption(image).text)
        t_names, m_names = set(true.names), set(model.names)
        common = len(t_names & m_names)
        lost, extra = len(t_names) - common, len(m_names) - common     # kinds not named; names not in the scene
        kinds, named, right = kinds + len(t_names), named + len(m_names), right + common
        renamed, missed = renamed + min(lost, extra), missed + max(lost - extra, 0)
        priors = {"true": true, "none": Priors(caption=""), "model": model,
                  "model, right": model.select([k for k, n in enumerate(model.names) if n in t_names]),
                  "true, named": true.select([k for k, n in enumerate(true.names) if n in m_names])}
        for row, p in priors.items():
            conf[row].add(rt.decode(image, rt.embed(p, classes)).labels, scene.labels)
    def pct(a: int, b: int) -> float:
        return round(100.0 * a / max(b, 1), 1)

    return {"scenes": len(data), "precision": pct(right, named), "recall": pct(right, kinds),
            "not_named": pct(missed, kinds), "renamed": pct(renamed, kinds),
            "names_of_nothing": named - right - renamed,
            "miou": {row: round(c.summary(classes)["miou"], 2) for row, c in conf.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path)
    ap.add_argument("--data", type=Path, nargs="+", required=True, metavar="SCENE_FOLDER")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    import runtime
    from runtime.evaluate import SceneFolder

    folders = [SceneFolder(d) for d in args.data]
    results = {"machine": machine(), "build": str(args.build), "backend": args.backend}
    with runtime.load(args.build, backend=args.backend) as rt:
        if rt.captioner is None:
            ap.error(f"{args.build} has no captioner: build one with `python export/build_engines.py`")
        for data in folders:
            r = results[data.split] = evaluate(rt, data)
            print(f"{data.split:8s} kinds: precision {r['precision']} recall {r['recall']} not named "
                  f"{r['not_named']}% renamed {r['renamed']}% names of nothing {r['names_of_nothing']} | mIoU "
                  + "  ".join(f"{row} {v:.2f}" for row, v in r["miou"].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
