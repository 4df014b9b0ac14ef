"""FP16 and INT8 graphs from the FP32 ONNX, made and checked under ONNX Runtime for strongly typed TensorRT.

TensorRT 10 deprecated implicit INT8 calibration and the FP16/INT8 builder flags (TensorRT 11 removed them): the
precision lives in the graph. So this module writes it there, where it can be measured without a GPU:

- **fp16**: every float tensor FP16 except *islands* kept in FP32 (ONNX Runtime's float16 converter with a node
  block list; Casts at the island borders, round trips between neighbouring island nodes removed). Graph inputs
  and outputs stay FP32, so the runtime and the manifest's specs do not change.
- **int8**: explicit Q/DQ (calibration/quantize.py): symmetric INT8, per-channel weights, per-tensor activations,
  on the inputs of Conv / MatMul / Gemm with constant weights; layers that lose too much stay FP32.
- **the LLM decoder** (`llm_weights`, `--llm-weights fp32|fp16|int8|int4`; default: what --precision makes of it):
  fp16 as above, or INT8/INT4 weight-only in the backend's form (MatMulNBits for ONNX Runtime, blocked
  DequantizeLinear at opset 21 for TensorRT), activations FP32 (FP16 with --precision fp16).

Graphs over calibration.graphs.EXTERNAL_DATA_BYTES are read and written with external data, tensor by tensor
(see calibration/graphs.py); each report lists the `data_files` written and convert_artifacts hashes them.

The FP16 islands are chosen by measurement (`choose_islands`): candidate groups are found in the graph, and a group
is kept only where dropping it makes the component's outputs measurably worse against FP32 on the calibration
feeds. FP16 is measured by *emulation*: ONNX Runtime's CPU kernels compute most FP16 nodes in FP32 and keep chains of
them in FP32 (it fuses its own casts away), which hides overflow; `emulate_fp16` instead rounds every tensor that
is FP16 in the graph to FP16 after the node that makes it (math inside a node in FP32, as TensorRT's FP16 kernels
accumulate), so an overflow shows as inf. Candidate groups:

    attention_softmax  score MatMul(s) -> scale / mask / bias -> Softmax: scores overflow FP16 (Phi-2: pinned)
    softmax            other Softmax nodes (MSDA point weights, level scores)
    normalization      LayerNormalization, InstanceNormalization (GroupNorm), ReduceL2 (L2 normalize)
    msda_coordinates   sampling offsets Linear -> locations -> GridSample grid (or the MSDA plugin's locations)

    report = convert("segmenter.onnx", "segmenter.fp16.onnx", "fp16", "segmenter", feeds)
    convert_artifacts(staging, manifest, "int8", calib="calib/")   # what build_engines.py calls
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data

from calibration.graphs import (EXTERNAL_DATA_BYTES, Feeds, check_saved, initializer_bytes, name_nodes,
                                output_errors, run, save_onnx, tensor_array, weightless, worst)
from calibration.quantize import (DEFAULT_ACCURACY_LEVEL, DEFAULT_BLOCK_SIZE, WEIGHT_FORMS, NothingToQuantize,
                                  check_weight_only)
from engines.contract import FRAME_PREPROCESS, SEMANTIC_MAP, Manifest, file_entry
from engines.errors import LLMFormerError
from engines.files import sha256_file

PRECISIONS = ("fp32", "fp16", "int8")
LLM_WEIGHTS = ("fp32", "fp16", "int8", "int4")   # --llm-weights: the captioner decoder's weights, whatever --precision
ISLAND_GROUPS = ("attention_softmax", "softmax", "normalization", "msda_coordinates")
# Islands kept whatever the measurement says, because the measurement cannot see the reason with random weights.
PINNED_ISLANDS = {
    "captioner_decoder": {"attention_softmax": "Phi-2's attention scores overflow FP16 with its real weights "
                                               "(llmformer/captioner.py computes them in FP32 for that reason)"},
}
# The LLM decoder is quantized weight-only (--llm-weights int8 or int4, in the backend's form: MatMulNBits for ONNX
# Runtime, blocked DequantizeLinear for TensorRT): its activations have outliers that per-tensor INT8 cannot hold,
# and weight bandwidth is what limits decode speed. The token embedding (captioner_embed) is not: decode reads one
# row of it per token, so low-bit rows buy no speed, and a quantized Gather is an ONNX Runtime contrib op
# (GatherBlockQuantized) that TensorRT does not parse. It follows --precision.
WEIGHT_ONLY = {"captioner_decoder"}
# Keep an island when dropping it grows the worst relative output error by more than this factor (or to non-finite).
ISLAND_TOLERANCE = 1.25
_SCORE_OPS = {"MatMul", "Gemm", "Einsum"}
_SCORE_PATH_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Concat", "Reshape", "Transpose", "Cast", "Squeeze",
                   "Unsqueeze", "Expand", "Slice", "Identity", "Neg"}
_NORMALIZATION_OPS = {"LayerNormalization", "InstanceNormalization", "GroupNormalization", "ReduceL2"}
_MSDA_PLUGIN = ("trt.plugins", "MultiscaleDeformableAttnPlugin_TRT")


class PrecisionError(LLMFormerError, ValueError):
    """A precision build that cannot be made; the message says what to pass instead."""


def check_args(precision: str, calib: str | Path | None, llm_weights: str | None = None,
               llm_block_size: int = DEFAULT_BLOCK_SIZE) -> None:
    """Fail before any export work: unknown precision or LLM weights, a block size MatMulNBits cannot take, INT8
    without calibration images, a bad --calib folder."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if llm_weights is not None and llm_weights not in LLM_WEIGHTS:
        raise PrecisionError(f"unknown --llm-weights '{llm_weights}': choose one of {', '.join(LLM_WEIGHTS)}")
    check_weight_only(4, llm_block_size, "MatMulNBits")
    if precision == "int8" and calib is None:
        raise PrecisionError("--precision int8 needs calibration images: pass --calib DIR, a folder of frames like "
                             "the ones the camera will see (a few hundred; optional DIR/captions.txt)")
    if calib is not None:
        from calibration.data import list_images

        list_images(calib)


