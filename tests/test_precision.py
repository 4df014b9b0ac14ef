"""FP16 and INT8 graphs (export/precision.py, calibration/): made, measured and loaded under ONNX Runtime."""
import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import runtime
from calibration.data import CalibrationError, CalibrationSet, list_images, read_images
from calibration.quantize import quantize_weights
from conftest import tiny_preset
from engines.contract import read_manifest, write_manifest
from engines.trt_supported_ops import check_graph
from export.build_engines import build, parse_args
from calibration.graphs import output_errors, run
from export.precision import (FP32_ONLY, PrecisionError, check_args, convert, convert_artifacts, emulate_fp16, find_islands,
                              to_fp16)
from engines.contract import SEGMENTER, VISION_TOWER
from llmformer.data.frames import demo_frame
from runtime.frames import to_tensor

CAPTION = "a red ball next to a blue box on a wooden table"


def tiny_segmentation_preset(name: str = "demo"):
    """tiny_preset without the captioner (its graphs are covered by tests/test_captioner.py; here they would only
    slow the build down): vision tower, text encoder, segmenter."""
    preset = tiny_preset(name)
    return dataclasses.replace(preset, captioner=None) if hasattr(preset, "captioner") else preset


def write_frames(folder: Path, count: int = 4, size=(96, 128)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"frame_{i:02d}.png"), cv2.cvtColor(demo_frame(i, size), cv2.COLOR_RGB2BGR))
    return folder


def convert_copy(src: Path, dst: Path, precision: str, **kw) -> dict:
    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    reports = convert_artifacts(dst, manifest, precision, log=lambda s: None, **kw)
    write_manifest(dst, manifest)
    return reports


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "fp32"
    build(parse_args(["--out", str(out), "--skip-validation"]), preset=tiny_segmentation_preset())
    return out


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("calib") / "frames")


@pytest.fixture(scope="module")
def tiny_fp16(tiny_fp32, tmp_path_factory):
    dst = tmp_path_factory.mktemp("precision") / "fp16"
    return dst, convert_copy(tiny_fp32, dst, "fp16")


@pytest.fixture(scope="module")
def tiny_int8(tiny_fp32, calib, tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    return root / "int8", convert_copy(tiny_fp32, root / "int8", "int8", calib=calib, cache_dir=root / "cache"), root


# ------------------------------------------------------------------------------------------------ bad input
def test_int8_without_calib_is_a_clear_error():
    with pytest.raises(PrecisionError, match="--calib DIR"):
        check_args("int8", None)
    with pytest.raises(PrecisionError, match="unknown precision"):
        check_args("int4", None)
    check_args("fp16", None)  # FP16 measures on the demo frames when no folder is given


@pytest.mark.parametrize("argv", [["--precision", "int8", "--int8-tolerance", "0"],
                                  ["--precision", "fp16", "--int8-tolerance", "0.02"]])
def test_a_bad_int8_tolerance_fails_before_any_export(argv, tmp_path):
    from export.build_engines import BuildError, build, parse_args

    with pytest.raises(BuildError, match="--int8-tolerance"):
        build(parse_args(["--out", str(tmp_path / "never"), "--calib", str(tmp_path), *argv]))
    assert not (tmp_path / "never").exists()


def test_empty_or_missing_calibration_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        list_images(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match="has no images"):
        check_args("int8", tmp_path)


def test_unreadable_calibration_images_are_named(tmp_path):
    write_frames(tmp_path, 2)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match="broken.jpg"):
        read_images(list_images(tmp_path))


# ---------------------------------------------------------------------------------------- calibration data
def test_calibration_feeds_are_what_the_runtime_feeds(tiny_fp32, calib):
    manifest = read_manifest(tiny_fp32)
    data = CalibrationSet.from_folder(calib)
    feeds = data.record(tiny_fp32, manifest)
    assert len(feeds[SEGMENTER.component]) == len(data.frames) == len(feeds[VISION_TOWER.component])
    pre = manifest.preprocess
    frame = data.frames[0]
    seg = feeds[SEGMENTER.component][0]
    s = pre[SEGMENTER.component]
    np.testing.assert_array_equal(seg["frame"], to_tensor(frame, s.size, s.mean, s.std))
    v = pre[VISION_TOWER.component]
    hidden = run(tiny_fp32 / manifest.components[VISION_TOWER.component].onnx.file,
                 [{"pixel_values": to_tensor(frame, v.size, v.mean, v.std)}])
    np.testing.assert_allclose(seg["vision_hidden_states"], hidden[0]["vision_hidden_states"], atol=1e-6)
    # The priors come from the parsed caption: real object embeddings, all valid.
    assert seg["prior_valid"].sum() >= 2 and np.abs(seg["object_embeddings"]).sum() > 0
    assert data.fingerprint() == CalibrationSet.from_folder(calib).fingerprint()


