"""ONNX graph helpers shared by the exporter, FP16 conversion (export/precision.py) and INT8/INT4 quantization
(calibration/quantize.py): writing and reading graphs with external data, checking, naming, running under ONNX
Runtime and measuring output error.

They live here, below both, so that export imports calibration and never the other way round.

Large graphs. Protobuf cannot serialize a message over 2 GB, so every writer goes through `save_onnx`: a graph
whose initializers exceed EXTERNAL_DATA_BYTES is written as `<file>.onnx` (the structure) plus `<file>.onnx.data`
(every tensor of 1 KiB or more, 4 KiB aligned so it can be memory-mapped), atomically. Converters work on a
*skeleton*: `onnx.load(path, load_external_data=False)` keeps each large tensor as a reference into the source
graph's data file, they replace the tensors they change one at a time, and `save_onnx(..., source_dir=)` copies the
untouched ones from the source file in chunks, so no converter holds a large graph's FP32 weights in memory.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from engines.errors import LLMFormerError
from engines.files import atomic_write_bytes

Feeds = Mapping[str, np.ndarray]

# Graphs whose initializers exceed this are written with external data (protobuf's hard limit is 2 GiB for the
# whole message; the margin leaves room for the graph's structure).
EXTERNAL_DATA_BYTES = 1_800_000_000
DATA_ALIGNMENT = 4096            # offsets of external tensors: a page, so ONNX Runtime / TensorRT can mmap them
INLINE_TENSOR_BYTES = 1024       # tensors smaller than this stay in the .onnx (shapes, scalars), as onnx does
_COPY_CHUNK = 64 << 20


class GraphFileError(LLMFormerError, ValueError):
    """An ONNX graph whose files cannot be written or read as asked; the message names the tensor or file."""


def tensor_bytes(tensor: TensorProto) -> int:
    """Bytes of a tensor's data, inline or external, without reading it."""
    if uses_external_data(tensor):
        info = ExternalDataInfo(tensor)
        if info.length is not None:
            return int(info.length)
    return tensor.ByteSize()           # its serialized size: the data plus a few bytes (reading raw_data copies it)


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def graph_files(path: str | Path) -> list[str]:
    """The external data files a written graph reads (names relative to its folder), in first-use order."""
    model = onnx.load(str(path), load_external_data=False)
    return list(dict.fromkeys(ExternalDataInfo(t).location for t in model.graph.initializer if uses_external_data(t)))


def weightless(model: onnx.ModelProto, names: set[str] | None = None) -> onnx.ModelProto:
    """A copy of `model` without the initializers in `names` (default: every one of INLINE_TENSOR_BYTES or more),
    each turned into a typed graph input of its shape: what type inference and graph surgery need, at the size of
    the graph's structure (a deepcopy or `infer_shapes` of a 1.5 GB graph costs 1.5 GB, or three times that)."""
    drop = {t.name for t in model.graph.initializer if (t.name in names if names is not None
                                                          else tensor_bytes(t) >= INLINE_TENSOR_BYTES)}
    light = onnx.ModelProto()
    for message, target in ((model, light), (model.graph, light.graph)):
        for field, value in message.ListFields():
            if message is model and field.name == "graph":
                continue
            if message is model.graph and field.name == "initializer":
                light.graph.initializer.extend(t for t in value if t.name not in drop)
            elif hasattr(value, "extend"):                      # a repeated field
                getattr(target, field.name).extend(value)
            elif hasattr(value, "CopyFrom"):                    # a message field
                getattr(target, field.name).CopyFrom(value)
            else:
                setattr(target, field.name, value)
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in model.graph.initializer if t.name in drop)
    return light


def tensor_array(tensor: TensorProto, source_dir: str | Path | None = None) -> np.ndarray:
    """A tensor's values, read from `source_dir` when they are external (the tensor is not modified)."""
    if uses_external_data(tensor) and source_dir is None:
        raise GraphFileError(f"tensor '{tensor.name}' is external data; say which folder holds it (source_dir)")
    return numpy_helper.to_array(tensor, str(source_dir) if source_dir is not None else "")


