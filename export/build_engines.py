"""Build an artifact folder: every component exported, checked, validated and listed in a manifest.

    python export/build_engines.py [--preset demo|edge|paper] [--out DIR] [--backend ...] [--opset N]
                                   [--segmenter CKPT] [--vision-tower DIR] [--text-encoder DIR] [--force]
                                   [--max-batch B]

With no weights given the preset is built with random weights, and the build says so.

Inputs are checked before any export work: a missing --segmenter / --text-encoder / --vision-tower /
--captioner, a --segmenter that is not an llmformer-edge safetensors checkpoint (a pickle is named as one
and never unpickled), --calib images that do not decode, an --out that is a file, not writable, or a
folder that is not ours.

The folder (`--out`) and how a build is published in it:

    OUT/manifest.json        the one switch: lists every file of the live build, by paths inside OUT
    OUT/builds/<build-id>/   one build's files (graphs, weights, tokenizer, captioner/, samples/)

- A build is written into a new `builds/<build-id>/` (id: UTC time + random, so two never share one), then
  published by one atomic `os.replace` of `manifest.json` (written to a temporary file and fsynced first,
  with every staged file). Before the replace the folder loads as the previous build, after it as the new
  one: at no instant is there a mix, or nothing, once a first build exists.
- After the switch the build folders the new manifest does not reference are removed, and so are the
  top-level files an older manifest listed (folders written before builds/ existed). A build holds
  `OUT/.build.lock` (fcntl.flock, with its pid) from its first write to its last, so it cleans only what
  no live build is writing: the `builds/` folders of killed builds, temporary manifests, and the
  `.OUT.staging-*` folders earlier versions left beside OUT. A second build into the same OUT while one
  runs is refused.
- OUT is ours when it is missing, empty, holds only such leftovers, or holds a manifest of ours.
  Anything else is refused, naming what is there, unless --force: then the build goes in beside those
  files (in builds/ and manifest.json), and nothing the project did not write is ever deleted or
  overwritten (a manifest.json or builds/ that is not ours is refused even with --force).

Exit status of the command: 0 built (or verified); 2 a usage error, something given is wrong and the
message says what to change (an option, a path, an input file, a folder that is not ours, a folder
--verify finds altered: the LLMFormerErrors that are ValueError, TypeError, FileNotFoundError or
ManifestError); 1 a runtime failure, the build ran and failed (an engine or TensorRT error, a build that
failed its own checks, the disk, anything unexpected); 130 interrupted. Either way one `error: ...` line
on stderr; `--debug` (or LLMFORMER_DEBUG=1) prints the traceback too.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import gc
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path, PurePosixPath
from typing import Callable

try:
    import fcntl
except ImportError:       # Windows: builds into one folder are not serialized there
    fcntl = None

import numpy as np

from engines.base import BACKENDS, backend_importable, create_engine
from engines.contract import (CAPTIONER_DECODER, CAPTIONER_EMBED, CAPTIONER_VISION, FORMAT, MANIFEST_NAME, SEGMENTER,
                              VISION_TOWER, CaptionerEntry, ComponentEntry, Manifest, Preprocess, Sample, TorchSource,
                              file_entry, read_manifest)
from engines.errors import LLMFormerError, ManifestError

PRECISIONS = ("fp32", "fp16", "int8")   # export/precision.py makes fp16 and int8 from the fp32 export
TOKENIZER_FILE = "tokenizer.json"
CAPTIONER_DIR = "captioner"  # the captioner checkpoint (transformers format), for the PyTorch backend
SAMPLES_DIR = "samples"      # frames for runtime.demo and the profiler (see write_samples)
BUILDS_DIR = "builds"        # OUT/builds/<build-id>/: one build's files (see the module docstring)
LOCK_FILE = ".build.lock"    # OUT/.build.lock: held (flock) by the build writing OUT, holds its pid
BUILD_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")   # what new_build_id() makes; nothing else is cleaned
DEBUG_ENV = "LLMFORMER_DEBUG"             # =1: the command prints tracebacks
KILL_ENV = "LLMFORMER_BUILD_KILL_AT"      # tests: SIGKILL the build at this step of publishing
MAX_BATCH_LIMIT = 256                     # --max-batch: a batch of frames, not of phrases
PUBLISH_STEPS = ("staged", "manifest-written", "switched", "cleaning", "cleaned")


class BuildError(LLMFormerError, ValueError):
    """A build that cannot be made as asked; the message says which option to change."""


class BuildCheckError(LLMFormerError, RuntimeError):
    """The build ran, but what it made failed one of its own checks; nothing was published."""


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
    force: bool = False                      # build into a folder that is not ours, beside its files
    host_postprocess: bool = False           # no frame graphs: frames are pre/postprocessed in numpy/OpenCV
    max_batch: int = 8                       # frames per vision/segmenter call (the batch axis 1..B); 1: no batch axis
    debug: bool = False                      # main(): print tracebacks


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
                    help="int8: a layer whose isolated relative output error exceeds this stays FP32 (default 0.02, "
                         "what keeps the trained demo within 1 mIoU of FP32; 0.08 quantizes more layers and lost "
                         "2.5 mIoU: benchmarks/README.md)")
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
    ap.add_argument("--force", action="store_true",
                    help="build into an --out that holds other files (not an artifact folder), beside them: the "
                         "build goes in builds/ and manifest.json, and nothing else there is touched")
    ap.add_argument("--host-postprocess", action="store_true",
                    help="build without the frame graphs (preprocessing and semantic inference on the engines' "
                         "device): the runtime then resizes, normalizes and postprocesses frames in numpy/OpenCV")
    ap.add_argument("--max-batch", type=int, default=8, metavar="B",
                    help="frames one vision-tower and segmenter call takes (a batch axis 1..B, for "
                         "Runtime.segment_batch and the server; default 8); 1 builds them without a batch axis")
    ap.add_argument("--debug", action="store_true",
                    help=f"on an error, print the traceback too (also: {DEBUG_ENV}=1)")
    return BuildConfig(**vars(ap.parse_args(argv)))


def build(args: BuildConfig, preset=None) -> Path:
    """Build the artifact folder `args.out`; `preset` overrides `args.preset` (tests pass tiny ones).

    Raises BuildError for options that cannot be built, and the project's other errors (CheckpointError,
    CalibrationError, EngineError, ...) from the step that failed; all are LLMFormerErrors. The inputs and
    --out are checked first, before any heavy import or export work."""
    check_inputs(args)
    target = OutFolder.check(Path(args.out or Path("artifacts") / (preset.name if preset is not None else args.preset)),
                             force=args.force)
    import torch

    from engines.contract import BATCH_AXIS
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

    backend = args.backend or default_backend()
    if backend == "tensorrt" and not backend_importable("tensorrt"):
        raise BuildError("--backend tensorrt: TensorRT is not installed here. TensorRT engines are built on the "
                         "target device; use --backend onnxruntime here")
    if args.precision != "fp32" or args.llm_weights is not None:
        from export.precision import check_args

        # before any export: a bad --calib or --llm-block-size fails in a second
        check_args(args.precision, args.calib, args.llm_weights, args.llm_block_size)
    preset = preset or get_preset(args.preset)
    out = target.path
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
    staging = target.open()    # OUT/builds/<build-id>/, written under the folder's lock
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
        ranges = {**DEFAULT_RANGES, BATCH_AXIS: (1, args.max_batch)}
        components = [text_encoder_component(preset, text, args.seed),
                      segmenter_component(preset, segmenter, args.seed, args.max_batch)]
        if captioner is None:
            components.insert(0, vision_tower_component(preset, tower, args.seed, args.max_batch))
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
                inputs=graph_specs(inferred, "inputs", ranges),
                outputs=graph_specs(inferred, "outputs", ranges),
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
                pixels = vision_tower_component(preset, tower, args.seed, args.max_batch).example
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
                    raise BuildCheckError("the exported captioner does not decode like PyTorch; not publishing")
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
        if not args.host_postprocess:
            entries.update(export_frame_graphs(staging, manifest, args))
            manifest.check_graphs()
        if backend == "tensorrt":
            from engines.tensorrt_builder import build_artifacts

            build_artifacts(staging, manifest, plugins=args.plugins, workspace=int(args.workspace_gb * (1 << 30)),
                            timing_cache=out.parent / "timing.cache", log=log)
        target.publish(manifest)
    finally:
        target.close()         # an unpublished build's folder is removed, the lock released
    summary(out, entries)
    log(f"done in {time.perf_counter() - t_all:.1f} s: {out / MANIFEST_NAME}")
    return out


def export_frame_graphs(staging: Path, manifest: Manifest, args: BuildConfig) -> dict[str, ComponentEntry]:
    """The frame graphs (export/frame_graphs.py) into `staging`, checked as TensorRT reads graphs and against the
    host path (runtime.frames) under ONNX Runtime; their manifest entries (FP32 whatever --precision says: they
    are resizes and reductions, a few milliseconds, and the labels must not depend on the precision)."""
    from calibration.graphs import check_onnx
    from engines.contract import CLASS_AXIS, FRAME_PREPROCESS, SEMANTIC_MAP, VOCAB_AXIS
    from engines.files import atomic_write_bytes
    from engines.trt_supported_ops import check_graph
    from export import frame_graphs
    from export.components import DEFAULT_RANGES
    from export.onnx_utils import graph_specs

    t = time.perf_counter()
    vision, segmenter = manifest.preprocess[VISION_TOWER.component], manifest.preprocess[SEGMENTER.component]
    mask_shape = manifest.components[SEGMENTER.component].output(SEGMENTER.mask_logits).shape[1:]
    # class_logits is an input here (an output of the segmenter): TensorRT needs its range, V + 1 for V over the
    # vocabulary range the segmenter was built for (what the runtime reads too).
    vocab = manifest.components[SEGMENTER.component].input(SEGMENTER.vocab_embeddings)
    vocab_lo, vocab_hi = (vocab.min_shape[0], vocab.max_shape[0]) if vocab.max_shape else DEFAULT_RANGES[VOCAB_AXIS]
    ranges = {**DEFAULT_RANGES, VOCAB_AXIS: (vocab_lo, vocab_hi), CLASS_AXIS: (vocab_lo + 1, vocab_hi + 1),
              **frame_graphs.FRAME_RANGE}
    graphs = {FRAME_PREPROCESS.component: frame_graphs.preprocess_graph(vision, segmenter),
              SEMANTIC_MAP.component: frame_graphs.semantic_graph(mask_shape, vocab_hi)}
    out = {}
    for name, model in graphs.items():
        inferred = check_onnx(model)
        problems = check_graph(model)
        if problems:
            raise BuildCheckError(f"the {name} graph uses what TensorRT cannot parse: {'; '.join(problems)}")
        onnx_name = f"{name}.onnx"
        atomic_write_bytes(staging / onnx_name, model.SerializeToString())
        out[name] = ComponentEntry(precision="fp32", onnx=file_entry(staging, onnx_name),
                                   inputs=graph_specs(inferred, "inputs", ranges),
                                   outputs=graph_specs(inferred, "outputs", ranges))
    if not args.skip_validation:
        check = frame_graphs.validate(staging / out[FRAME_PREPROCESS.component].onnx.file,
                                      staging / out[SEMANTIC_MAP.component].onnx.file, vision, segmenter, mask_shape)
        if check["max_grey_levels"] > 1.0 + 1e-3 or check["label_mismatch"] > 0.01:
            raise BuildCheckError(f"the frame graphs do not match the host path ({check}); not publishing")
        log(f"  validated frame graphs: inputs within {check['max_grey_levels']:.2f} grey levels of OpenCV, "
            f"{check['label_mismatch']:.2%} of labels differ from the host path")
        out[FRAME_PREPROCESS.component].max_diff_vs_host = {"max_grey_levels": round(check["max_grey_levels"], 4)}
        out[SEMANTIC_MAP.component].max_diff_vs_host = {"label_mismatch": check["label_mismatch"]}
    log(f"  exported frame graphs (preprocess, semantic map) ({time.perf_counter() - t:.1f} s)")
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

    exp = export_captioner(captioner, staging, preset.vision_tower.feature_layers, opset=args.opset,
                           max_batch=args.max_batch)
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


# ------------------------------------------------------------------------------------------------ input checks
def check_inputs(args: BuildConfig) -> None:
    """The command's inputs, checked in milliseconds before any export work (each part's own loader checks
    the rest when it loads): every path exists and is of the right kind, the segmenter checkpoint is an
    llmformer-edge safetensors file, the calibration images decode."""
    if args.opset < 17:
        raise BuildError(f"--opset {args.opset}: GridSample (MSDA) needs opset 16+, and this project builds 17+")
    if not 1 <= args.max_batch <= MAX_BATCH_LIMIT:
        raise BuildError(f"--max-batch {args.max_batch}: give the most frames one call takes, 1 to {MAX_BATCH_LIMIT} "
                         f"(1: no batch axis)")
    if args.int8_tolerance is not None and (args.precision != "int8" or not 0 < args.int8_tolerance < 1):
        raise BuildError(f"--int8-tolerance {args.int8_tolerance}: give a relative error in (0, 1), with --precision int8")
    if args.captioner is not None and args.no_captioner:
        raise BuildError(f"--captioner {args.captioner} and --no-captioner contradict each other: drop one")
    if args.segmenter is not None:
        check_segmenter_file(Path(args.segmenter))
    if args.text_encoder is not None:
        check_model_folder(Path(args.text_encoder), "--text-encoder", "a text encoder (MiniLM/BERT or CLIP text) "
                           "saved with save_pretrained() and a fast tokenizer", ("config.json", "tokenizer.json"))
    if args.vision_tower is not None:
        check_model_folder(Path(args.vision_tower), "--vision-tower", "a CLIP or SigLIP vision model saved with "
                           "save_pretrained()", ("config.json",))
    if args.captioner is not None:
        check_model_folder(Path(args.captioner), "--captioner", "a LLaVA-Phi2 checkpoint in transformers' native "
                           "format (convert a published one with export/convert_llava.py)", ("config.json",))
    if args.calib is not None and (args.precision != "fp32" or args.llm_weights not in (None, "fp32")):
        check_calib_images(Path(args.calib))


def check_model_folder(path: Path, flag: str, what: str, needs: tuple[str, ...]) -> None:
    if not path.exists():
        raise BuildError(f"{flag} {path} does not exist: pass a local folder of {what}")
    if not path.is_dir():
        raise BuildError(f"{flag} {path} is a file, not a folder: pass the folder of {what}")
    missing = [name for name in needs if not (path / name).is_file()]
    if missing:
        raise BuildError(f"{flag} {path} has no {' and no '.join(missing)}: pass a local folder of {what}")


SAFETENSORS_MAX_HEADER = 100 << 20       # the safetensors format's own limit


def check_segmenter_file(path: Path) -> None:
    """`path` is an llmformer-edge segmenter checkpoint, judged from its first bytes and its JSON header:
    a pickle (torch.save) is named as one and never unpickled (unpickling runs the file's code)."""
    from llmformer.checkpoint import FORMAT as CHECKPOINT_FORMAT

    flag, fix = f"--segmenter {path}", ("re-save the model, where you trust the file, with "
                                        "llmformer.checkpoint.save_segmenter(model, 'segmenter.safetensors')")
    if not path.exists():
        raise BuildError(f"{flag} does not exist: pass a segmenter checkpoint (.safetensors) written by "
                         f"llmformer.checkpoint.save_segmenter or `python -m llmformer.train`")
    if path.is_dir():
        raise BuildError(f"{flag} is a folder: pass the checkpoint file in it (e.g. {path / 'segmenter.safetensors'})")
    if not os.access(path, os.R_OK):
        raise BuildError(f"{flag} is not readable by this user: fix its permissions")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        pickled = ("a zip archive (torch.save's format: a pickle inside)" if head[:4] == b"PK\x03\x04" else
                   "a Python pickle (torch.save's legacy format)" if head[:1] == b"\x80" else None)
        if pickled:
            raise BuildError(f"{flag} is {pickled}, not safetensors. It was not loaded: unpickling runs whatever "
                             f"code the file holds, so this project never does; {fix}")
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = None
        if 0 < length <= min(size - 8, SAFETENSORS_MAX_HEADER):
            try:
                header = json.loads(f.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
    if not isinstance(header, dict):
        raise BuildError(f"{flag} is not a safetensors file ({size} bytes, no safetensors header): it may be "
                         f"truncated or in another format; {fix}")
    meta = header.get("__metadata__") if isinstance(header.get("__metadata__"), dict) else {}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise BuildError(f"{flag} is a safetensors file that llmformer-edge did not write (no '{CHECKPOINT_FORMAT}' "
                         f"metadata, so no segmenter config); {fix}")
    if meta.get("kind") != "segmenter":
        raise BuildError(f"{flag} holds a '{meta.get('kind')}' checkpoint, not a segmenter: pass the segmenter's "
                         f"file (segmenter.safetensors in a training run's folder)")


def check_calib_images(folder: Path) -> None:
    """Every calibration image decodes, checked in a moment (at 1/8 scale, which a JPEG decodes from its DC
    coefficients alone) rather than after the export and FP32 recording that come before calibration."""
    import cv2

    from calibration.data import CAPTIONS_FILE, list_images, read_captions

    images = list_images(folder)
    bad = [p.name for p in images if cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None]
    if bad:
        raise BuildError(f"--calib {folder}: {len(bad)} of {len(images)} images cannot be decoded: "
                         f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; remove or re-encode them")
    if (folder / CAPTIONS_FILE).is_file():
        read_captions(folder / CAPTIONS_FILE)


# ------------------------------------------------------------------------------------------------ publishing
def new_build_id() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def relocate(manifest: Manifest, move: Callable[[str], str]) -> Manifest:
    """`manifest` with every path in it (its files, the captioner's PyTorch checkpoint folder) passed through
    `move`, in place, each entry once."""
    seen = set()
    for item, key in [(e, "file") for e in manifest.files()] + [
            (c.torch, "captioner") for c in manifest.components.values() if c.torch is not None]:
        if id(item) not in seen:
            seen.add(id(item))
            setattr(item, key, move(getattr(item, key)))
    return manifest


def _fault(step: str) -> None:
    """tests/test_build_safety.py sets KILL_ENV to one of PUBLISH_STEPS to SIGKILL the build there."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:          # a folder on Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except OSError as exc:   # the build is published; a leftover is reported, not fatal
        log(f"  note: could not remove {path} ({exc}); remove it by hand")
        return False


def _is_leftover(entry: Path) -> bool:
    """A name a killed build of ours may leave in the folder (its lock, a temporary manifest, builds/)."""
    if entry.name == LOCK_FILE or re.fullmatch(rf"\.{re.escape(MANIFEST_NAME)}\..+\.tmp", entry.name):
        return True
    return (entry.name == BUILDS_DIR and entry.is_dir() and not entry.is_symlink()
            and all(d.is_dir() and BUILD_ID.fullmatch(d.name) for d in entry.iterdir()))


def _says_ours(manifest_path: Path) -> bool:
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


class OutFolder:
    """The --out folder and the one build being written into it (layout and protocol: the module docstring).
    `check()` before any work, `open()` for the staging folder, `publish(manifest)`, and `close()` always."""

    def __init__(self, path: Path, force: bool = False):
        self.path, self.force = Path(path), force
        self.existed = self.path.exists()
        self.build_id: str | None = None
        self.staging: Path | None = None          # OUT/builds/<build_id>/
        self.previous: Manifest | None = None     # the live build's manifest when this build began
        self.published = False
        self._made_builds = False
        self._lock_fd: int | None = None

    @classmethod
    def check(cls, path: str | os.PathLike, force: bool = False) -> "OutFolder":
        """BuildError unless a build can go into `path` (see `inspect`); nothing is written."""
        folder = cls(Path(path), force)
        folder.inspect()
        return folder

    def inspect(self) -> Manifest | None:
        """The live build's manifest (None: none this code can read); BuildError when the folder is a file,
        not writable, or not ours (see the module docstring), naming what is there."""
        path, flag = self.path, f"--out {self.path}"
        if not path.exists():
            parent = path.parent
            while not parent.exists() and parent != parent.parent:
                parent = parent.parent
            if path.is_symlink() or not parent.is_dir():
                raise BuildError(f"{flag} cannot be created: {path if path.is_symlink() else parent} is "
                                 f"{'a broken symlink' if path.is_symlink() else 'a file'}; choose another --out")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise BuildError(f"{flag} cannot be created: {parent} is not writable by this user; choose another "
                                 f"--out")
            return None
        if not path.is_dir():
            raise BuildError(f"{flag} is a file, not a folder: give the artifact folder's path (it is created when "
                             f"missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise BuildError(f"{flag} is not writable by this user: fix its permissions or choose another --out")
        builds = path / BUILDS_DIR
        if builds.is_symlink() or (builds.exists() and not builds.is_dir()):
            raise BuildError(f"{flag}: {builds} is not a folder of ours, and a build needs that name: move it away "
                             f"or choose another --out (files the project did not write are never overwritten, "
                             f"even with --force)")
        manifest_path = path / MANIFEST_NAME
        if manifest_path.exists() or manifest_path.is_symlink():
            try:
                return read_manifest(path, verify="off")
            except ManifestError as exc:
                problem = str(exc).split("; ")[0]
            if not _says_ours(manifest_path):
                raise BuildError(f"{flag} holds a {MANIFEST_NAME} that llmformer-edge did not write, and a build "
                                 f"would overwrite it: move it away or choose another --out (files the project did "
                                 f"not write are never overwritten, even with --force)")
            if not self.force:
                raise BuildError(f"{flag} holds an llmformer-edge build this version cannot read ({problem}); pass "
                                 f"--force to publish this build in its place (its files are left where they are)")
            return None
        foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir() if not _is_leftover(e))
        if foreign and not self.force:
            shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
            raise BuildError(f"{flag} is not empty and holds no llmformer-edge build (it has {shown}): a build there "
                             f"would mix with your files. Choose a new or empty folder, or pass --force to build "
                             f"beside them (in {BUILDS_DIR}/ and {MANIFEST_NAME}; nothing there is deleted or "
                             f"overwritten)")
        return None

    def open(self) -> Path:
        """Take the folder's lock, check it again, remove what killed builds left, and make this build's
        staging folder OUT/builds/<build-id>/ (returned)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.previous = self.inspect()
            # With a manifest this code cannot read (--force) the builds it references are unknown: keep them.
            self._clean(self.previous, known=self.previous is not None or not (self.path / MANIFEST_NAME).exists())
            builds = self.path / BUILDS_DIR
            self._made_builds = not builds.exists()
            self.build_id = new_build_id()
            self.staging = builds / self.build_id
            self.staging.mkdir(parents=True)
        except BaseException:
            self.close()
            raise
        return self.staging

    def publish(self, manifest: Manifest) -> Manifest:
        """Make the staged build the folder's live one: fsync its files, write the manifest (paths into
        builds/<build-id>/) to a temporary file, replace manifest.json with it (the one atomic switch), then
        remove what the new manifest does not reference. Returns the manifest as published."""
        final = relocate(copy.deepcopy(manifest), lambda f: f"{BUILDS_DIR}/{self.build_id}/{f}")
        _fault("staged")
        for entry in final.files():
            f = self.path / entry.file
            if not f.is_file() or f.stat().st_size != entry.size:
                raise BuildCheckError(f"{entry.file} is listed in the new manifest but is "
                                      f"{'missing' if not f.is_file() else 'of another size'} in {self.staging}; "
                                      f"not publishing")
            _fsync(f)
        for d in [self.staging, *(p for p in self.staging.rglob("*") if p.is_dir())]:
            _fsync(d)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write((json.dumps(final.to_json(), indent=2) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
            _fault("manifest-written")
            os.replace(tmp, self.path / MANIFEST_NAME)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync(self.path)
        self.published = True
        _fault("switched")
        self._clean(final, known=True, publishing=True)
        _fault("cleaned")
        return final

    def _clean(self, live: Manifest | None, known: bool, publishing: bool = False) -> None:
        """Remove, under the lock, what no live build needs: the build folders `live` does not reference (when
        `known`), temporary manifests, the top-level files the previous manifest listed (a folder from before
        builds/, or converted in place) once a new build is live, and the staging folders of older versions
        beside the folder. Only names this code writes are candidates; a file the user put there stays."""
        removed = 0

        def remove(path: Path) -> None:
            nonlocal removed
            if _remove(path):
                removed += 1
                if publishing and removed == 1:
                    _fault("cleaning")

        listed = {e.file for e in live.files()} if live is not None else set()
        keep = {PurePosixPath(f).parts[1] for f in listed if PurePosixPath(f).parts[0] == BUILDS_DIR}
        builds = self.path / BUILDS_DIR
        if known and builds.is_dir() and not builds.is_symlink():
            for d in sorted(builds.iterdir()):
                stale = BUILD_ID.fullmatch(d.name) and d.name not in keep and d.name != self.build_id
                if stale and d.is_dir() and not d.is_symlink():
                    remove(d)
        for tmp in self.path.glob(f".{MANIFEST_NAME}.*.tmp"):
            remove(tmp)
        if publishing and self.previous is not None:
            root, emptied = self.path.resolve(), set()
            for name in sorted({e.file for e in self.previous.files()} - listed):
                f = self.path / name
                inside = f.parent.resolve().is_relative_to(root)
                if PurePosixPath(name).parts[0] != BUILDS_DIR and inside and (f.is_file() or f.is_symlink()):
                    remove(f)
                    emptied.update(p for p in f.parents if p != self.path and p.is_relative_to(self.path))
            for d in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
                if d.is_dir() and not any(d.iterdir()):
                    _remove(d)
        legacy = f".{self.path.name}.staging-"       # tempfile.mkdtemp's prefix before builds/ existed
        for d in self.path.parent.iterdir():
            if d.name.startswith(legacy) and d.is_dir() and not d.is_symlink():
                remove(d)

    def close(self) -> None:
        """Remove an unpublished build's staging folder, release the lock, and remove the folder itself when
        this build created it and leaves it empty. Safe to call twice."""
        if self.staging is not None and not self.published:
            shutil.rmtree(self.staging, ignore_errors=True)
            if self._made_builds:
                try:
                    (self.path / BUILDS_DIR).rmdir()
                except OSError:
                    pass
        self._unlock()
        if not self.existed and not self.published:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def _lock(self) -> None:
        """flock OUT/.build.lock (released by the kernel if this process dies), and write our pid in it."""
        if fcntl is None:
            return
        path = self.path / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise BuildError(f"another build (pid {holder}) is writing --out {self.path} now: wait for it to "
                                 f"finish, or build into another --out") from None
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)     # its holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)    # before the unlock: see the inode check in _lock
            os.close(self._lock_fd)
            self._lock_fd = None


def summary(out: Path, entries: dict[str, ComponentEntry]) -> None:
    rows = [("component", "file", "size", "precision", "check: max |ORT-PyTorch| (frame graphs: vs host path)")]
    for name, e in entries.items():
        diff, tokens, host = e.max_abs_diff_vs_torch, e.greedy_tokens_match_torch, e.max_diff_vs_host or {}
        if diff is not None:
            check = f"{diff:.2e}"
        elif tokens:
            check = "greedy tokens equal"
        elif "max_grey_levels" in host:
            check = f"within {host['max_grey_levels']:.2f} grey levels of OpenCV"
        elif "label_mismatch" in host:
            check = f"{host['label_mismatch']:.3%} of labels differ"
        else:
            check = "skipped"
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


def exit_status(exc: BaseException) -> int:
    """2 for a usage error (something given is wrong; the message says what to change), 1 for a runtime
    failure (the build ran and failed): see the module docstring."""
    usage = isinstance(exc, (ValueError, TypeError, FileNotFoundError, ManifestError))
    return 2 if isinstance(exc, LLMFormerError) and usage else 1


def main(argv=None) -> int:
    """The command: exit status 0, 2 (usage) or 1 (runtime failure), as the module docstring says, with one
    `error: ...` line on stderr; the traceback only with --debug or LLMFORMER_DEBUG=1."""
    config = parse_args(argv)
    debug = config.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        if config.verify is not None:
            verify_folder(config.verify)
        else:
            build(config)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("error: interrupted; the artifact folder keeps its previous build", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected one too: one line, and the traceback with --debug
        if debug:
            traceback.print_exc()
        status = exit_status(exc)
        message = str(exc) if isinstance(exc, LLMFormerError) else f"the build failed: {type(exc).__name__}: {exc}"
        if status == 1 and not debug:
            message += f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
