"""Build an artifact folder: every component exported, checked, validated and listed in a manifest.

    python export/build_engines.py [--preset demo|edge|paper] [--out DIR] [--backend ...] [--opset N]
                                   [--segmenter CKPT] [--vision-tower DIR] [--text-encoder DIR]

With no weights given the preset is built with random weights, and the build says so. The folder is
written through a staging folder beside it; the manifest goes in last, so a build killed half-way leaves
the previous artifacts valid or no manifest at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engines.base import BACKENDS, backend_importable, create_engine
from engines.contract import (CAPTIONER_DECODER, CAPTIONER_EMBED, CAPTIONER_VISION, MANIFEST_NAME, SEGMENTER,
                              VISION_TOWER, CaptionerEntry, ComponentEntry, Manifest, Preprocess, Sample, TorchSource,
                              file_entry, read_manifest, write_manifest)
from engines.errors import LLMFormerError

PRECISIONS = ("fp32", "fp16", "int8")   # export/precision.py makes fp16 and int8 from the fp32 export
TOKENIZER_FILE = "tokenizer.json"
CAPTIONER_DIR = "captioner"  # the captioner checkpoint (transformers format), for the PyTorch backend
SAMPLES_DIR = "samples"      # frames for runtime.demo and the profiler (see write_samples)


class BuildError(LLMFormerError, ValueError):
    """A build that cannot be made as asked; the message says which option to change."""


@dataclasses.dataclass
class BuildConfig:
    """What to build: the command line's options, typed. `parse_args()` makes one from argv."""

    preset: str = "demo"
    out: Path | None = None                 # default artifacts/<preset>
    backend: str | None = None              # default: tensorrt where it and a GPU are present, else onnxruntime
    precision: str = "fp32"
    calib: Path | None = None
    calib_method: str = "entropy"
    int8_tolerance: float | None = None
    calib_cache: Path | None = None
    llm_weights: str | None = None          # captioner decoder weights; None: as --precision makes them
    llm_block_size: int = 32                # weight-only block size along K (MatMulNBits / blocked DequantizeLinear)
    plugins: Path | None = None
    workspace_gb: float = 2.0
    segmenter: Path | None = None
    vision_tower: Path | None = None
    text_encoder: Path | None = None
    captioner: Path | None = None
    no_captioner: bool = False
    opset: int = 17
    seed: int = 0
    skip_validation: bool = False
    verify: Path | None = None               # set: build nothing, check this folder's every byte instead


def log(msg: str) -> None:
    print(msg, flush=True)