# ------------------------------------------------------------------------------------------------------ fp16
def test_fp16_artifacts_keep_fp32_io_and_run(tiny_fp16, tiny_fp32):
    folder, reports = tiny_fp16
    manifest = read_manifest(folder)  # hashes of the new graphs verified
    for name in FP32_ONLY:   # the frame graphs stay FP32 at every precision
        assert manifest.components[name].precision == "fp32" and manifest.components[name].onnx_fp32 is None
    for name, entry in manifest.components.items():
        if name in FP32_ONLY:
            continue
        assert entry.precision == "fp16" and entry.onnx.file == f"{name}.fp16.onnx"
        assert entry.onnx_fp32.file == read_manifest(tiny_fp32).components[name].onnx.file
        model = onnx.load(str(folder / entry.onnx.file))
        assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
        float_io = [v for v in list(model.graph.input) + list(model.graph.output)
                    if v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)]
        assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in float_io)
        assert check_graph(model) == []
        assert set(reports[name]["island_study"]["groups"]) <= {"attention_softmax", "softmax", "normalization",
                                                                 "msda_coordinates"}
    assert reports["text_encoder"]["vs_fp32"]["emulated_fp16"]["text_embeddings"]["max_abs"] < 1e-2
    with runtime.load(folder) as rt16, runtime.load(tiny_fp32) as rt32:
        a = rt16.segment(demo_frame(1), caption=CAPTION)
        b = rt32.segment(demo_frame(1), caption=CAPTION)
        assert a.classes == b.classes and a.labels.shape == b.labels.shape


