"""ONNX Runtime engine: execution providers chosen from what is installed (TensorRT, CUDA, CPU)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from engines.base import Engine
from engines.contract import ComponentEntry, TensorSpec
from engines.errors import EngineError

_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
}
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


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

    @staticmethod
    def _spec(arg: Any) -> TensorSpec:
        shape = tuple(d if isinstance(d, int) else str(d) for d in arg.shape)
        return TensorSpec(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)

    @classmethod
    def from_component(cls, name: str, folder: Path, component: ComponentEntry, providers=None,
                       threads: int | None = None, spin: bool = False, **_: Any) -> "OnnxRuntimeEngine":
        return cls(name, Path(folder) / component.onnx.file, component.inputs, component.outputs,
                   providers=providers, threads=threads, spin=spin)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        # Dropping the session ends its thread pool, whose spinning workers would otherwise keep
        # competing for the CPU with whatever runs next in this process.
        self.session = None
        super().close()
