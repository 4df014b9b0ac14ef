"""MSDA exports as one TensorRT plugin node per layer, and other MSDA plugin graphs rewrite into it.

TensorRT is not needed: the graphs are checked with onnx.checker (full shape inference) and run with onnx's
reference evaluator, where the plugin node is implemented by llmformer/msda.py itself.
"""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from conftest import MSDAWrapper
from export import msda_plugin as mp
from export.onnx_utils import check_onnx, export_onnx
from llmformer import msda
from llmformer.msda import MSDeformAttn, ms_deform_attn

SHAPES = [(8, 8), (4, 4), (1, 1)]  # a 1x1 level on purpose
HEADS, HEAD_DIM, POINTS = 2, 32, 4


class MultiscaleDeformableAttnPlugin_TRT(OpRun):  # noqa: N801 (the ONNX op type)
    """The plugin node for onnx's reference evaluator: llmformer/msda.py, reshaped to the plugin's (N, Lq, M, D)."""

    op_domain = mp.PLUGIN_DOMAIN

    def _run(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
             plugin_version=None, plugin_namespace=None):
        assert spatial_shapes.dtype == np.int32 and level_start_index.dtype == np.int32
        N, _, M, D = value.shape
        out = ms_deform_attn(torch.tensor(value), torch.tensor(spatial_shapes), torch.tensor(level_start_index),
                             torch.tensor(sampling_locations), torch.tensor(attention_weights))
        return (out.reshape(N, -1, M, D).numpy(),)


def run_with_reference_plugin(model, feeds):
    return ReferenceEvaluator(model, new_ops=[MultiscaleDeformableAttnPlugin_TRT]).run(None, feeds)


def _msda_layer(levels=len(SHAPES)):
    torch.manual_seed(0)
    attn = MSDeformAttn(HEADS * HEAD_DIM, levels, HEADS, POINTS).eval()
    with torch.no_grad():  # non-zero offsets and weights so sampling really moves (and leaves the maps)
        for p in (attn.sampling_offsets.weight, attn.attention_weights.weight):
            p.normal_(std=0.5)
    S = sum(h * w for h, w in SHAPES[:levels])
    args = (torch.randn(1, 9, HEADS * HEAD_DIM), torch.rand(1, 9, levels, 2), torch.randn(1, S, HEADS * HEAD_DIM))
    return MSDAWrapper(attn, SHAPES[:levels]).eval(), args


def _plugin_node_is_well_formed(model, node, shapes):
    assert node.domain == mp.PLUGIN_DOMAIN
    assert {a.name: a.s.decode() for a in node.attribute} == {"plugin_version": "1", "plugin_namespace": "llmformer"}
    inits = {i.name: i for i in model.graph.initializer}
    table = inits[node.input[mp.SPATIAL_SHAPES]], inits[node.input[mp.LEVEL_START_INDEX]]
    assert [t.data_type for t in table] == [TensorProto.INT32, TensorProto.INT32]
    sizes = [h * w for h, w in shapes]
    assert numpy_helper.to_array(table[0]).tolist() == [list(s) for s in shapes]
    assert numpy_helper.to_array(table[1]).tolist() == [sum(sizes[:i]) for i in range(len(shapes))]
    # The plugin's (N, Lq, M, D) is flattened back to llmformer/msda.py's (N, Lq, M*D) right after it.
    (reshape,) = [n for n in model.graph.node if node.output[0] in n.input]
    assert reshape.op_type == "Reshape"


def test_msdeformattn_exports_as_one_plugin_node_and_matches_pytorch(tmp_path):
    module, args = _msda_layer()
    path = tmp_path / "msda_trt.onnx"
    model = mp.export_onnx_with_msda_plugin(module, args, path, ["query", "reference", "value"], ["out"])
    assert [n for n in model.graph.node if n.op_type == "GridSample"] == []
    (node,) = mp.plugin_nodes(model)
    _plugin_node_is_well_formed(model, node, SHAPES)
    assert any(o.domain == mp.PLUGIN_DOMAIN and o.version == 1 for o in model.opset_import)

    inferred = check_onnx(onnx.load(str(path)))  # strict shape inference reaches the output
    out_type = inferred.graph.output[0].type.tensor_type
    assert [d.dim_value for d in out_type.shape.dim] == [1, 9, HEADS * HEAD_DIM]

    feeds = {"query": args[0].numpy(), "reference": args[1].numpy(), "value": args[2].numpy()}
    (got,) = run_with_reference_plugin(model, feeds)
    with torch.no_grad():
        expected = module(*args).numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_dynamo_export_emits_the_same_plugin_node():
    module, args = _msda_layer(levels=1)
    with torch.no_grad(), mp.msda_as_trt_plugin():
        program = torch.onnx.export(module, args, dynamo=True, verbose=False, **mp.torch_onnx_export_kwargs(True))
    model = mp.finalize_plugin_graph(program.model_proto)
    (node,) = mp.plugin_nodes(model)
    _plugin_node_is_well_formed(model, node, SHAPES[:1])
    onnx.checker.check_model(model, full_check=True)


