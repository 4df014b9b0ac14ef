"""Graphs over the protobuf limit (external data) and the LLM's weight-only forms (issue 14, parts 2 and 3).

The ">1.8 GB" paths are taken with tiny graphs by lowering the threshold (`EXTERNAL_DATA_BYTES`); the figures on
a real Phi-2-width decoder are in benchmarks/bench_llm.py.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import calibration.graphs as graphs
import export.precision as precision
import runtime
from calibration.graphs import GraphFileError, output_errors, run, save_onnx
from calibration.quantize import WeightOnlyError, quantize_weights_file, weight_matmuls
from engines.contract import CAPTIONER_DECODER, CAPTIONER_EMBED, read_manifest, write_manifest
from engines.files import sha256_file
from engines.trt_supported_ops import check_graph
from export.build_engines import BuildConfig, build, parse_args
from export.precision import PrecisionError, check_args, convert, convert_artifacts
from llmformer.data.frames import demo_frame

LINEAR_LAYERS = 2 * 6 + 1      # tiny Phi: q, k, v, dense, fc1, fc2 per layer, and lm_head


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """The tiny captioner's decoder exported both ways: inline (Linear -> Gemm, lm_head a MatMul on a folded
    transposed copy) and streamed to external data as Phi-2's is (lm_head as Transpose -> MatMul)."""
    import export.captioner as ec
    from llmformer.captioner import build_tiny_captioner
    from llmformer.presets import demo

    root = tmp_path_factory.mktemp("llm")
    captioner = build_tiny_captioner(root / "captioner", demo().vision_tower)
    (root / "inline").mkdir()
    (root / "external").mkdir()
    ec.export_decoder(captioner, root / "inline" / "decoder.onnx")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ec, "EXTERNAL_DATA_BYTES", 0)
        graph = ec.export_decoder(captioner, root / "external" / "decoder.onnx")
    assert graph.data_files == ["decoder.onnx.data"]
    return {"inline": root / "inline" / "decoder.onnx", "external": root / "external" / "decoder.onnx"}


def decoder_feeds(path: Path, new: int = 3, past: int = 4) -> list[dict[str, np.ndarray]]:
    """One prefill-like call: `new` tokens after `past` cache slots."""
    model = onnx.load(str(path), load_external_data=False)
    g = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if value.name == CAPTIONER_DECODER.attention_mask:
            feeds[value.name] = np.ones((1, past + new), np.int64)
        elif value.name == CAPTIONER_DECODER.position_ids:
            feeds[value.name] = np.arange(past, past + new)[None]
        elif value.name == CAPTIONER_DECODER.inputs_embeds:
            feeds[value.name] = g.standard_normal((1, new, dims[2])).astype(np.float32)
        else:
            feeds[value.name] = g.standard_normal((1, dims[1], past, dims[3])).astype(np.float32)
    return [feeds]


