"""INT8 graphs with explicit Q/DQ in the form TensorRT builds strongly typed, and INT8/INT4 weight-only for the LLM.

`quantize_int8` (onnxruntime.quantization's QDQ quantizer, configured for TensorRT):
- symmetric INT8 (zero points 0), per-channel weights (Conv axis 0, MatMul axis 1, Gemm by transB), per-tensor
  activations; Q/DQ on the *inputs* of Conv / MatMul / Gemm whose weight is a constant, none on their outputs and
  no INT32 bias (TensorRT's recommended placement; it fuses the rest);
- calibration `entropy` (default), `percentile` (99.99 by default) or `minmax`, on recorded runtime feeds;
- a calibration cache: the activation ranges (ONNX Runtime's own cache format) and the per-layer decisions, keyed
  by the FP32 graph's sha256, the calibration data's fingerprint and the settings, so a rebuild of the same graph
  on the same images neither recalibrates nor re-measures;
- per-layer error against FP32, each layer *isolated*: the layer run on its recorded FP32 input with FP32 weights,
  and again with its input and weights quantized as in the Q/DQ graph; layers whose relative output error exceeds
  `layer_tolerance` are left FP32 (`excluded_layers`), and the graph is re-made without their Q/DQ.

`quantize_weights_file` (the captioner decoder, weight-only; `quantize_weights` for a graph in memory): every
MatMul/Gemm weight, lm_head included, INT8 or INT4 in the backend's form (WEIGHT_FORMS: MatMulNBits for ONNX
Runtime, blocked DequantizeLinear at opset 21 for TensorRT), made by ONNX Runtime's MatMulNBitsQuantizer one weight
at a time from a skeleton of the graph; activations stay floating point.
"""
from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.data import CalibrationError, FeedReader
from calibration.graphs import (EXTERNAL_DATA_BYTES, Feeds, initializer_bytes, name_nodes, output_errors, run,
                                save_checked, save_onnx, tensor_array, tensor_bytes)
from engines.errors import LLMFormerError
from engines.files import atomic_write_bytes

METHODS = ("entropy", "percentile", "minmax")
CACHE_VERSION = 1
DEFAULT_LAYER_TOLERANCE = 0.02       # isolated relative output error above which a layer stays FP32 (0.08 lost
                                     # 2.5 mIoU on the trained demo, 0.02 +0.2: benchmarks/README.md, issues 9 and 15)
ANALYSIS_SAMPLES = 4                 # feeds used for the per-layer measurement


class NothingToQuantize(LLMFormerError, ValueError):
    """A graph with no Conv / MatMul / Gemm weights (an embedding table): it stays FP32."""



def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    """Conv, MatMul and Gemm nodes whose weight is an initializer (activation x activation MatMuls, such as
    attention scores, stay in floating point: their ranges move with every input)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            out.append(node.name)
        elif node.op_type == "MatMul" and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
            out.append(node.name)
    return out


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise ValueError(f"calibration method '{method}': choose one of {', '.join(METHODS)}")
    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[method]


def _quantize(model_path: Path, out_path: Path, feeds: Sequence[Feeds] | None, layers: Sequence[str], method: str,
              percentile: float, ranges_path: Path) -> None:
    import contextlib
    import io
    import logging

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static


    # ONNX Runtime's quantizer prints progress and advice on stdout and the root logger; the report says the rest.
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(model_path), str(out_path), FeedReader(feeds) if feeds is not None else None,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True,
                use_external_data_format=_large(model_path),
                reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=list(layers), calibrate_method=_ort_method(method),
                calibration_cache_path=str(ranges_path),
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                               "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul", "Gemm"],
                               "CalibTensorRangeSymmetric": True, "CalibPercentile": percentile,
                               # One feed per collection step: feeds differ in shape (priors, vocabulary), which
                               # ONNX Runtime's histogram collector cannot stack. The name says MinMax; every
                               # calibrator honours it.
                               "CalibStridedMinMax": 1 if feeds is not None else None})
    finally:
        root.setLevel(level)
    model = onnx.load(str(out_path))
    _keep_side_readers_float(model, set(layers))
    save_onnx(model, out_path)


def _large(path: Path) -> bool:
    """A graph whose files exceed EXTERNAL_DATA_BYTES: ONNX Runtime's quantizer must write external data for it."""
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name)) > EXTERNAL_DATA_BYTES


