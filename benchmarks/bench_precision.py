"""FP16 and INT8 graphs against FP32 under ONNX Runtime on the CPU: accuracy per component and per frame, the INT8
per-layer error table, and segment() speed FP32 vs INT8. Same artifacts, same frames, same machine, one run.

    python benchmarks/bench_precision.py [--presets demo edge] [--frames 8] [--calib-frames 32] [--threads 2]
                                         [--speed-frames 20] [--accuracy-presets demo] [--json out.json]

Builds artifacts/precision/<preset> (FP32) where missing, then <preset>-fp16 and <preset>-int8 beside it
(export.precision.convert_artifacts, as `build_engines.py --precision` does). INT8 calibrates on synthetic frames
written to artifacts/calib_frames (llmformer.data.frames.demo_frame 100..), disjoint from the evaluation frames (0..).

- per component: each component's graph run on the inputs the FP32 pipeline feeds it on the evaluation frames
  (so errors do not compound across components): max / mean |x - fp32| of its outputs;
- per frame: the whole pipeline in each precision; label-map agreement with FP32 (% of pixels);
- FP16 twice: as ONNX Runtime's CPU runs the FP16 graph (it computes many FP16 nodes in FP32) and emulated (every
  FP16 tensor rounded to FP16, export.precision.emulate_fp16), which is what a GPU computes;
- speed: p50 / p95 of the `segment` stage (segmenter engine) and of the whole `segment()` call, FP32 and INT8.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.common import machine, pct  # noqa: E402
from llmformer.data.frames import DEMO_SCENES, demo_frame  # noqa: E402

FRAME = (480, 640)


def quiet(_: str) -> None:
    pass


def fp32_folder(preset: str) -> Path:
    folder = ROOT / "artifacts" / "precision" / preset
    if not (folder / "manifest.json").is_file():
        from export.build_engines import build, parse_args

        build(parse_args(["--preset", preset, "--out", str(folder)]))
    return folder


def calib_folder(count: int) -> Path:
    import cv2

    folder = ROOT / "artifacts" / "calib_frames"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"frame_{i:03d}.png"
        if not path.is_file():
            cv2.imwrite(str(path), cv2.cvtColor(demo_frame(100 + i, FRAME), cv2.COLOR_RGB2BGR))
    return folder


def converted(src: Path, precision: str, calib: Path | None, rebuild: bool) -> tuple[Path, dict]:
    from engines.contract import read_manifest, write_manifest
    from export.precision import convert_artifacts

    dst = src.parent / f"{src.name}-{precision}"
    if dst.exists() and not rebuild and (dst / "manifest.json").is_file():
        m = read_manifest(dst)
        return dst, {n: c.precision_report for n, c in m.components.items()}
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    t = time.perf_counter()
    reports = convert_artifacts(dst, manifest, precision, calib=calib, cache_dir=src.parent / "calibration_cache")
    write_manifest(dst, manifest)
    print(f"  {dst.name}: converted in {time.perf_counter() - t:.0f} s")
    return dst, reports


def emulated_folder(fp16: Path) -> Path:
    """A copy of the FP16 folder whose graphs round like a GPU (export.precision.emulate_fp16)."""
    import onnx

    from engines.contract import file_entry, read_manifest, write_manifest
    from export.precision import emulate_fp16

    dst = fp16.parent / f"{fp16.name}-emulated"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(fp16, dst)
    manifest = read_manifest(dst)
    for entry in manifest.components.values():
        path = dst / entry.onnx.file
        onnx.save(emulate_fp16(onnx.load(str(path))), str(path))
        entry.onnx = file_entry(dst, entry.onnx.file)
    write_manifest(dst, manifest)
    return dst


def eval_cases(frames: int):
    return [(demo_frame(i, FRAME), *DEMO_SCENES[i % len(DEMO_SCENES)]) for i in range(frames)]


def component_errors(fp32: Path, others: dict[str, Path], frames: int) -> dict:
    """{label: {component: {output: (max_abs, mean_abs)}}} on the FP32 pipeline's recorded feeds."""
    from calibration.data import CalibrationSet
    from engines.contract import read_manifest
    from calibration.graphs import output_errors, run

    cases = eval_cases(frames)
    data = CalibrationSet([c[0] for c in cases], [(c[1], list(c[2])) for c in cases], "evaluation frames")
    manifest = read_manifest(fp32)
    feeds = data.record(fp32, manifest)
    out = {}
    for label, folder in others.items():
        m = read_manifest(folder)
        out[label] = {}
        for name, entry in m.components.items():
            ref = run(fp32 / manifest.components[name].onnx.file, feeds[name])
            got = run(folder / entry.onnx.file, feeds[name])
            out[label][name] = {k: (v["max_abs"], v["mean_abs"]) for k, v in output_errors(ref, got).items()}
    return out


def frame_agreement(fp32: Path, others: dict[str, Path], frames: int, threads: int) -> dict[str, list[float]]:
    import runtime

    cases = eval_cases(frames)
    with runtime.load(fp32, threads=threads) as rt:
        ref = [rt.segment(f, vocabulary=list(v), caption=c).labels for f, c, v in cases]
    # How many classes the FP32 map uses: with random weights one class often wins everywhere, which makes
    # agreement easy; the column says so.
    out = {"fp32 classes in map": [float(len(np.unique(r))) for r in ref]}
    for label, folder in others.items():
        with runtime.load(folder, threads=threads) as rt:
            out[label] = [100.0 * float((rt.segment(f, vocabulary=list(v), caption=c).labels == r).mean())
                          for (f, c, v), r in zip(cases, ref)]
    return out


