"""Captioner throughput: the ONNX Runtime decode loop (runtime.decode) vs transformers' generate(), side by
side in one run, on the same prompt embeddings, greedy, fp32 on this machine's CPU.

    python benchmarks/bench_captioner.py                      # demo model + Phi-2-sized decoder (needs ~24 GB RAM)
    python benchmarks/bench_captioner.py --phi2-layers 8      # a Phi-2-wide decoder with 8 of its 32 layers
    python benchmarks/bench_captioner.py --skip-phi2          # demo model only

Models: `demo` is the tiny random LLaVA-Phi the tests use (demo preset CLIP tower, 2-layer 64-d Phi, 64 image
tokens). `phi2` is Phi-2's text config (2560 wide, 32 layers, 51200 vocabulary) with random weights, fed 576
random image embeddings (what the paper's CLIP ViT-L/14-336 tower gives) plus the LLaVA-Phi prompt; the tower
is left out, both backends start from the same prompt embeddings. Prefill tokens/s = prompt tokens / time
to the first token; decode tokens/s = tokens after the first / their time. Both backends must produce the
same tokens (checked). The memory-bandwidth ceiling is weights read per decoded token (every decoder and
lm_head weight; one embedding row) over the bandwidth: the speed no implementation can beat at batch 1.
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ORIN_BANDWIDTH = 204.8e9  # Jetson AGX Orin 64 GB, LPDDR5, bytes/s


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def rss_gb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except OSError:
        return float("nan")


def machine() -> str:
    from benchmarks.common import machine as machine_line

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{machine_line()}, {mem:.0f} GiB RAM; torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {__import__('onnxruntime').__version__}")


def decode_weight_bytes(model) -> int:
    """Bytes of the weights one decoded token reads: the Phi decoder layers, final norm and lm_head."""
    lm = model.model.language_model
    params = [p for name, p in lm.named_parameters() if not name.startswith("embed_tokens")]
    params += list(model.lm_head.parameters())
    return sum(p.numel() * p.element_size() for p in params)


class Clock:
    """A logits processor that only records when each token's logits arrive."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def hf_generate(model, embeds: torch.Tensor, new_tokens: int) -> tuple[list[int], float, list[float]]:
    from transformers import LogitsProcessorList

    clock = Clock()
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]))
    ids = out[0].tolist()
    return ids, clock.times[0] - start, list(np.diff(clock.times))


def prompt_embeds(captioner, decoder, image_embeds: np.ndarray) -> torch.Tensor:
    """The prompt embeddings both backends see: token embeddings with the image embeddings spliced in."""
    ids = decoder.prompt_ids(None, image_embeds.shape[1])
    with torch.no_grad():
        emb = captioner.model.get_input_embeddings()(torch.from_numpy(np.where(ids == decoder.image_token_id, 0, ids)))
    emb[torch.from_numpy(ids == decoder.image_token_id)] = torch.from_numpy(image_embeds[0])
    return emb[None]


def bench(name: str, captioner, image_embeds: np.ndarray, folder: Path, new_tokens: int, runs: int,
          export_fn) -> list[dict]:
    """Time generate() on the torch model, export, free the torch model, time the ONNX Runtime loop."""
    from engines.onnxruntime_engine import OnnxRuntimeEngine
    from export.captioner import CAPTIONER_FILES
    from runtime.decode import CaptionDecoder

    model = captioner.model
    weight_bytes = decode_weight_bytes(model)
    rows = []

    ex = export_fn(captioner, folder)
    # transformers generate(); a CaptionDecoder without engines only builds the same prompt ids
    probe = CaptionDecoder.from_files(folder / ex.tokenizer_file, folder / ex.prompt_file,
                                      _NullEngine(ex.embed), _NullEngine(ex.decoder), max_context=ex.max_context)
    embeds = prompt_embeds(captioner, probe, image_embeds)
    L = embeds.shape[1]
    log(f"[{name}] prompt {L} tokens; generate() warm-up")
    hf_generate(model, embeds[:, :8], 2)
    best = None
    for _ in range(runs):
        ids, prefill_s, decode_s = hf_generate(model, embeds, new_tokens)
        if best is None or prefill_s + sum(decode_s) < best[1] + sum(best[2]):
            best = (ids, prefill_s, decode_s)
    hf_ids, prefill_s, decode_s = best
    rows.append(dict(model=name, engine="transformers generate()", prompt=L, new=len(hf_ids),
                     prefill_tps=L / prefill_s, decode_tps=len(decode_s) / sum(decode_s), weight_bytes=weight_bytes))
    log(f"[{name}] generate: prefill {prefill_s:.3f} s, decode {np.mean(decode_s) * 1e3:.1f} ms/token; "
        f"peak RSS {peak_rss_gb():.1f} GB")

    # ONNX Runtime loop (the torch model is dropped first: a Phi-2 in fp32 is 11 GB)
    del model, captioner.model
    gc.collect()
    log(f"[{name}] torch model dropped: RSS {rss_gb():.1f} GB")
    engines = {k: OnnxRuntimeEngine(f"captioner_{k}", folder / getattr(CAPTIONER_FILES, k), g.inputs, g.outputs,
                                    providers=["CPUExecutionProvider"])
               for k, g in (("embed", ex.embed), ("decoder", ex.decoder))}
    loop = CaptionDecoder.from_files(folder / ex.tokenizer_file, folder / ex.prompt_file, engines["embed"],
                                     engines["decoder"])
    log(f"[{name}] ONNX Runtime loop warm-up; peak RSS {peak_rss_gb():.1f} GB")
    loop.caption_embeds(image_embeds[:, :8], max_new_tokens=2)
    best = None
    for _ in range(runs):
        cap = loop.caption_embeds(image_embeds, max_new_tokens=new_tokens)
        if best is None or cap.timings.total_s < best.timings.total_s:
            best = cap
    t = best.timings
    want = hf_ids[:-1] if hf_ids and hf_ids[-1] in loop.stop_ids else hf_ids
    if best.token_ids != want:
        raise SystemExit(f"[{name}] the ONNX Runtime loop and generate() disagree:\n{best.token_ids}\n{want}")
    rows.append(dict(model=name, engine="ONNX Runtime loop", prompt=L, new=len(hf_ids),
                     prefill_tps=t.prefill_tokens_per_s, decode_tps=t.decode_tokens_per_s, weight_bytes=weight_bytes))
    log(f"[{name}] loop: prefill {t.prefill_s:.3f} s, decode {np.mean(t.decode_s) * 1e3:.1f} ms/token; "
        f"same {len(hf_ids)} tokens as generate(); peak RSS {peak_rss_gb():.1f} GB")
    for e in engines.values():
        e.close()
    return rows


