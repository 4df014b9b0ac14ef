"""ONNX graph helpers shared by FP16 conversion (export/precision.py) and INT8 quantization
(calibration/quantize.py): checking, naming, running under ONNX Runtime and measuring output error.

They live here, below both, so that export imports calibration and never the other way round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx

from engines.files import atomic_write_bytes

Feeds = Mapping[str, np.ndarray]


def check_onnx(model: onnx.ModelProto | Path) -> onnx.ModelProto:
    """onnx.checker with full shape inference (strict), as TensorRT's parser needs every shape known."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: per-layer reports and exclusion lists refer to nodes by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 0
            while name in used:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            used.add(name)


def save_checked(model: onnx.ModelProto, path: Path) -> None:
    """Check `model` as TensorRT will read it, then write it atomically."""
    check_onnx(model)
    atomic_write_bytes(path, model.SerializeToString())


def run(model: onnx.ModelProto | str | Path, feeds: Sequence[Feeds], threads: int | None = None
        ) -> list[dict[str, np.ndarray]]:
    """Outputs of `model` under ONNX Runtime (CPU) for each feed dict."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = str(model) if isinstance(model, (str, Path)) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(names, dict(f)))) for f in feeds]


def output_errors(reference: Sequence[Mapping[str, np.ndarray]], got: Sequence[Mapping[str, np.ndarray]]
                  ) -> dict[str, dict[str, float]]:
    """Per output over all feeds: max and mean absolute error, and the max relative to max |reference|."""
    out = {}
    for name in reference[0]:
        diffs = [np.abs(g[name].astype(np.float64) - r[name].astype(np.float64)) for r, g in zip(reference, got)]
        scale = max(float(np.abs(r[name]).max()) for r in reference) or 1.0
        max_abs = max(float(d.max()) if np.isfinite(d).all() else float("inf") for d in diffs)
        mean_abs = float(np.mean([d.mean() for d in diffs]))
        out[name] = {"max_abs": max_abs, "mean_abs": mean_abs, "max_rel": max_abs / scale}
    return out


def worst(errors: Mapping[str, Mapping[str, float]]) -> float:
    values = [e["max_rel"] for e in errors.values()]
    return float("inf") if any(not np.isfinite(v) for v in values) else max(values)
