"""TensorRT builder and engine (engines/tensorrt_builder.py, engines/tensorrt_engine.py).

The tests that need TensorRT and a GPU skip with the reason where either is missing (the development and CI
machines have neither); the ones above them check, everywhere, what the TensorRT path decides without TensorRT:
the plugin library lookup, the optimization profiles and the errors."""
import importlib.util
import shutil

import numpy as np
import pytest

from engines.contract import ComponentEntry, read_manifest
from engines.errors import EngineError
from engines.tensorrt_builder import DEFAULT_WORKSPACE, PLUGINS_ENV, plugin_library, profiles_for
from engines.tensorrt_engine import TensorRTEngine, _version_mismatch, tensorrt_usable
from llmformer.data.frames import demo_frame

CAPTION = "a red ball next to a blue box on a wooden table"
ONNX = {"precision": "fp32", "onnx": {"file": "segmenter.onnx", "sha256": "0" * 64, "size": 1}}


# ------------------------------------------------------------------------------- everywhere (no TensorRT)
def test_missing_plugin_library_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    with pytest.raises(EngineError, match="none was given.*cmake -S plugins_trt"):
        plugin_library(None)
    with pytest.raises(EngineError, match="does not exist"):
        plugin_library(tmp_path / "libllmformer_plugins.so")
    monkeypatch.setenv(PLUGINS_ENV, str(tmp_path / "gone.so"))
    with pytest.raises(EngineError, match="gone.so does not exist"):
        plugin_library(None)
    (tmp_path / "lib.so").write_bytes(b"\x7fELF")
    assert plugin_library(tmp_path / "lib.so") == tmp_path / "lib.so"


def test_profiles_come_from_the_manifest_shape_ranges():
    component = {"inputs": [
        {"name": "frame", "dtype": "float32", "shape": [1, 3, 64, 64], "min_shape": None, "max_shape": None},
        {"name": "object_embeddings", "dtype": "float32", "shape": [1, "priors", 16], "min_shape": [1, 1, 16],
         "max_shape": [1, 64, 16]},
        {"name": "vocab_embeddings", "dtype": "float32", "shape": ["vocab", 16], "min_shape": [1, 16],
         "max_shape": [256, 16]}]}
    (profile,) = profiles_for(ComponentEntry.from_json({**ONNX, **component, "outputs": []}))
    assert "frame" not in profile
    assert profile["object_embeddings"] == ((1, 1, 16), (1, 8, 16), (1, 64, 16))
    assert profile["vocab_embeddings"] == ((1, 16), (32, 16), (256, 16))
    # A component that lists its own profiles (the captioner decoder: prefill and decode) keeps them.
    own = {"inputs": component["inputs"], "profiles": [{"x": [[1, 1], [1, 8], [1, 64]]}, {"x": [[1, 1]] * 3}]}
    assert profiles_for(ComponentEntry.from_json({**ONNX, **own, "outputs": []})) == [
        {"x": ((1, 1), (1, 8), (1, 64))}, {"x": ((1, 1), (1, 1), (1, 1))}]
    assert DEFAULT_WORKSPACE == 2 << 30


def test_folder_without_engines_says_how_to_build_them(tmp_path, tiny_artifacts):
    manifest = read_manifest(tiny_artifacts)
    with pytest.raises(EngineError, match="no TensorRT engine.*python -m engines.tensorrt_builder"):
        TensorRTEngine.from_component("segmenter", tmp_path, manifest.components["segmenter"])
    usable, why = tensorrt_usable(manifest)
    assert not usable and why


def test_engines_are_tied_to_their_tensorrt_release():
    assert not _version_mismatch("10.3.0.30", "10.3.0")
    assert _version_mismatch("10.3.0", "10.8.0") and _version_mismatch("10.3.0", "11.0.0")


# ------------------------------------------------------------------------------------- with TensorRT + GPU
def _gpu_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt cannot be imported here (TensorRT engines are built and tested on a GPU machine)"
    from engines.tensorrt_builder import gpu_count

    try:
        if gpu_count() < 1:
            return "no CUDA GPU is visible"
    except EngineError as exc:
        return str(exc)
    return None


gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")


@pytest.fixture(scope="module")
def trt_folders(tmp_path_factory):
    """Tiny artifacts in fp32, fp16 and int8, each with TensorRT engines built for this GPU."""
    if _gpu_reason():
        pytest.skip(_gpu_reason())
    from engines.contract import write_manifest
    from engines.tensorrt_builder import build_artifacts
    from export.build_engines import build, parse_args
    from export.precision import convert_artifacts
    from tests.test_precision import tiny_segmentation_preset, write_frames

    root = tmp_path_factory.mktemp("trt")
    fp32 = root / "fp32"
    build(parse_args(["--out", str(fp32), "--skip-validation", "--backend", "onnxruntime"]), preset=tiny_segmentation_preset())
    calib = write_frames(root / "calib", 4)
    folders = {}
    for precision in ("fp32", "fp16", "int8"):
        folder = root / precision
        if precision != "fp32":
            shutil.copytree(fp32, folder)
        manifest = read_manifest(folder)
        if precision != "fp32":
            convert_artifacts(folder, manifest, precision, calib=calib, cache_dir=root / "cache", log=lambda s: None)
        build_artifacts(folder, manifest, timing_cache=root / "timing.cache", log=lambda s: None)
        write_manifest(folder, manifest)
        folders[precision] = folder
    return folders


