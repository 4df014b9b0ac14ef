"""The LLM decoder over 2 GB: export, FP16 / INT8 / INT4 conversions (peak memory of each), and decode speed of
FP32 vs INT8 vs INT4 weight-only (MatMulNBits) under ONNX Runtime on this CPU, in one run (issue 14).

    python benchmarks/bench_llm.py [--layers 8] [--prompt-tokens 128] [--new-tokens 16] [--threads 2]
                                   [--block-size 32] [--rounds 2] [--work DIR] [--steps export,convert,decode]

With --work DIR the graphs and each step's result (DIR/results.json) stay, and --steps reruns only some steps (the
table then mixes runs: their dates are in results.json). About 12 min and 7 GB peak at 8 layers on 2 cores.

Model: Phi-2's text config (2560 wide, 32 heads, intermediate 10240, vocabulary 51200, partial rotary 0.4) with
`--layers` of its 32 layers and random weights (llmformer.captioner.phi2_config + build_random_llava), exported
by export.captioner.export_decoder (weights streamed to external data, as for the real model). Each step runs
in its own process and reports its own peak RSS (VmHWM: Linux carries a parent's RSS at fork into a child's
ru_maxrss across exec, so getrusage(RUSAGE_CHILDREN) would report the parent's size for small children):

  export      torch model built and exported (the peak includes the torch model itself)
  fp16        export.precision.convert(..., "fp16"): FP16 graph, attention islands FP32 (pinned, no feeds)
  int8, int4  convert(..., "int8"/"int4", backend="onnxruntime"): MatMulNBits, symmetric, blocks of --block-size,
              accuracy_level 4 (the kernel may compute on int8-quantized activation blocks; graph activations FP32)
  int4-trt, int8-trt  the same with backend="tensorrt": blocked DequantizeLinear (opset 21) / per-channel INT8 Q/DQ
  decode      per graph: one prefill of --prompt-tokens random embeddings, then --new-tokens steps fed the same
              random embeddings for every graph (teacher-forced, so logits compare step by step), cache in a fixed
              buffer as runtime.decode keeps it; ms/token = median step time; best of --rounds (graphs alternate).

Decode speed at batch 1 is the bytes of weights read per token: FP32 reads 4 bytes per weight, INT8 ~1.1, INT4
~0.6 (scales included). Accuracy columns compare each graph's logits with FP32's on the same steps; with random
weights they measure the numerics, not caption quality.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

DECODER = "captioner_decoder"
# name: (graph file, what convert() is asked, extra convert() options)
CONVERSIONS = {
    "fp16": ("decoder.fp16.onnx", "fp16", {}),
    "int8": ("decoder.int8.onnx", "int8", {"backend": "onnxruntime"}),
    "int4": ("decoder.int4.onnx", "int4", {"backend": "onnxruntime"}),
    "int4-acc0": ("decoder.int4-acc0.onnx", "int4", {"backend": "onnxruntime", "accuracy_level": 0}),
    "int4-trt": ("decoder.int4-trt.onnx", "int4", {"backend": "tensorrt"}),
    "int8-trt": ("decoder.int8-trt.onnx", "int8", {"backend": "tensorrt"}),
    "int8-before": ("decoder.int8-before.onnx", "int8", {}),      # old_int8() below, not convert()
}
DECODE = ("fp32", "int8", "int4", "int4-acc0", "int4-trt", "int8-trt", "int8-before")
LABELS = {"fp32": "FP32", "fp16": "FP16 (attention FP32)", "int8": "INT8 MatMulNBits", "int4": "INT4 MatMulNBits",
          "int4-acc0": "INT4 MatMulNBits, accuracy_level 0 (FP32 compute)",
          "int4-trt": "INT4 blocked DequantizeLinear (TensorRT form)",
          "int8-trt": "INT8 per-channel Q/DQ on MatMul (TensorRT form)",
          "int8-before": "INT8 Q/DQ as before issue 14 (DequantizeLinear -> Gemm; lm_head left FP32)"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def peak_rss() -> int:
    """This process's high-water RSS in bytes (VmHWM: its own, whatever its parent's size was)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def graph_bytes(path: Path) -> int:
    """The graph file plus its external data files."""
    from calibration.graphs import graph_files

    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in graph_files(path))


