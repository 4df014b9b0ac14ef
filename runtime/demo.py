"""The main job on the embedded default: segment the build's sample frames and write overlay PNGs.

    python -m runtime.demo [ARTIFACTS] [--out DIR] [--frames N] [--backend onnxruntime|torch|tensorrt]

The frames are the ones `build_engines.py` put in the artifact folder (`samples/`, listed in the manifest),
so the demo runs wherever the runtime does, without PyTorch or a dataset. With trained weights (the demo
preset ships them) they are synthetic validation scenes with ground truth: the build's captioner describes
each one, the caption's priors guide the segmenter over the scenes' class names, and each frame's pixel
accuracy is printed beside the caption with which of the objects it names are in the frame (right), which
are not (wrong) and which classes in the frame it leaves out (missed); the overlay shows the same line
under the caption. A build with random weights has generated frames with scripted captions instead.

Failures: one `error: ...` line on stderr, exit status 2 for a wrong command line (a missing artifact folder,
an --out that cannot be written, --frames < 1) and 1 for a failed run; --debug shows the traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

import runtime
from runtime.commands import CommandError, CommandParser, artifact_folder, bounded, output_folder, run_command
from runtime.visualize import visualize


def read_sample(folder: Path, sample) -> tuple[np.ndarray, np.ndarray | None]:
    """A build's sample frame (H, W, 3) uint8 RGB and its labels (H, W) uint8, 255 = ignore (None without)."""
    frame = cv2.cvtColor(cv2.imread(str(folder / sample.frame.file), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    labels = None if sample.labels is None else cv2.imread(str(folder / sample.labels.file), cv2.IMREAD_UNCHANGED)
    return frame, labels


def caption_check(names, vocabulary, truth: np.ndarray) -> str:
    """"right: star, grass; wrong: cloud; missed: cross": the object names a caption's priors hold (as segment()
    parsed them) against the classes present in the ground-truth labels (names outside the vocabulary count as
    wrong)."""
    present = {vocabulary[c] for c in np.unique(truth) if c < len(vocabulary)}
    named = list(dict.fromkeys(names))
    parts = [("right", [n for n in named if n in present]), ("wrong", [n for n in named if n not in present]),
             ("missed", [c for c in vocabulary if c in present and c not in named])]
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in parts if v) or "names nothing"


def main(argv=None) -> int:
    """The command; one `error:` line and status 2 (usage) or 1 (run) on failure (runtime.commands)."""
    return run_command(_main, argv)


def _main(argv) -> int:
    ap = CommandParser(prog="python -m runtime.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="?", default="artifacts/demo", type=artifact_folder,
                    help="artifact folder (default artifacts/demo: `python export/build_engines.py` writes it)")
    ap.add_argument("--out", type=output_folder, default="demo_out", help="folder for the overlay PNGs")
    ap.add_argument("--frames", type=bounded(int, 1), default=4,
                    help="frames to segment (the build's samples, cycled), >= 1")
    ap.add_argument("--backend", default=None, choices=["onnxruntime", "torch", "tensorrt"])
    ap.add_argument("--threads", type=bounded(int, 1), default=None, help="intra-op threads per engine (>= 1)")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    stages = ["preprocess", "vision", "caption", "parse", "text", "segment", "postprocess", "total"]
    with runtime.load(args.artifacts, backend=args.backend, threads=args.threads) as rt:
        random = [n for n, c in rt.manifest.components.items() if c.random_weights]
        samples = rt.manifest.samples
        if not samples:
            raise CommandError(f"{args.artifacts} has no sample frames (built before they were added): rebuild it "
                               f"with `python export/build_engines.py --out {args.artifacts}`")
        scored = samples[0].labels is not None
        trained = scored and not random and rt.captioner is not None
        print(f"{rt}: {args.frames} {'synthetic validation scenes' if scored else 'generated frames'} -> {args.out}/")
        print(f"{'frame':<7}" + "".join(f"{s:>12}" for s in stages) + ("   pixel acc  caption" if scored else
                                                                      "   classes found") + "  (ms per stage)")
        for i in range(args.frames):
            sample = samples[i % len(samples)]
            frame, truth = read_sample(rt.folder, sample)
            # Trained with a captioner: caption=None, the captioner describes the frame (the deployed chain).
            seg = rt.segment(frame, vocabulary=sample.vocabulary, caption=None if trained else sample.caption)
            note = None
            if truth is not None:
                valid = truth != 255
                accuracy = float((seg.labels[valid] == truth[valid]).mean() * 100) if valid.any() else float("nan")
                tail = f"   {accuracy:8.1f}%  {seg.caption!r}"
                if trained:
                    check = caption_check(seg.priors.names if seg.priors else [], sample.vocabulary, truth)
                    tail += f"\n{'':7}objects named by the caption: {check}"
                    note = f"caption objects: {check}"
            else:
                tail = f"   {[seg.classes[c] for c in np.unique(seg.labels[seg.labels >= 0])]}"
            path = args.out / f"frame_{i:03d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(visualize(frame, seg, note=note), cv2.COLOR_RGB2BGR)):
                raise CommandError(f"cannot write {path}: is the folder writable and the disk not full?")
            print(f"{i:<7}" + "".join(f"{seg.timings.get(s, 0.0):12.1f}" for s in stages) + tail)
        if random:
            print(f"note: {', '.join(random)} have random weights, so the masks are not meaningful yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