@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_component_builds_and_matches_onnxruntime(trt_folders, precision):
    from engines.base import create_engine
    from calibration.graphs import run

    folder = trt_folders[precision]
    manifest = read_manifest(folder)
    tolerance = {"fp32": 1e-3, "fp16": 5e-2, "int8": 2e-1}[precision]
    for name, entry in manifest.components.items():
        built = entry.tensorrt
        assert built.trt_version and built.compute_capability and len(built.sha256) == 64
        engine = create_engine("tensorrt", name, folder, entry)
        rng = np.random.default_rng(0)
        feeds = {}
        for spec in engine.inputs:
            shape = [d if isinstance(d, int) else 3 for d in spec.shape]
            feeds[spec.name] = (rng.integers(1000, 2000, shape) if spec.dtype == "int64"
                                else rng.normal(size=shape)).astype(spec.dtype)
        if "attention_mask" in feeds:
            feeds["attention_mask"][:] = 1
        got = engine(feeds)
        want = run(folder / entry.onnx.file, [feeds])[0]
        for out in engine.output_names:
            scale = max(float(np.abs(want[out]).max()), 1.0)
            assert float(np.abs(got[out] - want[out]).max()) / scale < tolerance, (name, out)
        engine.close()


@gpu
def test_engine_round_trip_and_runtime_on_tensorrt(trt_folders):
    import runtime

    folder = trt_folders["fp16"]
    with runtime.load(folder, backend="tensorrt") as rt, runtime.load(folder, backend="onnxruntime") as ort_rt:
        a = rt.segment(demo_frame(0), caption=CAPTION)
        b = ort_rt.segment(demo_frame(0), caption=CAPTION)
        assert a.classes == b.classes and a.labels.shape == b.labels.shape
        again = rt.segment(demo_frame(0), caption=CAPTION)          # buffers reused, same answer
        np.testing.assert_array_equal(again.labels, a.labels)


@gpu
def test_engine_from_another_gpu_or_release_is_a_clear_error(trt_folders, tmp_path):
    from engines.base import create_engine

    folder = tmp_path / "moved"
    shutil.copytree(trt_folders["fp32"], folder)
    entry = read_manifest(folder).components["vision_tower"]
    entry.tensorrt.compute_capability = "5.0"
    with pytest.raises(EngineError, match="sm_50.*rebuild the engines on this device"):
        create_engine("tensorrt", "vision_tower", folder, entry)
    entry.tensorrt.compute_capability = ""
    entry.tensorrt.trt_version = "9.0.0"
    with pytest.raises(EngineError, match="TensorRT 9.0.0.*rebuild"):
        create_engine("tensorrt", "vision_tower", folder, entry)


def test_the_decoder_switches_between_its_prefill_and_decode_profiles():
    """A two-profile engine (prefill: S = 1..8, P = 1; decode: S = 1, P = 1..8) runs each call on the profile
    that holds its shapes: without the switch every decode step would be refused by profile 0."""
    from engines.contract import TensorSpec

    profiles = [{"x": ((1, 1), (1, 4), (1, 8)), "past": ((1, 1), (1, 1), (1, 1))},
                {"x": ((1, 1), (1, 1), (1, 1)), "past": ((1, 1), (1, 4), (1, 8))}]

    class Engine:
        num_optimization_profiles = 2

        def get_tensor_profile_shape(self, name, k):
            return profiles[k][name]

    class Context:
        switches = []

        def set_optimization_profile_async(self, k, stream):
            self.switches.append(k)
            return True

    eng = object.__new__(TensorRTEngine)
    eng.name, eng._engine, eng._context, eng._stream, eng._profile, eng._graph_exec = "dec", Engine(), Context(), 0, 0, None
    eng.inputs = [TensorSpec(n, "float32", (1, "s"), (1, 1), (1, 8)) for n in ("x", "past")]
    eng._select_profile({"x": (1, 6), "past": (1, 1)})        # prefill: already on profile 0
    eng._select_profile({"x": (1, 1), "past": (1, 7)})        # decode
    eng._select_profile({"x": (1, 1), "past": (1, 8)})        # still decode: no switch
    eng._select_profile({"x": (1, 3), "past": (1, 1)})        # the next caption's prefill
    assert Context.switches == [1, 0]
    with pytest.raises(EngineError, match="fit none of the engine's 2 optimization profiles"):
        eng._select_profile({"x": (1, 3), "past": (1, 3)})
