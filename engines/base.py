"""The `Engine` interface and the backend registry.

Two ways to run an engine:

- `engine(feeds)`: numpy arrays in, numpy arrays out. Every input goes to the engine's memory and every
  output comes back, on every call. Simple; what the pipeline, calibration and most tests use.
- `engine.run_bound(inputs, outputs)`: inputs are `DeviceTensor`s (or numpy arrays, copied in), outputs are
  written into `DeviceTensor`s the caller allocated with `engine.allocate(name, shape)`, or returned as
  `DeviceTensor`s the engine allocated. Nothing comes back to the host unless asked (`to_numpy()`), and one
  engine's output tensor can be another engine's input on the same device. `DeviceTensor.write` copies a
  block into a slot of a larger tensor on the device (the KV cache's new keys/values), so a decode step moves
  bytes for the new token only.

`engine.tensor_device` says where `allocate` puts memory: "cpu" or "cuda:N". The base class implements
`run_bound` by host staging (through `__call__`, every input and output crossing on every call), so any
Engine subclass supports it; ONNX Runtime (IOBinding) and TensorRT (bound device buffers) override it.

**Bytes moved** (`engine.io`, an `IOCounter`): every engine counts the bytes it copies host -> device and
device -> host, and device -> device for `DeviceTensor.write`. "Device" is the memory an engine computes on
and binds tensors from: GPU memory, or on ONNX Runtime's CPU provider the buffers bound to the session
(there a numpy <-> bound-buffer copy is a host memcpy, counted as a host <-> device transfer anyway, so a
figure means the same on every backend). `__call__` counts every input and output it is given or returns.
"""
from __future__ import annotations

import ctypes
import importlib.util
import math
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engines.contract import ComponentEntry, TensorSpec
from engines.errors import EngineError, OptionError

BACKENDS = ("onnxruntime", "tensorrt", "torch")
# The keyword options each backend's `from_component` takes (`create_engine(..., **options)`, and
# `runtime.load(..., **engine_options)` beside `threads`); anything else is an OptionError naming it.
# TensorRT takes `threads` so that one load() call serves every backend; it has no effect there.
ENGINE_OPTIONS = {
    "onnxruntime": ("providers", "threads", "spin"),
    "torch": ("device", "threads"),
    "tensorrt": ("plugins", "cuda_graph", "threads"),
}


# ------------------------------------------------------------------------------------------ bytes moved
@dataclass(frozen=True)
class IOBytes:
    """Bytes moved between the host and an engine's memory, by direction (see the module docstring)."""

    host_to_device: int = 0
    device_to_host: int = 0
    device_to_device: int = 0       # inside the engine's memory: not a host <-> device transfer

    @property
    def host_device(self) -> int:
        """Host <-> device bytes, both directions."""
        return self.host_to_device + self.device_to_host

    def __add__(self, other: "IOBytes") -> "IOBytes":
        return IOBytes(self.host_to_device + other.host_to_device, self.device_to_host + other.device_to_host,
                       self.device_to_device + other.device_to_device)

    def __sub__(self, other: "IOBytes") -> "IOBytes":
        return IOBytes(self.host_to_device - other.host_to_device, self.device_to_host - other.device_to_host,
                       self.device_to_device - other.device_to_device)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class IOCounter:
    """An engine's running totals. Locked: the caption worker and the camera loop may share an engine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes = IOBytes()

    def add(self, h2d: int = 0, d2h: int = 0, d2d: int = 0) -> None:
        with self._lock:
            self._bytes = self._bytes + IOBytes(int(h2d), int(d2h), int(d2d))

    def snapshot(self) -> IOBytes:
        with self._lock:
            return self._bytes


def total_io(engines: "Sequence[Engine]") -> IOBytes:
    """The sum of the engines' counters (each engine once)."""
    return sum((e.io.snapshot() for e in dict.fromkeys(engines)), IOBytes())


# ------------------------------------------------------------------------------------------ CUDA memory
# cuda-python (the binding TensorRTEngine uses), wrapped once in engines.tensorrt_builder.cuda_check. Copies run
# on the legacy default stream and are waited for: the producing engine has finished when its run returns and the
# next run starts after the copy, so no stream ordering between backends is needed.
def cuda_python_available() -> bool:
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            if importlib.util.find_spec(module) is not None:
                return True
        except (ImportError, ValueError):
            pass
    return False


