"""PyTorch -> ONNX for one component, written atomically and checked the way TensorRT will read it."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import torch

from calibration.graphs import check_onnx
from engines.contract import TensorSpec
from engines.files import atomic_write_bytes

DEFAULT_OPSET = 17

_ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                  onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
                  onnx.TensorProto.BOOL: "bool", onnx.TensorProto.UINT8: "uint8"}


def export_onnx(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Trace `module` on `args` and write the graph to `path` (atomically), checked.

    Uses the TorchScript exporter: it emits opset 17 natively (the dynamo exporter starts at 18 and
    down-converts) and keeps `dynamic_axes` simple; both give the same graphs for these models."""
    buffer = io.BytesIO()
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(args), buffer, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dict(dynamic_axes or {}),
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    declare_output_shapes(model)
    check_onnx(model)
    atomic_write_bytes(Path(path), model.SerializeToString())
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that also follows shape computations (Shape -> Gather -> Concat -> Reshape): with a batch
    axis, the traced reshapes take B from the input, and plain inference then loses the static sizes after them."""
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def declare_output_shapes(model: onnx.ModelProto) -> None:
    """Write the inferred static sizes into the graph outputs in place, over the names the exporter invents for
    them ("Einsummask_logits_dim_2") when an input has a dynamic axis; the dynamic axes keep their names."""
    inferred = {o.name: o for o in infer_shapes(model).graph.output}
    for out in model.graph.output:
        dims = inferred[out.name].type.tensor_type.shape.dim
        for mine, known in zip(out.type.tensor_type.shape.dim, dims):
            if known.HasField("dim_value"):
                mine.dim_value = known.dim_value


def graph_specs(model: onnx.ModelProto, which: str,
                ranges: Mapping[str, tuple[int, int]] | None = None) -> list[TensorSpec]:
    """TensorSpecs of a graph's inputs or outputs; `ranges` gives (min, max) for each named dynamic axis."""
    ranges = ranges or {}
    specs = []
    for value in (model.graph.input if which == "inputs" else model.graph.output):
        t = value.type.tensor_type
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
        dynamic = any(isinstance(d, str) for d in shape)
        lo = tuple(ranges[d][0] if isinstance(d, str) and d in ranges else (1 if isinstance(d, str) else d) for d in shape)
        hi = tuple(ranges[d][1] if isinstance(d, str) and d in ranges else (-1 if isinstance(d, str) else d) for d in shape)
        specs.append(TensorSpec(value.name, _ONNX_TO_NUMPY[t.elem_type], shape,
                                lo if dynamic else None, (hi if -1 not in hi else None) if dynamic else None))
    return specs


def operator_set(model: onnx.ModelProto) -> set[str]:
    return {n.op_type if not n.domain else f"{n.domain}::{n.op_type}" for n in model.graph.node}
