"""What TensorRT's ONNX parser takes: the operator list, types and restrictions, and a checker for graphs.

Source: onnx/onnx-tensorrt `docs/operators.md` as released with **TensorRT 10.15 GA** ("TensorRT 10.15 supports
operators in the inclusive range of opset 9 to opset 24"), read 2026-11 through the project's code search. The
target is older (JetPack 6 ships TensorRT 10.3), so `check_graph(..., trt_version="10.3")` also refuses the
operators the onnx-tensorrt changelog lists as added after 10.3 or that it never dates (`NEWER_THAN_10_3`), and
opsets above 20 (the TensorRT 10.0 page's range, opset 9 to 20; 10.6 moved its ONNX to 1.17).

Only the "Y" rows are kept: op -> (types, restriction). Types are TensorRT's names for the data type of the op's
main tensor (see `_checked_tensor`). The restrictions that the exported graphs can break are checked in
`_restriction_problems`; the others are kept as text for the reader.

Run `python -m engines.trt_supported_ops GRAPH.onnx [...]` to check graphs by hand.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

SOURCE = "onnx/onnx-tensorrt docs/operators.md, TensorRT 10.15 GA (opset 9-24)"
SOURCE_TRT_VERSION = "10.15"
TARGET_TRT_VERSION = "10.3"                 # JetPack 6
OPSET_RANGE = {"10.3": (9, 20), "10.15": (9, 24)}

_F = ("FP32", "FP16", "BF16")
_FI = _F + ("INT32", "INT64")
_FIB = _FI + ("BOOL",)

# op: (supported types, restriction as documented; "" when none)
SUPPORTED: dict[str, tuple[tuple[str, ...], str]] = {
    "Abs": (_FI, ""), "Acos": (_F, ""), "Acosh": (_F, ""), "Add": (_FI, ""), "And": (("BOOL",), ""),
    "ArgMax": (_FI, ""), "ArgMin": (_FI, ""), "Asin": (_F, ""), "Asinh": (_F, ""), "Atan": (_F, ""),
    "Atanh": (_F, ""),
    "Attention": (_F + ("INT8", "FP8"), "Q, K, V and attn_mask 4D; no past/present key/value"),
    "AveragePool": (_F, "2D or 3D pooling only; dilations empty or all ones"),
    "BatchNormalization": (_F, ""), "BlackmanWindow": (("FP32", "FP16"), ""),
    "Cast": (_FI + ("UINT8", "BOOL"), ""), "CastLike": (_FI + ("UINT8", "BOOL"), ""),
    "Ceil": (_F, ""), "Celu": (_F, ""), "Clip": (_F, ""), "Concat": (_FIB, ""),
    "Constant": (_FIB + ("FP8", "FP4", "INT4"), "sparse_value, value_string, value_strings unsupported"),
    "ConstantOfShape": (_FIB + ("FP8", "FP4", "INT4"), ""),
    "Conv": (_F, ""), "ConvTranspose": (_F, ""), "Cos": (_F, ""), "Cosh": (_F, ""),
    "CumSum": (_F, "axis must be a build-time constant"),
    "DeformConv": (("FP32", "FP16"), "1D or 2D spatial input; symmetric pads"),
    "DepthToSpace": (_FI, ""),
    "DequantizeLinear": (("INT8", "FP8", "FP4", "INT4"), "x_zero_point must be zero"),
    "Div": (_FI, ""), "Dropout": (_F, "is_training must be an initializer and False"),
    "Einsum": (_F, ""), "Elu": (_F, ""), "Equal": (_FI, ""), "Erf": (_F, ""), "Exp": (_F, ""),
    "Expand": (_FIB, ""), "EyeLike": (_FIB, "input must have static dimensions"), "Flatten": (_FIB, ""),
    "Floor": (_F, ""), "Gather": (_FIB, ""), "GatherElements": (_FIB, ""), "GatherND": (_FIB, ""),
    "Gelu": (_F + ("INT8", "INT32", "INT64"), ""), "Gemm": (_F, ""),
    "GlobalAveragePool": (_F, ""), "GlobalLpPool": (_F, ""), "GlobalMaxPool": (_F, ""),
    "Greater": (_FI, ""), "GreaterOrEqual": (_FI, ""),
    "GridSample": (("FP32", "FP16"), "input must be 4D"), "GroupNormalization": (_F, ""),
    "GRU": (_F, "bidirectional: same activations both ways"), "HammingWindow": (("FP32", "FP16"), ""),
    "HannWindow": (("FP32", "FP16"), ""), "HardSigmoid": (_F, ""), "HardSwish": (_F, ""),
    "Hardmax": (_F, "axis dimension must be a build-time constant"), "Identity": (_FIB, ""),
    "If": (_FIB, "branch outputs: same rank, different names"), "ImageScaler": (_F, ""),
    "InstanceNormalization": (_F, ""), "IsInf": (_F, ""), "IsNaN": (_FI, ""),
    "LayerNormalization": (_F, "only the first output Y is supported"), "LeakyRelu": (_F, ""),
    "Less": (_FI, ""), "LessOrEqual": (_FI, ""), "Log": (_F, ""), "LogSoftmax": (_F, ""),
    "Loop": (_FIB, "static scan output length; loop-carried shapes fixed"), "LRN": (_F, ""),
    "LSTM": (_F, "input_forget 0, layout 0"), "LpNormalization": (_F, ""),
    "LpPool": (_F, "dilations empty or all ones"), "MatMul": (_F, ""), "Max": (_FI, ""),
    "MaxPool": (_F, "2D or 3D; no Indices output; dilations empty or all ones"),
    "Mean": (_FI + ("FP8",), ""), "MeanVarianceNormalization": (_F, ""), "Min": (_FI, ""),
    "Mish": (("FP32", "FP16"), ""), "Mod": (_FI, ""), "Mul": (_FI, ""), "Neg": (_FI, ""),
    "NonMaxSuppression": (("FP32", "FP16"), ""), "NonZero": (("FP32", "FP16"), ""), "Not": (("BOOL",), ""),
    "OneHot": (_FIB, "depth must be a build-time constant"), "Or": (("BOOL",), ""), "Pad": (_FI, ""),
    "ParametricSoftplus": (_F, ""), "Pow": (_FI, ""), "PRelu": (_F, ""),
    "QuantizeLinear": (_F, "y_zero_point must be 0"),
    "RandomNormal": (_F, "seed ignored"), "RandomNormalLike": (_F, "seed ignored"),
    "RandomUniform": (_F, "seed ignored"), "RandomUniformLike": (_F, "seed ignored"),
    "Range": (_FI, ""), "Reciprocal": (_F, ""),
    **{op: (_FI, "axes must be an initializer") for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare")},
    "Relu": (_FI, ""), "Reshape": (_FIB, ""),
    "Resize": (_F, "modes nearest/linear; coordinate modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, "
                   "asymmetric, align_corners; aspect ratio policy stretch; no antialiasing"),
    "ReverseSequence": (_FIB, ""), "RMSNormalization": (_F, ""), "RNN": (_F, ""),
    "RoiAlign": (("FP32", "FP16"), ""), "RotaryEmbedding": (_F, "position_ids INT64"), "Round": (_F, ""),
    "STFT": (("FP32",), "frame_step and window initializers; real input"), "ScaledTanh": (_F, ""),
    "Scan": (_F, ""), "Scatter": (_FI, ""), "ScatterElements": (_FI, ""),
    "ScatterND": (_FI, "reduction must be none"), "Selu": (_F, ""), "Shape": (_FIB, ""), "Shrink": (_FI, ""),
    "Sigmoid": (_F, ""), "Sign": (_FI, ""), "Sin": (_F, ""), "Sinh": (_F, ""), "Size": (_FIB, ""),
    "Slice": (_FIB, ""), "Softmax": (_F, ""), "Softplus": (_F, ""), "Softsign": (_F, ""),
    "SpaceToDepth": (_FI, ""), "Split": (_FIB, ""), "Sqrt": (_F, ""),
    "Squeeze": (_FIB, "axes must be resolvable to a constant"), "Sub": (_FI, ""), "Sum": (_FI, ""),
    "Tan": (_F, ""), "Tanh": (_F, ""), "TensorScatter": (_F + ("INT32",), "4D; axis -2"),
    "ThresholdedRelu": (_F, ""), "Tile": (_FIB, ""),
    "TopK": (_FI, "sorted must be 1; K < 3840"), "Transpose": (_FIB, ""), "Trilu": (_FIB, ""),
    "Unsqueeze": (_FIB, "axes must be resolvable to a constant"), "Upsample": (_F, ""), "Where": (_FIB, ""),
    "Xor": (("BOOL",), ""),
}

# Added after 10.3 per the onnx-tensorrt changelog (window ops 10.4, STFT 10.5, Attention 10.14, RotaryEmbedding /
# RMSNormalization / TensorScatter 10.15), or in the 10.15 table without a date we could confirm (Gelu, CastLike:
# treated as newer, so a graph that needs them says so instead of failing on a Jetson).
NEWER_THAN_10_3 = frozenset({"BlackmanWindow", "HammingWindow", "HannWindow", "STFT", "Attention",
                             "RotaryEmbedding", "RMSNormalization", "TensorScatter", "Gelu", "CastLike"})

# Custom nodes TensorRT builds through a plugin library: (domain, op) -> what must be loaded.
PLUGIN_OPS = {("trt.plugins", "MultiscaleDeformableAttnPlugin_TRT"): "libllmformer_plugins.so (plugins_trt/msda)"}

_RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_ONNX_TO_TRT = {1: "FP32", 10: "FP16", 16: "BF16", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL",
                22: "INT4", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 23: "FP4"}
_QUANTIZED = {"INT8", "INT4", "FP8", "FP4"}


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2])


def check_graph(model, trt_version: str = TARGET_TRT_VERSION, plugins: Iterable[tuple[str, str]] | None = None
                ) -> list[str]:
    """Everything in `model` (an onnx.ModelProto or a path) that TensorRT `trt_version`'s ONNX parser would not
    take, one line each; empty when the graph is fine. Types come from full shape inference."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    plugins = set(PLUGIN_OPS if plugins is None else plugins)
    problems = []
    lo, hi = OPSET_RANGE.get(trt_version, OPSET_RANGE[SOURCE_TRT_VERSION])
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not lo <= opset <= hi:
        problems.append(f"opset {opset}: TensorRT {trt_version} parses opsets {lo} to {hi}")
    older = _version_key(trt_version) < _version_key(SOURCE_TRT_VERSION)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a custom node can stop inference; the types we do know are still checked
        inferred = model
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    constants = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        where = f"{node.name or '(unnamed)'} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            if (node.domain, node.op_type) not in plugins:
                problems.append(f"{where}: custom op {node.domain}::{node.op_type} has no TensorRT plugin here")
            continue
        if node.op_type not in SUPPORTED:
            problems.append(f"{where}: not supported by TensorRT's ONNX parser")
            continue
        if older and node.op_type in NEWER_THAN_10_3:
            problems.append(f"{where}: not in TensorRT {trt_version} (added later)")
        allowed, _ = SUPPORTED[node.op_type]
        for name in _checked_tensors(node):
            trt_type = _ONNX_TO_TRT.get(types.get(name, 0))
            if trt_type is not None and trt_type not in allowed:
                problems.append(f"{where}: {trt_type} tensor '{name}' (supported: {', '.join(allowed)})")
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input:
                if _ONNX_TO_TRT.get(types.get(name, 0)) in _QUANTIZED:
                    problems.append(f"{where}: reads quantized tensor '{name}' directly; TensorRT takes quantized "
                                    f"types only through DequantizeLinear")
        problems += [f"{where}: {p}" for p in _restriction_problems(node, constants, model)]
    return problems


