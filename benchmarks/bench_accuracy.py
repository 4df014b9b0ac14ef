"""Accuracy through the deployment chain: the trained demo built at FP32, FP16 and INT8, evaluated with
`runtime.evaluate` on the synthetic validation and held-out-vocabulary splits, on PyTorch and ONNX Runtime.

    python benchmarks/bench_accuracy.py [--scenes 200] [--calib-scenes 64] [--work DIR] [--json OUT]

Builds DIR/{fp32,fp16,int8} from the demo preset (its shipped trained weights); INT8 is calibrated on
training-split scenes (images + their captions and class lists in captions.txt), layers with more than
--int8-tolerance (the build's default, 2%) isolated error kept FP32. Each row: mIoU and pixel
accuracy per split and setting (see runtime/evaluate.py), and the mIoU difference from PyTorch FP32.
Each build is evaluated in its own process (ONNX Runtime's and torch's thread pools slow each other).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

ROWS = [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")]


def write_calibration(folder: Path, scenes: int) -> Path:
    import cv2

    from llmformer.data.synthetic import SyntheticScenes

    folder.mkdir(parents=True, exist_ok=True)
    data = SyntheticScenes("train", scenes, seed=1)   # not the evaluation scenes, not seed 0's training stream start
    lines = []
    for i in range(len(data)):
        s = data[i]
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        lines.append(f"{s.caption} | {', '.join(s.classes)}")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    return folder


def scene_folders(work: Path, splits: list[str], scenes: int) -> list[Path]:
    """The evaluation scenes as files (runtime.evaluate reads scene folders), written once per split and size."""
    from llmformer.data.scene_folder import write_scene_folder

    folders = []
    for split in splits:
        folder = work / "scenes" / f"{split}-{scenes}"
        if not (folder / "scenes.json").is_file():
            write_scene_folder(folder, split, scenes)
        folders.append(folder)
    return folders


def evaluate(folder: Path, backend: str, data: list[Path]) -> dict:
    import runtime
    from runtime.evaluate import SceneFolder, evaluate_folder

    with runtime.load(folder, backend=backend, threads=2) as rt:
        return {d.split: evaluate_folder(rt, d) for d in map(SceneFolder, data)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=200, help="scenes per split")
    ap.add_argument("--calib-scenes", type=int, default=64)
    ap.add_argument("--splits", nargs="+", default=["val", "heldout"])
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "accuracy")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--int8-tolerance", type=float, default=None,
                    help="per-layer FP32 fallback threshold of the INT8 build (default: the build's, 0.02)")
    args = ap.parse_args(argv)
    from export.build_engines import build, parse_args

    print(f"machine: {machine()}; demo preset, {args.scenes} scenes per split", flush=True)
    calib = write_calibration(args.work / "calib", args.calib_scenes)
    data = scene_folders(args.work, args.splits, args.scenes)
    for precision in ("fp32", "fp16", "int8"):
        out = args.work / precision
        if not (out / "manifest.json").is_file():
            extra = ["--calib", str(calib)] if precision == "int8" else []
            if precision == "int8" and args.int8_tolerance is not None:
                extra += ["--int8-tolerance", str(args.int8_tolerance)]
            build(parse_args(["--preset", "demo", "--out", str(out), "--precision", precision, *extra]))
    results = {}
    for backend, precision in ROWS:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[f"{backend}/{precision}"] = pool.submit(evaluate, args.work / precision, backend, data).result()
        print(f"evaluated {backend} {precision}", flush=True)
    base = results["torch/fp32"]
    header = f"{'backend / precision':<22}"
    for split in args.splits:
        header += f"| {split + ' given/gt':>18} {'given/none':>11} {'given/model':>12} {'open/model':>11} {'Δ vs torch':>10} "
    print("\nmIoU (pixel accuracy) per split; settings in runtime/evaluate.py")
    print(header)
    for key, r in results.items():
        line = f"{key:<22}"
        for split in args.splits:
            s = r[split]
            delta = s["given_gt"]["miou"] - base[split]["given_gt"]["miou"]
            line += (f"| {s['given_gt']['miou']:7.2f} ({s['given_gt']['pixel_accuracy']:5.1f})"
                     f"  {s.get('given_none', {}).get('miou', float('nan')):10.2f}"
                     f"  {s.get('given_model', {}).get('miou', float('nan')):11.2f}"
                     f" {s.get('open_model', {}).get('miou', float('nan')):11.2f} {delta:+10.2f} ")
        print(line)
    for split in args.splits:
        s = base[split]
        if "caption_exact_match" in s:
            print(f"captioner on {split}: exact match {s['caption_exact_match']:.1f}%, object-prior F1 "
                  f"{s['object_prior_f1']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