def test_outside_the_context_the_export_stays_pure_onnx(tmp_path):
    module, args = _msda_layer()
    with mp.msda_as_trt_plugin():
        pass
    assert msda._implementation is None
    model = export_onnx(module, args, tmp_path / "msda.onnx", ["query", "reference", "value"], ["out"])
    assert mp.plugin_nodes(model) == []
    assert len([n for n in model.graph.node if n.op_type == "GridSample"]) == len(SHAPES)


def test_plugin_mode_rejects_shapes_that_do_not_sum_to_the_value_length():
    value = torch.randn(1, 10, HEADS, HEAD_DIM)
    loc, w = torch.rand(1, 3, HEADS, 1, POINTS, 2), torch.rand(1, 3, HEADS, 1, POINTS)
    with mp.msda_as_trt_plugin(), pytest.raises(ValueError, match="S=10"):
        ms_deform_attn(value, [(3, 3)], None, loc, w)


def test_plugin_mode_runs_the_reference_eagerly():
    value = torch.randn(2, 21, HEADS, HEAD_DIM)
    loc, w = torch.rand(2, 5, HEADS, 2, POINTS, 2) * 1.4 - 0.2, torch.rand(2, 5, HEADS, 2, POINTS)
    expected = ms_deform_attn(value, [(4, 4), (1, 5)], None, loc, w)
    with mp.msda_as_trt_plugin():
        got = ms_deform_attn(value, [(4, 4), (1, 5)], None, loc, w)
    assert torch.equal(got, expected)


def test_segmenter_exports_one_plugin_node_per_msda_layer(tmp_path):
    import llmformer.segmenter as segmenter_module
    from conftest import tiny_preset
    from export.components import segmenter_component

    p = tiny_preset()
    torch.manual_seed(0)
    seg = segmenter_module.LLMFormerSegmenter(p.segmenter).eval()
    layers = [m for m in seg.modules() if isinstance(m, MSDeformAttn)]
    assert layers, "the segmenter has no MSDA layer to replace"
    c = segmenter_component(p, seg)
    model = mp.export_onnx_with_msda_plugin(c.module, c.example, tmp_path / "seg_trt.onnx", c.names.inputs,
                                            c.names.outputs, c.dynamic_axes)
    nodes = mp.plugin_nodes(model)
    assert len(nodes) == len(layers)
    assert [n for n in model.graph.node if n.op_type == "GridSample"] == []
    assert {n.domain for n in model.graph.node} <= {"", mp.PLUGIN_DOMAIN}
    assert [o.name for o in model.graph.output] == list(c.names.outputs)

    feeds = {n: x.numpy() for n, x in zip(c.names.inputs, c.example)}
    got = run_with_reference_plugin(model, feeds)
    with torch.no_grad():
        expected = seg(*c.example)
    for g, e in zip(got, expected):
        assert np.abs(g - e.numpy()).max() < 1e-4


# ------------------------------------------------------------------------------------------ rewrite tool
N, LQ, L, M, D, P = 1, 6, 2, 2, 8, 3
REWRITE_SHAPES = [(4, 4), (2, 3)]
S = sum(h * w for h, w in REWRITE_SHAPES)


def _foreign_graph(level_table_as_input=False):
    """A graph with one MSDA node as TensorRT's plugin and one as mmdeploy's, INT64 level tables, as
    exporters of those projects write them."""
    shapes = np.array(REWRITE_SHAPES, dtype=np.int64)
    starts = np.array([0, 16], dtype=np.int64)
    inits = [numpy_helper.from_array(starts, "starts")]
    inputs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, [N, S, M, D]),
              helper.make_tensor_value_info("loc", TensorProto.FLOAT, [N, LQ, M, L, P, 2]),
              helper.make_tensor_value_info("weights", TensorProto.FLOAT, [N, LQ, M, L, P])]
    if level_table_as_input:
        inputs.append(helper.make_tensor_value_info("shapes", TensorProto.INT64, [L, 2]))
    else:
        inits.append(numpy_helper.from_array(shapes, "shapes"))
    trt = helper.make_node(mp.PLUGIN_OP, ["value", "shapes", "starts", "loc", "weights"], ["trt_out"],
                           name="trt_msda", domain="", plugin_version="2")
    mmcv = helper.make_node(mp.MMDEPLOY_OP, ["value", "shapes", "starts", "loc", "weights"], ["mmcv_out"],
                            name="mmcv_msda", domain="mmdeploy", im2col_step=64)
    graph = helper.make_graph(
        [trt, mmcv], "foreign_msda", inputs,
        [helper.make_tensor_value_info("trt_out", TensorProto.FLOAT, [N, LQ, M, D]),
         helper.make_tensor_value_info("mmcv_out", TensorProto.FLOAT, [N, LQ, M * D])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("mmdeploy", 1)])


