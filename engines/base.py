"""The `Engine` interface and the backend registry."""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

BACKENDS = ("onnxruntime", "tensorrt", "torch")


class EngineError(RuntimeError):
    """An engine could not be created or run; the message says what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output. `shape` holds ints for fixed axes and strings for dynamic ones;
    `min_shape`/`max_shape` give the range of the dynamic axes (what TensorRT profiles are made from)."""

    name: str
    dtype: str                      # numpy dtype name: "float32", "int64", ...
    shape: tuple[int | str, ...]
    min_shape: tuple[int, ...] | None = None
    max_shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for k in ("min_shape", "max_shape"):
            d[k] = None if d[k] is None else list(d[k])
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "TensorSpec":
        return cls(
            name=d["name"], dtype=d["dtype"], shape=tuple(d["shape"]),
            min_shape=None if d.get("min_shape") is None else tuple(d["min_shape"]),
            max_shape=None if d.get("max_shape") is None else tuple(d["max_shape"]),
        )

    def check(self, array: np.ndarray, component: str) -> None:
        """Raise a clear error when `array` cannot be fed as this input."""
        if not isinstance(array, np.ndarray):
            raise EngineError(f"{component}: input '{self.name}' must be a numpy array, got {type(array).__name__}")
        if array.dtype != np.dtype(self.dtype):
            raise EngineError(f"{component}: input '{self.name}' must be {self.dtype}, got {array.dtype}")
        if array.ndim != len(self.shape):
            raise EngineError(f"{component}: input '{self.name}' must have {len(self.shape)} dims "
                              f"{list(self.shape)}, got shape {list(array.shape)}")
        for axis, (want, got) in enumerate(zip(self.shape, array.shape)):
            if isinstance(want, int) and want != got:
                raise EngineError(f"{component}: input '{self.name}' axis {axis} must be {want}, "
                                  f"got shape {list(array.shape)}")
            if self.min_shape is not None and got < self.min_shape[axis]:
                raise EngineError(f"{component}: input '{self.name}' axis {axis} is {got}, below the "
                                  f"built minimum {self.min_shape[axis]}")
            if self.max_shape is not None and got > self.max_shape[axis]:
                raise EngineError(f"{component}: input '{self.name}' axis {axis} is {got}, above the "
                                  f"built maximum {self.max_shape[axis]}; rebuild with a larger range")


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


def create_engine(backend: str, name: str, folder: Path, component: Mapping[str, Any], **options: Any) -> Engine:
    """Make the engine for one manifest component entry. Backends are imported lazily so that the
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
