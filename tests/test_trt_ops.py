"""Every graph meant for TensorRT uses only what TensorRT's ONNX parser documents (engines/trt_supported_ops.py)."""
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.contract import read_manifest, write_manifest
from engines.trt_supported_ops import (NEWER_THAN_10_3, SOURCE_TRT_VERSION, SUPPORTED, TARGET_TRT_VERSION,
                                       check_graph)
from export.build_engines import build, parse_args
from export.precision import convert_artifacts
from tests.test_precision import tiny_segmentation_preset, write_frames


def _graph(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(name="x", elem=TensorProto.FLOAT, shape=(1, 3, 4, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_the_list_says_which_tensorrt_it_came_from():
    assert SOURCE_TRT_VERSION == "10.15" and TARGET_TRT_VERSION == "10.3"
    assert {"Conv", "MatMul", "GridSample", "LayerNormalization", "QuantizeLinear", "DequantizeLinear"} <= set(SUPPORTED)
    assert "Unique" not in SUPPORTED and NEWER_THAN_10_3 <= set(SUPPORTED)


@pytest.fixture(scope="module")
def demo_graphs(tmp_path_factory):
    """The demo preset's structure at tiny widths, exported and converted to fp16 and int8 by the real code."""
    root = tmp_path_factory.mktemp("trt_ops")
    fp32 = root / "fp32"
    build(parse_args(["--out", str(fp32), "--skip-validation"]), preset=tiny_segmentation_preset("demo"))
    calib = write_frames(root / "calib", 2)
    graphs = {f"fp32/{c.onnx.file.rsplit('/', 1)[-1]}": fp32 / c.onnx.file
              for c in read_manifest(fp32).components.values()}
    for precision in ("fp16", "int8"):
        folder = root / precision
        shutil.copytree(fp32, folder)
        manifest = read_manifest(folder)
        convert_artifacts(folder, manifest, precision, calib=calib, cache_dir=root / "cache", islands=[],
                          log=lambda s: None)
        write_manifest(folder, manifest)
        graphs.update({f"{precision}/{p.name}": p for p in folder.glob(f"*.{precision}.onnx")})
    return graphs


def test_exported_fp32_fp16_int8_graphs_use_only_supported_operators(demo_graphs):
    assert len(demo_graphs) == 11   # 3 model graphs x 3 precisions + the 2 FP32 frame graphs
    for name, path in demo_graphs.items():
        assert check_graph(onnx.load(str(path))) == [], name


def test_unsupported_operator_custom_op_and_opset_are_reported():
    model = _graph([helper.make_node("Unique", ["x"], ["y"], name="u")], [_x(shape=(4,))], [_x("y", shape=(4,))])
    assert any("Unique" in p for p in check_graph(model))
    custom = _graph([helper.make_node("Foo", ["x"], ["y"], domain="my.ops", name="f")], [_x()], [_x("y")])
    custom.opset_import.append(helper.make_opsetid("my.ops", 1))
    assert any("custom op my.ops::Foo" in p for p in check_graph(custom))
    plugin = _graph([helper.make_node("MultiscaleDeformableAttnPlugin_TRT", ["x"], ["y"], domain="trt.plugins",
                                      name="msda")], [_x()], [_x("y")])
    plugin.opset_import.append(helper.make_opsetid("trt.plugins", 1))
    assert not any("msda" in p for p in check_graph(plugin))
    relu = lambda opset: _graph([helper.make_node("Relu", ["x"], ["y"], name="r")], [_x()], [_x("y")], opset=opset)  # noqa: E731
    assert any("opset 22" in p for p in check_graph(relu(22), trt_version="10.3"))
    assert check_graph(relu(22), trt_version="10.15") == []


def test_operators_added_after_10_3_are_refused_for_the_jetson_target():
    model = _graph([helper.make_node("Gelu", ["x"], ["y"], name="gelu")], [_x()], [_x("y")], opset=20)
    assert any("added later" in p for p in check_graph(model, trt_version="10.3"))
    assert check_graph(model, trt_version="10.15") == []


def test_types_and_attribute_restrictions_are_checked():
    cubic = _graph([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic", name="rs")], [_x()], [_x("y")],
                   [numpy_helper.from_array(np.ones(4, np.float32), "s")])
    assert any("mode 'cubic'" in p for p in check_graph(cubic))
    ln = _graph([helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], axis=-1, name="ln")], [_x()],
                [_x("y"), _x("mean", shape=(1, 3, 4, 1))], [numpy_helper.from_array(np.ones(4, np.float32), "g")])
    assert any("first output" in p for p in check_graph(ln))
    bool_matmul = _graph([helper.make_node("MatMul", ["x", "x"], ["y"], name="mm")],
                         [_x(elem=TensorProto.INT32, shape=(2, 2))], [_x("y", TensorProto.INT32, (2, 2))])
    assert any("INT32 tensor 'x'" in p for p in check_graph(bool_matmul))
    asym = _graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                   helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")], [_x()], [_x("y")],
                  [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                   numpy_helper.from_array(np.array(3, np.int8), "z")])
    assert any("zero point" in p for p in check_graph(asym))
    raw_int8 = _graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
                       helper.make_node("Relu", ["q"], ["y"], name="relu_on_int8")], [_x()],
                      [_x("y", TensorProto.INT8)], [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                                                    numpy_helper.from_array(np.array(0, np.int8), "z")])
    assert any("relu_on_int8" in p and "quantized" in p for p in check_graph(raw_int8))
