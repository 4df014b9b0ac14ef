"""MSDA and the whole segmenter export to ONNX and match PyTorch under ONNX Runtime."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import MSDAWrapper, tiny_preset
from export.components import segmenter_component, segmenter_example
from export.onnx_utils import check_onnx, export_onnx, operator_set
from llmformer.msda import MSDeformAttn
from llmformer.presets import get_preset
from llmformer.segmenter import LLMFormerSegmenter

SHAPES = {1: [(8, 8)], 3: [(8, 8), (4, 4), (2, 2)], 4: [(8, 8), (4, 4), (2, 2), (1, 1)]}


@pytest.mark.parametrize("opset,mode", [(17, "bilinear"), (20, "linear")])
@pytest.mark.parametrize("levels,points,head_dim", [(1, 4, 32), (3, 8, 64), (4, 4, 64)])
def test_msdeformattn_exports_and_matches_onnxruntime(tmp_path, opset, mode, levels, points, head_dim):
    torch.manual_seed(0)
    heads = 2
    attn = MSDeformAttn(heads * head_dim, levels, heads, points).eval()
    with torch.no_grad():  # non-zero offsets and weights so sampling really moves
        for p in (attn.sampling_offsets.weight, attn.attention_weights.weight):
            p.normal_(std=0.2)
    shapes = SHAPES[levels]
    S = sum(h * w for h, w in shapes)
    args = (torch.randn(1, 9, heads * head_dim), torch.rand(1, 9, levels, 2), torch.randn(1, S, heads * head_dim))
    path = tmp_path / "msda.onnx"
    model = export_onnx(MSDAWrapper(attn, shapes), args, path, ["query", "reference", "value"], ["out"], opset=opset)
    grid = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid) == levels
    assert all(a.s.decode() == mode for n in grid for a in n.attribute if a.name == "mode")
    out = ort.InferenceSession(str(path)).run(None, {"query": args[0].numpy(), "reference": args[1].numpy(),
                                                     "value": args[2].numpy()})[0]
    with torch.no_grad():
        ref = attn(*args[:3], shapes).numpy()
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("opset", [17, 20])
def test_demo_segmenter_matches_onnxruntime(tmp_path, opset):
    p = get_preset("demo")
    torch.manual_seed(0)
    seg = LLMFormerSegmenter(p.segmenter).eval()
    c = segmenter_component(p, seg)
    path = tmp_path / "segmenter.onnx"
    model = export_onnx(c.module, c.example, path, c.names.inputs, c.names.outputs, c.dynamic_axes, opset)
    check_onnx(path)
    assert model.opset_import[0].version == opset
    session = ort.InferenceSession(str(path))
    # Other prior and vocabulary counts than the traced ones: those axes must really be dynamic.
    for priors, vocab in ((1, 1), (5, 12)):
        ex = segmenter_example(p, priors=priors, vocab=vocab, seed=priors)
        out = session.run(None, {n: x.numpy() for n, x in zip(c.names.inputs, ex)})
        with torch.no_grad():
            ref = seg(*ex)
        for o, r in zip(out, ref):
            assert o.shape == tuple(r.shape)
            assert np.abs(o - r.numpy()).max() < 1e-4


def test_segmenter_graph_uses_no_custom_ops(tmp_path):
    p = tiny_preset()
    c = segmenter_component(p, LLMFormerSegmenter(p.segmenter).eval())
    model = export_onnx(c.module, c.example, tmp_path / "s.onnx", c.names.inputs, c.names.outputs, c.dynamic_axes)
    assert all(not n.domain for n in model.graph.node), operator_set(model)
    assert {i.name for i in model.graph.input} == set(c.names.inputs)
    assert [o.name for o in model.graph.output] == list(c.names.outputs)