def default_backend() -> str:
    if backend_importable("tensorrt"):
        try:
            import torch

            if torch.cuda.is_available():
                return "tensorrt"
        except ImportError:
            pass
    return "onnxruntime"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("llmformer-edge", "torch", "onnx", "onnxruntime", "transformers", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def parse_args(argv=None) -> BuildConfig:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=("demo", "edge", "paper"))
    ap.add_argument("--out", type=Path, default=None, help="artifact folder (default: artifacts/<preset>)")
    ap.add_argument("--backend", default=None, choices=BACKENDS,
                    help="backend recorded as the folder's default (default: tensorrt where it and a GPU are "
                         "present, else onnxruntime)")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS,
                    help="fp16: FP16 graphs with measured FP32 islands; int8: explicit Q/DQ (needs --calib)")
    ap.add_argument("--calib", type=Path, default=None,
                    help="folder of calibration images (optional DIR/captions.txt); required for int8")
    ap.add_argument("--calib-method", default="entropy", choices=("entropy", "percentile", "minmax"))
    ap.add_argument("--int8-tolerance", type=float, default=None,
                    help="int8: a layer whose isolated relative output error exceeds this stays FP32 (default 0.08; "
                         "the trained demo needs 0.02 to stay within 1 mIoU of FP32, see benchmarks/README.md)")
    ap.add_argument("--calib-cache", type=Path, default=None,
                    help="calibration cache folder (default: <out>.calibration_cache beside the output)")
    ap.add_argument("--llm-weights", default=None, choices=("fp32", "fp16", "int8", "int4"),
                    help="the captioner decoder's weights, in the backend's form: int8/int4 weight-only as MatMulNBits "
                         "(onnxruntime) or blocked DequantizeLinear, opset 21 (tensorrt); activations stay FP32 (FP16 "
                         "with --precision fp16). Default: what --precision makes of it (fp32, fp16, int8)")
    ap.add_argument("--llm-block-size", type=int, default=32,
                    help="weight-only block size along the reduction axis (a power of two >= 16; default 32)")
    ap.add_argument("--plugins", type=Path, default=None,
                    help="MSDA TensorRT plugin library for --backend tensorrt (default: $LLMFORMER_PLUGINS)")
    ap.add_argument("--workspace-gb", type=float, default=2.0, help="TensorRT workspace limit (GiB)")
    ap.add_argument("--segmenter", type=Path, default=None, help="segmenter checkpoint (.safetensors)")
    ap.add_argument("--vision-tower", type=Path, default=None, help="local folder of a CLIP/SigLIP vision model")
    ap.add_argument("--text-encoder", type=Path, default=None, help="local folder of the text encoder")
    ap.add_argument("--captioner", type=Path, default=None,
                    help="local folder of a LLaVA-Phi2 checkpoint (transformers' native LLaVA format)")
    ap.add_argument("--no-captioner", action="store_true", help="build without a captioner")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (17 or newer)")
    ap.add_argument("--seed", type=int, default=0, help="seed for random weights")
    ap.add_argument("--skip-validation", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    ap.add_argument("--verify", type=Path, default=None, metavar="DIR",
                    help="build nothing: check every file of the artifact folder DIR against the sha256 recorded at "
                         "build (runtime.load checks sizes and fingerprints; this reads every byte)")
    return BuildConfig(**vars(ap.parse_args(argv)))


def build(args: BuildConfig, preset=None) -> Path:
    """Build the artifact folder `args.out`; `preset` overrides `args.preset` (tests pass tiny ones).

    Raises BuildError for options that cannot be built, and the project's other errors (CheckpointError,
    CalibrationError, EngineError, ...) from the step that failed; all are LLMFormerErrors."""
    import torch

    from export.components import (DEFAULT_RANGES, Component, segmenter_component, text_encoder_component,
                                   vision_tower_component)
    from llmformer.captioner import CaptionerVision, build_tiny_captioner, load_captioner, save_captioner
    from calibration.graphs import check_onnx
    from export.onnx_utils import export_onnx, graph_specs
    from llmformer.checkpoint import load_segmenter, save_component
    from llmformer.presets import IMAGENET_MEAN, IMAGENET_STD, get_preset
    from llmformer.segmenter import LLMFormerSegmenter
    from llmformer.text_encoder import build_text_encoder, tokenizer_file
    from llmformer.vision_tower import VisionTower, build_vision_model
    from runtime.nlp import parser_model

    if args.opset < 17:
        raise BuildError(f"--opset {args.opset}: GridSample (MSDA) needs opset 16+, and this project builds 17+")
    backend = args.backend or default_backend()
    if backend == "tensorrt" and not backend_importable("tensorrt"):
        raise BuildError("--backend tensorrt: TensorRT is not installed here. TensorRT engines are built on the "
                         "target device; use --backend onnxruntime here")
    if args.int8_tolerance is not None and (args.precision != "int8" or not 0 < args.int8_tolerance < 1):
        raise BuildError(f"--int8-tolerance {args.int8_tolerance}: give a relative error in (0, 1), with --precision int8")
    if args.precision != "fp32" or args.llm_weights is not None:
        from export.precision import check_args

        # before any export: a bad --calib or --llm-block-size fails in a second
        check_args(args.precision, args.calib, args.llm_weights, args.llm_block_size)
    preset = preset or get_preset(args.preset)
    out = Path(args.out or Path("artifacts") / preset.name)
    if args.vision_tower:
        preset = dataclasses.replace(preset, vision_tower=dataclasses.replace(preset.vision_tower,
                                                                              source=str(args.vision_tower)))
    if args.text_encoder:
        preset = dataclasses.replace(preset, text_encoder=dataclasses.replace(preset.text_encoder,
                                                                              source=str(args.text_encoder)))
    torch.manual_seed(args.seed)
    t_all = time.perf_counter()
    captioner_source = None if args.no_captioner else (str(args.captioner) if args.captioner else preset.captioner)
    if captioner_source and args.vision_tower:
        raise BuildError("--vision-tower and a captioner both bring a vision tower: the segmenter shares the "
                         "captioner's (one tower pass per frame); drop --vision-tower or pass --no-captioner")
    log(f"building preset '{preset.name}' -> {out} (backend {backend}, {args.precision}, opset {args.opset})")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    try:
        random_parts = []
        t = time.perf_counter()
        captioner = None
        if captioner_source == "tiny":
            captioner = build_tiny_captioner(staging / CAPTIONER_DIR, preset.vision_tower, seed=args.seed)
            random_parts.append("captioner")
        elif captioner_source:
            captioner = load_captioner(captioner_source)
            save_captioner(captioner.model, captioner.tokenizer, staging / CAPTIONER_DIR, captioner.prompt)
        if captioner is not None:
            tower_model = captioner.model.model.vision_tower
            if captioner_source == "tiny":
                random_parts.append("vision_tower")
        elif preset.captioner not in (None, "tiny") and not args.vision_tower:
            # --no-captioner on a preset whose trained tower lives in its captioner checkpoint (the demo):
            # the segmenter was trained on that tower, so take it from there.
            tower_model = load_captioner(preset.captioner).model.model.vision_tower
        else:
            tower_model = build_vision_model(preset.vision_tower)
            if not preset.vision_tower.source:
                random_parts.append("vision_tower")
        tower = VisionTower(tower_model, preset.vision_tower.feature_layers).eval()
        text = build_text_encoder(preset.text_encoder)
        if not preset.text_encoder.source:
            random_parts.append("text_encoder")
        preset = sync_with_loaded_models(preset, tower, text)
        preset = dataclasses.replace(preset, captioner=captioner_source)
        segmenter_weights = args.segmenter or preset.segmenter_weights
        if segmenter_weights:
            segmenter = load_segmenter(segmenter_weights)
            if segmenter.cfg != preset.segmenter:
                log(f"  note: the checkpoint's segmenter config differs from preset '{preset.name}'; using the checkpoint's")
                preset = dataclasses.replace(preset, segmenter=segmenter.cfg)
        else:
            segmenter = LLMFormerSegmenter(preset.segmenter).eval()
            random_parts.append("segmenter")
        check_segmenter_fits(preset)
        caption_pre = captioner_preprocess(captioner, preset.vision_tower.image_size)
        log(f"  models ready ({time.perf_counter() - t:.1f} s)")
        if random_parts:
            bar = "!" * 78
            log(f"{bar}\n!! RANDOM WEIGHTS: {', '.join(random_parts)} {'is' if len(random_parts) == 1 else 'are'} "
                f"untrained. Captions and masks will be meaningless.\n!! Pass --captioner DIR / --segmenter CKPT / "
                f"--vision-tower DIR / --text-encoder DIR for real weights.\n{bar}")

        # With a captioner its vision graph (tower + projector) is the per-frame vision component.
        components = [text_encoder_component(preset, text, args.seed), segmenter_component(preset, segmenter, args.seed)]
        if captioner is None:
            components.insert(0, vision_tower_component(preset, tower, args.seed))
        entries = {}
        for comp in components:
            t = time.perf_counter()
            onnx_name, weights_name = f"{comp.name}.onnx", f"{comp.name}.safetensors"
            model = export_onnx(comp.module, comp.example, staging / onnx_name, comp.names.inputs,
                                comp.names.outputs, comp.dynamic_axes, args.opset)
            inferred = check_onnx(model)
            save_component(comp.module, staging / weights_name)
            entries[comp.name] = ComponentEntry(
                precision=args.precision, onnx=file_entry(staging, onnx_name),
                weights=file_entry(staging, weights_name),
                inputs=graph_specs(inferred, "inputs", DEFAULT_RANGES),
                outputs=graph_specs(inferred, "outputs", DEFAULT_RANGES),
                random_weights=comp.name in random_parts)
            log(f"  exported {comp.name:<17} {entries[comp.name].onnx.size / 1e6:8.1f} MB "
                f"({time.perf_counter() - t:.1f} s)")
        shutil.copyfile(tokenizer_file(preset.text_encoder), staging / TOKENIZER_FILE)
        captioner_info = None
        if captioner is not None:
            t = time.perf_counter()
            captioner_info = export_captioner_entries(captioner, staging, preset, args, entries,
                                                      random="captioner" in random_parts)
            log(f"  exported captioner (vision, embed, decoder) ({time.perf_counter() - t:.1f} s)")

        if not args.skip_validation:
            checks = list(components)
            if captioner is not None:
                layers = preset.vision_tower.feature_layers
                pixels = vision_tower_component(preset, tower, args.seed).example
                checks.insert(0, Component(CAPTIONER_VISION.names, CaptionerVision(captioner.model, layers), pixels))
            for comp in checks:
                t = time.perf_counter()
                entry = entries[comp.name]
                entry.max_abs_diff_vs_torch = validate(comp, staging / entry.onnx.file)
                log(f"  validated {comp.name:<16} max |ORT - PyTorch| = "
                    f"{entry.max_abs_diff_vs_torch:.2e} ({time.perf_counter() - t:.1f} s)")
            if captioner is not None:
                t = time.perf_counter()
                embeds = np.random.default_rng(0).standard_normal(
                    (1, captioner_info.image_tokens, captioner.config.text_config.hidden_size)).astype(np.float32)
                want = caption_tokens(staging, captioner_info, torch_caption_engines(captioner, entries), embeds)
                # Phi-2's 11 GB PyTorch copy must not sit beside ONNX Runtime's: nothing needs it from here on.
                checks = captioner = tower = tower_model = None
                gc.collect()
                got = caption_tokens(staging, captioner_info, {n: create_engine(
                    "onnxruntime", n, staging, entries[n], providers=["CPUExecutionProvider"])
                    for n in (CAPTIONER_EMBED.component, CAPTIONER_DECODER.component)}, embeds)
                same = got == want
                for name in (CAPTIONER_EMBED.component, CAPTIONER_DECODER.component):
                    entries[name].greedy_tokens_match_torch = same
                log(f"  validated captioner greedy tokens ORT == PyTorch: {same} ({time.perf_counter() - t:.1f} s)")
                if not same:
                    raise BuildError("the exported captioner does not decode like PyTorch; not publishing")
        captioner = tower = tower_model = None   # the conversions below load the graphs, not the models
        gc.collect()

        samples = write_samples(staging, trained=not random_parts and preset.name == "demo",
                                size=preset.segmenter.frame_size)
        manifest = Manifest(
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            preset=preset.to_json(), backend=backend, precision=args.precision, opset=args.opset,
            tokenizer=file_entry(staging, TOKENIZER_FILE), max_length=preset.text_encoder.max_length,
            preprocess={
                VISION_TOWER.component: Preprocess(preset.vision_tower.image_size, tuple(preset.vision_tower.mean),
                                                   tuple(preset.vision_tower.std)),
                SEGMENTER.component: Preprocess(preset.segmenter.frame_size, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)),
                **caption_pre,
            },
            parser=parser_model(), captioner=captioner_info, components=entries, samples=samples,
            versions=versions())
        manifest.check_graphs()
        if args.precision != "fp32" or args.llm_weights not in (None, "fp32"):
            from export.precision import convert_artifacts

            extra = {"layer_tolerance": args.int8_tolerance} if args.int8_tolerance is not None else {}
            convert_artifacts(staging, manifest, args.precision, calib=args.calib, method=args.calib_method,
                              cache_dir=args.calib_cache or out.parent / f"{out.name}.calibration_cache", log=log,
                              llm_weights=args.llm_weights, llm_block_size=args.llm_block_size, backend=backend,
                              **extra)
        if backend == "tensorrt":
            from engines.tensorrt_builder import build_artifacts

            build_artifacts(staging, manifest, plugins=args.plugins, workspace=int(args.workspace_gb * (1 << 30)),
                            timing_cache=out.parent / "timing.cache", log=log)
        publish(staging, out, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary(out, entries)
    log(f"done in {time.perf_counter() - t_all:.1f} s: {out / MANIFEST_NAME}")
    return out


def sync_with_loaded_models(preset, tower, text):
    """A tower or text encoder loaded from a folder decides its own sizes: copy them into the preset, and
    size a random segmenter to match (a checkpoint's segmenter is checked in `check_segmenter_fits`)."""
    hf = tower.model.config
    vt = dataclasses.replace(preset.vision_tower, hidden_size=hf.hidden_size, image_size=hf.image_size,
                             patch_size=hf.patch_size, num_layers=hf.num_hidden_layers,
                             num_heads=hf.num_attention_heads, intermediate_size=hf.intermediate_size)
    bad = [i for i in vt.feature_layers if not 0 <= i <= vt.num_layers]
    if bad:
        raise BuildError(f"vision tower has {vt.num_layers} layers; feature layers {bad} do not exist")
    tc = text.model.config
    embed = getattr(tc, "projection_dim", None) if text.kind == "clip" else tc.hidden_size
    te = dataclasses.replace(preset.text_encoder, embed_dim=int(embed), hidden_size=tc.hidden_size,
                             num_layers=tc.num_hidden_layers, num_heads=tc.num_attention_heads,
                             intermediate_size=tc.intermediate_size, vocab_size=tc.vocab_size)
    seg = dataclasses.replace(preset.segmenter, vit_dim=vt.hidden_size, vit_grid=vt.grid, vit_has_cls=vt.has_cls,
                              vit_layers=len(vt.feature_layers), text_dim=te.embed_dim)
    return dataclasses.replace(preset, vision_tower=vt, text_encoder=te, segmenter=seg)


def check_segmenter_fits(preset) -> None:
    s, vt, te = preset.segmenter, preset.vision_tower, preset.text_encoder
    want = {"vit_dim": vt.hidden_size, "vit_grid": vt.grid, "vit_has_cls": vt.has_cls,
            "vit_layers": len(vt.feature_layers), "text_dim": te.embed_dim}
    wrong = {k: (getattr(s, k), v) for k, v in want.items() if getattr(s, k) != v}
    if wrong:
        detail = ", ".join(f"{k} {a} (towers give {b})" for k, (a, b) in wrong.items())
        raise BuildError(f"the segmenter checkpoint does not fit the vision tower / text encoder: {detail}; "
                         f"pass the tower and text encoder it was trained with")


def export_captioner_entries(captioner, staging: Path, preset, args: BuildConfig, entries: dict[str, ComponentEntry],
                             random: bool) -> CaptionerEntry:
    """Export the captioner's three graphs into `staging`, add their manifest entries to `entries`, and
    return the manifest's captioner section (tokenizer, prompt format, context)."""
    from export.captioner import export_captioner

    exp = export_captioner(captioner, staging, preset.vision_tower.feature_layers, opset=args.opset)
    parts = {"vision": exp.vision, "embed": exp.embed, "decoder": exp.decoder}
    for part, graph in parts.items():
        entries[graph.names.component] = ComponentEntry(
            precision=args.precision, onnx=file_entry(staging, graph.file),
            data_files=[file_entry(staging, f) for f in graph.data_files],
            inputs=list(graph.inputs), outputs=list(graph.outputs),
            profiles=[{n: [list(s) for s in shapes] for n, shapes in p.items()} for p in graph.profiles],
            torch=TorchSource(CAPTIONER_DIR, part, list(preset.vision_tower.feature_layers)),
            random_weights=random)
    # The checkpoint (for the PyTorch engine) is listed, and so hashed, once, not under each of its parts.
    checkpoint = [file_entry(staging, p.relative_to(staging).as_posix())
                  for p in sorted((staging / CAPTIONER_DIR).rglob("*")) if p.is_file()]
    return CaptionerEntry(file_entry(staging, exp.tokenizer_file), file_entry(staging, exp.prompt_file),
                          max_context=exp.max_context, image_tokens=exp.image_tokens, checkpoint=checkpoint)


def captioner_preprocess(captioner, tower_size: int) -> dict[str, Preprocess]:
    """The captioner's own frame preprocessing when its checkpoint records one (a converted LLaVA checkpoint:
    llmformer.captioner.Captioner.preprocess), as the manifest's `captioner_vision` entry; else none (the
    captioner sees the tower's stretched square, as the demo's was trained)."""
    pre = captioner.preprocess if captioner is not None else None
    if not pre:
        return {}
    crop = pre.get("center_crop") or [pre["resize_shortest_edge"]] * 2
    if crop[0] != crop[1] or crop[0] != tower_size:
        raise BuildError(f"the captioner's preprocessing crops {crop}, not the tower's {tower_size} px square")
    if abs(float(pre.get("rescale_factor", 1 / 255)) * 255 - 1) > 1e-6:
        raise BuildError(f"the captioner's preprocessing rescales by {pre['rescale_factor']}; the runtime takes 1/255")
    mode = "pad" if pre.get("image_aspect_ratio") == "pad" else "crop"
    return {CAPTIONER_VISION.component: Preprocess(
        tower_size, tuple(pre["mean"]), tuple(pre["std"]), mode=mode, resize=int(pre["resize_shortest_edge"]),
        pad_color=tuple(int(c) for c in pre["pad_color"]) if mode == "pad" else None)}


def write_samples(folder: Path, trained: bool, size: int, count: int = 8) -> list[Sample]:
    """Frames for `runtime.demo` and the profiler, written into the build (`samples/`): for the trained demo,
    synthetic validation scenes with their labels and captions; otherwise generated frames with scripted
    captions (a random model has nothing to recognise)."""
    import cv2

    from llmformer.data.frames import DEMO_SCENES, demo_frame
    from llmformer.data.synthetic import make_scene

    (folder / SAMPLES_DIR).mkdir()
    samples = []
    for i in range(count):
        frame_name, labels = f"{SAMPLES_DIR}/frame_{i:03d}.png", None
        if trained:
            scene = make_scene("val", i, size=size)
            frame, caption, vocabulary = scene.image, scene.caption, list(scene.classes)
            labels = f"{SAMPLES_DIR}/labels_{i:03d}.png"
            cv2.imwrite(str(folder / labels), scene.labels.astype(np.uint8))
        else:
            caption, vocabulary = DEMO_SCENES[i % len(DEMO_SCENES)]
            frame = demo_frame(i)
        cv2.imwrite(str(folder / frame_name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        samples.append(Sample(file_entry(folder, frame_name), caption, list(vocabulary),
                              None if labels is None else file_entry(folder, labels)))
    return samples


def torch_caption_engines(captioner, entries: dict[str, ComponentEntry]) -> dict:
    """The PyTorch engines of the embed and decoder graphs over the captioner already in memory (loading it
    again from the staging folder would hold two copies of the LLM)."""
    from engines.torch_engine import TorchEngine
    from llmformer.captioner import CaptionerDecoder, CaptionerEmbed

    modules = {CAPTIONER_EMBED.component: CaptionerEmbed(captioner.model),
               CAPTIONER_DECODER.component: CaptionerDecoder(captioner.model)}
    return {n: TorchEngine(n, m, entries[n].inputs, entries[n].outputs, device="cpu") for n, m in modules.items()}


def caption_tokens(staging: Path, info: CaptionerEntry, engines: dict, embeds: np.ndarray, tokens: int = 8) -> list[int]:
    """The greedy tokens of a caption of `embeds` (random image embeddings) through the runtime's decode loop on
    `engines`; closes them."""
    from runtime.decode import CaptionDecoder

    try:
        dec = CaptionDecoder.from_files(staging / info.tokenizer.file, staging / info.prompt.file,
                                        engines[CAPTIONER_EMBED.component], engines[CAPTIONER_DECODER.component],
                                        max_context=info.max_context)
        return list(dec.caption_embeds(embeds, max_new_tokens=tokens).token_ids)
    finally:
        for engine in engines.values():
            engine.close()


def validate(comp, onnx_path: Path) -> float:
    """One ONNX Runtime run against PyTorch on the component's example inputs: max abs difference."""
    import torch

    from engines.onnxruntime_engine import OnnxRuntimeEngine

    engine = OnnxRuntimeEngine(comp.name, onnx_path, providers=["CPUExecutionProvider"])
    got = engine({n: x.numpy() for n, x in zip(comp.names.inputs, comp.example)})
    with torch.no_grad():
        ref = comp.module(*comp.example)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    return float(max(np.abs(got[n] - r.numpy()).max() for n, r in zip(comp.names.outputs, ref)))


def publish(staging: Path, out: Path, manifest: Manifest) -> None:
    """Move the staged files into `out` and write the manifest last. The old manifest goes first, so
    until the new one lands the folder reads as 'no finished build', never as a mix of two builds."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for f in staging.iterdir():
        if f.is_dir() and (out / f.name).exists():
            shutil.rmtree(out / f.name)
        os.replace(f, out / f.name)
    write_manifest(out, manifest)


def summary(out: Path, entries: dict[str, ComponentEntry]) -> None:
    rows = [("component", "file", "size", "precision", "max |ORT-PyTorch|")]
    for name, e in entries.items():
        diff, tokens = e.max_abs_diff_vs_torch, e.greedy_tokens_match_torch
        check = f"{diff:.2e}" if diff is not None else ("greedy tokens equal" if tokens else "skipped")
        rows.append((name, e.onnx.file, f"{e.onnx.size / 1e6:.1f} MB", e.precision, check))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        log("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            log("  ".join("-" * w for w in widths))


def verify_folder(folder: Path) -> None:
    """Every file of an artifact folder against its recorded sha256 (read_manifest's "full" level)."""
    t = time.perf_counter()
    manifest = read_manifest(folder, verify="full")
    files = list(manifest.files())
    log(f"{folder}: {len(files)} files, {sum(f.size for f in files) / 1e9:.2f} GB match their sha256 "
        f"({time.perf_counter() - t:.1f} s)")


def main(argv=None) -> int:
    """The command: one line on stderr and exit status 2 for anything the user can fix, never a traceback."""
    config = parse_args(argv)
    try:
        if config.verify is not None:
            verify_folder(config.verify)
        else:
            build(config)
    except LLMFormerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
