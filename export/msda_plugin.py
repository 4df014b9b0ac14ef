"""MSDA as one TensorRT plugin node per layer in ONNX, and a rewrite of other MSDA plugin nodes into it.

llmformer/msda.py's `ms_deform_attn` has two ONNX forms:

- pure ONNX (GridSample, opset >= 16): the default export, for ONNX Runtime and any backend;
- one `trt.plugins::MultiscaleDeformableAttnPlugin_TRT` node (attributes plugin_version "1",
  plugin_namespace "llmformer") followed by a Reshape (N, Lq, M, D) -> (N, Lq, M*D), for TensorRT with
  plugins_trt's libllmformer_plugins.so loaded. spatial_shapes and level_start_index are INT32 initializers.

The node type is the one TensorRT's own open-source plugin uses, so graphs made for either plugin look
alike; the namespace picks this project's creator, so the two never collide.

    with msda_as_trt_plugin():                      # any exporter, any module that calls ms_deform_attn
        torch.onnx.export(model, args, f, dynamo=False, opset_version=17, **torch_onnx_export_kwargs(False))
    model = finalize_plugin_graph(onnx.load(f))

or `export_onnx_with_msda_plugin(...)`, export/onnx_utils.export_onnx's twin. Graphs made for TensorRT's
plugin or for mmdeploy's are converted with

    python -m export.msda_plugin rewrite in.onnx out.onnx
"""
from __future__ import annotations

import contextlib
import io
import sys
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.files import atomic_write_bytes

PLUGIN_OP = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "llmformer"
MMDEPLOY_OP = "MMCVMultiScaleDeformableAttention"  # mmcv/mmdeploy export: output (N, Lq, M*D)
TORCH_OP = "llmformer::ms_deform_attn_trt_plugin"  # the traced stand-in for the plugin node

# Input positions of the plugin node (and of TensorRT's and mmdeploy's nodes).
VALUE, SPATIAL_SHAPES, LEVEL_START_INDEX, SAMPLING_LOCATIONS, ATTENTION_WEIGHTS = range(5)


# --------------------------------------------------------------------------------------------- ONNX schema
def _register_onnx_schema() -> None:
    """Declare the node to onnx, so onnx.checker validates its inputs and attributes and onnxscript (the
    dynamo exporter) can emit it. Process-local; graphs stay valid for readers that never saw it."""
    if onnx.defs.has(PLUGIN_OP, PLUGIN_DOMAIN):
        return
    S = onnx.defs.OpSchema
    schema = S(
        PLUGIN_OP, PLUGIN_DOMAIN, 1,
        doc="Multi-scale deformable attention (LLMFormer TensorRT plugin); output (N, Lq, M, D).",
        inputs=[S.FormalParameter("value", "T"), S.FormalParameter("spatial_shapes", "I"),
                S.FormalParameter("level_start_index", "I"), S.FormalParameter("sampling_locations", "TL"),
                S.FormalParameter("attention_weights", "TL")],
        outputs=[S.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "value and output"),
                          ("TL", ["tensor(float)", "tensor(float16)"], "locations and weights"),
                          ("I", ["tensor(int32)", "tensor(int64)"], "level table")],
        attributes=[S.Attribute("plugin_version", S.AttrType.STRING, "plugin version", required=False),
                    S.Attribute("plugin_namespace", S.AttrType.STRING, "plugin namespace", required=False)],
    )
    onnx.defs.register_schema(schema)


_register_onnx_schema()


# ------------------------------------------------------------------------------------- PyTorch -> ONNX export
def _torch():
    import torch  # export needs torch; the graph tools below do not

    return torch


_op_cache: dict[str, object] = {}


def _plugin_op():
    """torch.ops.llmformer.ms_deform_attn_trt_plugin: runs the reference eagerly, exports as the plugin."""
    if "op" in _op_cache:
        return _op_cache["op"]
    torch = _torch()
    from llmformer import msda

    @torch.library.custom_op(TORCH_OP, mutates_args=(), schema=(
        "(Tensor value, Tensor spatial_shapes, Tensor level_start_index, Tensor sampling_locations, "
        "Tensor attention_weights) -> Tensor"))
    def ms_deform_attn_trt_plugin(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        with msda.msda_implementation(None):  # the reference, not this op again
            return msda.ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights)

    @ms_deform_attn_trt_plugin.register_fake
    def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        N, _, M, D = value.shape
        return value.new_empty(N, sampling_locations.shape[1], M * D)

    _op_cache["op"] = ms_deform_attn_trt_plugin
    return ms_deform_attn_trt_plugin


