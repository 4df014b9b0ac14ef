"""The paper preset at full size, from random weights in the published layouts, end to end on this machine.

    python benchmarks/bench_paper.py [--work /tmp/paper] [--llm-weights int4] [--tokens 32] [--keep]

1. write  a LLaVA-Phi2 checkpoint as haotian-liu/LLaVA saves one (Phi-2's config: hidden 2560, 32 layers, 32
          heads, intermediate 10240, vocabulary 51200, partial rotary 0.4, lm_head with a bias; fp16 shards;
          mm_projector mlp2x_gelu; image index -200; image_aspect_ratio pad) beside a CLIP ViT-L/14-336 folder
          (openai/clip-vit-large-patch14-336's configs), random weights streamed tensor by tensor
2. convert  python export/convert_llava.py --src ... --out ...
3. build    python export/build_engines.py --preset paper --captioner ... --llm-weights int4
4. load     runtime.load() of the folder, twice (the second with the files in the page cache)
5. decode   one caption of --tokens new tokens on ONNX Runtime's CPU provider: tokens/s

Each step runs in its own process; its wall time and peak RSS (the process's ru_maxrss, from wait4) are
printed and, with --json, written. Random weights: the caption is noise, the speed and memory are not.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine  # noqa: E402

# openai/clip-vit-large-patch14-336's vision and text configs, and its preprocessor_config.json.
CLIP_L336_VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
CLIP_L336_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      projection_dim=768, hidden_act="quick_gelu")
CLIP_PREPROCESSOR = {"crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                     "feature_extractor_type": "CLIPFeatureExtractor", "resample": 3, "size": 336,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711]}
SHARD_BYTES = 2 << 30


def write_clip(folder: Path) -> None:
    """A random CLIPModel with ViT-L/14-336's shapes, saved as the hub folder is laid out."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    CLIPModel(CLIPConfig(text_config=CLIP_L336_TEXT, vision_config=CLIP_L336_VISION, projection_dim=768)
              ).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR, indent=1))


def write_llava_phi2(folder: Path, clip: Path, layers: int = 32) -> None:
    """Random fp16 tensors under the published names and shapes (taken from PhiForCausalLM built on the meta
    device, so no 11 GB model is ever in memory), in shards of ~2 GB, with haotian-liu/LLaVA's config keys."""
    import torch
    from safetensors.torch import save_file
    from transformers import PhiConfig, PhiForCausalLM

    from llmformer.captioner import build_tiny_tokenizer, phi2_config

    phi = phi2_config(num_hidden_layers=layers)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in PhiForCausalLM(PhiConfig(**phi)).state_dict().items()}
    E, C = phi["hidden_size"], CLIP_L336_VISION["hidden_size"]
    shapes.update({"model.mm_projector.0.weight": (E, C), "model.mm_projector.0.bias": (E,),
                   "model.mm_projector.2.weight": (E, E), "model.mm_projector.2.bias": (E,)})
    assert "lm_head.bias" in shapes
    g = torch.Generator().manual_seed(0)
    shard, size, index, n = {}, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        index.update({k: name for k in shard})
        shard, size = {}, 0

    for key, shape in sorted(shapes.items()):
        scale = 1.0 if key.endswith("layernorm.weight") else 0.02
        t = (torch.randn(shape, generator=g) * scale).half() if not key.endswith("layernorm.bias") else \
            torch.zeros(shape, dtype=torch.float16)
        shard[key], size = t, size + t.numel() * 2
        if size >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    tokenizer = build_tiny_tokenizer(vocab_size=4096)   # Phi-2's kind (byte-level BPE); the vocabulary is small,
    tokenizer.save_pretrained(folder)                   # the embedding keeps Phi-2's 51200 rows
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = {"architectures": ["LlavaPhiForCausalLM"], "model_type": "llava_phi", "torch_dtype": "float16",
              "transformers_version": "4.37.2", "tie_word_embeddings": False, "bos_token_id": eos, "eos_token_id": eos,
              "qk_layernorm": False, "num_key_value_heads": None, **phi,
              "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
              "mm_vision_tower": str(clip), "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": C,
              "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat"}
    (folder / "config.json").write_text(json.dumps(config, indent=1))


def load_and_decode(art: Path, tokens: int) -> dict:
    import numpy as np

    import runtime

    out = {}
    for label in ("load_cold_s", "load_warm_s"):
        t = time.perf_counter()
        rt = runtime.load(art, warmup=False)
        out[label] = round(time.perf_counter() - t, 2)
        if label == "load_cold_s":
            rt.close()
    frame = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    cap = rt.caption(frame, max_new_tokens=tokens)
    rt.caption(frame, max_new_tokens=tokens)  # first call warms allocators; report the second
    cap = rt.caption(frame, max_new_tokens=tokens)
    t = cap.timings
    out.update(prompt_tokens=t.prompt_tokens, new_tokens=len(cap.token_ids), prefill_s=round(t.prefill_s, 2),
               decode_tokens_per_s=round(t.decode_tokens_per_s, 2),
               caption_io_bytes_per_token=getattr(getattr(cap, "io", None), "bytes_per_token", None))
    rt.close()
    return out


def step(name: str, argv: list[str], results: dict) -> None:
    """Run argv in a child process; record its wall time and peak RSS (ru_maxrss of that child alone)."""
    print(f"[{name}] {' '.join(argv)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    results[name] = {"wall_s": round(wall, 1), "peak_rss_gib": round(usage.ru_maxrss / (1 << 20), 2),
                     "exit": os.waitstatus_to_exitcode(status)}
    print(f"[{name}] {results[name]}", flush=True)
    if results[name]["exit"] != 0:
        raise SystemExit(f"{name} failed")


def drop_page_cache() -> bool:
    """Linux's page cache emptied (root only; False where the machine does not allow it)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def folder_gb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/paper"))
    ap.add_argument("--llm-weights", default="int4", choices=("fp32", "fp16", "int8", "int4"))
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and the build")
    ap.add_argument("--phi-layers", type=int, default=32, help="Phi-2's 32; fewer for a quick trial of the chain")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)   # internal: one step in this process
    args = ap.parse_args(argv)
    src, clip, native, art = (args.work / n for n in ("llava-phi2", "clip-vit-l-336", "native", "artifacts"))
    if args.step == "write":
        src.mkdir(parents=True)
        clip.mkdir(parents=True)
        write_clip(clip)
        write_llava_phi2(src, clip, args.phi_layers)
        return 0
    if args.step == "decode":
        (args.work / "decode.json").write_text(json.dumps(load_and_decode(art, args.tokens)))
        return 0

    print(f"machine: {machine()}")
    shutil.rmtree(args.work, ignore_errors=True)
    results: dict = {"machine": machine(), "llm_weights": args.llm_weights}
    me = [sys.executable, __file__, "--work", str(args.work)]
    results["phi_layers"] = args.phi_layers
    step("write", me + ["--step", "write", "--phi-layers", str(args.phi_layers)], results)
    step("convert", [sys.executable, "export/convert_llava.py", "--src", str(src), "--out", str(native)], results)
    step("build", [sys.executable, "export/build_engines.py", "--preset", "paper", "--out", str(art), "--captioner",
                   str(native), "--llm-weights", args.llm_weights], results)
    results["sizes_gb"] = {"checkpoint": folder_gb(src), "converted": folder_gb(native), "artifacts": folder_gb(art)}
    results["page_cache_dropped"] = drop_page_cache()   # so that the first load reads from disk
    step("decode", me + ["--step", "decode", "--tokens", str(args.tokens)], results)
    results["decode"].update(json.loads((args.work / "decode.json").read_text()))
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