def _attention_graph(scale: float) -> onnx.ModelProto:
    """q k^T * scale -> softmax -> @ v, with q = x Wq: the scores overflow FP16 when `scale` is large."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "wq")
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
             helper.make_node("Transpose", ["x"], ["kt"], perm=[0, 2, 1], name="k_t"),
             helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
             helper.make_node("Mul", ["scores", "s"], ["scaled"], name="scale"),
             helper.make_node("Softmax", ["scaled"], ["p"], axis=-1, name="softmax"),
             helper.make_node("MatMul", ["p", "x"], ["y"], name="pv"),
             helper.make_node("LayerNormalization", ["y", "g", "b"], ["out"], axis=-1, name="ln")]
    inits = [w, numpy_helper.from_array(np.array(scale, np.float32), "s"),
             numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_emulation_shows_the_fp16_overflow_that_onnxruntime_cpu_hides():
    model = _attention_graph(scale=2000.0)
    x = {"x": np.random.default_rng(1).normal(size=(1, 4, 8)).astype(np.float32) * 4}
    fp16 = to_fp16(model, keep=[])
    emulated = run(emulate_fp16(fp16), [x])[0]["out"]
    assert not np.isfinite(emulated).all(), "scores above 65504 must overflow in FP16"
    assert np.isfinite(run(fp16, [x])[0]["out"]).all()  # ORT's CPU computes the chain in FP32: no overflow seen


def test_attention_softmax_island_keeps_overflowing_scores_in_fp32():
    model = _attention_graph(scale=2000.0)
    islands = find_islands(model)
    assert {"scores", "scale", "softmax"} <= islands["attention_softmax"]
    assert "q_proj" not in islands["attention_softmax"] and islands["normalization"] == {"ln"}
    x = [{"x": np.random.default_rng(1).normal(size=(1, 4, 8)).astype(np.float32) * 4}]
    fp16 = to_fp16(model, keep=["attention_softmax"])
    got = run(emulate_fp16(fp16), x)
    assert np.isfinite(got[0]["out"]).all()
    assert output_errors(run(model, x), got)["out"]["max_rel"] < 2e-2
    # Neighbouring island nodes pass FP32 straight on: no Cast to FP16 and back between them.
    producer = {o: n for n in fp16.graph.node for o in n.output}
    scale = next(n for n in fp16.graph.node if n.name == "scale")
    assert producer[scale.input[0]].op_type != "Cast"


# ------------------------------------------------------------------------------------------------------ int8
def test_int8_graphs_are_symmetric_per_channel_qdq_for_tensorrt(tiny_int8):
    folder, reports, _ = tiny_int8
    manifest = read_manifest(folder)
    for name, entry in manifest.components.items():
        if name in FP32_ONLY:
            continue
        model = onnx.load(str(folder / entry.onnx.file))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert dq and q, name
        weights = [n for n in dq if n.input[0] in inits]
        assert weights and all(inits[n.input[0]].dtype == np.int8 for n in weights)   # no INT32 bias
        axis = lambda n: next(a.i for a in n.attribute if a.name == "axis")  # noqa: E731
        assert all(inits[n.input[1]].size == inits[n.input[0]].shape[axis(n)] for n in weights)  # per channel
        assert all(inits[n.input[1]].size == 1 for n in q)                               # per tensor
        assert all(not inits[n.input[2]].any() for n in dq + q if len(n.input) > 2)      # symmetric
        readers = {}
        for n in model.graph.node:
            for i in n.input:
                readers.setdefault(i, []).append(n.op_type)
        activations = [n for n in dq if n.input[0] not in inits]
        assert all(set(readers[n.output[0]]) <= {"Conv", "MatMul", "Gemm"} for n in activations), \
            "Q/DQ sits only on the inputs of weighted layers"
        assert check_graph(model) == [], name
        report = entry.precision_report
        assert report["method"] == "entropy" and report["quantized_layers"] > 0
        assert {"layer", "op", "weight_rel_err", "isolated_rel_err", "accumulated_rel_err"} <= set(report["layers"][0])
    assert reports["segmenter"]["quantized_layers"] == manifest.components["segmenter"].precision_report[
        "quantized_layers"]
    with runtime.load(folder) as rt:
        seg = rt.segment(demo_frame(2), caption=CAPTION)
        assert seg.labels.shape == demo_frame(2).shape[:2]


@pytest.mark.parametrize("which", ["fp16", "int8"])
def test_converted_graphs_keep_the_batch_axis_calibrated_at_batch_1(which, tiny_fp16, tiny_int8):
    folder = (tiny_fp16 if which == "fp16" else tiny_int8)[0]
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64 + 8 * i, 64, 3), dtype=np.uint8) for i in range(3)]
    vocabularies = [["ball", "box"], ["sky"], ["ball", "box", "cat"]]
    with runtime.load(folder) as rt:
        assert rt.manifest.precision == which and rt.max_batch > 1
        rt.batch_graphs = True
        batch = rt.segment_batch(frames, vocabularies, ["a ball on a box"] * 3)
        single = [rt.segment(f, v, "a ball on a box") for f, v in zip(frames, vocabularies)]
    for b, s in zip(batch, single):
        assert np.array_equal(b.labels, s.labels)
        np.testing.assert_allclose(b.class_logits, s.class_logits, rtol=1e-4, atol=1e-4)


def test_int8_rebuild_uses_the_calibration_cache(tiny_int8, tiny_fp32, calib, monkeypatch):
    folder, first, root = tiny_int8
    import calibration.quantize as quantize

    def no_recalibration(*a, **k):
        raise AssertionError("a cached build must not measure the layers again")

    monkeypatch.setattr(quantize, "layer_errors", no_recalibration)
    again = convert_copy(tiny_fp32, root / "again", "int8", calib=calib, cache_dir=root / "cache")
    for name, report in again.items():
        assert report["cache_hit"] and report["cache_key"] == first[name]["cache_key"]
        assert (root / "again" / f"{name}.int8.onnx").read_bytes() == (folder / f"{name}.int8.onnx").read_bytes()


def test_layers_that_lose_too_much_stay_fp32(tiny_fp32, calib, tmp_path):
    data = CalibrationSet.from_folder(calib)
    feeds = data.record(tiny_fp32, read_manifest(tiny_fp32))["vision_tower"]
    fp32_graph = tiny_fp32 / read_manifest(tiny_fp32).components["vision_tower"].onnx.file
    full = convert(fp32_graph, tmp_path / "all.onnx", "int8", "vision_tower", feeds,
                   log=lambda s: None)
    errors = sorted(row["isolated_rel_err"] for row in full["layers"])
    tolerance = errors[len(errors) // 2]
    part = convert(fp32_graph, tmp_path / "part.onnx", "int8", "vision_tower", feeds,
                   layer_tolerance=tolerance, log=lambda s: None)
    worst = {row["layer"] for row in full["layers"] if row["isolated_rel_err"] > tolerance}
    assert set(part["excluded_layers"]) == worst and part["quantized_layers"] == len(errors) - len(worst)
    model = onnx.load(str(tmp_path / "part.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in worst:
            assert all(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in node.input)


# ----------------------------------------------------------------------------------------- weight-only (LLM)
@pytest.mark.parametrize("bits", [8, 4])
def test_weight_only_quantization_keeps_matmuls_close(bits):
    rng = np.random.default_rng(0)
    w, w2 = rng.normal(size=(64, 32)).astype(np.float32), rng.normal(size=(48, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Gemm", ["h", "w2"], ["y"], transB=1, name="gemm")], "lm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 48])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q, report = quantize_weights(model, bits=bits, block_size=32, min_elements=1)
    onnx.checker.check_model(q, full_check=True)
    assert report["layers"] == 2 and report["weight_bytes_after"] < report["weight_bytes_before"] / (3 if bits == 8 else 5)
    x = [{"x": rng.normal(size=(3, 64)).astype(np.float32)}]
    err = output_errors(run(model, x), run(q, x))["y"]["max_rel"]
    assert err < (0.02 if bits == 8 else 0.2)
    if bits == 8:
        assert check_graph(q) == []