def llm_target(precision: str, llm_weights: str | None) -> str:
    """What the captioner decoder becomes: `llm_weights` when given, else what --precision makes of it as before
    (fp32, fp16, or int8 weight-only, now in the backend's form)."""
    return llm_weights or precision


# ------------------------------------------------------------------------------------------------ graph helpers
def _float_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(weightless(model))   # element types need no weight values
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def find_islands(model: onnx.ModelProto) -> dict[str, set[str]]:
    """Candidate FP32 islands, by group: {group: node names}. Nodes get names where they have none."""
    name_nodes(model)
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    constants = {i.name for i in model.graph.initializer} | {n.output[0] for n in nodes if n.op_type == "Constant"}
    types = _float_types(model)
    is_float = lambda name: types.get(name) in (TensorProto.FLOAT, TensorProto.FLOAT16)  # noqa: E731
    groups: dict[str, set[str]] = {g: set() for g in ISLAND_GROUPS}

    def score_path(name: str, depth: int) -> tuple[set[str], bool]:
        """Nodes from the score MatMuls to `name`; True when a MatMul of two activations was reached."""
        node = producer.get(name)
        if node is None or name in constants or depth > 6:
            return set(), False
        if node.op_type in _SCORE_OPS:
            two_activations = sum(i not in constants for i in node.input[:2]) == 2
            return {node.name}, two_activations
        if node.op_type not in _SCORE_PATH_OPS:
            return set(), False
        found, hit = set(), False
        for i in node.input:
            if i and is_float(i):
                sub, h = score_path(i, depth + 1)
                if h:
                    found |= sub
                    hit = True
        return (found | {node.name}, True) if hit else (set(), False)

    def coordinate_slice(name: str, limit: int = 96) -> set[str]:
        """Backward from a coordinate tensor to (and including) the Linear that predicts the offsets."""
        out, stack = set(), [name]
        while stack and len(out) < limit:
            node = producer.get(stack.pop())
            if node is None or node.name in out or node.op_type == "Constant":
                continue
            out.add(node.name)
            if node.op_type in ("MatMul", "Gemm"):
                continue
            stack += [i for i in node.input if i and i not in constants and is_float(i)]
        return out

    for node in nodes:
        if node.op_type == "Softmax":
            path, attention = score_path(node.input[0], 0)
            if attention:
                groups["attention_softmax"] |= path | {node.name}
            else:
                groups["softmax"].add(node.name)
        elif node.op_type in _NORMALIZATION_OPS:
            groups["normalization"].add(node.name)
        elif node.op_type == "GridSample":
            groups["msda_coordinates"] |= {node.name} | coordinate_slice(node.input[1])
        elif (node.domain, node.op_type) == _MSDA_PLUGIN:
            groups["msda_coordinates"] |= coordinate_slice(node.input[3]) | coordinate_slice(node.input[4])
    # Constants read only by an island's nodes belong to it (their values stay FP32, e.g. float32.min masks).
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    for members in groups.values():
        for n in nodes:
            if n.op_type == "Constant" and consumers.get(n.output[0]) and \
                    all(c in members for c in consumers[n.output[0]]):
                members.add(n.name)
    return groups