def logits_producer(model: onnx.ModelProto) -> onnx.NodeProto:
    """The first matrix product found walking back from the logits (the lm_head)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[CAPTIONER_DECODER.logits]
    while node.op_type not in ("MatMul", "Gemm", "MatMulNBits"):
        node = producer[node.input[0]]
    return node


# ---------------------------------------------------------------------------------------- external data
def small_model(count: int = 3, size: int = 64) -> onnx.ModelProto:
    g = np.random.default_rng(1)
    nodes, inits, x = [], [numpy_helper.from_array(np.array([1.0], np.float32), "one")], "x"
    for i in range(count):
        inits.append(numpy_helper.from_array(g.standard_normal((size, size)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Add", [f"h{i}", "one"], [f"y{i}"], name=f"add{i}"))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["s", size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["s", size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_save_onnx_writes_external_data_over_the_threshold_and_reads_it_back(tmp_path):
    model = small_model()
    x = [{"x": np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)}]
    expected = run(model, x)
    assert save_onnx(small_model(), tmp_path / "inline.onnx") == []            # 49 KB: far under 1.8 GB
    files = save_onnx(small_model(), tmp_path / "big.onnx", threshold=1000)
    assert files == ["big.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data", "inline.onnx"]  # no temp
    skeleton = onnx.load(str(tmp_path / "big.onnx"), load_external_data=False)
    placed = {t.name: {e.key: e.value for e in t.external_data} for t in skeleton.graph.initializer}
    assert placed["one"] == {}                                                # 4 bytes stay in the graph
    assert all(int(placed[f"w{i}"]["offset"]) % 4096 == 0 for i in range(3))  # mmap-able
    loaded = onnx.load(str(tmp_path / "big.onnx"))                            # read back from its folder
    for a, b in zip(model.graph.initializer, loaded.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    np.testing.assert_array_equal(run(tmp_path / "big.onnx", x)[0]["y2"], expected[0]["y2"])


def test_a_skeleton_is_copied_tensor_by_tensor_from_its_source_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_onnx(small_model(), tmp_path / "a" / "m.onnx", threshold=0)
    skeleton = onnx.load(str(tmp_path / "a" / "m.onnx"), load_external_data=False)
    with pytest.raises(GraphFileError, match="source_dir"):
        save_onnx(skeleton, tmp_path / "b" / "m.onnx")
    assert save_onnx(skeleton, tmp_path / "b" / "m.onnx", source_dir=tmp_path / "a", threshold=0) == ["m.onnx.data"]
    assert (tmp_path / "b" / "m.onnx.data").read_bytes() == (tmp_path / "a" / "m.onnx.data").read_bytes()
    # under the threshold the same skeleton comes back inline
    skeleton = onnx.load(str(tmp_path / "a" / "m.onnx"), load_external_data=False)
    assert save_onnx(skeleton, tmp_path / "b" / "inline.onnx", source_dir=tmp_path / "a") == []
    assert not any(t.external_data for t in onnx.load(str(tmp_path / "b" / "inline.onnx")).graph.initializer)


def test_a_truncated_data_file_is_an_error_naming_the_tensor(tmp_path):
    save_onnx(small_model(), tmp_path / "m.onnx", threshold=0)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    skeleton = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    (tmp_path / "out").mkdir()
    with pytest.raises(GraphFileError, match="w2.*truncated"):
        save_onnx(skeleton, tmp_path / "out" / "m.onnx", source_dir=tmp_path, threshold=0)


# ------------------------------------------------------------------------------------ weight-only forms
def test_onnxruntime_quantizer_skips_gemm_and_transpose_forms_so_we_rewrite_them():
    """Why calibration.quantize rewrites Gemm(transB) and Transpose -> MatMul: run on them as exported, ONNX
    Runtime's MatMulNBitsQuantizer leaves both in FP32 (the decoder's every Linear, and its lm_head)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    w = np.random.default_rng(0).standard_normal((48, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y1"], transB=1, name="gemm"),
         helper.make_node("Transpose", ["w2"], ["w2t"], name="t"),
         helper.make_node("MatMul", ["x", "w2t"], ["y2"], name="matmul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 48]) for n in ("y1", "y2")],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w, "w2")])
    quantizer = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                     bits=4, block_size=32, is_symmetric=True)
    quantizer.process()
    assert "MatMulNBits" not in {n.op_type for n in quantizer.model.model.graph.node}
    assert len(weight_matmuls(quantizer.model.model)[0]) == 2      # ours finds both


@pytest.mark.parametrize("export", ["inline", "external"])
@pytest.mark.parametrize("form,bits", [("MatMulNBits", 4), ("MatMulNBits", 8), ("QDQ", 4), ("QDQ", 8)])
def test_every_decoder_matmul_is_weight_only_quantized_lm_head_included(decoders, tmp_path, export, form, bits):
    src = decoders[export]
    assert len(weight_matmuls(onnx.load(str(src), load_external_data=False))[0]) == LINEAR_LAYERS
    report = quantize_weights_file(src, tmp_path / "q.onnx", bits=bits, form=form)
    assert report["skipped"] == {} and report["layers"] == LINEAR_LAYERS and report["data_files"] == []
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert weight_matmuls(model)[0] == []                  # no MatMul/Gemm reads a float weight any more
    head = logits_producer(model)
    if form == "MatMulNBits":
        assert head.op_type == "MatMulNBits" and sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 13
    else:
        producer = {o: n for n in model.graph.node for o in n.output}
        assert producer[head.input[1]].op_type == "DequantizeLinear"
    assert report["weight_bytes_after"] < report["weight_bytes_before"] / (3 if bits == 8 else 5)
    feeds = decoder_feeds(src)
    err = output_errors(run(src, feeds), run(tmp_path / "q.onnx", feeds))
    # random tiny weights (width 64, drawn wide): INT4 blocks of 32 keep the logits within ~20%
    assert err[CAPTIONER_DECODER.logits]["max_rel"] < (0.05 if bits == 8 else 0.3)


def test_tensorrt_form_is_blocked_int4_dequantize_linear_at_opset_21(decoders, tmp_path):
    quantize_weights_file(decoders["external"], tmp_path / "q4.onnx", bits=4, form="QDQ", block_size=32)
    model = onnx.load(str(tmp_path / "q4.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    inits = {i.name: i for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == LINEAR_LAYERS
    for dq in dqs:
        attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
        q, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert attrs == {"axis": 0, "block_size": 32} and q.data_type == TensorProto.INT4
        assert len(dq.input) == 2                                   # symmetric: TensorRT rejects zero points
        assert list(scale.dims) == [q.dims[0] // 32, q.dims[1]]     # (K / block, N)
    assert check_graph(model, trt_version="10.15") == []
    # INT8 for TensorRT: per output channel (TensorRT blocks 4-bit weights only); parses on JetPack 6's 10.3
    quantize_weights_file(decoders["external"], tmp_path / "q8.onnx", bits=8, form="QDQ")
    model8 = onnx.load(str(tmp_path / "q8.onnx"))
    dq = next(n for n in model8.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == {"axis": 1}
    assert check_graph(model8) == []


def test_block_size_is_configurable_and_checked(decoders, tmp_path):
    quantize_weights_file(decoders["inline"], tmp_path / "q.onnx", bits=4, block_size=64)
    sizes = {helper.get_attribute_value(a) for n in onnx.load(str(tmp_path / "q.onnx")).graph.node
             for a in n.attribute if n.op_type == "MatMulNBits" and a.name == "block_size"}
    assert sizes == {64}
    with pytest.raises(WeightOnlyError, match="--llm-block-size 48"):
        check_args("fp32", None, "int4", 48)
    with pytest.raises(PrecisionError, match="--llm-weights 'int3'"):
        check_args("fp32", None, "int3")


def test_build_options_reach_the_config():
    config = parse_args(["--llm-weights", "int4", "--llm-block-size", "64"])
    assert (config.llm_weights, config.llm_block_size) == ("int4", 64)
    assert (BuildConfig().llm_weights, BuildConfig().llm_block_size) == (None, 32)   # default: as --precision


def test_a_bad_block_size_fails_before_any_export(tmp_path):
    with pytest.raises(WeightOnlyError, match="power of two"):
        build(parse_args(["--out", str(tmp_path / "x"), "--llm-weights", "int4", "--llm-block-size", "24"]))
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ conversions
@pytest.mark.parametrize("target", ["fp16", "int8", "int4"])
def test_conversions_of_a_graph_over_the_threshold_write_and_read_external_data(decoders, tmp_path, monkeypatch,
                                                                                target):
    monkeypatch.setattr(graphs, "EXTERNAL_DATA_BYTES", 1000)   # the tiny decoder stands for a >1.8 GB one
    monkeypatch.setattr(precision, "EXTERNAL_DATA_BYTES", 1000)
    src = decoders["external"]
    feeds = decoder_feeds(src)
    report = convert(src, tmp_path / f"decoder.{target}.onnx", target, CAPTIONER_DECODER.component, feeds,
                     log=lambda s: None)
    assert report["data_files"] == [f"decoder.{target}.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"decoder.{target}.onnx", f"decoder.{target}.onnx.data"]
    errors = report["vs_fp32"]["onnxruntime_cpu"] if target == "fp16" else report["vs_fp32"]
    assert errors[CAPTIONER_DECODER.logits]["max_rel"] < {"fp16": 0.01, "int8": 0.05, "int4": 0.3}[target]
    if target == "fp16":   # too large to try island variants: the pinned attention island only, and it says so
        assert report["fp32_islands"] == ["attention_softmax"] and "not_measured" in report["island_study"]


def test_fp16_of_an_inline_graph_matches_the_converter_run_on_the_whole_model(decoders):
    """to_fp16 hands ONNX Runtime's converter the weights as typed inputs: the graph must come out as the
    converter makes it from the whole model."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(decoders["inline"]))
    islands = precision.find_islands(model)                 # names the unnamed nodes, as to_fp16 does
    whole = copy.deepcopy(model)
    ours = precision.to_fp16(model, ["attention_softmax"], islands)
    del whole.graph.value_info[:]
    theirs = convert_float_to_float16(whole, keep_io_types=True, node_block_list=sorted(islands["attention_softmax"]),
                                      op_block_list=DEFAULT_OP_BLOCK_LIST)
    precision._drop_round_trip_casts(theirs)
    precision._topological_sort(theirs.graph)
    types = lambda m: {i.name: i.data_type for i in m.graph.initializer}  # noqa: E731
    assert types(ours) == types(theirs)
    feeds = decoder_feeds(decoders["inline"])
    err = output_errors(run(theirs, feeds), run(ours, feeds))
    assert max(e["max_abs"] for e in err.values()) < 1e-6


@pytest.mark.parametrize("backend,form", [("onnxruntime", "MatMulNBits"), ("tensorrt", "QDQ")])
def test_llm_weights_int4_build_lists_and_hashes_the_data_files(tiny_artifacts, tmp_path, monkeypatch, backend, form):
    monkeypatch.setattr(graphs, "EXTERNAL_DATA_BYTES", 1000)
    monkeypatch.setattr(precision, "EXTERNAL_DATA_BYTES", 1000)
    dst = tmp_path / "int4"
    shutil.copytree(tiny_artifacts, dst)
    manifest = read_manifest(dst)
    fp32_onnx = manifest.components[CAPTIONER_DECODER.component].onnx
    fp32_data = list(manifest.components[CAPTIONER_DECODER.component].data_files)
    reports = convert_artifacts(dst, manifest, "fp32", llm_weights="int4", backend=backend, log=lambda s: None)
    assert set(reports) == {CAPTIONER_DECODER.component}              # --precision fp32: nothing else changes
    write_manifest(dst, manifest)
    entry = read_manifest(dst).components[CAPTIONER_DECODER.component]
    assert entry.precision == "int4-weight-only" and entry.onnx.file == "captioner_decoder.int4.onnx"
    report = entry.precision_report
    assert (report["form"], report["block_size"], report["skipped"], report["layers"]) == (form, 32, {}, LINEAR_LAYERS)
    assert report["opset"] == (21 if backend == "tensorrt" else 17)
    assert [f.file for f in entry.data_files] == ["captioner_decoder.int4.onnx.data"]
    for f in entry.data_files:
        assert f.sha256 == sha256_file(dst / f.file) and f.size == (dst / f.file).stat().st_size
    assert entry.onnx_fp32 == fp32_onnx and entry.onnx_fp32_data_files == fp32_data    # the FP32 graph's own
    assert read_manifest(dst).components[CAPTIONER_EMBED.component].precision == "fp32"
    rt = runtime.load(dst, backend="onnxruntime")                      # hashes every listed file
    caption = rt.caption(demo_frame(0), max_new_tokens=4)
    assert caption.token_ids


def test_conversion_holds_the_converted_weights_not_the_fp32_ones(tmp_path):
    """Peak memory of each conversion of a 256 MB graph (16 Gemm weights, external data), each in its own
    process: the streaming writers hold the converted weights and a few tensors in flight, never the FP32 graph."""
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from pathlib import Path
        import numpy as np
        from onnx import helper, numpy_helper
        import calibration.graphs as graphs, export.precision as precision
        from calibration.quantize import quantize_weights_file
        import onnxruntime.quantization.matmul_nbits_quantizer, onnxruntime.transformers.float16  # noqa
        folder, mode = Path(sys.argv[1]), sys.argv[2]
        if mode == "make":
            g, d, nodes, inits, x = np.random.default_rng(0), 2048, [], [], "x"
            for i in range(16):
                inits.append(numpy_helper.from_array(g.standard_normal((d, d), dtype=np.float32), f"w{{i}}"))
                nodes.append(helper.make_node("Gemm", [x, f"w{{i}}"], [f"h{{i}}"], transB=1, name=f"g{{i}}"))
                x = f"h{{i}}"
            graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["s", d])],
                                      [helper.make_tensor_value_info(x, 1, ["s", d])], inits)
            graphs.save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                             folder / "fp32.onnx", threshold=0)
            sys.exit(0)
        graphs.EXTERNAL_DATA_BYTES = precision.EXTERNAL_DATA_BYTES = 1000
        base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        if mode == "fp16":
            precision.convert(folder / "fp32.onnx", folder / "out.onnx", "fp16", "g", [], log=lambda s: None)
        else:
            quantize_weights_file(folder / "fp32.onnx", folder / "out.onnx", bits=int(mode[3:]))
        # VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork into a child's ru_maxrss across exec
        peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
        print(json.dumps({{"grew": peak - base}}))
    """)
    (tmp_path / "probe.py").write_text(script)
    subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path), "make"], check=True)
    fp32 = (tmp_path / "fp32.onnx.data").stat().st_size
    for mode, converted in (("fp16", 0.5), ("int8", 0.27), ("int4", 0.16)):
        out = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path), mode], check=True,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        grew = json.loads(out.stdout.strip().splitlines()[-1])["grew"]
        # measured 0.72 / 0.67 / 0.58: the converted weights, a few 16 MB tensors in flight and the write; a
        # converter that loads the FP32 graph is at 1.0 + the converted weights before it writes anything
        assert grew < (converted + 0.55) * fp32, f"{mode}: peak grew {grew / 1e6:.0f} MB on a {fp32 / 1e6:.0f} MB graph"
