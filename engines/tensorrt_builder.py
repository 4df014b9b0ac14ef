"""ONNX -> serialized TensorRT engine, with the TensorRT 10 Python API (JetPack 6's 10.3 through 11.x).

    python -m engines.tensorrt_builder ARTIFACTS [--plugins LIB] [--workspace-gb 2] [--timing-cache FILE]

builds an engine for every component of an artifact folder, on the device that will run it, and records it in
the manifest under `components.<name>.tensorrt` = {file, sha256, size, trt_version, compute_capability,
plugin_sha256, workspace_bytes, profiles}. Thin on purpose (parse, configure, build, serialize):

- **strongly typed** networks (NetworkDefinitionCreationFlag.STRONGLY_TYPED; TensorRT 11 is always strongly typed):
  the precision is the ONNX graph's (export/precision.py), never a builder flag;
- **optimization profiles** from the manifest's shape ranges (`min_shape`/`max_shape` of each input), or the
  component's own `profiles` list when it has one (the captioner decoder's prefill and decode profiles);
- TensorRT's **built-in plugins** (libnvinfer_plugin) registered before every parse: the ONNX parser builds some
  standard ONNX nodes with them (ScatterElements with a `reduction`, which the semantic_map graph's scores use,
  is the `ScatterElements` plugin, not a core layer), and an engine holding one needs them to deserialize;
- the **MSDA plugin** library (plugins_trt/msda) loaded when the graph has plugin nodes: `--plugins` or the
  `LLMFORMER_PLUGINS` environment variable; a missing file is a clear error;
- a **timing cache** file shared by builds (created when absent), and a configurable **workspace** limit (2 GiB by
  default, so an 8 GB Orin Nano, whose GPU shares memory with the CPU, still fits).

The graph built is `components.<name>.onnx_tensorrt` when the folder has one (a graph made for TensorRT, e.g. with
MSDA plugin nodes), else `components.<name>.onnx`. Every call is as documented in NVIDIA's TensorRT Python API
(Builder, BuilderConfig, OnnxParser, IOptimizationProfile, ITimingCache, IPluginRegistry).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from engines.contract import (BATCH_AXIS, CLASS_AXIS, FRAME_HEIGHT_AXIS, FRAME_WIDTH_AXIS, PHRASES_AXIS, PRIORS_AXIS,
                              VOCAB_AXIS, ComponentEntry, Manifest, TensorRTEngineEntry, file_entry)
from engines.errors import EngineError, LLMFormerError
from engines.files import atomic_write_bytes, sha256_file

PLUGINS_ENV = "LLMFORMER_PLUGINS"
PLUGIN_LIBRARY = "libllmformer_plugins.so"
DEFAULT_WORKSPACE = 2 << 30
ENGINE_SUFFIX = ".engine"
# Opt sizes of the dynamic axes (the shapes TensorRT tunes for); clipped to each input's [min, max]. The frame
# graphs' frame axes range over 1..2160 x 1..3840 (export/frame_graphs.py FRAME_RANGE) and are tuned for 720p, the
# common camera size (without an entry the opt would be the max, 4K, and 720p would run kernels picked for it). The
# batch axis (1..--max-batch) is tuned for 1: a camera loop's segment() keeps the kernels of a batch-1 engine, and
# the server's batches run on them (a build for serving only could tune for its max instead; not measured here).
OPT_AXES = {PRIORS_AXIS: 8, VOCAB_AXIS: 32, PHRASES_AXIS: 16, CLASS_AXIS: 33,
            FRAME_HEIGHT_AXIS: 720, FRAME_WIDTH_AXIS: 1280, BATCH_AXIS: 1}
REBUILD = "rebuild the engines on this device with `python -m engines.tensorrt_builder {folder}`"


class TensorRTBuildError(EngineError):
    """An engine could not be built; the message says what to fix."""


# ------------------------------------------------------------------------------------------------- plugins
def plugin_library(path: str | os.PathLike | None = None) -> Path:
    """The MSDA plugin library: `path`, else $LLMFORMER_PLUGINS. A missing file is an error that says how to
    build it."""
    chosen = path or os.environ.get(PLUGINS_ENV)
    how = (f"build it with `cmake -S plugins_trt -B build/plugins_trt -DLLMFORMER_BUILD_TRT_PLUGIN=ON && cmake "
           f"--build build/plugins_trt` and pass build/plugins_trt/msda/{PLUGIN_LIBRARY} as --plugins or in "
           f"${PLUGINS_ENV}")
    if not chosen:
        raise EngineError(f"this graph needs the MSDA TensorRT plugin ({PLUGIN_LIBRARY}) and none was given: {how}")
    chosen = Path(chosen)
    if not chosen.is_file():
        raise EngineError(f"MSDA plugin library {chosen} does not exist: {how}")
    return chosen


def plugin_sha256(path: Path) -> str:
    return sha256_file(path)


_loaded: dict[str, str] = {}
_builtin_plugins = False


def init_builtin_plugins(trt, logger) -> None:
    """Register TensorRT's own plugins (libnvinfer_plugin) in the default namespace, once per process, before any
    ONNX parse or engine deserialization: the parser imports ScatterElements with a `reduction` (the semantic_map
    graph) as the `ScatterElements` plugin from this registry, and fails the node without it."""
    global _builtin_plugins
    if not _builtin_plugins:
        if not trt.init_libnvinfer_plugins(logger, ""):
            raise EngineError("TensorRT could not register its built-in plugins (libnvinfer_plugin): check that "
                              "libnvinfer_plugin.so.10 is installed beside libnvinfer.so.10 (see the TensorRT log)")
        _builtin_plugins = True


def load_plugins(trt, logger, path: Path) -> str:
    """Register TensorRT's own plugins and this project's library (once per process); return its sha256.

    `libllmformer_plugins.so` registers its creator when loaded (plugins_trt/msda/README.md); the `_dynamic`
    variant is handed to IPluginRegistry.load_library, which registers what its getCreators() returns."""
    key = str(Path(path).resolve())
    if key in _loaded:
        return _loaded[key]
    init_builtin_plugins(trt, logger)
    if "_dynamic" in Path(path).name:
        if trt.get_plugin_registry().load_library(str(path)) is None:
            raise EngineError(f"TensorRT could not load the plugin library {path} (see the TensorRT log above)")
    else:
        try:
            lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise EngineError(f"cannot load the plugin library {path}: {exc}") from exc
        init = getattr(lib, "initLlmformerPlugins", None)
        if init is not None:
            init.restype = ctypes.c_bool
            if not init():
                raise EngineError(f"{path} did not register the MSDA plugin with TensorRT (initLlmformerPlugins failed)")
    _loaded[key] = plugin_sha256(Path(path))
    return _loaded[key]


def graph_needs_plugin(onnx_path: Path) -> bool:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.domain == "trt.plugins" for n in model.graph.node)


# ------------------------------------------------------------------------------------------------- profiles
def profiles_for(component: ComponentEntry) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
    """Optimization profiles as [{input: (min, opt, max)}]: the component's own `profiles` if it lists any, else
    one profile over the manifest's shape ranges. Static inputs need no profile entry."""
    if component.profiles:
        return [{name: tuple(tuple(int(d) for d in s) for s in shapes) for name, shapes in p.items()}
                for p in component.profiles]
    profile = {}
    for spec in component.inputs:
        if spec.min_shape is None:
            continue
        if spec.max_shape is None:
            raise TensorRTBuildError(f"input '{spec.name}' has a dynamic axis without a maximum in the manifest; "
                                     f"TensorRT needs a range for every dynamic axis")
        opt = tuple(max(lo, min(hi, OPT_AXES.get(axis, hi))) if isinstance(axis, str) else lo
                    for axis, lo, hi in zip(spec.shape, spec.min_shape, spec.max_shape))
        profile[spec.name] = (tuple(spec.min_shape), opt, tuple(spec.max_shape))
    return [profile] if profile else []