# ------------------------------------------------------------------------------------------------ steps
def step_export(work: Path, layers: int, threads: int) -> dict:
    import torch

    from export.captioner import export_decoder
    from llmformer.captioner import LLAVA_PHI_PROMPT, Captioner, build_random_llava, build_tiny_tokenizer, phi2_config
    from llmformer.presets import demo

    torch.set_num_threads(threads)
    t = time.perf_counter()
    tokenizer = build_tiny_tokenizer()
    tokenizer.save_pretrained(work / "tokenizer")
    model = build_random_llava(demo().vision_tower, phi2_config(num_hidden_layers=layers), tokenizer)
    built = time.perf_counter() - t
    torch_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    captioner = Captioner(model, tokenizer, dict(LLAVA_PHI_PROMPT), work / "tokenizer")
    t = time.perf_counter()
    graph = export_decoder(captioner, work / "decoder.onnx")
    return {"seconds": round(time.perf_counter() - t, 1), "build_seconds": round(built, 1),
            "torch_model_bytes": torch_bytes, "files": graph.files}


def step_convert(work: Path, name: str) -> dict:
    from export.precision import convert

    file, target, options = CONVERSIONS[name]
    base = rss()
    t = time.perf_counter()
    if name == "int8-before":
        report = old_int8(work / "decoder.onnx", work / file)
    else:
        report = convert(work / "decoder.onnx", work / file, target, DECODER, [], log=log, **options)
    return {"seconds": round(time.perf_counter() - t, 1), "rss_before": base, "files": [file, *report["data_files"]],
            "form": report.get("form"), "layers": report.get("layers"), "skipped": report.get("skipped"),
            "opset": report.get("opset")}


def old_int8(src: Path, out: Path) -> dict:
    """The LLM's INT8 before issue 14 (calibration.quantize.quantize_weights at commit ac13c85), rebuilt here to
    stream, for the speed comparison: each weight INT8 per output channel behind a DequantizeLinear feeding the
    Gemm (transB=1, the weight as stored) or MatMul; Transpose -> MatMul (lm_head) was skipped and stays FP32."""
    import onnx
    from onnx import helper, numpy_helper

    from calibration.graphs import save_checked, tensor_array

    model = onnx.load(str(src), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    nodes, layers = [], 0
    for node in model.graph.node:
        name = node.input[1] if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        if name in inits and len(inits[name].dims) == 2:
            w = tensor_array(inits[name], src.parent)
            k_axis = 1 if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) else 0
            scale = np.maximum(np.abs(w).max(axis=k_axis), 1e-12) / 127
            q = np.clip(np.round(w / np.expand_dims(scale, k_axis)), -127, 127).astype(np.int8)
            del w
            model.graph.initializer.remove(inits[name])
            model.graph.initializer.extend([numpy_helper.from_array(q, f"{name}_q8"),
                                            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q8", f"{name}_scale"], [name],
                                          axis=1 - k_axis, name=f"{name}_DequantizeLinear"))
            layers += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return {"data_files": save_checked(model, out, source_dir=src.parent), "form": "DequantizeLinear -> Gemm",
            "layers": layers}