def _cudart():
    from engines.tensorrt_builder import cuda_check, cudart

    return cudart(), cuda_check


def cuda_copy_2d(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str) -> None:
    """`height` rows of `width` bytes from src (rows `spitch` apart) to dst (rows `dpitch` apart) on the default
    stream, then waited for: cudaMemcpy2DAsync, or cudaMemcpyAsync where the rows are contiguous (a pitch may not
    exceed the device's maximum, about 2 GiB). `kind`: a cudaMemcpyKind name, e.g. "cudaMemcpyDeviceToDevice"."""
    rt, check = _cudart()
    stream, kind = rt.cudaStream_t(0), getattr(rt.cudaMemcpyKind, kind)
    if width == dpitch == spitch or height == 1:
        check(rt.cudaMemcpyAsync(dst, src, width * height, kind, stream))
    else:
        check(rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream))
    check(rt.cudaStreamSynchronize(stream))


class CudaMemory:
    """`nbytes` of zeroed device memory (cudaMalloc + cudaMemsetAsync), freed when dropped."""

    def __init__(self, nbytes: int):
        rt, check = _cudart()
        self.ptr = int(check(rt.cudaMalloc(max(int(nbytes), 1))))
        cuda_memset(self.ptr, nbytes)

    def __del__(self) -> None:
        try:
            _cudart()[0].cudaFree(self.ptr)
        except Exception:  # interpreter shutdown: the driver frees the context's memory anyway
            pass


def cuda_memset(ptr: int, nbytes: int) -> None:
    """Zero `nbytes` of device memory at `ptr` (a fresh cache must not hold NaN bit patterns: 0 x NaN is NaN)."""
    if nbytes:
        rt, check = _cudart()
        stream = rt.cudaStream_t(0)
        check(rt.cudaMemsetAsync(ptr, 0, nbytes, stream))
        check(rt.cudaStreamSynchronize(stream))