class _NullEngine:
    """Specs only: lets CaptionDecoder build prompts without loading a graph."""

    def __init__(self, graph):
        self.name, self.inputs, self.outputs = graph.names.component, graph.inputs, graph.outputs
        self.input_names = [s.name for s in graph.inputs]
        self.output_names = [s.name for s in graph.outputs]


def export_decoder_only(captioner, folder: Path):
    """Embed + decoder graphs, tokenizer and prompt (the vision graph is not timed here)."""
    import json

    from export.captioner import CAPTIONER_FILES, CaptionerExport, export_decoder, export_embed
    from llmformer.captioner import TOKENIZER_FILE

    embed = export_embed(captioner, folder / CAPTIONER_FILES.embed)
    decoder = export_decoder(captioner, folder / CAPTIONER_FILES.decoder)
    (folder / CAPTIONER_FILES.tokenizer).write_bytes((captioner.folder / TOKENIZER_FILE).read_bytes())
    (folder / CAPTIONER_FILES.prompt).write_text(json.dumps(captioner.prompt))
    return CaptionerExport(None, embed, decoder, CAPTIONER_FILES.tokenizer, CAPTIONER_FILES.prompt,
                           max_context=captioner.max_context, image_tokens=0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens to generate per caption (default 32)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per backend; the fastest is kept")
    ap.add_argument("--phi2-layers", type=int, default=32, help="decoder layers of the Phi-2-sized model (32)")
    ap.add_argument("--phi2-image-tokens", type=int, default=576)
    ap.add_argument("--skip-phi2", action="store_true")
    args = ap.parse_args(argv)

    from llmformer.captioner import (LLAVA_PHI_PROMPT, Captioner, build_random_llava,
                                  build_tiny_captioner, build_tiny_tokenizer, phi2_config)
    from llmformer.presets import demo

    tower = demo().vision_tower
    rows = []
    started = machine()  # with the load average at start
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # demo: the tiny model, its real 64 image embeddings from its tower
        cap = build_tiny_captioner(tmp / "demo_ckpt", tower)
        pixels = torch.randn(1, 3, tower.image_size, tower.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            image = cap.model.model.get_image_features(pixel_values=pixels).pooler_output[0][None].numpy()
        (tmp / "demo").mkdir()
        rows += bench("demo", cap, image, tmp / "demo", args.new_tokens, max(args.runs, 5), export_decoder_only)

        if not args.skip_phi2:
            tokenizer = build_tiny_tokenizer()
            tokenizer.save_pretrained(tmp / "phi2_tok")
            log(f"[phi2] building a random Phi-2-sized decoder ({args.phi2_layers} layers)")
            start = time.perf_counter()
            # held by `cap` alone, so that bench() can drop it before ONNX Runtime loads its copy
            cap = Captioner(build_random_llava(tower, phi2_config(num_hidden_layers=args.phi2_layers), tokenizer),
                            tokenizer, dict(LLAVA_PHI_PROMPT), tmp / "phi2_tok")
            log(f"[phi2] built in {time.perf_counter() - start:.0f} s; peak RSS {peak_rss_gb():.1f} GB")
            g = np.random.default_rng(0)
            image = g.standard_normal((1, args.phi2_image_tokens, 2560)).astype(np.float32) * 0.02
            (tmp / "phi2").mkdir()
            name = "phi2" if args.phi2_layers == 32 else f"phi2-width, {args.phi2_layers} layers"
            rows += bench(name, cap, image, tmp / "phi2", args.new_tokens, args.runs, export_decoder_only)

    print(f"\nMachine: {started}; load average {os.getloadavg()[0]:.2f} at end. fp32, batch 1, greedy, "
          f"{args.new_tokens} new tokens, best of {args.runs} runs (demo: best of {max(args.runs, 5)}).\n")
    print("| model | engine | prompt tokens | prefill tokens/s | decode tokens/s | decode ms/token |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['engine']} | {r['prompt']} | {r['prefill_tps']:.0f} | {r['decode_tps']:.1f} | "
              f"{1e3 / r['decode_tps']:.2f} |")
    print("\nMemory-bandwidth ceiling for decode (weights read per token / bandwidth):\n")
    print("| model | weights/token fp32 | this machine, loop's effective GB/s | AGX Orin 204.8 GB/s: fp32 | fp16 | int8 | int4 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows[1::2]:
        b = r["weight_bytes"]
        size = f"{b / 1e9:.2f} GB" if b > 1e8 else f"{b / 1e6:.2f} MB"
        print(f"| {r['model']} | {size} | {b * r['decode_tps'] / 1e9:.1f} | "
              + " | ".join(f"{ORIN_BANDWIDTH / (b * f):,.0f} tok/s" for f in (1, 0.5, 0.25, 0.125)) + " |")


if __name__ == "__main__":
    main()