def _level_table(value, spatial_shapes, level_start_index, sampling_locations):
    """(spatial_shapes, level_start_index) as INT32 tensors on value's device; static shapes are checked like
    the reference checks them, and become constants in the exported graph."""
    torch = _torch()
    from llmformer.msda import _static_shapes

    device = value.device
    if isinstance(spatial_shapes, torch.Tensor):
        shapes = spatial_shapes.to(device=device, dtype=torch.int32)
        starts = None
    else:
        static = _static_shapes(spatial_shapes)
        L, S = sampling_locations.shape[3], value.shape[1]
        if len(static) != L:
            raise ValueError(f"spatial_shapes has {len(static)} levels but sampling_locations has {L}")
        sizes = [h * w for h, w in static]
        if sum(sizes) != S:
            raise ValueError(f"value has S={S} tokens but spatial_shapes sum to {sum(sizes)}")
        shapes = torch.tensor(static, dtype=torch.int32, device=device)
        starts = torch.tensor([sum(sizes[:i]) for i in range(L)], dtype=torch.int32, device=device)
    if isinstance(level_start_index, torch.Tensor):
        starts = level_start_index.to(device=device, dtype=torch.int32)
    elif level_start_index is not None:
        starts = torch.tensor([int(s) for s in level_start_index], dtype=torch.int32, device=device)
    elif starts is None:
        sizes_t = shapes[:, 0] * shapes[:, 1]
        starts = (sizes_t.cumsum(0) - sizes_t).to(torch.int32)
    return shapes, starts


def ms_deform_attn_as_trt_plugin(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Drop-in for llmformer.msda.ms_deform_attn that traces to the plugin node. Output (N, Lq, M*D)."""
    shapes, starts = _level_table(value, spatial_shapes, level_start_index, sampling_locations)
    return _plugin_op()(value, shapes, starts, sampling_locations, attention_weights)


@contextlib.contextmanager
def msda_as_trt_plugin() -> Iterator[None]:
    """Inside the block every ms_deform_attn call (MSDeformAttn, the pixel decoder, the adapter) exports as one
    plugin node plus a Reshape. Outside it the export is the pure-ONNX GridSample form."""
    from llmformer import msda

    _plugin_op()
    with msda.msda_implementation(ms_deform_attn_as_trt_plugin):
        yield


def _torchscript_symbolic(g, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    torch = _torch()
    from torch.onnx import symbolic_helper

    out = g.op(f"{PLUGIN_DOMAIN}::{PLUGIN_OP}", value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, plugin_version_s=PLUGIN_VERSION, plugin_namespace_s=PLUGIN_NAMESPACE)
    # The exporter cannot infer a custom node's output; without a type the graph output has none either.
    v, loc = symbolic_helper._get_tensor_sizes(value), symbolic_helper._get_tensor_sizes(sampling_locations)
    if v is not None and loc is not None and len(v) == 4 and len(loc) == 6:
        out.setType(value.type().with_sizes([v[0], loc[1], v[2], v[3]]))                   # (N, Lq, M, D)
    flat = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
    return g.op("Reshape", out, flat)                                                    # (N, Lq, M*D)


def _dynamo_translation():
    import onnxscript
    from onnxscript import opset18 as op

    trt = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)
    plugin = getattr(trt, PLUGIN_OP)

    def translation(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        out = plugin(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                     plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)
        return op.Reshape(out, op.Constant(value_ints=[0, 0, -1]))

    return translation


def torch_onnx_export_kwargs(dynamo: bool) -> dict:
    """Extra torch.onnx.export keyword arguments that make the traced plugin op a plugin node."""
    torch = _torch()
    _plugin_op()
    if dynamo:
        overload = torch.ops.llmformer.ms_deform_attn_trt_plugin.default
        return {"custom_translation_table": {overload: _dynamo_translation()}}
    if "symbolic" not in _op_cache:
        torch.onnx.register_custom_op_symbolic(TORCH_OP, _torchscript_symbolic, 16)
        _op_cache["symbolic"] = True
    return {"custom_opsets": {PLUGIN_DOMAIN: 1}}


def export_onnx_with_msda_plugin(
    module,
    args: Sequence,
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int | None = None,
) -> onnx.ModelProto:
    """export/onnx_utils.export_onnx, but every MSDA becomes the TensorRT plugin node. Checked, atomic."""
    torch = _torch()
    from calibration.graphs import check_onnx
    from export.onnx_utils import DEFAULT_OPSET

    buffer = io.BytesIO()
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings(), msda_as_trt_plugin():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(args), buffer, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dict(dynamic_axes or {}),
                          opset_version=opset or DEFAULT_OPSET, do_constant_folding=True, dynamo=False,
                          **torch_onnx_export_kwargs(dynamo=False))
    model = finalize_plugin_graph(onnx.load_from_string(buffer.getvalue()))
    check_onnx(model)
    save_model_atomic(model, Path(path))
    return model


# ------------------------------------------------------------------------------------------- graph tools
def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """This project's MSDA plugin nodes in the main graph."""
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP and n.domain == PLUGIN_DOMAIN
            and _attr(n, "plugin_namespace") == PLUGIN_NAMESPACE]


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a).decode() if a.type == onnx.AttributeProto.STRING \
                else helper.get_attribute_value(a)
    return None