def _checked_tensors(node) -> list[str]:
    """The tensor(s) whose type the table's 'Supported Types' column is about."""
    op = node.op_type
    if op in ("Constant", "ConstantOfShape", "EyeLike", "Range", "RandomNormal", "RandomUniform"):
        return list(node.output[:1])
    if op in ("Cast", "CastLike"):
        return [node.input[0], node.output[0]]
    if op == "Where":
        return [node.input[1]]
    return [node.input[0]] if node.input and node.input[0] else []


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _constant_value(model, name):
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and name in node.output:
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].type == 4 else None
    return None


def _restriction_problems(node, constants: set[str], model) -> list[str]:
    op, out = node.op_type, []
    if op == "Resize":
        if _attr(node, "mode", "nearest") not in ("nearest", "linear"):
            out.append(f"mode '{_attr(node, 'mode')}' (nearest or linear only)")
        if _attr(node, "coordinate_transformation_mode", "half_pixel") not in _RESIZE_COORDINATES:
            out.append(f"coordinate_transformation_mode '{_attr(node, 'coordinate_transformation_mode')}'")
        if _attr(node, "antialias", 0):
            out.append("antialias is not supported")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            out.append("keep_aspect_ratio_policy must be stretch")
    elif op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        out.append("only the first output Y is supported")
    elif op.startswith("Reduce") and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        out.append("axes must be an initializer")
    elif op in ("Squeeze", "Unsqueeze") and len(node.input) > 1 and node.input[1] not in constants:
        out.append("axes must be a constant")
    elif op in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
        zero = _constant_value(model, node.input[2])
        if zero is None or zero.any():
            out.append("zero point must be a constant zero (symmetric quantization)")
    elif op in ("MaxPool", "AveragePool", "LpPool"):
        if op == "MaxPool" and len([o for o in node.output if o]) > 1:
            out.append("the Indices output is not supported")
        if any(d != 1 for d in (_attr(node, "dilations") or [])):
            out.append("dilations must be all ones")
    elif op == "TopK" and _attr(node, "sorted", 1) != 1:
        out.append("sorted must be 1")
    elif op == "ScatterND" and _attr(node, "reduction", "none") != "none":
        out.append("reduction must be none")
    elif op in ("CumSum", "OneHot") and len(node.input) > 1 and node.input[1] not in constants:
        out.append(f"{'axis' if op == 'CumSum' else 'depth'} must be a build-time constant")
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m engines.trt_supported_ops GRAPH.onnx [...]", file=sys.stderr)
        return 2
    bad = 0
    for path in argv:
        problems = check_graph(Path(path))
        print(f"{path}: {'ok' if not problems else f'{len(problems)} problem(s)'} for TensorRT {TARGET_TRT_VERSION}")
        for p in problems:
            print(f"  {p}")
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