def _foreign_feeds(level_table_as_input=False):
    rng = np.random.default_rng(0)
    feeds = {"value": rng.standard_normal((N, S, M, D)).astype(np.float32),
             "loc": rng.uniform(-0.2, 1.2, (N, LQ, M, L, P, 2)).astype(np.float32),
             "weights": rng.uniform(0, 1, (N, LQ, M, L, P)).astype(np.float32)}
    if level_table_as_input:
        feeds["shapes"] = np.array(REWRITE_SHAPES, dtype=np.int64)
    return feeds


def _reference(feeds):
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    return ms_deform_attn(t["value"], REWRITE_SHAPES, None, t["loc"], t["weights"]).numpy()  # (N, Lq, M*D)


def test_rewrite_converts_tensorrt_and_mmdeploy_nodes():
    model, counts = mp.rewrite_msda_nodes(_foreign_graph())
    assert counts == {mp.PLUGIN_OP: 1, mp.MMDEPLOY_OP: 1}
    nodes = mp.plugin_nodes(model)
    assert len(nodes) == 2
    for node in nodes:
        assert {a.name: a.s.decode() for a in node.attribute} == {"plugin_version": "1",
                                                                   "plugin_namespace": "llmformer"}
        inits = {i.name: i for i in model.graph.initializer}
        assert inits[node.input[mp.SPATIAL_SHAPES]].data_type == TensorProto.INT32
        assert inits[node.input[mp.LEVEL_START_INDEX]].data_type == TensorProto.INT32
    assert all(n.op_type != mp.MMDEPLOY_OP for n in model.graph.node)
    assert {o.domain for o in model.opset_import} == {"", mp.PLUGIN_DOMAIN}  # mmdeploy's import is gone
    (reshape,) = [n for n in model.graph.node if n.op_type == "Reshape"]
    assert reshape.output == ["mmcv_out"]  # downstream consumers keep their input name
    onnx.checker.check_model(model, full_check=True)

    feeds = _foreign_feeds()
    trt_out, mmcv_out = run_with_reference_plugin(model, feeds)
    expected = _reference(feeds)
    assert np.abs(mmcv_out - expected).max() < 1e-5
    assert np.abs(trt_out.reshape(N, LQ, M * D) - expected).max() < 1e-5


def test_rewrite_casts_computed_level_tables_to_int32():
    model, _ = mp.rewrite_msda_nodes(_foreign_graph(level_table_as_input=True))
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert casts and all(c.input == ["shapes"] for c in casts)
    order = [n.name for n in model.graph.node]
    for node in mp.plugin_nodes(model):
        (cast,) = [c for c in casts if c.output[0] == node.input[mp.SPATIAL_SHAPES]]
        assert order.index(cast.name) < order.index(node.name)
    onnx.checker.check_model(model, full_check=True)
    feeds = _foreign_feeds(level_table_as_input=True)
    _, mmcv_out = run_with_reference_plugin(model, feeds)
    assert np.abs(mmcv_out - _reference(feeds)).max() < 1e-5


def test_rewrite_leaves_a_graph_that_is_already_converted_alone():
    model, _ = mp.rewrite_msda_nodes(_foreign_graph())
    again, counts = mp.rewrite_msda_nodes(model)
    assert counts == {mp.PLUGIN_OP: 0, mp.MMDEPLOY_OP: 0}
    assert len(mp.plugin_nodes(again)) == 2


def test_rewrite_command_line(tmp_path, capsys):
    source, target = tmp_path / "mmdeploy.onnx", tmp_path / "out" / "llmformer.onnx"
    onnx.save(_foreign_graph(), str(source))
    assert mp.main(["rewrite", str(source), str(target)]) == 0
    assert "1 MultiscaleDeformableAttnPlugin_TRT and 1 MMCVMultiScaleDeformableAttention" in capsys.readouterr().out
    assert len(mp.plugin_nodes(onnx.load(str(target)))) == 2
    assert mp.main(["rewrite", str(tmp_path / "missing.onnx"), str(target)]) == 2
