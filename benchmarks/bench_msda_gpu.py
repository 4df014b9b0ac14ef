"""MSDA on the GPU: the optimized CUDA kernel vs the naive kernel vs the PyTorch reference (grid_sample).

    python benchmarks/bench_msda_gpu.py [--frames 512 1024] [--runs 100] [--json FILE]

Shapes are the Mask2Former pixel decoder's: levels at 1/8, 1/16, 1/32 of a square frame, 8 heads x 32 dims,
4 points per level, every pixel of every level a query, batch 1. Locations are drawn two ways: uniformly over
the maps ("uniform", the cache's worst case) and clustered around each query's reference point ("clustered",
Deformable DETR's ring of offsets plus 1 px noise, what a trained model does). Each figure is the median of
--runs launches timed with CUDA events, after warm-up.

DRAM floor: the bytes of value + locations + weights + output, each moved once, over the measured
device-to-device copy bandwidth (and over the spec bandwidth where the GPU reports its memory clock); the
"floor fraction" is floor time / kernel time. Targets (issue 6): FP16 optimized >= 3x the naive FP32 kernel,
and within 5x of the DRAM floor at 1024 x 1024.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from llmformer.msda import ms_deform_attn, reference_points_for  # noqa: E402
from plugins_trt import msda_op  # noqa: E402

HEADS, HEAD_DIM, POINTS = 8, 32, 4
STRIDES = (8, 16, 32)


def pyramid(frame: int) -> list[tuple[int, int]]:
    return [(frame // s, frame // s) for s in STRIDES]


def make_inputs(frame: int, clustered: bool, seed: int = 0):
    """value (1, S, M, D), locations (1, Lq, M, L, P, 2), weights (1, Lq, M, L, P): FP32 on the GPU; Lq = S."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = pyramid(frame)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(1, S, HEADS, HEAD_DIM, device="cuda", generator=g)
    if clustered:
        ref = reference_points_for(shapes, device="cuda")                                  # (S, 2) x, y
        theta = torch.arange(HEADS, device="cuda") * (2 * math.pi / HEADS)
        ring = torch.stack([theta.cos(), theta.sin()], -1)                                  # (M, 2)
        radius = torch.arange(1, POINTS + 1, device="cuda", dtype=torch.float32)           # px
        offsets = ring[:, None, None, :] * radius[None, None, :, None]                      # (M, 1, P, 2)
        offsets = offsets + torch.randn(S, HEADS, L, POINTS, 2, device="cuda", generator=g)
        wh = torch.tensor([[w, h] for h, w in shapes], device="cuda", dtype=torch.float32)  # (L, 2)
        loc = ref[:, None, None, None, :] + offsets / wh[None, None, :, None, :]
        loc = loc[None]                                                                     # (1, S, M, L, P, 2)
    else:
        loc = torch.rand(1, S, HEADS, L, POINTS, 2, device="cuda", generator=g)
    logits = torch.randn(1, S, HEADS, L * POINTS, device="cuda", generator=g)
    weights = logits.softmax(-1).view(1, S, HEADS, L, POINTS)
    return shapes, value, loc.contiguous(), weights