def save_onnx(model: onnx.ModelProto, path: str | Path, *, source_dir: str | Path | None = None,
              threshold: int | None = None) -> list[str]:
    """Write `model` to `path` atomically; return the external data files written beside it ([] when inline).

    Inline when its initializers total at most `threshold` bytes (default EXTERNAL_DATA_BYTES), else every tensor
    of INLINE_TENSOR_BYTES or more goes to `<name>.data`, 4 KiB aligned. Tensors that are references into another
    graph's data (a skeleton's) are read from `source_dir`, in chunks. `model` is changed: its tensors end up as
    the written file has them (inline, or pointing at the new data file)."""
    path = Path(path)
    threshold = EXTERNAL_DATA_BYTES if threshold is None else threshold
    tensors = list(model.graph.initializer)
    external = [t for t in tensors if uses_external_data(t)]
    if external and source_dir is None:
        raise GraphFileError(f"{path.name}: tensor '{external[0].name}' is external data; pass source_dir, the "
                             f"folder of the graph it was loaded from")
    if initializer_bytes(model) <= threshold:
        for t in external:  # small enough to hold: take the data in and write one file
            t.raw_data = _read_external(t, Path(source_dir))
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
        atomic_write_bytes(path, model.SerializeToString())
        return []
    data_name = f"{path.name}.data"
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        with open(tmp / data_name, "wb") as out:
            for t in tensors:
                if tensor_bytes(t) < INLINE_TENSOR_BYTES and not uses_external_data(t):
                    continue
                out.write(b"\0" * (-out.tell() % DATA_ALIGNMENT))
                offset = out.tell()
                if uses_external_data(t):
                    _copy_external(t, Path(source_dir), out)
                else:
                    out.write(t.raw_data if t.HasField("raw_data") else
                              numpy_helper.from_array(numpy_helper.to_array(t)).raw_data)
                point_at(t, data_name, offset, out.tell() - offset)
            out.flush()
            os.fsync(out.fileno())
        (tmp / path.name).write_bytes(model.SerializeToString())
        # The data first, the graph last: no reader finds a graph whose data is missing. (Over an older graph of
        # the same name the two renames are not one atomic step; builds write into a fresh staging folder.)
        os.replace(tmp / data_name, path.parent / data_name)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [data_name]


def _read_external(tensor: TensorProto, source_dir: Path) -> bytes:
    info = ExternalDataInfo(tensor)
    with open(_external_path(tensor, source_dir), "rb") as f:
        f.seek(info.offset or 0)
        data = f.read(info.length) if info.length is not None else f.read()
    if info.length is not None and len(data) != info.length:
        raise GraphFileError(f"tensor '{tensor.name}': {info.location} ends before offset {info.offset} + "
                             f"{info.length} bytes (it has {len(data)} of them); the data file is truncated")
    return data


def _copy_external(tensor: TensorProto, source_dir: Path, out) -> None:
    info = ExternalDataInfo(tensor)
    left = tensor_bytes(tensor)
    with open(_external_path(tensor, source_dir), "rb") as f:
        f.seek(info.offset or 0)
        while left:
            chunk = f.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise GraphFileError(f"tensor '{tensor.name}': {info.location} ends {left} bytes early; the data "
                                     f"file is truncated")
            out.write(chunk)
            left -= len(chunk)


def _external_path(tensor: TensorProto, source_dir: Path) -> Path:
    location = ExternalDataInfo(tensor).location
    path = (source_dir / location).resolve()
    if Path(location).is_absolute() or ".." in Path(location).parts or not path.is_file():
        raise GraphFileError(f"tensor '{tensor.name}': external data '{location}' is not a file inside {source_dir}")
    return path


def point_at(tensor: TensorProto, location: str, offset: int, length: int) -> None:
    """Make `tensor` a reference to `length` bytes at `offset` of `location` (its inline data dropped)."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def check_onnx(model: onnx.ModelProto | Path) -> onnx.ModelProto:
    """onnx.checker with full shape inference (strict), as TensorRT's parser needs every shape known. A path is
    checked where it lies (its external data beside it, never loaded); the inferred skeleton comes back."""
    if not isinstance(model, onnx.ModelProto):
        _check_file(Path(model))
        model = onnx.load(str(model), load_external_data=False)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
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


def save_checked(model: onnx.ModelProto, path: Path, *, source_dir: str | Path | None = None,
                 threshold: int | None = None) -> list[str]:
    """Write `model` with `save_onnx` and check the written graph as TensorRT will read it; returns the external
    data files. A graph that fails the check is removed with its data, so no unchecked graph is left."""
    path = Path(path)
    files = save_onnx(model, path, source_dir=source_dir, threshold=threshold)
    check_saved(path, files)
    return files


def check_saved(path: Path, files: Sequence[str] = ()) -> None:
    """Check a graph `save_onnx` wrote (the second half of `save_checked`, for callers that free the model first);
    a graph that fails is removed with its data `files`."""
    try:
        _check_file(path)
    except Exception:
        for name in [path.name, *files]:
            (path.parent / name).unlink(missing_ok=True)
        raise


def _check_file(path: Path) -> None:
    """onnx.checker on the files as written (external data stays on disk); with full_check its C++ side runs
    strict shape inference with type checks, as `check_onnx` does in Python."""
    onnx.checker.check_model(str(path), full_check=True)


def run(model: onnx.ModelProto | str | Path, feeds: Sequence[Feeds], threads: int | None = None
        ) -> list[dict[str, np.ndarray]]:
    """Outputs of `model` under ONNX Runtime (CPU) for each feed dict."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if isinstance(model, (str, Path)):
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    elif model.ByteSize() < EXTERNAL_DATA_BYTES and not any(uses_external_data(t) for t in model.graph.initializer):
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    elif any(uses_external_data(t) for t in model.graph.initializer):
        raise GraphFileError("run() got a skeleton (tensors in external data): pass the graph's path instead")
    else:  # too large for one protobuf: ONNX Runtime reads it from files (a copy: save_onnx repoints tensors)
        with tempfile.TemporaryDirectory(prefix="llmformer-run-") as tmp:
            save_onnx(copy.deepcopy(model), Path(tmp) / "model.onnx", threshold=0)
            return run(Path(tmp) / "model.onnx", feeds, threads)
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
