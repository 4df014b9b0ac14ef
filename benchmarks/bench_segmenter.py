"""CPU latency and parameter counts of the demo and edge segmenters (random weights), in PyTorch and,
exported to ONNX in the same run, on ONNX Runtime with the same thread count.

    python benchmarks/bench_segmenter.py [--threads 1] [--runs 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import machine, pct  # noqa: E402
from engines.onnxruntime_engine import OnnxRuntimeEngine  # noqa: E402
from export.components import segmenter_component, segmenter_example  # noqa: E402
from export.onnx_utils import export_onnx  # noqa: E402
from llmformer.presets import get_preset  # noqa: E402
from llmformer.segmenter import LLMFormerSegmenter, parameter_counts  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--presets", nargs="+", default=["demo", "edge"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch {torch.__version__}, {args.threads} thread(s), fp32, 8 priors, 10 classes")
    print(f"{'preset':<8}{'frame':>7}{'adapter':>11}{'pixel dec':>11}{'decoder':>11}{'total':>11}"
          f"{'torch p50/p95 ms':>20}{'ORT p50/p95 ms':>18}{'torch/ORT':>11}")
    for name in args.presets:
        p = get_preset(name)
        torch.manual_seed(0)
        m = LLMFormerSegmenter(p.segmenter).eval()
        ex = segmenter_example(p, priors=8, vocab=10)
        times = []
        with torch.inference_mode():
            for i in range(args.runs + 3):
                t = time.perf_counter()
                m(*ex)
                if i >= 3:
                    times.append((time.perf_counter() - t) * 1000)
        with tempfile.TemporaryDirectory() as tmp:
            comp = segmenter_component(p, m)
            path = Path(tmp) / "segmenter.onnx"
            export_onnx(m, comp.example, path, comp.names.inputs, comp.names.outputs, comp.dynamic_axes)
            engine = OnnxRuntimeEngine("segmenter", path, threads=args.threads)
            feeds = {n: x.numpy() for n, x in zip(comp.names.inputs, ex)}
            ort_times = []
            for i in range(args.runs + 3):
                t = time.perf_counter()
                engine(feeds)
                if i >= 3:
                    ort_times.append((time.perf_counter() - t) * 1000)
            engine.close()
        c = parameter_counts(m)
        fmt = lambda n: f"{n / 1e6:.2f}M"  # noqa: E731
        print(f"{name:<8}{p.segmenter.frame_size:>7}{fmt(c['adapter']):>11}{fmt(c['pixel_decoder']):>11}"
              f"{fmt(c['decoder']):>11}{fmt(sum(c.values())):>11}{pct(times, 50):>11.1f} /{pct(times, 95):6.1f}"
              f"{pct(ort_times, 50):>10.1f} /{pct(ort_times, 95):6.1f}{pct(times, 50) / pct(ort_times, 50):>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