def median_us(fn, runs: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: read + write bytes over time, median of 20."""
    n = 1 << 28  # floats
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    t = median_us(lambda: dst.copy_(src), 20, warmup=3)
    return 2 * n * 4 / (t * 1e-6) / 1e9


def spec_bandwidth_gbs() -> float | None:
    p = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate


def floor_bytes(shapes, value_bytes: int, loc_bytes: int) -> int:
    S = sum(h * w for h, w in shapes)
    Lq, L = S, len(shapes)
    return (S * HEADS * HEAD_DIM * value_bytes                 # value
            + Lq * HEADS * L * POINTS * 3 * loc_bytes            # locations (x, y) + weights
            + Lq * HEADS * HEAD_DIM * value_bytes)               # output


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    reason = msda_op.unavailable_reason()
    if reason is not None:
        print(f"bench_msda_gpu: cannot run: {reason}", file=sys.stderr)
        return 2
    msda_op.load()
    torch.backends.cudnn.benchmark = False
    gpu = torch.cuda.get_device_name(0)
    cc = "sm_%d%d" % torch.cuda.get_device_capability(0)
    copy_bw, spec_bw = copy_bandwidth_gbs(), spec_bandwidth_gbs()
    header = (f"GPU: {gpu} ({cc}), CUDA {torch.version.cuda}, torch {torch.__version__}; host: {machine()}\n"
              f"DRAM bandwidth: {copy_bw:.0f} GB/s measured (D2D copy)"
              + (f", {spec_bw:.0f} GB/s spec" if spec_bw else "")
              + f"\nshape: 8 heads x 32 dims, 4 points, levels 1/8 1/16 1/32, every pixel a query, batch 1; "
                f"median of {args.runs} runs (CUDA events)")
    print(header)

    rows = []
    print("\n| frame | locations | kernel | value | median us | x naive fp32 | floor us | floor fraction | max err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for frame in args.frames:
        for clustered in (False, True):
            shapes, value, loc, weights = make_inputs(frame, clustered)
            expected = ms_deform_attn(value, shapes, None, loc, weights)
            t32, s32 = msda_op.level_table(shapes, value.device)
            v16 = value.half()
            variants = {
                ("optimized", "fp32"): lambda: msda_op.ms_deform_attn_cuda(value, t32, s32, loc, weights),
                ("optimized", "fp16"): lambda: msda_op.ms_deform_attn_cuda(v16, t32, s32, loc, weights),
                ("naive", "fp32"): lambda: msda_op.ms_deform_attn_cuda(value, t32, s32, loc, weights, naive=True),
                ("naive", "fp16"): lambda: msda_op.ms_deform_attn_cuda(v16, t32, s32, loc, weights, naive=True),
                ("pytorch", "fp32"): lambda: ms_deform_attn(value, shapes, None, loc, weights),
                # grid_sample wants the grid in the input's dtype: the reference runs all-FP16.
                ("pytorch", "fp16"): lambda: ms_deform_attn(v16, shapes, None, loc.half(), weights.half()),
            }
            times = {}
            for (kernel, precision), fn in variants.items():
                with torch.inference_mode():
                    err = (fn().float() - expected).abs().max().item()
                    t = median_us(fn, args.runs)
                times[(kernel, precision)] = t
                elt = 2 if precision == "fp16" else 4
                loc_elt = 2 if (kernel == "pytorch" and precision == "fp16") else 4
                nbytes = floor_bytes(shapes, elt, loc_elt)
                floor = nbytes / (copy_bw * 1e9) * 1e6
                row = {"gpu": gpu, "frame": frame, "locations": "clustered" if clustered else "uniform",
                       "kernel": kernel, "value": precision, "median_us": t, "bytes": nbytes,
                       "floor_us_measured_bw": floor,
                       "floor_us_spec_bw": nbytes / (spec_bw * 1e9) * 1e6 if spec_bw else None,
                       "max_abs_err_vs_fp32_reference": err}
                rows.append(row)
            base = times[("naive", "fp32")]
            for row in rows[-len(variants):]:
                row["speedup_vs_naive_fp32"] = base / row["median_us"]
                print(f"| {frame} | {row['locations']} | {row['kernel']} | {row['value']} | {row['median_us']:.1f} "
                      f"| {row['speedup_vs_naive_fp32']:.2f} | {row['floor_us_measured_bw']:.1f} "
                      f"| {row['floor_us_measured_bw'] / row['median_us']:.2f} "
                      f"| {row['max_abs_err_vs_fp32_reference']:.1e} |")

    print("\ntargets (FP16 optimized):")
    verdicts = []
    for row in rows:
        if row["kernel"] != "optimized" or row["value"] != "fp16":
            continue
        speed_ok = row["speedup_vs_naive_fp32"] >= 3.0
        line = (f"  {row['frame']} {row['locations']:<9}: {row['speedup_vs_naive_fp32']:.2f}x naive fp32 "
                f"({'meets' if speed_ok else 'MISSES'} >= 3x)")
        verdicts.append(speed_ok)
        if row["frame"] == 1024:
            ratio = row["median_us"] / row["floor_us_measured_bw"]
            floor_ok = ratio <= 5.0
            verdicts.append(floor_ok)
            line += f", {ratio:.2f}x the DRAM floor ({'meets' if floor_ok else 'MISSES'} <= 5x)"
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "copy_bandwidth_gbs": copy_bw,
                                         "spec_bandwidth_gbs": spec_bw, "rows": rows,
                                         "targets_met": all(verdicts)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