def _set_plugin_attributes(node: onnx.NodeProto) -> None:
    # Exactly the two routing attributes: onnx-tensorrt reads them to pick the creator and passes any other
    # attribute to createPlugin as a field, which this plugin does not have.
    del node.attribute[:]
    node.attribute.extend([helper.make_attribute("plugin_version", PLUGIN_VERSION),
                           helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE)])
    node.domain = PLUGIN_DOMAIN


class _Names:
    def __init__(self, graph: onnx.GraphProto):
        self.used = {i.name for i in graph.initializer} | {i.name for i in graph.input} \
            | {o for n in graph.node for o in n.output} | {n.name for n in graph.node}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def _constant_array(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and not node.domain and name in node.output:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_int", "value_ints"):
                    return np.asarray(helper.get_attribute_value(a), dtype=np.int64)
    return None


def _int32_level_input(graph: onnx.GraphProto, node: onnx.NodeProto, position: int, names: _Names,
                       new_nodes: list[onnx.NodeProto]) -> None:
    """Point node.input[position] at an INT32 initializer (constant input) or an INT32 Cast (computed one)."""
    role = "spatial_shapes" if position == SPATIAL_SHAPES else "level_start_index"
    source = node.input[position]
    if any(i.name == source and i.data_type == TensorProto.INT32 for i in graph.initializer):
        return
    array = _constant_array(graph, source)
    if array is not None:
        if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
            raise ValueError(f"{node.name}: {role} {array.tolist()} does not fit INT32")
        name = names.fresh(f"{node.name or 'msda'}_{role}")
        graph.initializer.append(numpy_helper.from_array(array.astype(np.int32), name))
        node.input[position] = name
    else:
        name = names.fresh(f"{source}_int32")
        new_nodes.append(helper.make_node("Cast", [source], [name], to=TensorProto.INT32,
                                          name=names.fresh(f"{node.name or 'msda'}_{role}_cast")))
        node.input[position] = name


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Remove Constant nodes and initializers nothing reads any more (the INT64 level tables replaced)."""
    while True:
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Constant" and not n.domain and n.output[0] not in read]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    for init in [i for i in graph.initializer if i.name not in read and i.name not in inputs]:
        graph.initializer.remove(init)


def _ensure_opset(model: onnx.ModelProto) -> None:
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _annotate_plugin_outputs(model: onnx.ModelProto) -> None:
    """Give every plugin output its (N, Lq, M, D) type, which onnx cannot infer for a custom node, so that full
    shape inference reaches the rest of the graph."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v.type.tensor_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    known.update({i.name: helper.make_tensor_type_proto(i.data_type, list(i.dims)).tensor_type
                  for i in model.graph.initializer})
    annotated = {v.name for v in model.graph.value_info}
    for node in plugin_nodes(model):
        value, loc = known.get(node.input[VALUE]), known.get(node.input[SAMPLING_LOCATIONS])
        if value is None or loc is None or len(value.shape.dim) != 4 or len(loc.shape.dim) != 6:
            continue
        dims = [value.shape.dim[0], loc.shape.dim[1], value.shape.dim[2], value.shape.dim[3]]
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
        if node.output[0] in annotated:
            continue
        model.graph.value_info.append(helper.make_tensor_value_info(node.output[0], value.elem_type, shape))