def speed(folder: Path, frames: int, threads: int) -> dict[str, list[float]]:
    import runtime

    times = {"segment": [], "vision": [], "total": []}
    with runtime.load(folder, threads=threads) as rt:
        for i in range(frames + 2):
            caption, vocab = DEMO_SCENES[i % len(DEMO_SCENES)]
            seg = rt.segment(demo_frame(i, FRAME), vocabulary=list(vocab), caption=caption)
            if i >= 2:
                for k in times:
                    times[k].append(seg.timings[k])
    return times


def layer_table(report: dict, top: int) -> list[str]:
    rows = sorted(report["layers"], key=lambda r: -r["isolated_rel_err"])
    lines = ["| layer | op | weight err | input err | isolated output err | accumulated err | kept FP32 |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows[:top]:
        lines.append(f"| `{r['layer']}` | {r['op']} | {r['weight_rel_err']:.2%} | {r['input_rel_err']:.2%} | "
                     f"{r['isolated_rel_err']:.2%} | {r['accumulated_rel_err']:.2%} | {'yes' if r['excluded'] else 'no'} |")
    iso = [r["isolated_rel_err"] for r in rows]
    lines.append(f"\n{len(rows)} INT8 layers; isolated relative output error: median {np.median(iso):.2%}, "
                 f"max {max(iso):.2%}; tolerance {report['layer_tolerance']:.0%}, "
                 f"{len(report['excluded_layers'])} layer(s) kept FP32.")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["demo", "edge"])
    ap.add_argument("--accuracy-presets", nargs="+", default=["demo"])
    ap.add_argument("--frames", type=int, default=8, help="evaluation frames for the accuracy tables")
    ap.add_argument("--calib-frames", type=int, default=32)
    ap.add_argument("--speed-frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-layers", type=int, default=12)
    ap.add_argument("--rebuild", action="store_true", help="convert again even where the folders exist")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    print(f"machine: {machine()}; ONNX Runtime CPU, {args.threads} threads, {FRAME[1]}x{FRAME[0]} frames")
    calib = calib_folder(args.calib_frames)
    results = {}
    for preset in args.presets:
        fp32 = fp32_folder(preset)
        int8, int8_reports = converted(fp32, "int8", calib, args.rebuild)
        res = results[preset] = {}
        if preset in args.accuracy_presets:
            fp16, fp16_reports = converted(fp32, "fp16", None, args.rebuild)
            folders = {"fp16 (ORT CPU)": fp16, "fp16 (emulated GPU)": emulated_folder(fp16), "int8": int8}
            res["components"] = component_errors(fp32, folders, args.frames)
            res["frames"] = frame_agreement(fp32, folders, args.frames, args.threads)
            res["fp16_islands"] = {n: r["fp32_islands"] for n, r in fp16_reports.items()}
            res["fp16_island_study"] = {n: r["island_study"] for n, r in fp16_reports.items()}
            print(f"\n### {preset}: FP16 / INT8 vs FP32, per component (isolated inputs, {args.frames} frames)\n")
            print("| component | output | " + " | ".join(f"{k} max / mean abs" for k in folders) + " |")
            print("| --- | --- |" + " ---: |" * len(folders))
            for name in res["components"]["int8"]:
                for out in res["components"]["int8"][name]:
                    cells = [f"{res['components'][k][name][out][0]:.2e} / {res['components'][k][name][out][1]:.2e}"
                             for k in folders]
                    print(f"| {name} | {out} | " + " | ".join(cells) + " |")
            print(f"\n### {preset}: label-map agreement with FP32, per frame (%)\n")
            print("| frame | caption | FP32 classes in map | " + " | ".join(folders) + " |")
            print("| ---: | --- | ---: |" + " ---: |" * len(folders))
            for i, (_, caption, _) in enumerate(eval_cases(args.frames)):
                print(f"| {i} | {caption} | {res['frames']['fp32 classes in map'][i]:.0f} | "
                      + " | ".join(f"{res['frames'][k][i]:.1f}" for k in folders) + " |")
            print("| mean | | | " + " | ".join(f"{np.mean(res['frames'][k]):.1f}" for k in folders) + " |")
            print(f"\nFP32 islands kept in the FP16 graphs: {res['fp16_islands']}")
            print(f"\n### {preset}: INT8 segmenter, per-layer error against FP32 (worst {args.top_layers})\n")
            print("\n".join(layer_table(int8_reports["segmenter"], args.top_layers)))
        sp = {p: speed(f, args.speed_frames, args.threads) for p, f in (("fp32", fp32), ("int8", int8))}
        res["speed"] = sp
        print(f"\n### {preset}: segment() on ONNX Runtime CPU, ms p50 / p95 ({args.speed_frames} frames)\n")
        print("| stage | fp32 | int8 | fp32 / int8 (p50) |")
        print("| --- | ---: | ---: | ---: |")
        for stage in ("vision", "segment", "total"):
            a, b = sp["fp32"][stage], sp["int8"][stage]
            print(f"| {stage} | {pct(a, 50):.1f} / {pct(a, 95):.1f} | {pct(b, 50):.1f} / {pct(b, 95):.1f} | "
                  f"{pct(a, 50) / pct(b, 50):.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
