"""ONNX Runtime engine: execution providers chosen from what is installed (TensorRT, CUDA, CPU).

`run_bound` runs through an IOBinding: inputs and outputs are bound by pointer to `DeviceTensor`s on the
session's device (host memory for the CPU provider, CUDA memory for the CUDA/TensorRT providers), so a
tensor the caller keeps there (the KV cache) is read in place and never copied per call. Outputs the caller
does not bind are allocated by ONNX Runtime on the same device (`bind_output(name, device)`). On a GPU the
device memory comes from ONNX Runtime (`OrtValue.ortvalue_from_shape_and_type`) and is zeroed and copied
with cuda-python; without cuda-python a GPU session binds host memory, which ONNX Runtime copies to and from
the GPU on every run, and counts those bytes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from engines.base import DeviceTensor, Engine, cuda_memset, cuda_python_available
from engines.contract import ComponentEntry, TensorSpec
from engines.errors import EngineError

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
log = logging.getLogger("llmformer_edge")


def default_providers() -> list[str]:
    installed = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in installed]


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, name: str, path: Path, inputs: Sequence[TensorSpec] | None = None,
                 outputs: Sequence[TensorSpec] | None = None, providers: Sequence[str] | None = None,
                 threads: int | None = None, spin: bool = False):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3
        # Idle workers sleep instead of spinning: a frame runs several sessions with numpy/OpenCV work
        # between them, and spinning pools steal those cores (measured: 2x slower pre/postprocessing
        # and segmenter on 2 cores; benchmarks/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = list(providers) if providers else default_providers()
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise EngineError(f"{name}: execution providers {unknown} are not in this onnxruntime "
                              f"(available: {ort.get_available_providers()})")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types; say which file failed.
            raise EngineError(f"{name}: ONNX Runtime could not load {path}: {exc}") from exc
        if inputs is None:
            inputs = [self._spec(a) for a in self.session.get_inputs()]
        if outputs is None:
            outputs = [self._spec(a) for a in self.session.get_outputs()]
        super().__init__(name, list(inputs), list(outputs))
        self.providers = self.session.get_providers()
        self._dtypes = {a.name: np.dtype(_ORT_DTYPES[a.type]) for a in self.session.get_inputs() +
                        self.session.get_outputs() if a.type in _ORT_DTYPES}
        gpu = next((p for p in self.providers if p in _CUDA_PROVIDERS), None)
        self._device_id = int(self.session.get_provider_options().get(gpu, {}).get("device_id", 0)) if gpu else 0
        self._compute = f"cuda:{self._device_id}" if gpu else "cpu"
        self._memory = self._compute if gpu is None or cuda_python_available() else "cpu"
        if self._memory != self._compute:
            log.warning("%s: runs on %s but cuda-python is not installed, so its bound tensors stay in host memory "
                        "and cross to the GPU on every run: pip install cuda-python", name, self._compute)

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
        return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)

    @classmethod
    def from_component(cls, name: str, folder: Path, component: ComponentEntry, providers=None,
                       threads: int | None = None, spin: bool = False) -> "OnnxRuntimeEngine":
        """The options are engines.base.ENGINE_OPTIONS["onnxruntime"]; create_engine() refuses any other."""
        return cls(name, Path(folder) / component.onnx.file, component.inputs, component.outputs,
                   providers=providers, threads=threads, spin=spin)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))

    # -- IOBinding ---------------------------------------------------------------------------------------
    @property
    def tensor_device(self) -> str:
        return self._memory

    def tensor_dtype(self, name: str) -> np.dtype:
        return self._dtypes[name] if name in self._dtypes else super().tensor_dtype(name)

    def _where(self) -> tuple[str, int]:
        return ("cpu", 0) if self._memory == "cpu" else ("cuda", self._device_id)

    def _new_tensor(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> DeviceTensor:
        if self._memory == "cpu":
            return DeviceTensor.from_array(np.zeros(shape, dtype), self.io)
        value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, "cuda", self._device_id)
        tensor = DeviceTensor(value.data_ptr(), shape, dtype, self._memory, value, self.io)
        cuda_memset(tensor.data_ptr(), tensor.nbytes)
        return tensor

    def _run_bound(self, inputs: dict[str, Any], outputs: dict[str, DeviceTensor]) -> dict[str, DeviceTensor]:
        kind, index = self._where()
        # Host memory bound to a GPU session (no cuda-python): ONNX Runtime copies it across on every run.
        staged = self._compute != self._memory
        binding = self.session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, DeviceTensor) and value.device != self._memory:
                value = value.to_numpy()   # another device's tensor: through the host (counted by its engine)
            if isinstance(value, np.ndarray):
                array = np.ascontiguousarray(value)
                binding.bind_cpu_input(name, array)   # ONNX Runtime holds the array until the binding goes
                self.io.add(h2d=array.nbytes)
            else:
                binding.bind_input(name, kind, index, value.dtype.type, list(value.shape), value.data_ptr())
                if staged:
                    self.io.add(h2d=value.nbytes)
        for name in self.output_names:
            t = outputs.get(name)
            if t is None:
                binding.bind_output(name, kind, index)
            elif t.device != self._memory:
                raise EngineError(f"{self.name}: output '{name}' is bound to a tensor on {t.device}; this engine's "
                                  f"tensors live on {self._memory}: allocate it with this engine")
            else:
                binding.bind_output(name, kind, index, t.dtype.type, list(t.shape), t.data_ptr())
        try:
            self.session.run_with_iobinding(binding)
            if self._compute != "cpu":
                # Run() waits for its CUDA stream unless told not to; this makes it explicit (a no-op otherwise)
                # before cuda-python copies read the outputs.
                binding.synchronize_outputs()
        except Exception as exc:  # ORT raises its own types (a bound output of the wrong shape, ...)
            raise EngineError(f"{self.name}: ONNX Runtime could not run on the bound tensors: {exc}") from exc
        result = {}
        for name, value in zip(self.output_names, binding.get_outputs()):
            t = outputs.get(name)
            if t is None:   # allocated by ONNX Runtime; the binding keeps it alive
                t = DeviceTensor(value.data_ptr(), value.shape(), self.tensor_dtype(name), self._memory,
                                 (value, binding), self.io)
            if staged:
                self.io.add(d2h=t.nbytes)
            result[name] = t
        return result

    def close(self) -> None:
        # Dropping the session ends its thread pool, whose spinning workers would otherwise keep
        # competing for the CPU with whatever runs next in this process.
        self.session = None
        super().close()