# ------------------------------------------------------------------------------------------ device tensors
class DeviceTensor:
    """A dense (C-order) tensor in an engine's memory: host RAM ("cpu") or a GPU ("cuda:N"). Made by
    `Engine.allocate` or returned by `Engine.run_bound`; `owner` (a numpy array, an OrtValue, a CudaMemory, the
    engine whose buffer it is) keeps the memory alive. A tensor returned by `run_bound` for an output the caller
    did not bind may be the engine's own buffer: valid until that engine's next run.

    Bytes it moves are counted on `counter` (its engine's IOCounter; None for host-staged engines, whose
    `__call__` counts instead)."""

    __slots__ = ("shape", "dtype", "device", "_ptr", "_owner", "_counter", "_host")

    def __init__(self, ptr: int, shape: Sequence[int], dtype: Any, device: str, owner: Any,
                 counter: IOCounter | None = None, host: np.ndarray | None = None):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self._ptr, self._owner, self._counter = int(ptr), owner, counter
        if device == "cpu" and host is None:   # memory someone else allocated (an OrtValue): a view, no copy
            n = self.nbytes
            host = (np.ctypeslib.as_array((ctypes.c_ubyte * n).from_address(self._ptr)).view(self.dtype)
                    .reshape(self.shape) if n else np.zeros(self.shape, self.dtype))
        self._host = host

    @classmethod
    def from_array(cls, array: np.ndarray, counter: IOCounter | None = None) -> "DeviceTensor":
        """A host tensor over `array`'s own memory (C-contiguous), no copy."""
        if not array.flags.c_contiguous:
            raise EngineError("a DeviceTensor over host memory needs a C-contiguous array")
        return cls(array.ctypes.data, array.shape, array.dtype, "cpu", array, counter, host=array)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def data_ptr(self) -> int:
        return self._ptr

    def host_view(self) -> np.ndarray:
        """The tensor itself as a numpy array (no copy); only for host ("cpu") tensors."""
        if self._host is None:
            raise EngineError(f"this tensor lives on {self.device}: call to_numpy() for a host copy")
        return self._host

    def on_host(self) -> np.ndarray:
        """The data as a numpy array: the tensor itself where it lives in host memory (no copy, nothing moved),
        else a host copy (counted device -> host)."""
        return self._host if self._host is not None else self.to_numpy()

    def rows(self, start: int, stop: int) -> "DeviceTensor":
        """self[start:stop] along the first axis: a view over the same memory, nothing copied (the leading axis is
        contiguous), valid while this tensor's memory is (one frame of a batched engine output)."""
        if not 0 <= start <= stop <= (self.shape[0] if self.shape else 0):
            raise EngineError(f"rows {start}:{stop} are outside a {list(self.shape)} tensor")
        step = math.prod(self.shape[1:]) * self.dtype.itemsize
        host = None if self._host is None else self._host[start:stop]
        return DeviceTensor(self._ptr + start * step, (stop - start, *self.shape[1:]), self.dtype, self.device, self,
                            self._counter, host)

    def _count(self, h2d: int = 0, d2h: int = 0, d2d: int = 0) -> None:
        if self._counter is not None:
            self._counter.add(h2d, d2h, d2d)

    def to_numpy(self) -> np.ndarray:
        """A host copy (counted device -> host)."""
        if self._host is not None:
            out = self._host.copy()
        else:
            out = np.empty(self.shape, self.dtype)
            if out.nbytes:
                cuda_copy_2d(out.ctypes.data, out.nbytes, self._ptr, out.nbytes, out.nbytes, 1,
                             "cudaMemcpyDeviceToHost")
        self._count(d2h=out.nbytes)
        return out

    def write(self, src: "np.ndarray | DeviceTensor", axis: int = 0, start: int = 0) -> None:
        """self[..., start:start + n, ...] = src along `axis` (n = src.shape[axis]; every other axis equal, same
        dtype). One strided copy: rows of the block after `axis` (e.g. (1, H, S, D) into a (1, H, P, D) cache at
        slot `start`: H rows of S*D elements, P*D apart). From numpy it counts host -> device; from a tensor on
        the same device, device -> device; from another device it goes through the host."""
        axis = axis % self.ndim if self.ndim else 0
        shape = tuple(src.shape)
        n = shape[axis] if shape else 0
        if (len(shape) != self.ndim or any(a != b for i, (a, b) in enumerate(zip(shape, self.shape)) if i != axis)
                or start < 0 or start + n > self.shape[axis]):
            raise EngineError(f"cannot write a {list(shape)} block into a {list(self.shape)} tensor at {start} "
                              f"along axis {axis}")
        if np.dtype(src.dtype) != self.dtype:
            raise EngineError(f"cannot write {np.dtype(src.dtype)} into a {self.dtype} tensor: cast it first")
        if isinstance(src, DeviceTensor) and src.device != self.device:
            src = src.to_numpy()
        if n == 0 or self.nbytes == 0:
            return
        if self._host is not None:   # host memory: numpy's strided assignment is the same copy
            index = (slice(None),) * axis + (slice(start, start + n),)
            self._host[index] = src.host_view() if isinstance(src, DeviceTensor) else src
        else:
            inner = math.prod(self.shape[axis + 1:]) * self.dtype.itemsize     # bytes per slot
            rows = math.prod(self.shape[:axis])
            if isinstance(src, np.ndarray):
                src = np.ascontiguousarray(src)
                pointer, kind = src.ctypes.data, "cudaMemcpyHostToDevice"
            else:
                pointer, kind = src.data_ptr(), "cudaMemcpyDeviceToDevice"
            cuda_copy_2d(self._ptr + start * inner, self.shape[axis] * inner, pointer, n * inner, n * inner, rows,
                         kind)
        if isinstance(src, np.ndarray):
            self._count(h2d=src.nbytes)
        else:
            self._count(d2d=src.nbytes)

    def __repr__(self) -> str:
        return f"DeviceTensor({list(self.shape)}, {self.dtype}, {self.device})"


