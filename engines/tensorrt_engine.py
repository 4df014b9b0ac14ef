"""TensorRT engine: deserialize, bind by tensor name, run on one CUDA stream with device buffers allocated once.

CUDA calls go through **cuda-python** (`cuda.bindings.runtime`), not pycuda: it is NVIDIA's maintained binding,
what TensorRT's own samples moved to (10.13+), ships as wheels for x86-64 and aarch64 (JetPack) with nothing to
compile, and owns no CUDA context of its own (pycuda's `autoinit` context fights the runtime API's primary context
that TensorRT and ONNX Runtime use). Every TensorRT call is the documented TensorRT 10 Python API
(Runtime.deserialize_cuda_engine, ICudaEngine.get_tensor_*, IExecutionContext.set_input_shape /
set_tensor_address / execute_async_v3).

- Buffers: one device buffer per input and output, sized for the largest shape the engine takes (the manifest's
  `max_shape`), allocated and bound once; a call copies the inputs in, runs, and copies the outputs out.
- Shared buffers (`run_bound`): an input or output given as a `DeviceTensor` is bound by its device pointer
  (IExecutionContext.set_tensor_address), so another engine's output buffer (the vision tower's hidden states)
  or a KV cache made with `allocate` is read and written in place, never through the host. An output the
  caller does not bind comes back as a DeviceTensor over the engine's own buffer, valid until its next run.
  `__call__` binds the engine's own buffers again.
- CUDA graphs: for an engine whose inputs are all static (the segmenter at a fixed vocabulary size is not; the
  vision tower is), the enqueue is captured once after a first eager run and replayed (`cuda_graph=None` means
  "where the shapes are static"; False turns it off). Any capture failure falls back to eager execution.
- Compatibility: an engine is tied to a TensorRT version and a GPU architecture; the manifest records both (and the
  plugin library's sha256), and a mismatch is an error that says how to rebuild, before TensorRT is asked to
  deserialize anything.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from engines.base import CudaMemory, DeviceTensor, Engine
from engines.contract import ComponentEntry, Manifest, TensorRTEngineEntry, TensorSpec
from engines.errors import EngineError
from engines.tensorrt_builder import (REBUILD, compute_capability, cuda_check, cudart, init_builtin_plugins,
                                      load_plugins, plugin_library, plugin_sha256)

log = logging.getLogger("llmformer_edge")


def _version_mismatch(built: str, here: str) -> bool:
    # Engines are only guaranteed to load in the TensorRT release that built them (major.minor.patch).
    return built.split(".")[:3] != here.split(".")[:3]


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, name: str, engine_path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                 built: TensorRTEngineEntry | None = None, plugins: str | Path | None = None,
                 cuda_graph: bool | None = None, device: int = 0, rebuild_hint: str = ""):
        import tensorrt as trt

        super().__init__(name, list(inputs), list(outputs))
        self._buffers: dict[str, int] = {}
        self._addresses: dict[str, int] = {}   # what each tensor is bound to now
        self._device = int(device)
        self._stream = None
        self._graph_exec = None
        built = built.to_json() if built is not None else {}
        hint = rebuild_hint or REBUILD.format(folder=Path(engine_path).parent)
        here_cc = compute_capability(device)
        made = f"{Path(engine_path).name} was built with TensorRT {built.get('trt_version', '?')} on " \
               f"sm_{str(built.get('compute_capability', '?')).replace('.', '')}"
        now = f"this is TensorRT {trt.__version__} on sm_{here_cc.replace('.', '')}"
        if built.get("trt_version") and _version_mismatch(built["trt_version"], trt.__version__):
            raise EngineError(f"{made}; {now}: {hint}")
        if built.get("compute_capability") and built["compute_capability"] != here_cc:
            raise EngineError(f"{made}; {now}: {hint}")
        logger = trt.Logger(trt.Logger.WARNING)
        init_builtin_plugins(trt, logger)   # an engine holding a built-in plugin (semantic_map's scatter) needs them
        if built.get("plugin_sha256"):
            library = plugin_library(plugins)
            if plugin_sha256(library) != built["plugin_sha256"]:
                raise EngineError(f"{Path(engine_path).name} was built with another MSDA plugin library than {library} "
                                  f"(sha256 differs): {hint}")
            load_plugins(trt, logger, library)
        self._trt = trt
        self._runtime = trt.Runtime(logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialize {Path(engine_path).name} ({made}; {now}): {hint}")
        self._context = self._engine.create_execution_context()
        rt = cudart()
        self._rt = rt
        try:
            self._allocate(trt, rt, name, hint)
        except BaseException:
            self.close()  # free the stream and the buffers allocated before the failure
            raise
        self._profile = 0   # the context starts on profile 0
        self._static = all(s.min_shape is None for s in self.inputs)
        self._use_graph = self._static if cuda_graph is None else bool(cuda_graph) and self._static
        self._runs = 0

    def _allocate(self, trt, rt, name: str, hint: str) -> None:
        """One stream and one device buffer per tensor, sized for its largest shape, bound once."""
        self._stream = cuda_check(rt.cudaStreamCreate())
        self._dtypes: dict[str, np.dtype] = {}
        for spec in self.inputs + self.outputs:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(spec.name)))
            shape = spec.max_shape or tuple(self._engine.get_tensor_shape(spec.name))
            if any(int(d) < 0 for d in shape):
                raise EngineError(f"{name}: '{spec.name}' has no maximum shape in the manifest: {hint}")
            nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
            self._buffers[spec.name] = int(cuda_check(rt.cudaMalloc(nbytes)))
            self._dtypes[spec.name] = dtype
            self._bind(spec.name, self._buffers[spec.name])

    def _select_profile(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Switch the context to the first optimization profile whose [min, max] holds every dynamic input's
        shape (the captioner decoder has two: prefill S = 1..n, P = 1 and decode S = 1, P = 1..n)."""
        engine = self._engine
        dynamic = [s.name for s in self.inputs if s.min_shape is not None]
        if engine.num_optimization_profiles <= 1 or not dynamic:
            return
        for k in range(engine.num_optimization_profiles):
            fits = True
            for name in dynamic:
                lo, _, hi = engine.get_tensor_profile_shape(name, k)
                fits = fits and all(a <= d <= b for a, d, b in zip(lo, shapes[name], hi))
            if fits:
                if k != self._profile:
                    self._context.set_optimization_profile_async(k, self._stream)
                    self._profile = k
                    self._graph_exec = None   # a captured graph belongs to the profile it was captured on
                return
        raise EngineError(f"{self.name}: input shapes {shapes} fit none of the engine's "
                          f"{engine.num_optimization_profiles} optimization profiles")

    def _bind(self, name: str, address: int) -> None:
        if self._addresses.get(name) != address:
            if not self._context.set_tensor_address(name, address):
                raise EngineError(f"{self.name}: TensorRT did not accept the buffer for '{name}'")
            self._addresses[name] = address

    @classmethod
    def from_component(cls, name: str, folder: Path, component: ComponentEntry, plugins=None,
                       cuda_graph: bool | None = None, threads: int | None = None) -> "TensorRTEngine":
        """The options are engines.base.ENGINE_OPTIONS["tensorrt"]; create_engine() refuses any other.
        `threads` is taken so that one runtime.load() call serves every backend: TensorRT runs on the GPU,
        and it has no effect."""
        entry = component.tensorrt
        if entry is None:
            raise EngineError(f"{name}: the artifact folder {folder} has no TensorRT engine for it: "
                              f"{REBUILD.format(folder=folder)}")
        return cls(name, Path(folder) / entry.file, component.inputs, component.outputs, built=entry, plugins=plugins,
                   cuda_graph=cuda_graph, rebuild_hint=REBUILD.format(folder=folder))

    @property
    def device_buffers(self) -> dict[str, int]:
        """Device pointers bound to each tensor, for callers that keep their data on the GPU."""
        return dict(self._buffers)

    def _enqueue(self) -> None:
        rt = self._rt
        own = self._addresses == self._buffers   # a captured graph replays the addresses it was captured with
        if self._graph_exec is not None and own:
            cuda_check(rt.cudaGraphLaunch(self._graph_exec, self._stream))
            return
        if not self._context.execute_async_v3(self._stream):
            raise EngineError(f"{self.name}: TensorRT failed to run the engine (see the TensorRT log)")
        if self._use_graph and self._runs >= 1 and own:
            self._capture()

    def _capture(self) -> None:
        """Record the enqueue as a CUDA graph (after an eager run, as TensorRT requires); fall back on failure."""
        rt = self._rt
        self._use_graph = False
        try:
            cuda_check(rt.cudaStreamSynchronize(self._stream))
            cuda_check(rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal))
            ok = self._context.execute_async_v3(self._stream)
            graph = cuda_check(rt.cudaStreamEndCapture(self._stream))
            if ok:
                self._graph_exec = cuda_check(rt.cudaGraphInstantiate(graph, 0))
            cuda_check(rt.cudaGraphDestroy(graph))
        except EngineError as exc:
            log.warning("%s: CUDA graph capture failed (%s); running without it", self.name, exc)
            self._graph_exec = None

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt = self._rt
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []  # host arrays must outlive the async copies
        for name, address in self._buffers.items():
            self._bind(name, address)
        self._select_profile({s.name: tuple(feeds[s.name].shape) for s in self.inputs})
        for spec in self.inputs:
            array = np.ascontiguousarray(feeds[spec.name], dtype=self._dtypes[spec.name])
            keep.append(array)
            if spec.min_shape is not None and not self._context.set_input_shape(spec.name, array.shape):
                raise EngineError(f"{self.name}: shape {list(array.shape)} of '{spec.name}' is outside the engine's "
                                  f"profile")
            cuda_check(rt.cudaMemcpyAsync(self._buffers[spec.name], array.ctypes.data, array.nbytes, h2d,
                                          self._stream))
        self._enqueue()
        self._runs += 1
        out = {}
        for spec in self.outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
            array = np.empty(shape, dtype=self._dtypes[spec.name])
            cuda_check(rt.cudaMemcpyAsync(array.ctypes.data, self._buffers[spec.name], array.nbytes, d2h,
                                          self._stream))
            out[spec.name] = array
        cuda_check(rt.cudaStreamSynchronize(self._stream))
        return {n: (a if a.dtype == np.dtype(s.dtype) else a.astype(s.dtype))
                for (n, a), s in zip(out.items(), self.outputs)}

    # -- shared device buffers --------------------------------------------------------------------------
    @property
    def tensor_device(self) -> str:
        return f"cuda:{self._device}"

    def tensor_dtype(self, name: str) -> np.dtype:
        return self._dtypes[name] if name in getattr(self, "_dtypes", {}) else super().tensor_dtype(name)

    def _new_tensor(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        memory = CudaMemory(int(np.prod(shape)) * dtype.itemsize)
        return DeviceTensor(memory.ptr, shape, dtype, self.tensor_device, memory, self.io)

    def _run_bound(self, inputs: dict[str, Any], outputs: dict[str, DeviceTensor]) -> dict[str, DeviceTensor]:
        rt = self._rt
        keep = []  # host arrays must outlive the async copies
        self._select_profile({s.name: tuple(inputs[s.name].shape) for s in self.inputs})
        for spec in self.inputs:
            value = inputs[spec.name]
            if isinstance(value, DeviceTensor) and value.device != self.tensor_device:
                value = value.to_numpy()   # another device's tensor: through the host (counted by its engine)
            if isinstance(value, np.ndarray):
                array = np.ascontiguousarray(value, dtype=self._dtypes[spec.name])
                keep.append(array)
                self._bind(spec.name, self._buffers[spec.name])
                cuda_check(rt.cudaMemcpyAsync(self._buffers[spec.name], array.ctypes.data, array.nbytes,
                                              rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
                self.io.add(h2d=array.nbytes)
            else:
                self._bind(spec.name, value.data_ptr())
                array = value
            if spec.min_shape is not None and not self._context.set_input_shape(spec.name, tuple(array.shape)):
                raise EngineError(f"{self.name}: shape {list(array.shape)} of '{spec.name}' is outside the engine's "
                                  f"profile")
        result = {}
        for spec in self.outputs:   # output shapes follow from the input shapes: check before anything is written
            shape = tuple(int(d) for d in self._context.get_tensor_shape(spec.name))
            bound = outputs.get(spec.name)
            if bound is None:
                bound = DeviceTensor(self._buffers[spec.name], shape, self._dtypes[spec.name], self.tensor_device,
                                     self, self.io)
            elif bound.shape != shape:
                raise EngineError(f"{self.name}: output '{spec.name}' will be {list(shape)}, the tensor bound to it "
                                  f"is {list(bound.shape)}")
            self._bind(spec.name, bound.data_ptr())
            result[spec.name] = bound
        self._enqueue()
        self._runs += 1
        cuda_check(rt.cudaStreamSynchronize(self._stream))
        return result

    def close(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is None:
            return
        if self._graph_exec is not None:
            rt.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        for ptr in self._buffers.values():
            rt.cudaFree(ptr)
        self._buffers = {}
        if self._stream is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = None
        super().close()


def tensorrt_usable(manifest: Manifest) -> tuple[bool, str]:
    """Whether `runtime.load(backend=None)` should pick TensorRT for this folder, and why not when it should not."""
    from engines.base import backend_importable
    from engines.tensorrt_builder import gpu_count

    if not backend_importable("tensorrt"):
        return False, "tensorrt is not installed"
    missing = [n for n, c in manifest.components.items() if c.tensorrt is None]
    if missing:
        return False, f"no TensorRT engines for {', '.join(missing)}"
    try:
        if gpu_count() < 1:
            return False, "no CUDA GPU"
    except EngineError as exc:
        return False, str(exc)
    return True, ""
