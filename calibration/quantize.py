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

`quantize_weights` (captioner decoder, weight-only): every MatMul/Gemm weight stored INT8 (per output channel) or
INT4 (blocks along the reduction axis, opset 21) behind a DequantizeLinear; activations stay floating point.
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
from calibration.graphs import Feeds, check_onnx, name_nodes, output_errors, run
from engines.errors import LLMFormerError
from engines.files import atomic_write_bytes

METHODS = ("entropy", "percentile", "minmax")
CACHE_VERSION = 1
DEFAULT_LAYER_TOLERANCE = 0.08       # isolated relative output error above which a layer stays FP32
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
    onnx.save(model, str(out_path))


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
        onnx.save(model, str(fp32_path))
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
        check_onnx(quantized)
        atomic_write_bytes(out_path, quantized.SerializeToString())
    errors = output_errors(reference, run(out_path, feeds))
    for row in table:
        row["excluded"] = row["layer"] in excluded
    return {"precision": "int8", "method": method, "percentile": percentile if method == "percentile" else None,
            "layer_tolerance": layer_tolerance, "quantized_layers": len(keep), "candidate_layers": len(layers),
            "excluded_layers": excluded, "cache_key": key, "cache_hit": cache_hit,
            "calibration_samples": len(feeds), "vs_fp32": errors, "layers": table}


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
def quantize_weights(model: onnx.ModelProto, bits: int = 8, block_size: int = 128, min_elements: int = 4096,
                     ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Weight-only quantization of every MatMul/Gemm weight with at least `min_elements` values: the FP weight is
    replaced by an INT8 (symmetric, per output channel) or INT4 (symmetric, blocks of `block_size` along the
    reduction axis; needs opset 21, so the graph's opset is raised) initializer and a DequantizeLinear feeding the
    op. Activations are untouched. Returns the new model and a report (bytes before/after, layers)."""
    if bits not in (4, 8):
        raise ValueError(f"weight-only bits must be 4 or 8, got {bits}")
    model = copy.deepcopy(model)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            users[i] = users.get(i, 0) + 1
    new_nodes, done, before, after = [], [], 0, 0
    for node in graph.node:
        weight = node.input[1] if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        if weight in inits and users.get(weight) == 1 and len(inits[weight].dims) == 2 \
                and np.prod(inits[weight].dims) >= min_elements and inits[weight].data_type == TensorProto.FLOAT:
            w = numpy_helper.to_array(inits[weight])
            trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            k_axis = 1 if trans_b else 0                # reduction axis of the stored weight
            q, scale, attrs = _quantize_weight(w, bits, block_size, k_axis)
            qt = numpy_helper.from_array(q, f"{weight}_q{bits}") if bits == 8 else \
                helper.make_tensor(f"{weight}_q4", TensorProto.INT4, q.shape, q.flatten().tolist())
            st = numpy_helper.from_array(scale.astype(np.float32), f"{weight}_scale")
            graph.initializer.remove(inits[weight])
            graph.initializer.extend([qt, st])
            new_nodes.append(helper.make_node("DequantizeLinear", [qt.name, st.name], [weight],
                                              name=f"{weight}_DequantizeLinear", **attrs))
            before += w.nbytes
            after += q.size * bits // 8 + scale.size * 4
            done.append(node.name)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if bits == 4:
        from onnx import version_converter

        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 21:
            model = version_converter.convert_version(model, 21)
    return model, {"weight_only_bits": bits, "block_size": block_size if bits == 4 else None,
                   "layers": len(done), "weight_bytes_before": int(before), "weight_bytes_after": int(after)}


def _quantize_weight(w: np.ndarray, bits: int, block_size: int, k_axis: int):
    qmax = 127 if bits == 8 else 7
    if bits == 8:                                      # per output channel (the non-reduction axis)
        n_axis = 1 - k_axis
        amax = np.abs(w).max(axis=k_axis)
        scale = np.maximum(amax, 1e-12) / qmax
        q = np.clip(np.round(w / np.expand_dims(scale, k_axis)), -qmax, qmax).astype(np.int8)
        return q, scale, {"axis": n_axis}
    K = w.shape[k_axis]
    if K % block_size:
        raise ValueError(f"INT4 blocks of {block_size} do not divide the reduction size {K}")
    wk = np.moveaxis(w, k_axis, -1)                    # (N, K)
    blocks = wk.reshape(wk.shape[0], K // block_size, block_size)
    scale = np.maximum(np.abs(blocks).max(-1), 1e-12) / qmax                       # (N, K/bs)
    q = np.clip(np.round(blocks / scale[..., None]), -qmax - 1, qmax).astype(np.int8).reshape(wk.shape)
    q, scale = np.moveaxis(q, -1, k_axis), np.moveaxis(scale, -1, k_axis)
    return q, scale, {"axis": k_axis, "block_size": block_size}