class Engine(ABC):
    """Runs one component graph. Subclasses implement `_run`; `__call__` checks inputs first so that a
    wrong shape or dtype is a clear error here, never a crash deep inside a backend. Subclasses that keep
    tensors on their device override `tensor_device`, `_new_tensor` and `_run_bound` (see the module docstring)."""

    backend: str = ""

    def __init__(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.io = IOCounter()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def _check_call(self, feeds: Mapping[str, Any]) -> None:
        if self.closed:
            raise EngineError(f"{self.name}: this engine was closed; load the artifacts again")
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise EngineError(f"{self.name}: inputs must be {self.input_names}; missing {missing}, unexpected {extra}")

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_call(feeds)
        for spec in self.inputs:
            spec.check(feeds[spec.name], self.name)
        out = self._run({n: feeds[n] for n in self.input_names})
        self.io.add(h2d=sum(feeds[n].nbytes for n in self.input_names), d2h=sum(a.nbytes for a in out.values()))
        return out

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on checked inputs; return every output by name as a numpy array."""

    # -- tensors on the engine's device ------------------------------------------------------------------
    @property
    def tensor_device(self) -> str:
        """Where `allocate` puts tensors: "cpu" (host memory) or "cuda:N"."""
        return "cpu"

    def tensor_dtype(self, name: str) -> np.dtype:
        """The dtype the engine itself takes or gives for input/output `name` (a device tensor must match it)."""
        for spec in self.inputs + self.outputs:
            if spec.name == name:
                return np.dtype(spec.dtype)
        raise EngineError(f"{self.name}: no input or output named '{name}' (inputs {self.input_names}, "
                          f"outputs {self.output_names})")

    def allocate(self, name: str, shape: Sequence[int]) -> DeviceTensor:
        """A zeroed tensor of `shape` on this engine's device, in the dtype of its input or output `name`.
        Allocate outside the hot loop (once per caption, not per token)."""
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise EngineError(f"{self.name}: cannot allocate '{name}' with shape {list(shape)}")
        return self._new_tensor(name, shape, self.tensor_dtype(name))

    def _new_tensor(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        # Host staging: the memory is numpy's; `__call__` counts it when it crosses.
        return DeviceTensor.from_array(np.zeros(shape, dtype))

    def run_bound(self, inputs: Mapping[str, "DeviceTensor | np.ndarray"],
                  outputs: Mapping[str, DeviceTensor] | None = None) -> dict[str, DeviceTensor]:
        """Run on tensors: every input a DeviceTensor (used in place where it is on this engine's device) or a
        numpy array (copied in); `outputs` binds some outputs to tensors the engine writes into. Returns every
        output as a DeviceTensor (the bound ones are the tensors given). Checked as `__call__` checks."""
        self._check_call(inputs)
        outputs = dict(outputs or {})
        unknown = [n for n in outputs if n not in self.output_names]
        if unknown:
            raise EngineError(f"{self.name}: no outputs named {unknown} (outputs {self.output_names})")
        for spec in self.inputs:
            self._check_tensor(spec, inputs[spec.name], "input")
        for spec in self.outputs:
            if spec.name in outputs:
                self._check_tensor(spec, outputs[spec.name], "output")
        return self._run_bound({n: inputs[n] for n in self.input_names}, outputs)

    def _check_tensor(self, spec: TensorSpec, value: Any, role: str) -> None:
        if isinstance(value, np.ndarray) and role == "input":
            spec.check(value, self.name)
            return
        if not isinstance(value, DeviceTensor):
            raise EngineError(f"{self.name}: {role} '{spec.name}' must be a DeviceTensor"
                              f"{' or a numpy array' if role == 'input' else ''}, got {type(value).__name__}")
        want = self.tensor_dtype(spec.name)
        if value.dtype != want:
            raise EngineError(f"{self.name}: {role} '{spec.name}' must be {want}, got {value.dtype}")
        if role == "input":   # the shape checks of TensorSpec.check, on a zero-byte stand-in of that shape
            spec.check(np.broadcast_to(np.zeros((), spec.dtype), value.shape), self.name)

    def _run_bound(self, inputs: dict[str, Any], outputs: dict[str, DeviceTensor]) -> dict[str, DeviceTensor]:
        # Host staging through `__call__` (which counts every input and output): what an engine without its
        # own device path does. Tensors on a GPU come to the host first (counted by their engine).
        feeds = {n: v if isinstance(v, np.ndarray) else v.on_host()
                 for n, v in inputs.items()}
        result = {}
        for name, array in self(feeds).items():
            if name in outputs:
                outputs[name].write(np.ascontiguousarray(array, outputs[name].dtype))
                result[name] = outputs[name]
            else:
                result[name] = DeviceTensor.from_array(np.ascontiguousarray(array))
        return result

    closed: bool = False

    def close(self) -> None:
        """Release backend resources (sessions, CUDA memory). Safe to call twice."""
        self.closed = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, backend={self.backend!r})"


def backend_importable(backend: str) -> bool:
    if backend not in BACKENDS:
        return False
    try:
        return importlib.util.find_spec(backend) is not None
    except (ImportError, ValueError):  # a broken or deliberately hidden install
        return False


def available_backends() -> list[str]:
    return [b for b in BACKENDS if backend_importable(b)]


def check_engine_options(backend: str | None, options: Mapping[str, Any], caller: str = "create_engine()",
                         also_known: Sequence[str] = ()) -> None:
    """Refuse, before any engine is made, an option `backend` does not take (None: that no backend takes) as
    an OptionError naming it and the likely option meant among the backends' and `also_known` (the caller's
    other arguments), and an option value of the wrong type (OptionError) or out of range (EngineError)."""
    every = {o for opts in ENGINE_OPTIONS.values() for o in opts}
    takes = every if backend is None else set(ENGINE_OPTIONS[backend])
    unknown = [k for k in options if k not in takes]
    if unknown:
        others = sorted({b for k in unknown for b, opts in ENGINE_OPTIONS.items() if k in opts and b != backend})
        note = f" for the {backend} backend (the {' and '.join(others)} backend{'s' if len(others) > 1 else ''} " \
               f"take{'' if len(others) > 1 else 's'} it: pass backend={others[0]!r})" if others else ""
        raise OptionError.unexpected(caller, unknown, takes | set(also_known), note=note)
    for key, value in options.items():
        if value is None:
            continue    # every option's default
        if key == "threads":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise OptionError(f"{caller}: threads must be an int >= 1 or None, got {type(value).__name__} "
                                  f"{value!r}")
            if value < 1:
                raise EngineError(f"{caller}: threads must be >= 1 (None: the backend's default), got {value}")
        elif key in ("spin", "cuda_graph") and not isinstance(value, (bool, np.bool_)):
            raise OptionError(f"{caller}: {key} must be True or False, got {type(value).__name__} {value!r}")
        elif key == "providers":
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                    not all(isinstance(p, str) for p in value):
                raise OptionError(f"{caller}: providers must be a list of ONNX Runtime execution provider names, "
                                  f"e.g. ['CUDAExecutionProvider', 'CPUExecutionProvider'], got {value!r}")
            if not value:
                raise EngineError(f"{caller}: providers is empty: name at least one, or pass None for the default")
            if backend in (None, "onnxruntime") and backend_importable("onnxruntime"):
                import onnxruntime as ort

                missing = [p for p in value if p not in ort.get_available_providers()]
                if missing:
                    raise EngineError(f"{caller}: execution providers {missing} are not in this onnxruntime "
                                      f"(available: {ort.get_available_providers()})")
        elif key == "device" and (isinstance(value, bool) or not (
                isinstance(value, (str, int)) or type(value).__module__.split(".")[0] == "torch")):
            raise OptionError(f"{caller}: device must be a torch device such as 'cpu' or 'cuda:0', got "
                              f"{type(value).__name__} {value!r}")
        elif key == "plugins" and not isinstance(value, (str, os.PathLike)):
            raise OptionError(f"{caller}: plugins must be the path of the MSDA plugin library, got "
                              f"{type(value).__name__} {value!r}")


def create_engine(backend: str, name: str, folder: Path, component: ComponentEntry, **options: Any) -> Engine:
    """Make the engine for one manifest component. Backends are imported lazily so that the
    ONNX Runtime path never imports torch. `options`: those of ENGINE_OPTIONS[backend], checked first."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    check_engine_options(backend, options)
    if not backend_importable(backend):
        raise EngineError(f"backend '{backend}' is not installed here (installed: "
                          f"{', '.join(available_backends()) or 'none'})")
    if backend == "onnxruntime":
        from engines.onnxruntime_engine import OnnxRuntimeEngine
        return OnnxRuntimeEngine.from_component(name, folder, component, **options)
    if backend == "torch":
        from engines.torch_engine import TorchEngine
        return TorchEngine.from_component(name, folder, component, **options)
    from engines.tensorrt_engine import TensorRTEngine
    return TensorRTEngine.from_component(name, folder, component, **options)