def _save_copy(model: onnx.ModelProto, path: Path) -> None:
    """Write `model` for ONNX Runtime's quantizer to read, leaving `model` as it was (a large one is written as
    external data, which repoints the tensors of what is saved, so a copy is saved then)."""
    save_onnx(copy.deepcopy(model) if initializer_bytes(model) > EXTERNAL_DATA_BYTES else model, path)


def _keep_side_readers_float(model: onnx.ModelProto, layers: set[str]) -> None:
    """ONNX Runtime points every reader of a quantized activation at its DequantizeLinear; give the readers that
    are not quantized layers (residual Adds, Shapes) the FP32 tensor back, so Q/DQ sits only on the inputs of the
    weighted layers, as TensorRT recommends, and the residual stream is not rounded to INT8."""
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}
    source = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] not in outputs:
            q = producer.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                source[node.output[0]] = q.input[0]
    for node in model.graph.node:
        if node.name in layers or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            if name in source:
                node.input[k] = source[name]
    read = {i for n in model.graph.node for i in n.input} | outputs
    for node in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in read]:
        model.graph.node.remove(node)
    read = {i for n in model.graph.node for i in n.input} | outputs
    for node in [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.output[0] not in read]:
        model.graph.node.remove(node)


def _cache_key(fp32_sha256: str, calib_fingerprint: str, method: str, percentile: float, tolerance: float,
               layers: Sequence[str]) -> str:
    payload = json.dumps({"v": CACHE_VERSION, "graph": fp32_sha256, "data": calib_fingerprint, "method": method,
                          "percentile": percentile if method == "percentile" else None, "tolerance": tolerance,
                          "layers": sorted(layers)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def quantize_int8(model: onnx.ModelProto, out_path: str | Path, feeds: Sequence[Feeds], *,
                  reference: Sequence[Mapping[str, np.ndarray]] | None = None, component: str = "model",
                  method: str = "entropy", percentile: float = 99.99, layer_tolerance: float = DEFAULT_LAYER_TOLERANCE,
                  exclude: Sequence[str] = (), cache_dir: str | Path | None = None, calib_fingerprint: str = "",
                  fp32_sha256: str = "", log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Write the Q/DQ INT8 graph of `model` to `out_path`; return the report (see module docstring)."""
    _ort_method(method)
    out_path = Path(out_path)
    model = copy.deepcopy(model)
    name_nodes(model)
    layers = quantizable_layers(model)
    if not layers:
        raise NothingToQuantize(f"{component}: no Conv/MatMul/Gemm with constant weights to quantize")
    fp32_sha256 = fp32_sha256 or hashlib.sha256(model.SerializeToString()).hexdigest()
    key = _cache_key(fp32_sha256, calib_fingerprint or _feeds_fingerprint(feeds), method, percentile,
                     layer_tolerance, layers)
    reference = reference if reference is not None else run(model, feeds)
    with tempfile.TemporaryDirectory(prefix="llmformer-int8-") as tmp:
        tmp = Path(tmp)
        cache = Path(cache_dir) if cache_dir is not None else tmp
        cache.mkdir(parents=True, exist_ok=True)
        ranges_path = cache / f"{component}-{key}.ranges.json"
        layers_path = cache / f"{component}-{key}.layers.json"
        cache_hit = ranges_path.is_file() and layers_path.is_file()
        fp32_path = tmp / "fp32.onnx"
        _save_copy(model, fp32_path)
        if cache_hit:
            cached = json.loads(layers_path.read_text())
            table, excluded = cached["layers"], list(cached["excluded"])
            log(f"    int8 {component}: calibration cache hit ({ranges_path.name})")
        else:
            first = tmp / "int8_all.onnx"
            _quantize(fp32_path, first, feeds, layers, method, percentile, ranges_path)
            table = layer_errors(model, onnx.load(str(first)), feeds[:ANALYSIS_SAMPLES])
            excluded = [row["layer"] for row in table if row["isolated_rel_err"] > layer_tolerance]
            _atomic_json(layers_path, {"layers": table, "excluded": excluded, "method": method,
                                       "tolerance": layer_tolerance})
        excluded = sorted(set(excluded) | set(exclude))
        keep = [name for name in layers if name not in excluded]
        if not keep:
            raise CalibrationError(f"{component}: every layer loses more than {layer_tolerance:.0%} in INT8; "
                             f"raise the tolerance or recalibrate with more representative images")
        final = tmp / "int8.onnx"
        _quantize(fp32_path, final, None, keep, method, percentile, ranges_path)  # ranges from the cache
        quantized = onnx.load(str(final))
        _check_tensorrt_form(quantized, component)
        data_files = save_checked(quantized, out_path)
    errors = output_errors(reference, run(out_path, feeds))
    for row in table:
        row["excluded"] = row["layer"] in excluded
    return {"precision": "int8", "method": method, "percentile": percentile if method == "percentile" else None,
            "layer_tolerance": layer_tolerance, "quantized_layers": len(keep), "candidate_layers": len(layers),
            "excluded_layers": excluded, "cache_key": key, "cache_hit": cache_hit,
            "calibration_samples": len(feeds), "vs_fp32": errors, "layers": table, "data_files": data_files}


def _feeds_fingerprint(feeds: Sequence[Feeds]) -> str:
    h = hashlib.sha256()
    for f in feeds:
        for name in sorted(f):
            h.update(name.encode())
            h.update(np.ascontiguousarray(f[name]).tobytes())
    return h.hexdigest()


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())


def _check_tensorrt_form(model: onnx.ModelProto, component: str) -> None:
    """Zero points 0, no INT32 (bias) DequantizeLinear: what TensorRT's parser requires of Q/DQ."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2] in inits and numpy_helper.to_array(inits[node.input[2]]).any():
            raise ValueError(f"{component}: {node.name} has a non-zero zero point (TensorRT needs symmetric)")
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and \
                inits[node.input[0]].data_type not in (TensorProto.INT8, TensorProto.INT4):
            raise ValueError(f"{component}: {node.name} dequantizes a {inits[node.input[0]].data_type} tensor")


# ------------------------------------------------------------------------------------------ per-layer errors
def layer_errors(fp32: onnx.ModelProto, int8: onnx.ModelProto, feeds: Sequence[Feeds]) -> list[dict[str, Any]]:
    """One row per quantized layer: its weight's and input's quantization error, its isolated output error
    (the layer alone, FP32 input and weights vs. their Q/DQ values) and the accumulated error of its output in
    the whole INT8 graph, all relative L2 errors against FP32 over `feeds`."""

    inits8 = {i.name: i for i in int8.graph.initializer}
    producer8 = {o: n for n in int8.graph.node for o in n.output}
    quant_of = {}   # original activation tensor -> its per-tensor scale in the INT8 graph
    for node in int8.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits8:
            quant_of[node.input[0]] = float(numpy_helper.to_array(inits8[node.input[1]]))
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    rows, taps = [], []
    for node in int8.graph.node:
        if node.name not in fp32_nodes or node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        dq_x, dq_w = producer8.get(node.input[0]), producer8.get(node.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        original = fp32_nodes[node.name]
        rows.append({"layer": node.name, "op": node.op_type, "_node": original, "_dq_w": dq_w,
                     "_x": original.input[0], "_x_scale": quant_of.get(original.input[0])})
        taps += [original.input[0], original.output[0]]
    values32 = _run_with_taps(fp32, feeds, taps)
    values8 = _run_with_taps(int8, feeds, [r["_node"].output[0] for r in rows])
    inits32 = _constants(fp32)
    for row in rows:
        node, dq_w = row.pop("_node"), row.pop("_dq_w")
        w = inits32[node.input[1]]
        wq = _dequantize(dq_w, inits8)
        x_name = row.pop("_x")
        xs = [v[x_name] for v in values32]
        scale = row.pop("_x_scale")
        xq = [np.clip(np.round(x / scale), -128, 127) * scale for x in xs] if scale else xs
        extra = [inits32[i] for i in node.input[2:] if i]
        y = _run_node(node, xs, w, extra)
        yq = _run_node(node, xq, wq, extra)
        row["weight_rel_err"] = _rel(w, wq)
        row["input_rel_err"] = float(np.mean([_rel(a, b) for a, b in zip(xs, xq)]))
        row["isolated_rel_err"] = float(np.mean([_rel(a, b) for a, b in zip(y, yq)]))
        row["accumulated_rel_err"] = float(np.mean([_rel(a[node.output[0]], b[node.output[0]])
                                                    for a, b in zip(values32, values8)]))
    return rows


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, Constant outputs, and Identity copies of either (the exporter shares equal tensors that way)."""
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    return values


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def _dequantize(dq: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto]) -> np.ndarray:
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
    return q * scale


def _run_with_taps(model: onnx.ModelProto, feeds: Sequence[Feeds], taps: Sequence[str]) -> list[dict[str, np.ndarray]]:

    tapped = copy.deepcopy(model)
    present = {o.name for o in tapped.graph.output}
    for name in dict.fromkeys(taps):
        if name not in present:
            tapped.graph.output.append(helper.make_empty_tensor_value_info(name))
    del tapped.graph.value_info[:]
    return run(tapped, feeds)


def _run_node(node: onnx.NodeProto, xs: Sequence[np.ndarray], w: np.ndarray, extra: Sequence[np.ndarray]
              ) -> list[np.ndarray]:
    """One Conv/MatMul/Gemm node alone, on each input in `xs`, with weight `w` (and bias/C in `extra`)."""

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [f"d{i}" for i in range(xs[0].ndim)])]
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    names = ["x", "w"]
    for k, e in enumerate(extra):
        inits.append(numpy_helper.from_array(e.astype(np.float32), f"e{k}"))
        names.append(f"e{k}")
    single = helper.make_node(node.op_type, names, ["y"], **{a.name: helper.get_attribute_value(a) for a in node.attribute})
    graph = helper.make_graph([single], "layer", inputs, [helper.make_empty_tensor_value_info("y")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return [out["y"] for out in run(model, [{"x": x.astype(np.float32)} for x in xs])]


# --------------------------------------------------------------------------------------- weight-only (LLM)
# Decode at batch 1 reads every weight once per token, so bytes per weight is the speed; each backend has its own
# weight-only form, both made by ONNX Runtime's MatMulNBitsQuantizer (one MatMul at a time, see below):
#   MatMulNBits  ONNX Runtime's contrib kernel (com.microsoft): INT4/INT8 blocks along K, packed; the kernel
#                dequantizes in registers. accuracy_level 4 lets it compute on int8-quantized activation blocks
#                (VNNI/AVX-512 on x86, dot-product on Arm); the graph's activations stay FP32/FP16.
#   QDQ          TensorRT 10+'s weight-only form: an INT4 initializer, DequantizeLinear(axis 0, block_size) -> MatMul
#                (opset 21; symmetric, TensorRT rejects zero points). INT8 is per output channel (TensorRT blocks
#                only 4-bit weights; the library writes 8-bit weights only as MatMulNBits, so that one is ours).
WEIGHT_FORMS = {"onnxruntime": "MatMulNBits", "tensorrt": "QDQ", "torch": "MatMulNBits"}
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4
QDQ_INT4_OPSET = 21


class WeightOnlyError(LLMFormerError, ValueError):
    """Weight-only quantization asked with settings it cannot honour; the message says what to pass instead."""


def check_weight_only(bits: int, block_size: int, form: str) -> None:
    if bits not in (4, 8):
        raise WeightOnlyError(f"weight-only bits must be 4 or 8, got {bits}")
    if form not in ("MatMulNBits", "QDQ"):
        raise WeightOnlyError(f"weight-only form '{form}': choose MatMulNBits (ONNX Runtime) or QDQ (TensorRT)")
    if block_size < 16 or block_size & (block_size - 1):
        raise WeightOnlyError(f"--llm-block-size {block_size}: MatMulNBits needs a power of two >= 16 (32 is usual; "
                              f"larger blocks are smaller files and lose more)")


def weight_matmuls(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The MatMul / Gemm nodes whose B is a constant 2-D float weight: stored as an initializer and read directly,
    through a Transpose (perm 1,0) or through Identity. Returns (targets, not_rewritable {node: reason}); a target
    says how its stored weight maps to (K, N) and which Transpose/Identity nodes only it reads."""
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    targets, refused = [], {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        name, transposed, via = node.input[1], False, []
        while name not in inits and name in producer and producer[name].op_type in ("Transpose", "Identity"):
            up = producer[name]
            if up.op_type == "Transpose":
                perm = next((list(a.ints) for a in up.attribute if a.name == "perm"), [1, 0])
                if perm != [1, 0]:
                    break
                transposed = not transposed
            via.append(up)
            name = up.input[0]
        init = inits.get(name)
        if init is None or len(init.dims) != 2 or init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue                                    # activation x activation (attention scores): not a weight
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            transposed ^= bool(attrs.get("transB", 0))
            if attrs.get("transA", 0):
                refused[node.name] = "Gemm with transA=1 (never exported for a Linear)"
                continue
        targets.append({"node": node, "weight": name, "nk": transposed, "alpha": float(attrs.get("alpha", 1.0)),
                        "beta": float(attrs.get("beta", 1.0)),
                        "bias": node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None,
                        "via": [v for v in via if readers.get(v.output[0]) == 1]})
    return targets, refused


def quantize_weights(model: onnx.ModelProto, bits: int = 8, block_size: int = 128, min_elements: int = 4096,
                     form: str = "QDQ", accuracy_level: int | None = DEFAULT_ACCURACY_LEVEL,
                     ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Weight-only quantization of an in-memory graph (a copy is returned with the report); every MatMul/Gemm weight
    with at least `min_elements` values. The LLM's graphs go through `quantize_weights_file`, which streams."""
    model = copy.deepcopy(model)
    report = _weight_only(model, None, bits, block_size, form, accuracy_level, min_elements)
    return model, report


def quantize_weights_file(src: str | Path, out: str | Path, *, bits: int, block_size: int = DEFAULT_BLOCK_SIZE,
                          form: str = "MatMulNBits", accuracy_level: int | None = DEFAULT_ACCURACY_LEVEL,
                          threshold: int | None = None) -> dict[str, Any]:
    """Write the weight-only `bits` graph of the graph at `src` to `out` in `form` (see WEIGHT_FORMS), streaming:
    the source is read as a skeleton and each weight is loaded, quantized and dropped in turn, so memory holds one
    FP32 weight plus the quantized ones. External data beside `out` when it is over the threshold (report's
    `data_files`). Every MatMul/Gemm with a constant weight is quantized (`skipped` lists any that is not)."""
    src, out = Path(src), Path(out)
    model = onnx.load(str(src), load_external_data=False)
    report = _weight_only(model, src.parent, bits, block_size, form, accuracy_level, 0)
    report["data_files"] = save_checked(model, out, source_dir=src.parent, threshold=threshold)
    return report


def _weight_only(model: onnx.ModelProto, source_dir: Path | None, bits: int, block_size: int, form: str,
                 accuracy_level: int | None, min_elements: int) -> dict[str, Any]:
    """Quantize `model`'s weights in place (see quantize_weights_file); the report."""
    check_weight_only(bits, block_size, form)
    name_nodes(model)
    graph = model.graph
    if form == "QDQ" and bits == 4 and _opset(model) < QDQ_INT4_OPSET:
        # DequantizeLinear takes INT4 and block_size from opset 21; converting the (weightless) skeleton is cheap.
        from onnx import version_converter

        converted = version_converter.convert_version(model, QDQ_INT4_OPSET)
        model.CopyFrom(converted)
        graph = model.graph
    if form == "QDQ" and bits == 4:
        model.ir_version = max(model.ir_version, 10)    # INT4 tensors need IR 10
    if form == "MatMulNBits" and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    targets, skipped = weight_matmuls(model)
    inits = {i.name: i for i in graph.initializer}
    replace: dict[str, list[onnx.NodeProto]] = {}
    drop_nodes = set()
    used_names: set[str] = set()
    before = after = 0
    quantized = []
    for t in targets:
        node, init = t["node"], inits[t["weight"]]
        if int(np.prod(init.dims)) < min_elements:
            skipped[node.name] = f"{int(np.prod(init.dims))} weights < min_elements {min_elements}"
            continue
        w = tensor_array(init, source_dir)
        w = np.ascontiguousarray(w.T if t["nk"] else w)                                   # (K, N)
        if t["alpha"] != 1.0:
            w = w * np.asarray(t["alpha"], w.dtype)
        name = t["weight"] if t["weight"] not in used_names else f"{t['weight']}.{node.name}"
        used_names.add(name)
        out = node.output[0] if t["bias"] is None else f"{node.output[0]}_weight_only"
        before += w.nbytes
        one = _one_matmul(node.name, node.input[0], out, name, w.shape, w.dtype, _opset(model))
        raw = w.tobytes()
        del w                           # at most two copies of a weight alive at once (lm_head: 0.5 GB each)
        one.graph.initializer[0].raw_data = raw
        del raw
        nodes, tensors = _quantize_one(one, bits, block_size, form, accuracy_level)
        del one                         # (the quantizer edits it in place; its FP32 weight goes with it)
        if t["bias"] is not None:
            bias = t["bias"]
            if t["beta"] != 1.0:
                b = tensor_array(inits[bias], source_dir)
                bias = f"{bias}_beta"
                tensors.append(numpy_helper.from_array((b * t["beta"]).astype(b.dtype), bias))
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=f"{node.name}_bias"))
        for tensor in tensors:
            graph.initializer.add().CopyFrom(tensor)
            after += tensor_bytes(tensor)
        replace[node.name] = nodes
        drop_nodes.update(v.name for v in t["via"])
        quantized.append(node.name)
    new_nodes = []
    for node in graph.node:
        if node.name in drop_nodes:
            continue
        new_nodes.extend(replace.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)                  # the FP weights (external ones are never read again)
    left = [t["node"].name for t in weight_matmuls(model)[0]]
    skipped.update({n: "still reads a floating-point weight after quantization" for n in left if n not in skipped})
    return {"weight_only_bits": bits, "form": form, "block_size": block_size if form == "MatMulNBits" or bits == 4
            else None, "accuracy_level": accuracy_level if form == "MatMulNBits" else None, "symmetric": True,
            "opset": _opset(model), "layers": len(quantized), "quantized_layers": quantized, "skipped": skipped,
            "weight_bytes_before": int(before), "weight_bytes_after": int(after)}


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _one_matmul(node_name: str, a: str, y: str, weight: str, shape: tuple[int, ...], dtype: np.dtype, opset: int
                ) -> onnx.ModelProto:
    """y = a @ weight, alone in a graph; the weight's values are left for the caller to set (raw_data)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    one = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", [a, weight], [y], name=node_name)], "weight",
        [helper.make_tensor_value_info(a, elem, None)], [helper.make_tensor_value_info(y, elem, None)]),
        opset_imports=[helper.make_opsetid("", opset)])
    one.graph.initializer.add(name=weight, data_type=elem, dims=list(shape))
    return one


def _quantize_one(one: onnx.ModelProto, bits: int, block_size: int, form: str, accuracy_level: int | None
                  ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The nodes and initializers that compute `one` (a `_one_matmul` graph) with its weight quantized. ONNX
    Runtime's MatMulNBitsQuantizer does it, one MatMul at a time: run on the whole model it would need every
    weight in memory, and it skips Gemm and Transpose -> MatMul, the forms the decoder is exported in."""
    import logging

    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    node, weight = one.graph.node[0], one.graph.initializer[0].name
    node_name, shape = node.name, tuple(one.graph.initializer[0].dims)
    if form == "QDQ" and bits == 8:
        return _per_channel_int8(node_name, node.input[0], node.output[0], weight,
                                 numpy_helper.to_array(one.graph.initializer[0]))
    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        quantizer = MatMulNBitsQuantizer(
            one, bits=bits, block_size=block_size, is_symmetric=True,
            accuracy_level=accuracy_level if form == "MatMulNBits" else None, op_types_to_quantize=("MatMul",),
            quant_format=QuantFormat.QOperator if form == "MatMulNBits" else QuantFormat.QDQ)
        quantizer.process()
    finally:
        quiet.setLevel(level)
    graph = quantizer.model.model.graph
    if any(weight in n.input for n in graph.node):
        raise WeightOnlyError(f"{node_name}: onnxruntime's MatMulNBitsQuantizer left the weight '{weight}' "
                              f"{shape} unquantized ({bits} bits, block {block_size}, {form})")
    # Standalone copies: a message taken from the small graph keeps all of it alive, its FP32 weight included.
    return [_detached(n, onnx.NodeProto) for n in graph.node], [_detached(t, TensorProto) for t in graph.initializer]


def _detached(message, kind):
    copy_ = kind()
    copy_.CopyFrom(message)
    return copy_


def _per_channel_int8(node_name: str, a: str, y: str, weight: str, w: np.ndarray
                      ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """INT8 symmetric per output channel: DequantizeLinear(axis 1) -> MatMul (TensorRT's INT8 weight-only)."""
    amax = np.abs(w.astype(np.float32)).max(axis=0)
    scale = (np.maximum(amax, 1e-12) / 127).astype(w.dtype)                             # (N,)
    q = np.clip(np.round(w.astype(np.float32) / scale.astype(np.float32)), -127, 127).astype(np.int8)
    qt, st = numpy_helper.from_array(q, f"{weight}_q8"), numpy_helper.from_array(scale, f"{weight}_scale")
    dq = helper.make_node("DequantizeLinear", [qt.name, st.name], [f"{weight}_dq"], axis=1,
                          name=f"{node_name}_DequantizeLinear")
    return [dq, helper.make_node("MatMul", [a, dq.output[0]], [y], name=node_name)], [qt, st]