def finalize_plugin_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every plugin node what TensorRT's parser and the plugin expect, in place: named, exactly the routing
    attributes, INT32 constant level tables, the plugin opset imported, output types annotated."""
    graph = model.graph
    names = _Names(graph)
    new_nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(plugin_nodes(model)):
        if not node.name:
            node.name = names.fresh(f"msda_plugin_{i}")
        _set_plugin_attributes(node)
        for position in (SPATIAL_SHAPES, LEVEL_START_INDEX):
            _int32_level_input(graph, node, position, names, new_nodes)
    if new_nodes:  # Casts go first: their sources are graph inputs or earlier nodes' outputs
        rest = list(graph.node)
        del graph.node[:]
        _insert_before_consumers(graph, rest, new_nodes)
    _drop_unused(graph)
    _ensure_opset(model)
    _annotate_plugin_outputs(model)
    return model


def _insert_before_consumers(graph: onnx.GraphProto, nodes: list[onnx.NodeProto],
                             casts: list[onnx.NodeProto]) -> None:
    pending = {c.output[0]: c for c in casts}
    for node in nodes:
        for name in node.input:
            if name in pending:
                graph.node.append(pending.pop(name))
        graph.node.append(node)
    graph.node.extend(pending.values())


def rewrite_msda_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Turn TensorRT's `MultiscaleDeformableAttnPlugin_TRT` nodes (any namespace) and mmdeploy's
    `MMCVMultiScaleDeformableAttention` nodes into this project's plugin node, in place. The mmdeploy output is
    (N, Lq, M*D), so a Reshape follows the plugin there. Returns the model and a count per source op."""
    graph = model.graph
    names = _Names(graph)
    counts = {PLUGIN_OP: 0, MMDEPLOY_OP: 0}
    flat_shape = None
    rebuilt: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == PLUGIN_OP and not (node.domain == PLUGIN_DOMAIN
                                              and _attr(node, "plugin_namespace") == PLUGIN_NAMESPACE
                                              and _attr(node, "plugin_version") == PLUGIN_VERSION):
            _set_plugin_attributes(node)  # same inputs, same (N, Lq, M, D) output
            counts[PLUGIN_OP] += 1
            rebuilt.append(node)
        elif node.op_type == MMDEPLOY_OP:
            if len(node.input) != 5 or len(node.output) != 1:
                raise ValueError(f"{node.name}: {MMDEPLOY_OP} with {len(node.input)} inputs and "
                                 f"{len(node.output)} outputs; expected 5 and 1")
            if flat_shape is None:
                flat_shape = names.fresh("msda_flatten_heads_shape")
                graph.initializer.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), flat_shape))
            base = node.name or names.fresh("msda_plugin")
            per_head = names.fresh(f"{node.output[0]}_per_head")                    # (N, Lq, M, D)
            plugin = helper.make_node(PLUGIN_OP, list(node.input), [per_head], name=names.fresh(f"{base}_trt"))
            _set_plugin_attributes(plugin)
            reshape = helper.make_node("Reshape", [per_head, flat_shape], [node.output[0]],
                                       name=names.fresh(f"{base}_flatten_heads"))  # (N, Lq, M*D)
            counts[MMDEPLOY_OP] += 1
            rebuilt.extend([plugin, reshape])
        else:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    return finalize_plugin_graph(model), counts


def save_model_atomic(model: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(Path(path), model.SerializeToString())


def main(argv: Sequence[str] | None = None) -> int:
    """The command: one `error: ...` line on stderr; exit status 2 for a wrong command line or a source that is
    not a graph this can rewrite, 1 for a failed run; --debug shows the traceback (runtime/commands.py)."""
    from runtime.commands import run_command

    return run_command(_main, argv)


def _main(argv: Sequence[str] | None) -> int:
    from google.protobuf.message import DecodeError

    from runtime.commands import CommandError, CommandParser, UsageError, existing_file, output_file

    ap = CommandParser(prog="python -m export.msda_plugin", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rw = sub.add_parser("rewrite", help=f"convert {PLUGIN_OP} and {MMDEPLOY_OP} nodes into the llmformer plugin")
    rw.add_argument("source", type=existing_file, help="an ONNX graph")
    rw.add_argument("target", type=output_file, help="where the rewritten graph goes (written atomically)")
    args = ap.parse_args(argv)

    try:
        model = onnx.load(str(args.source))
    except (DecodeError, ValueError) as exc:
        raise UsageError(f"{args.source} is not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.graph.node:
        raise UsageError(f"{args.source} is not an ONNX model (no graph nodes)")
    try:
        model, counts = rewrite_msda_nodes(model)
    except ValueError as exc:  # a node this rewrite cannot map; the message names it
        raise UsageError(f"cannot rewrite {args.source}: {exc}") from exc
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CommandError(f"the rewritten graph fails onnx.checker: {exc}") from exc
    save_model_atomic(model, args.target)
    print(f"{args.target}: {counts[PLUGIN_OP]} {PLUGIN_OP} and {counts[MMDEPLOY_OP]} {MMDEPLOY_OP} node(s) now "
          f"{PLUGIN_DOMAIN}::{PLUGIN_OP} (namespace '{PLUGIN_NAMESPACE}', version {PLUGIN_VERSION}); "
          f"{len(plugin_nodes(model))} plugin node(s) in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