def step_decode(work: Path, name: str, prompt: int, new: int, threads: int) -> dict:
    """Prefill `prompt` tokens, then `new` single-token steps, on a cache buffer written in place."""
    import onnxruntime as ort

    from engines.contract import CAPTIONER_DECODER as D

    path = work / ("decoder.onnx" if name == "fp32" else CONVERSIONS[name][0])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    t = time.perf_counter()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t
    inputs = {i.name: i for i in session.get_inputs()}
    width = inputs[D.inputs_embeds].shape[2]
    past = [n for n in inputs if n.startswith("past_key_values")]
    heads, head_dim = inputs[past[0]].shape[1], inputs[past[0]].shape[3]
    total = prompt + new + 1                                 # one masked slot first: TensorRT profiles need P >= 1
    cache = {n: np.zeros((1, heads, total, head_dim), np.float32) for n in past}
    presents = [o.name for o in session.get_outputs() if o.name != D.logits]
    g = np.random.default_rng(0)
    embeds = (g.standard_normal((1, prompt + new, width)) * 0.02).astype(np.float32)  # Phi's embedding scale
    mask = np.zeros((1, total), np.int64)

    def call(start: int, count: int) -> np.ndarray:
        mask[0, start:start + count] = 1
        feeds = {D.inputs_embeds: embeds[:, start - 1:start - 1 + count], D.position_ids: np.arange(start - 1,
                 start - 1 + count)[None], D.attention_mask: mask[:, :start + count]}
        feeds.update({n: cache[n][:, :, :start] for n in past})
        out = session.run(None, feeds)
        for name_, value in zip(presents, out[1:]):
            cache[name_.replace("present", "past_key_values")][:, :, start:start + count] = value
        return out[0]

    t = time.perf_counter()
    logits = [call(1, prompt)]
    prefill_s = time.perf_counter() - t
    steps = []
    for k in range(new):
        t = time.perf_counter()
        logits.append(call(1 + prompt + k, 1))
        steps.append(time.perf_counter() - t)
    np.save(work / f"logits.{name}.npy", np.concatenate([x.reshape(1, -1) for x in logits]))
    return {"load_seconds": round(load_s, 1), "prefill_seconds": prefill_s, "step_seconds": steps,
            "ms_per_token": 1e3 * float(np.median(steps))}


def run_step(args: argparse.Namespace, step: str, name: str = "") -> dict:
    """One step in a fresh process; its JSON result with its own peak RSS."""
    cmd = [sys.executable, __file__, "--step", step, "--name", name, "--work", str(args.work), "--layers",
           str(args.layers), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
           "--threads", str(args.threads), "--block-size", str(args.block_size)]
    t = time.perf_counter()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"step {step} {name} failed (exit {out.returncode})")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = round(time.perf_counter() - t, 1)
    log(f"  {step} {name}: peak RSS {result['peak_rss'] / 1e9:.2f} GB, {result['wall_seconds']} s")
    return result