# ------------------------------------------------------------------------------------------------- device
def cudart():
    """cuda-python's runtime bindings (`cuda.bindings.runtime` from 12.6 on, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise EngineError("the TensorRT backend needs cuda-python: pip install cuda-python "
                              "(JetPack 6: the version matching its CUDA 12.x)") from exc
    return runtime


def cuda_check(result):
    """Unpack a cuda-python call's (error, values...) tuple, raising on an error."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        raise EngineError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def compute_capability(device: int = 0) -> str:
    """The GPU's compute capability as "major.minor" (8.7 = Orin)."""
    props = cuda_check(cudart().cudaGetDeviceProperties(device))
    return f"{props.major}.{props.minor}"


def gpu_count() -> int:
    try:
        return int(cuda_check(cudart().cudaGetDeviceCount()))
    except Exception:
        return 0


# ------------------------------------------------------------------------------------------------- build
def build_engine(onnx_path: str | Path, engine_path: str | Path, component: ComponentEntry, *,
                 plugins: str | Path | None = None, workspace: int = DEFAULT_WORKSPACE,
                 timing_cache: str | Path | None = None, log: Callable[[str], None] = print) -> TensorRTEngineEntry:
    """Build and write one engine (atomically); return its manifest entry."""
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    plugin_hash = None
    init_builtin_plugins(trt, logger)
    if graph_needs_plugin(onnx_path):
        plugin_hash = load_plugins(trt, logger, plugin_library(plugins))

    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    profiles = profiles_for(component)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    cache_file = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    t = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT could not build {onnx_path.name} (see the TensorRT errors above); a "
                                 f"larger --workspace-gb may help")
    atomic_write_bytes(engine_path, memoryview(serialized).tobytes())
    if cache_file is not None:
        atomic_write_bytes(cache_file, memoryview(config.get_timing_cache().serialize()).tobytes())
    log(f"  built {engine_path.name} from {onnx_path.name} in {time.perf_counter() - t:.1f} s")
    written = file_entry(engine_path.parent, engine_path.name)
    return TensorRTEngineEntry(written.file, written.sha256, written.size, written.fingerprint,
                               trt_version=trt.__version__,
                               compute_capability=compute_capability(), plugin_sha256=plugin_hash,
                               workspace_bytes=int(workspace),
                               profiles=[{n: [list(s) for s in v] for n, v in p.items()} for p in profiles])