def to_fp16(model: onnx.ModelProto, keep: Iterable[str], islands: Mapping[str, set[str]] | None = None,
            source_dir: str | Path | None = None) -> onnx.ModelProto:
    """FP16 copy of `model` with the island groups in `keep` left FP32; inputs and outputs stay FP32.

    `model` may be a skeleton (`onnx.load(path, load_external_data=False)`, with `source_dir` its folder): the
    weights are converted here one at a time, never all held in FP32, and the copy holds them in FP16 only."""
    from onnxruntime.transformers.float16 import (ALWAYS_FLOAT_INPUTS, DEFAULT_OP_BLOCK_LIST,
                                                  convert_float_to_float16, convert_np_to_float16)

    islands = find_islands(model) if islands is None else islands
    unknown = set(keep) - set(ISLAND_GROUPS)
    if unknown:
        raise PrecisionError(f"unknown FP16 island groups {sorted(unknown)}: choose from {', '.join(ISLAND_GROUPS)}")
    block = set().union(*(islands.get(g, set()) for g in keep)) if keep else set()
    name_nodes(model)
    # The converter reads every initializer it converts whole (and again for its shape), which neither fits a graph
    # over 2 GB nor one whose tensors are external. So the weights it would convert (read by at least one FP16 node:
    # its own rule) are handed to it as typed graph inputs, on a copy without their values, and put back here as
    # FP16 initializers one at a time.
    blocked = lambda n: n.op_type in DEFAULT_OP_BLOCK_LIST or n.name in block  # noqa: E731
    fp16_weights = {name for n in model.graph.node if not blocked(n) for k, name in enumerate(n.input)
                    if k not in ALWAYS_FLOAT_INPUTS.get(n.op_type, [])}
    weights = {i.name: i for i in model.graph.initializer
               if i.data_type == TensorProto.FLOAT and i.name in fp16_weights}
    light = weightless(model, set(weights))
    del light.graph.value_info[:]
    real_io = [v.name for v in (*light.graph.input, *light.graph.output) if v.name not in weights]
    fp16 = convert_float_to_float16(light, keep_io_types=real_io, node_block_list=sorted(block),
                                    op_block_list=DEFAULT_OP_BLOCK_LIST)
    for value in [v for v in fp16.graph.input if v.name in weights]:
        fp16.graph.input.remove(value)
    for name, init in weights.items():
        values = tensor_array(init, source_dir)
        half = convert_np_to_float16(values.reshape(-1)).reshape(values.shape)  # it takes 1-D, as from raw data
        del values
        fp16.graph.initializer.append(numpy_helper.from_array(half, name))
        del half
    _drop_round_trip_casts(fp16)
    _topological_sort(fp16.graph)
    return fp16


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The converter appends its Casts at the end; ONNX wants every node after the nodes it reads."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise PrecisionError(f"FP16 graph has a cycle or a missing tensor at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """Cast(fp32 -> fp16) -> Cast(fp16 -> fp32) between two island nodes would round the island's values to FP16
    on the way; read the FP32 tensor directly instead."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    dead = []
    for node in graph.node:
        if node.op_type != "Cast" or helper.get_attribute_value(node.attribute[0]) != TensorProto.FLOAT:
            continue
        up = producer.get(node.input[0])
        if up is None or up.op_type != "Cast" or helper.get_attribute_value(up.attribute[0]) != TensorProto.FLOAT16:
            continue
        source = producer.get(up.input[0])
        if source is None or source.op_type == "Cast" or node.output[0] in outputs:
            continue
        # The fp16 cast's input is FP32 only when the converter made it for an island node's output.
        if not up.input[0].endswith("_cast_to_fp16"):
            continue
        rename[node.output[0]] = up.input[0]
        dead.append(node)
    for node in dead:
        graph.node.remove(node)
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]
    read = {i for n in graph.node for i in n.input} | outputs
    for node in [n for n in graph.node if n.op_type == "Cast" and all(o not in read for o in n.output)]:
        graph.node.remove(node)
    keep = {o for n in graph.node for o in n.output}
    for vi in [v for v in graph.value_info if v.name not in keep]:
        graph.value_info.remove(vi)


def emulate_fp16(model16: onnx.ModelProto) -> onnx.ModelProto:
    """An FP32 graph that computes like `model16` on a GPU: every tensor that is FP16 in `model16` is rounded to
    FP16 (Cast there and back) right after the node that makes it; the math inside each node is FP32."""
    types = _float_types(model16)
    model = copy.deepcopy(model16)
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    new_nodes = []
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
        new_nodes.append(node)
        for k, out in enumerate(node.output):
            if out and types.get(out) == TensorProto.FLOAT16:
                raw, half = f"{out}__fp32", f"{out}__fp16"
                node.output[k] = raw
                new_nodes.append(helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16, name=f"{raw}_round"))
                new_nodes.append(helper.make_node("Cast", [half], [out], to=TensorProto.FLOAT, name=f"{half}_back"))
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


# ------------------------------------------------------------------------------------------------- measuring
def choose_islands(model: onnx.ModelProto, component: str, feeds: Sequence[Feeds],
                   reference: Sequence[Mapping[str, np.ndarray]], log: Callable[[str], None] = lambda s: None
                   ) -> tuple[list[str], dict[str, Any]]:
    """Leave-one-out over the candidate island groups (emulated FP16 against FP32 on `feeds`): keep a group when
    the worst relative output error without it is more than ISLAND_TOLERANCE times the error with every group
    kept, or not finite; pinned groups stay. Returns the kept groups and the measurements."""
    islands = find_islands(model)
    present = [g for g in ISLAND_GROUPS if islands[g]]
    pinned = PINNED_ISLANDS.get(component, {})

    def error_with(keep: Sequence[str]) -> dict[str, dict[str, float]]:
        return output_errors(reference, run(emulate_fp16(to_fp16(model, keep, islands)), feeds))

    all_kept = error_with(present)
    none_kept = error_with([])
    base = worst(all_kept)
    study: dict[str, Any] = {"all_islands": {"worst_rel": base, "outputs": all_kept},
                             "no_islands": {"worst_rel": worst(none_kept), "outputs": none_kept}, "groups": {}}
    kept = []
    for group in present:
        without = worst(error_with([g for g in present if g != group]))
        needed = not np.isfinite(without) or without > ISLAND_TOLERANCE * max(base, 1e-12)
        reason = pinned.get(group) or ("measured: dropping it grows the worst relative error "
                                       f"{base:.2e} -> {without:.2e}" if needed else "")
        if needed or group in pinned:
            kept.append(group)
        study["groups"][group] = {"nodes": len(islands[group]), "worst_rel_without": without,
                                  "kept": group in kept, "reason": reason or "measured: no effect, left FP16"}
        log(f"    fp16 island {group:<18} {len(islands[group]):4d} nodes  worst rel. error without it "
            f"{without:.2e} (all islands {base:.2e}) -> {'FP32' if group in kept else 'FP16'}")
    return kept, study


# --------------------------------------------------------------------------------------------------- convert
def convert(fp32_onnx_path: str | Path, out_path: str | Path, precision: str, component_name: str,
            calib: Sequence[Feeds], *, cache_dir: str | Path | None = None, calib_fingerprint: str = "",
            method: str = "entropy", islands: Sequence[str] | str = "auto", log: Callable[[str], None] = print,
            backend: str = "onnxruntime", block_size: int = DEFAULT_BLOCK_SIZE, activations: str = "fp32",
            accuracy_level: int | None = DEFAULT_ACCURACY_LEVEL, **int8_options: Any) -> dict[str, Any]:
    """Write `out_path`, the `precision` version of the FP32 graph `fp32_onnx_path` for `component_name`, and
    return its report (JSON-able): islands or quantized/excluded layers, the error against FP32 on `calib`
    (the component's recorded input feeds; see calibration.data.CalibrationSet.record), and `data_files`, the
    external data written beside `out_path` (graphs over EXTERNAL_DATA_BYTES).

    The LLM decoder (WEIGHT_ONLY) takes int8 or int4 weight-only in `backend`'s form (calibration.quantize.
    WEIGHT_FORMS; `block_size`, `accuracy_level`), with FP32 activations or, `activations="fp16"`, on the FP16 graph.
    Graphs are read from their files and written tensor by tensor: memory holds the converted weights, not a copy
    of the FP32 ones (INT8 Q/DQ excepted: ONNX Runtime's static quantizer loads the whole graph)."""
    if precision not in ("fp16", "int8", "int4") or (precision == "int4" and component_name not in WEIGHT_ONLY):
        raise PrecisionError(f"convert() makes fp16 or int8 graphs (int4: the LLM decoder only), got '{precision}' "
                             f"for {component_name}")
    if not calib and not (precision == "fp16" or component_name in WEIGHT_ONLY):
        raise PrecisionError(f"{component_name}: no calibration feeds were recorded for it")
    t0 = time.perf_counter()
    fp32_onnx_path, out_path = Path(fp32_onnx_path), Path(out_path)
    # From the files, so ONNX Runtime reads external data itself; the session is gone before converting starts.
    reference = run(fp32_onnx_path, calib) if calib else None
    if precision == "fp16":
        report = _convert_fp16(fp32_onnx_path, out_path, component_name, calib, reference, islands, log)
    elif component_name in WEIGHT_ONLY:
        report = _convert_weight_only(fp32_onnx_path, out_path, int(precision[3:]), component_name, calib, reference,
                                      backend, block_size, activations, accuracy_level, log)
    else:
        from calibration.quantize import quantize_int8

        model = onnx.load(str(fp32_onnx_path))
        report = quantize_int8(model, out_path, calib, reference=reference, component=component_name,
                               method=method, cache_dir=cache_dir, calib_fingerprint=calib_fingerprint,
                               fp32_sha256=sha256_file(fp32_onnx_path), log=log, **int8_options)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def _convert_fp16(src: Path, out: Path, component: str, calib: Sequence[Feeds], reference, islands,
                  log: Callable[[str], None]) -> dict[str, Any]:
    model = onnx.load(str(src), load_external_data=False)  # the skeleton: large tensors stay in their files
    large = initializer_bytes(model) > EXTERNAL_DATA_BYTES
    measure = bool(islands == "auto" and calib and not large)
    if measure and any(uses_external_data(t) for t in model.graph.initializer):
        model = onnx.load(str(src))                         # the island study runs variants of it in memory
    if measure:
        keep, study = choose_islands(model, component, calib, reference, log)
    elif islands == "auto":  # nothing to measure on, or too large to try variants: only the pinned islands
        keep = sorted(PINNED_ISLANDS.get(component, {}))
        study = {"not_measured": "no feeds recorded" if not calib else
                 f"graph of {initializer_bytes(model) / 1e9:.1f} GB: each trial would hold another copy of its "
                 f"weights; pinned islands only"}
    else:
        keep, study = list(islands), {}
    model16 = to_fp16(model, keep, source_dir=src.parent)
    del model
    data_files = save_onnx(model16, out, source_dir=src.parent)
    if not measure:  # the emulation below is the only other use: drop the graph before the checker reads it back
        del model16
    check_saved(out, data_files)
    vs = {}
    if calib:
        if measure:  # emulation runs the whole graph in memory in FP32
            vs["emulated_fp16"] = output_errors(reference, run(emulate_fp16(model16), calib))
            del model16
        vs["onnxruntime_cpu"] = output_errors(reference, run(out, calib))
    return {"precision": "fp16", "fp32_islands": keep, "island_study": study, "vs_fp32": vs,
            "data_files": data_files}


def _convert_weight_only(src: Path, out: Path, bits: int, component: str, calib: Sequence[Feeds], reference,
                         backend: str, block_size: int, activations: str, accuracy_level: int | None,
                         log: Callable[[str], None]) -> dict[str, Any]:
    from calibration.quantize import quantize_weights_file

    if backend not in WEIGHT_FORMS:
        raise PrecisionError(f"no weight-only form for backend '{backend}': choose one of {', '.join(WEIGHT_FORMS)}")
    if activations not in ("fp32", "fp16"):
        raise PrecisionError(f"weight-only activations are fp32 or fp16, got '{activations}'")
    form = WEIGHT_FORMS[backend]
    fp16 = None
    if activations == "fp16":  # the FP16 graph (islands as for --precision fp16) first, then its weights quantized
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.fp16-"))
        fp16 = _convert_fp16(src, tmp / "fp16.onnx", component, calib, reference, "auto", log)
        src = tmp / "fp16.onnx"
    try:
        report = quantize_weights_file(src, out, bits=bits, block_size=block_size, form=form,
                                       accuracy_level=accuracy_level)
    finally:
        if fp16 is not None:
            shutil.rmtree(src.parent, ignore_errors=True)
    if report["skipped"]:
        raise PrecisionError(f"{component}: {len(report['skipped'])} MatMul/Gemm weights were not quantized: "
                             + "; ".join(f"{n}: {why}" for n, why in report["skipped"].items()))
    report.update({"precision": f"int{bits}-weight-only", "activations": activations, "backend": backend,
                   "vs_fp32": output_errors(reference, run(out, calib)) if calib else {}})
    if fp16 is not None:
        report["fp32_islands"] = fp16["fp32_islands"]
    log(f"    {component}: {report['layers']} MatMul/Gemm weights -> int{bits} {form}"
        f"{f' blocks of {block_size}' if form == 'MatMulNBits' or bits == 4 else ' per channel'}, "
        f"{report['weight_bytes_before'] / 1e6:.0f} -> {report['weight_bytes_after'] / 1e6:.0f} MB, opset {report['opset']}")
    return report


# The frame graphs stay FP32 at every precision: resampling weights, source indices, class ids carried through
# comparisons and an argmax, where FP16 would move labels and INT8 has no weighted layer to quantize.
FP32_ONLY = (FRAME_PREPROCESS.component, SEMANTIC_MAP.component)


def convert_artifacts(folder: str | Path, manifest: Manifest, precision: str, calib: str | Path | None = None,
                      cache_dir: str | Path | None = None, method: str = "entropy", components: Sequence[str] | None = None,
                      log: Callable[[str], None] = print, llm_weights: str | None = None,
                      llm_block_size: int = DEFAULT_BLOCK_SIZE, backend: str | None = None,
                      **options: Any) -> dict[str, dict[str, Any]]:
    """Make the `precision` graphs of every model component (the frame graphs, FP32_ONLY, stay as they are) of an
    FP32 artifact folder (usually the build's staging folder, before publish) and point the manifest at them, in
    place: `onnx` (and `data_files`) become the new
    graph's, `onnx_fp32` (and `onnx_fp32_data_files`) keep the FP32 one's, `precision` and `precision_report` are
    set. The LLM decoder becomes `llm_weights` (default: what `precision` makes of it, see `llm_target`) in the
    form of `backend` (default: the manifest's). Calibration frames come from `calib` (a folder of images,
    required for int8) or, for fp16 and the LLM, the demo frames. Returns the reports by component."""
    from calibration.data import CalibrationSet

    check_args(precision, calib, llm_weights, llm_block_size)
    backend = backend or manifest.backend
    targets = {name: llm_target(precision, llm_weights) if name in WEIGHT_ONLY else precision
               for name in manifest.components
               if name not in FP32_ONLY and (components is None or name in components)}
    targets = {name: target for name, target in targets.items() if target != "fp32"}
    if not targets:
        manifest.precision = precision
        return {}
    folder = Path(folder)
    data = CalibrationSet.from_folder(calib) if calib is not None else CalibrationSet.demo()
    # Weight-only quantization needs no feeds; they only measure it against FP32. An LLM over the external-data
    # threshold is not measured: recording runs the FP32 pipeline and measuring runs both graphs, which for
    # Phi-2 (10.6 GB) would hold the decoder in ONNX Runtime beside everything else on a 24 GB machine.
    large = [n for n in targets if n in WEIGHT_ONLY and sum(f.size for f in (manifest.components[n].onnx,
                                                                           *manifest.components[n].data_files))
             > EXTERNAL_DATA_BYTES]
    t = time.perf_counter()
    if all(n in large for n in targets):
        recorded = {}
        log(f"  {', '.join(large)}: weight-only, over {EXTERNAL_DATA_BYTES / 1e9:.1f} GB: not measured against FP32")
    else:
        recorded = data.record(folder, manifest)
        log(f"  recorded calibration feeds from {data.source}: "
            + ", ".join(f"{n} {len(f)}" for n, f in recorded.items()) + f" ({time.perf_counter() - t:.1f} s)")
        recorded = {n: f for n, f in recorded.items() if n not in large}
    reports = {}
    for name, target in targets.items():
        entry = manifest.components[name]
        fp32_file = entry.onnx.file
        out_name = f"{Path(fp32_file).stem}.{target}.onnx"
        llm = {"backend": backend, "block_size": llm_block_size,
               "activations": "fp16" if precision == "fp16" else "fp32"} if name in WEIGHT_ONLY else {}
        t = time.perf_counter()
        try:
            report = convert(folder / fp32_file, folder / out_name, target, name, recorded.get(name, []),
                             cache_dir=cache_dir, calib_fingerprint=data.fingerprint(), method=method, log=log,
                             **llm, **options)
        except (PrecisionError, NothingToQuantize) as exc:  # e.g. an embedding table: stays FP32, says why
            entry.precision = "fp32"
            entry.precision_report = reports[name] = {"precision": "fp32", "kept_fp32": str(exc)}
            log(f"  {target} {name:<13} kept FP32: {exc}")
            continue
        report["calibration"] = data.source
        entry.onnx_fp32 = entry.onnx
        # Each graph lists its own external data: the FP32 one keeps its files, the new one has those it wrote.
        entry.onnx_fp32_data_files = entry.data_files
        entry.data_files = [file_entry(folder, f) for f in report.pop("data_files", [])]
        entry.onnx = file_entry(folder, out_name)
        entry.precision = report["precision"]
        entry.precision_report = report
        reports[name] = report
        log(f"  {target} {name:<13} {summary_line(report)} ({time.perf_counter() - t:.1f} s)")
    manifest.precision = precision
    return reports


def summary_line(report: Mapping[str, Any]) -> str:
    if not report.get("vs_fp32"):
        return f"{report['precision']} (not measured: no feeds recorded)"
    if report["precision"].endswith("weight-only"):
        return (f"{report['layers']} weights {report['precision']} ({report['form']}); max |q-fp32| "
                f"{max(e['max_abs'] for e in report['vs_fp32'].values()):.2e}")
    if report["precision"] == "fp16":
        err = report["vs_fp32"].get("emulated_fp16") or report["vs_fp32"]["onnxruntime_cpu"]
        return (f"FP32 islands {report['fp32_islands'] or 'none'}; emulated max |fp16-fp32| "
                f"{max(e['max_abs'] for e in err.values()):.2e}")
    err = report["vs_fp32"]
    return (f"{report['quantized_layers']} layers INT8, {len(report['excluded_layers'])} kept FP32; "
            f"max |int8-fp32| {max(e['max_abs'] for e in err.values()):.2e}"
            + (" (calibration cache hit)" if report.get("cache_hit") else ""))
