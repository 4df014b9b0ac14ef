"""The `Engine` interface and the backend registry."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from engines.contract import ComponentEntry, TensorSpec
from engines.errors import EngineError

BACKENDS = ("onnxruntime", "tensorrt", "torch")


class Engine(ABC):
    """Runs one component graph. Subclasses implement `_run`; `__call__` checks inputs first so that a
    wrong shape or dtype is a clear error here, never a crash deep inside a backend."""

    backend: str = ""

    def __init__(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.closed:
            raise EngineError(f"{self.name}: this engine was closed; load the artifacts again")
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise EngineError(f"{self.name}: inputs must be {self.input_names}; missing {missing}, unexpected {extra}")
        for spec in self.inputs:
            spec.check(feeds[spec.name], self.name)
        return self._run({n: feeds[n] for n in self.input_names})

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on checked inputs; return every output by name as a numpy array."""

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


def create_engine(backend: str, name: str, folder: Path, component: ComponentEntry, **options: Any) -> Engine:
    """Make the engine for one manifest component. Backends are imported lazily so that the
    ONNX Runtime path never imports torch."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
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