def child(args: argparse.Namespace) -> None:
    for _, target, options in CONVERSIONS.values():
        if target in ("int8", "int4"):
            options["block_size"] = args.block_size
    if args.step == "export":
        result = step_export(args.work, args.layers, args.threads)
    elif args.step == "convert":
        result = step_convert(args.work, args.name)
    else:
        result = step_decode(args.work, args.name, args.prompt_tokens, args.new_tokens, args.threads)
    result["peak_rss"] = peak_rss()
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------- report
def accuracy(work: Path, name: str) -> tuple[float, float]:
    """Max |logits - FP32| over steps relative to max |FP32 logits|, and the share of steps whose top-1 token
    equals FP32's."""
    ref, got = np.load(work / "logits.fp32.npy"), np.load(work / f"logits.{name}.npy")
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    return rel, float((got.argmax(-1) == ref.argmax(-1)).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8, help="Phi-2 decoder layers (32 in the real model; default 8)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="decode rounds over all graphs; the fastest is kept")
    ap.add_argument("--work", type=Path, default=None, help="folder for the graphs (default: a temporary one, "
                                                            "removed at the end; needs ~8 GB at 8 layers)")
    ap.add_argument("--steps", default="export,convert,decode", help="steps to run (others: from --work)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--name", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        child(args)
        return

    from benchmarks.common import machine

    started = machine()
    command = "python benchmarks/bench_llm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    keep = args.work is not None
    args.work = Path(args.work or tempfile.mkdtemp(prefix="bench_llm-"))
    args.work.mkdir(parents=True, exist_ok=True)
    steps = set(args.steps.split(","))
    saved = args.work / "results.json"
    try:
        log(f"[bench_llm] Phi-2 config, {args.layers} layers, in {args.work}")
        done = json.loads(saved.read_text()) if saved.is_file() else {"steps": {}, "decode": {}}
        results, decode = done["steps"], done["decode"]
        if "export" in steps:
            results["export"] = run_step(args, "export")
        for name in CONVERSIONS if "convert" in steps else ():
            results[name] = run_step(args, "convert", name)
        if "decode" in steps:
            decode = {}
            for _ in range(args.rounds):
                for name in DECODE:
                    r = run_step(args, "decode", name)
                    if name not in decode or r["ms_per_token"] < decode[name]["ms_per_token"]:
                        decode[name] = r
        saved.write_text(json.dumps({"steps": results, "decode": decode, "machine": started}, indent=1))
        if len(results) == 1 + len(CONVERSIONS) and decode:
            report(args, started, command, results, decode, graph_bytes(args.work / "decoder.onnx"))
    finally:
        if not keep:
            shutil.rmtree(args.work, ignore_errors=True)


def report(args, started: str, command: str, results: dict, decode: dict, fp32_bytes: int) -> None:
    import onnxruntime

    work = args.work
    print(f"\nMachine: {started}; load average {os.getloadavg()[0]:.2f} at end; onnxruntime {onnxruntime.__version__}.")
    print(f"Command: `{command}`")
    print(f"Model: Phi-2 config, {args.layers} layers (hidden 2560, 32 heads, intermediate 10240, vocabulary 51200), "
          f"random weights; FP32 decoder graph {fp32_bytes / 1e9:.2f} GB "
          f"({', '.join(results['export']['files'])}); torch model {results['export']['torch_model_bytes'] / 1e9:.2f}"
          f" GB (embedding and tower included).")
    print(f"Decode: batch 1, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, {args.threads} "
          f"ONNX Runtime threads (CPUExecutionProvider), best of {args.rounds} rounds.\n")
    print("| step | graph written | size | peak RSS | peak / FP32 graph | time |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    e = results["export"]
    print(f"| export (build + trace + stream) | {', '.join(e['files'])} | {fp32_bytes / 1e9:.2f} GB | "
          f"{e['peak_rss'] / 1e9:.2f} GB | {e['peak_rss'] / fp32_bytes:.2f}x | {e['seconds']} s (+{e['build_seconds']}"
          f" s build) |")
    for name in CONVERSIONS:
        r = results[name]
        size = sum((work / f).stat().st_size for f in r["files"])
        print(f"| {LABELS[name]} | {', '.join(r['files'])} | {size / 1e9:.2f} GB | {r['peak_rss'] / 1e9:.2f} GB | "
              f"{r['peak_rss'] / fp32_bytes:.2f}x | {r['seconds']} s |")
    fp32 = decode["fp32"]["ms_per_token"]
    print("\n| graph | decode ms/token (median) | tokens/s | vs FP32 tokens/s | prefill s | session peak RSS | "
          "max rel. logit error vs FP32 | top-1 = FP32 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in decode.items():
        rel, top1 = accuracy(work, name) if name != "fp32" else (0.0, 1.0)
        print(f"| {LABELS[name]} | {r['ms_per_token']:.1f} | {1e3 / r['ms_per_token']:.2f} | "
              f"{fp32 / r['ms_per_token']:.2f}x | {r['prefill_seconds']:.2f} | {r['peak_rss'] / 1e9:.2f} GB | "
              f"{rel:.3f} | {top1:.0%} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": started, "command": command, "fp32_bytes": fp32_bytes,
                                         "steps": results, "decode": decode}, indent=1))


if __name__ == "__main__":
    main()