def build_artifacts(folder: str | Path, manifest: Manifest, *, plugins: str | Path | None = None,
                    workspace: int = DEFAULT_WORKSPACE, timing_cache: str | Path | None = None,
                    components: Sequence[str] | None = None, log: Callable[[str], None] = print) -> Manifest:
    """Build an engine for each component of the folder's `manifest` (in place: `components.<name>.tensorrt`)."""
    folder = Path(folder)
    for name, entry in manifest.components.items():
        if components is not None and name not in components:
            continue
        source = (entry.onnx_tensorrt or entry.onnx).file
        engine_name = f"{Path(source).stem}{ENGINE_SUFFIX}"
        entry.tensorrt = build_engine(folder / source, folder / engine_name, entry, plugins=plugins,
                                      workspace=workspace, timing_cache=timing_cache, log=log)
    manifest.backend = "tensorrt"
    return manifest


class _UsageError(LLMFormerError, ValueError):
    """The command line is wrong: exit status 2 (runtime.commands' policy; engines/ cannot import it)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """The command: one `error: ...` line on stderr and exit status 2 for a wrong command line, 1 for a build
    that failed, 130 on Ctrl-C; --debug or LLMFORMER_DEBUG=1 shows the traceback (runtime/commands.py's
    policy, repeated here in small because engines/ imports nothing above it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("LLMFORMER_DEBUG", "").strip() not in ("", "0")
    try:
        return _main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except (LLMFormerError, OSError) as exc:
        if debug:
            raise
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        print(f"error: {text}", file=sys.stderr)
        return 2 if isinstance(exc, _UsageError) else 1


def _main(argv: Sequence[str] | None) -> int:
    ap = _Parser(prog="python -m engines.tensorrt_builder", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", type=Path, help="artifact folder made by export/build_engines.py")
    ap.add_argument("--plugins", type=Path, default=None, help=f"MSDA plugin library (default: ${PLUGINS_ENV})")
    ap.add_argument("--workspace-gb", type=float, default=DEFAULT_WORKSPACE / (1 << 30),
                    help="TensorRT workspace limit in GiB, > 0 (default 2: fits an 8 GB Orin Nano)")
    ap.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, created when absent")
    ap.add_argument("--components", nargs="+", default=None, help="only these components")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error (also: LLMFORMER_DEBUG=1)")
    args = ap.parse_args(argv)
    if not (args.artifacts / "manifest.json").is_file():
        ap.error(f"{args.artifacts} is not an artifact folder (no manifest.json): build one with "
                 f"`python export/build_engines.py --out {args.artifacts}`")
    if not 0 < args.workspace_gb < float("inf"):
        ap.error(f"--workspace-gb must be a number of GiB > 0, got {args.workspace_gb}")
    if args.plugins is not None and not args.plugins.is_file():
        ap.error(f"--plugins {args.plugins} is not a file (the MSDA plugin library, {PLUGIN_LIBRARY})")
    if args.timing_cache is not None and args.timing_cache.is_dir():
        ap.error(f"--timing-cache {args.timing_cache} is a folder: name a file, e.g. {args.timing_cache / 'timing.cache'}")

    from engines.base import backend_importable
    from engines.contract import read_manifest, write_manifest

    if not backend_importable("tensorrt"):
        raise EngineError("TensorRT is not installed here; engines are built on the device that runs them "
                          "(JetPack 6 ships TensorRT 10.3)")
    manifest = read_manifest(args.artifacts, verify="full")
    unknown = sorted(set(args.components or ()) - set(manifest.components))
    if unknown:
        ap.error(f"--components {' '.join(unknown)}: not in {args.artifacts} (it has {', '.join(manifest.components)})")
    build_artifacts(args.artifacts, manifest, plugins=args.plugins, workspace=int(args.workspace_gb * (1 << 30)),
                    timing_cache=args.timing_cache or args.artifacts / "timing.cache", components=args.components)
    write_manifest(args.artifacts, manifest)
    print(f"engines recorded in {args.artifacts / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
