"""Decoding on the engine's device (engines.base DeviceTensor / run_bound, runtime.decode): the KV cache is
allocated once per caption on the decoder's device and bound in place, each step writes only the new token's
keys/values into it, and the bytes every engine moves between host and device are counted.

On the CPU (here) ONNX Runtime binds host buffers through IOBinding: a numpy <-> bound-buffer copy counts as
a host <-> device transfer, so the counts are the ones a GPU would see. The CUDA and TensorRT tests at the end
skip with the reason where there is no GPU."""
import ctypes
import importlib.util

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtime
from engines.base import DeviceTensor, Engine, IOBytes, cuda_python_available
from engines.contract import CAPTIONER_DECODER, CAPTIONER_VISION
from engines.errors import EngineError
from engines.onnxruntime_engine import OnnxRuntimeEngine
from runtime.decode import Caption, CaptionDecoder, CaptionIO, CaptionTimings
from runtime.profiling import Profiler, engine_io, io_per_frame

QUESTIONS = [None, "What is on the table?"]


class HostStaged(Engine):
    """An engine without a device path of its own (the base class's host staging): every call passes the
    whole inputs, the KV cache included, and returns every output. What decoding did before it was bound."""

    def __init__(self, inner):
        super().__init__(inner.name, inner.inputs, inner.outputs)
        self.inner = inner

    def _run(self, feeds):
        return self.inner._run(feeds)


@pytest.fixture(scope="module")
def rt(tiny_artifacts):
    with runtime.load(tiny_artifacts, backend="onnxruntime") as r:
        yield r


def _pixels(rt, seed):
    spec = rt.engines[CAPTIONER_VISION.component].inputs[0]
    return np.random.default_rng(seed).standard_normal(spec.one_frame).astype(np.float32)


def _sizes(decoder: CaptionDecoder, capacity: int):
    """Bytes of the new token's keys/values (all layers) and of one whole cache of `capacity` slots."""
    item = decoder.kv_dtype.itemsize
    per_slot = 2 * decoder.n_layers * decoder.kv_heads * decoder.head_dim * item
    return per_slot, per_slot * capacity


def _staged(decoder: CaptionDecoder) -> CaptionDecoder:
    return CaptionDecoder(HostStaged(decoder.embed), HostStaged(decoder.decoder), decoder.tokenizer, decoder.prompt,
                          vision=decoder.vision, max_context=decoder.max_context)


# ------------------------------------------------------------------------------------------ the decode loop
def test_the_captioner_runs_on_onnxruntime_with_bound_host_tensors(rt):
    for name in ("captioner_embed", "captioner_decoder"):
        engine = rt.engines[name]
        assert isinstance(engine, OnnxRuntimeEngine) and engine.tensor_device == "cpu"


def test_a_decode_step_moves_the_token_in_and_the_logits_out_whatever_the_cache_length(rt):
    decoder = rt.captioner
    pixels = _pixels(rt, 0)
    logits = next(s for s in decoder.decoder.outputs if s.name == CAPTIONER_DECODER.logits)
    vocab = decoder.decoder.tensor_dtype(logits.name).itemsize * logits.shape[-1]
    per_token = {}
    for max_new in (4, 40):
        caption = decoder.caption(pixels, max_new_tokens=max_new)
        assert caption.stop_reason == "max_new_tokens", "pick a frame whose caption runs to max_new_tokens"
        io, steps = caption.io, max_new - 1
        capacity = caption.timings.prompt_tokens + max_new - 1
        new_kv, whole_cache = _sizes(decoder, capacity)
        assert io.steps == steps
        # In: the token id, its position and one attention-mask slot (int64 each). Out: the last logits.
        assert io.decode.host_to_device == steps * 3 * 8
        assert io.decode.device_to_host == steps * vocab
        # On the device: the new token's keys and values only, written into their slot.
        assert io.decode.device_to_device == steps * new_kv
        assert io.bytes_per_token < whole_cache / 10
        per_token[capacity] = io.bytes_per_token
    assert len(set(per_token.values())) == 1, per_token   # independent of the cache length


def test_host_staged_decoding_copied_the_whole_cache_every_step(rt):
    decoder = _staged(rt.captioner)
    caption = decoder.caption(_pixels(rt, 0), max_new_tokens=8)
    capacity = caption.timings.prompt_tokens + 8 - 1
    _, whole_cache = _sizes(rt.captioner, capacity)
    assert caption.io.bytes_per_token > whole_cache     # what the bound path avoids (456 MB/token at Phi-2 size)


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_bound_decoding_gives_the_tokens_of_host_staged_decoding(rt, penalty):
    bound, staged = rt.captioner, _staged(rt.captioner)
    for seed, question in enumerate(QUESTIONS):
        pixels = _pixels(rt, seed)
        a = bound.caption(pixels, question, max_new_tokens=24, repetition_penalty=penalty)
        b = staged.caption(pixels, question, max_new_tokens=24, repetition_penalty=penalty)
        assert a.token_ids == b.token_ids and a.text == b.text and a.stop_reason == b.stop_reason


def test_caption_embeds_takes_numpy_or_a_device_tensor(rt):
    decoder = rt.captioner
    out = decoder.vision.run_bound({CAPTIONER_VISION.pixel_values: _pixels(rt, 1)})
    tensor = out[CAPTIONER_VISION.image_embeds]
    assert isinstance(tensor, DeviceTensor) and tensor.device == "cpu"
    a = decoder.caption_embeds(tensor, max_new_tokens=6)
    b = decoder.caption_embeds(tensor.to_numpy(), max_new_tokens=6)
    assert a.token_ids == b.token_ids
    # The image embeddings join the prompt on the device (no host copy) from a tensor, from the host from numpy.
    assert b.io.prefill.host_to_device - a.io.prefill.host_to_device == tensor.nbytes


# ------------------------------------------------------------------------------------------ DeviceTensor
def test_write_copies_a_block_into_a_slot_along_an_axis():
    cache = DeviceTensor.from_array(np.zeros((1, 3, 7, 4), np.float32))
    block = np.arange(3 * 2 * 4, dtype=np.float32).reshape(1, 3, 2, 4)
    cache.write(block, axis=2, start=5)
    want = np.zeros((1, 3, 7, 4), np.float32)
    want[:, :, 5:7] = block
    np.testing.assert_array_equal(cache.host_view(), want)
    other = DeviceTensor.from_array(block + 100)
    cache.write(other, axis=2, start=0)
    np.testing.assert_array_equal(cache.host_view()[:, :, :2], block + 100)


def test_write_counts_host_to_device_from_numpy_and_device_to_device_from_a_tensor(rt):
    engine = rt.engines["captioner_decoder"]
    cache = engine.allocate("past_key_values.0.key", (1, 2, 9, 16))
    assert cache.dtype == np.float32 and not cache.host_view().any()      # zeroed, in the graph's dtype
    before = engine.io.snapshot()
    block = np.ones((1, 2, 1, 16), np.float32)
    cache.write(block, axis=2, start=3)
    cache.write(engine.allocate("present.0.key", (1, 2, 1, 16)), axis=2, start=4)
    assert engine.io.snapshot() - before == IOBytes(host_to_device=block.nbytes, device_to_device=block.nbytes)
    cache.to_numpy()
    assert (engine.io.snapshot() - before).device_to_host == cache.nbytes


@pytest.mark.parametrize("block, axis, start, match", [
    (np.zeros((1, 2, 1, 8), np.float32), 2, 0, "cannot write"),       # another axis differs
    (np.zeros((1, 2, 2, 16), np.float32), 2, 8, "cannot write"),      # past the end
    (np.zeros((1, 2, 1, 16), np.float16), 2, 0, "float16 into a float32"),
])
def test_write_refuses_a_block_that_does_not_fit(block, axis, start, match):
    cache = DeviceTensor.from_array(np.zeros((1, 2, 9, 16), np.float32))
    with pytest.raises(EngineError, match=match):
        cache.write(block, axis=axis, start=start)


class FakeCudart:
    """cuda-python's runtime calls used by engines.base, over host memory, with the documented argument order
    (cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, stream), (err, value...) results): the
    pitch and offset arithmetic of the GPU path runs here; the GPU itself is tested where there is one."""

    class cudaError_t:
        cudaSuccess = 0

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice = 1, 2, 3

    cudaStream_t = int

    def __init__(self):
        self.calls, self._memory = [], {}

    def cudaMalloc(self, nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        self._memory[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaFree(self, ptr):
        self._memory.pop(ptr, None)
        return (0,)

    def cudaMemsetAsync(self, ptr, value, count, stream):
        ctypes.memset(ptr, value, count)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.calls.append(("1d", kind, count))
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaMemcpy2DAsync(self, dst, dpitch, src, spitch, width, height, kind, stream):
        assert width <= dpitch and width <= spitch
        self.calls.append(("2d", kind, dpitch, spitch, width, height))
        for row in range(height):
            ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)


def test_the_gpu_copy_path_writes_each_heads_slot_with_one_strided_copy(monkeypatch):
    import engines.base as base

    fake = FakeCudart()
    monkeypatch.setattr(base, "_cudart", lambda: (fake, lambda result: result[1] if len(result) > 1 else None))

    def on_gpu(shape):
        memory = base.CudaMemory(int(np.prod(shape)) * 4)
        return DeviceTensor(memory.ptr, shape, np.float32, "cuda:0", memory, base.IOCounter())

    cache = on_gpu((1, 3, 7, 4))                                         # (1, H, P, D)
    assert not cache.to_numpy().any()                                    # zeroed
    block = np.arange(3 * 2 * 4, dtype=np.float32).reshape(1, 3, 2, 4)   # (1, H, S, D)
    cache.write(block, axis=2, start=5)
    present = on_gpu((1, 3, 1, 4))
    present.write(block[:, :, :1] + 100)
    cache.write(present, axis=2, start=1)
    want = np.zeros((1, 3, 7, 4), np.float32)
    want[:, :, 5:7], want[:, :, 1:2] = block, block[:, :, :1] + 100
    np.testing.assert_array_equal(cache.to_numpy(), want)
    kinds = fake.cudaMemcpyKind
    assert ("2d", kinds.cudaMemcpyHostToDevice, 7 * 16, 2 * 16, 2 * 16, 3) in fake.calls   # H rows, P*D apart
    assert ("2d", kinds.cudaMemcpyDeviceToDevice, 7 * 16, 16, 16, 3) in fake.calls
    assert cache._counter.snapshot() == IOBytes(block.nbytes, 2 * cache.nbytes, present.nbytes)


# ------------------------------------------------------------------------------------------ run_bound
@pytest.fixture(scope="module")
def add_graph(tmp_path_factory):
    """y = x + 1, z = 2 x over (1, n) float32: an ONNX Runtime engine small enough to reason about."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "n"])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Add", ["x", "one"], ["y"]), helper.make_node("Mul", ["x", "two"], ["z"])]
    graph = helper.make_graph(nodes, "g", [x], [y, z], initializer=[one, two])
    path = tmp_path_factory.mktemp("graph") / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return OnnxRuntimeEngine("add", path, providers=["CPUExecutionProvider"])


def test_run_bound_reads_inputs_in_place_and_writes_into_bound_outputs(add_graph):
    engine = add_graph
    x = engine.allocate("x", (1, 5))
    x.write(np.arange(5, dtype=np.float32)[None])
    y = engine.allocate("y", (1, 5))
    before = engine.io.snapshot()
    out = engine.run_bound({"x": x}, {"y": y})
    assert out["y"] is y and out["z"].shape == (1, 5) and out["z"].device == "cpu"
    np.testing.assert_array_equal(y.host_view(), np.arange(1, 6, dtype=np.float32)[None])
    np.testing.assert_array_equal(out["z"].to_numpy(), 2 * np.arange(5, dtype=np.float32)[None])
    assert (engine.io.snapshot() - before) == IOBytes(device_to_host=20)   # only the to_numpy()
    x.write(np.full((1, 1), 10, np.float32), axis=1, start=0)               # changed in place, seen next run
    engine.run_bound({"x": x}, {"y": y})
    assert y.host_view()[0, 0] == 11


def test_numpy_inputs_are_copied_in_and_counted_and_call_still_counts_everything(add_graph):
    engine = add_graph
    before = engine.io.snapshot()
    engine.run_bound({"x": np.ones((1, 3), np.float32)})
    assert engine.io.snapshot() - before == IOBytes(host_to_device=12)
    before = engine.io.snapshot()
    out = engine({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(out["y"], np.full((1, 4), 2, np.float32))
    assert engine.io.snapshot() - before == IOBytes(host_to_device=16, device_to_host=32)


def test_run_bound_checks_what_it_is_given(add_graph):
    engine = add_graph
    with pytest.raises(EngineError, match="must be float32, got float64"):
        engine.run_bound({"x": DeviceTensor.from_array(np.zeros((1, 2)))})
    with pytest.raises(EngineError, match="missing \\['x'\\]"):
        engine.run_bound({})
    with pytest.raises(EngineError, match="no outputs named \\['w'\\]"):
        engine.run_bound({"x": np.zeros((1, 2), np.float32)}, {"w": engine.allocate("y", (1, 2))})
    with pytest.raises(EngineError, match="could not run on the bound tensors"):
        engine.run_bound({"x": np.zeros((1, 2), np.float32)}, {"y": engine.allocate("y", (1, 3))})


def test_host_staged_engines_count_every_input_and_output(add_graph):
    engine = HostStaged(add_graph)
    x = engine.allocate("x", (1, 5))
    out = engine.run_bound({"x": x})
    assert out["y"].device == "cpu" and engine.tensor_device == "cpu"
    assert engine.io.snapshot() == IOBytes(host_to_device=20, device_to_host=40)


# ------------------------------------------------------------------------------------------ the profiler
def test_caption_spans_carry_their_host_device_bytes():
    prof = Profiler(nvtx=False)
    io = CaptionIO(IOBytes(100, 20, 5), IOBytes(30, 300, 7), steps=3)
    prof.record_caption(0.0, Caption("a", [1, 2, 3, 4], "q", "max_new_tokens",
                                     CaptionTimings(0.0, 0.1, [0.01] * 3, 10), io))
    spans = {s.name: s for s in prof.spans()}
    assert spans["caption_prefill"].args == {"tokens": 10, "io_bytes": 120}
    assert spans["caption_decode"].args == {"tokens": 3, "io_bytes": 330}
    assert io.bytes_per_token == 110


def test_engine_io_per_frame_is_the_difference_over_the_frames(rt):
    before = engine_io(rt.engines)
    for seed in range(2):
        rt.encode_image(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8))
    per_frame = io_per_frame(before, engine_io(rt.engines), frames=2)
    vision = per_frame["by_engine"][rt.vision_name]
    spec = rt.engines[rt.vision_name]
    pixels = int(np.prod(_pixels(rt, 0).shape)) * 4
    outputs = sum(int(np.prod(s.one_frame)) * 4 for s in spec.outputs)
    # The tower's outputs stay on its device for the segmenter and the captioner: only the pixels cross.
    assert vision["host_to_device"] == pixels and vision["device_to_host"] == 0 < outputs
    assert per_frame["total"] == pixels                 # nothing else ran


def test_profile_report_has_the_bytes_per_frame_and_per_token(rt):
    from runtime.profile import format_report, profile

    frames = (np.random.default_rng(i).integers(0, 255, (48, 64, 3), np.uint8) for i in range(100))
    # No caption given and no caption worker: every frame is captioned synchronously.
    report = profile(rt, frames, 2, ["ball", "box"], None, warmup=0, overlay=False)
    assert report["engine_io_bytes_per_frame"] > 0
    assert set(report["engine_io_bytes_per_frame_by_engine"]) == set(rt.engines)
    logits = next(s for s in rt.captioner.decoder.outputs if s.name == CAPTIONER_DECODER.logits).shape[-1] * 4
    assert report["caption_io_bytes_per_token"] == 3 * 8 + logits
    assert "per caption token" in format_report(report)
    assert "per caption token" in format_report(report)


# ------------------------------------------------------------------------------------------ on a GPU
def _ort_cuda_reason() -> str | None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider here (the CUDA path is tested on a GPU machine)"
    if not cuda_python_available():
        return "cuda-python is not installed (pip install cuda-python)"
    return None


ort_cuda = pytest.mark.skipif(_ort_cuda_reason() is not None, reason=_ort_cuda_reason() or "")


@ort_cuda
def test_cuda_write_and_to_numpy_match_numpy(tiny_artifacts):
    from engines.contract import read_manifest

    entry = read_manifest(tiny_artifacts).components["captioner_decoder"]
    engine = OnnxRuntimeEngine("d", tiny_artifacts / entry.onnx.file, entry.inputs, entry.outputs,
                               providers=["CUDAExecutionProvider"])
    assert engine.tensor_device == "cuda:0"
    name = CAPTIONER_DECODER.past(1)[0]
    cache = engine.allocate(name, (1, 2, 9, 16))
    assert not cache.to_numpy().any()
    block = np.random.default_rng(0).standard_normal((1, 2, 3, 16)).astype(np.float32)
    cache.write(block, axis=2, start=4)
    other = engine.allocate(name, (1, 2, 3, 16))
    other.write(block * 2)
    cache.write(other, axis=2, start=0)
    want = np.zeros((1, 2, 9, 16), np.float32)
    want[:, :, 4:7], want[:, :, 0:3] = block, block * 2
    np.testing.assert_array_equal(cache.to_numpy(), want)


@ort_cuda
def test_cuda_decoding_gives_the_tokens_of_cpu_decoding_and_keeps_the_cache_on_the_gpu(tiny_artifacts, rt):
    with runtime.load(tiny_artifacts, backend="onnxruntime", providers=["CUDAExecutionProvider"]) as gpu:
        assert gpu.engines["captioner_decoder"].tensor_device == "cuda:0"
        for seed, question in enumerate(QUESTIONS):
            pixels = _pixels(rt, seed)
            a = gpu.captioner.caption(pixels, question, max_new_tokens=16)
            b = rt.captioner.caption(pixels, question, max_new_tokens=16)
            assert a.token_ids == b.token_ids
            assert a.io.decode == b.io.decode


def _trt_reason() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt cannot be imported here (TensorRT engines are built and tested on a GPU machine)"
    from engines.tensorrt_builder import gpu_count

    return None if gpu_count() > 0 else "no CUDA GPU is visible"


@pytest.mark.skipif(_trt_reason() is not None, reason=_trt_reason() or "")
def test_tensorrt_binds_device_tensors_in_place_and_shares_its_output_buffers(tiny_artifacts, tmp_path):
    from engines.contract import read_manifest
    from engines.tensorrt_builder import build_engine
    from engines.tensorrt_engine import TensorRTEngine

    entry = read_manifest(tiny_artifacts).components[CAPTIONER_VISION.component]
    built = build_engine(tiny_artifacts / entry.onnx.file, tmp_path / "vision.engine", entry, log=lambda s: None)
    engine = TensorRTEngine("vision", tmp_path / "vision.engine", entry.inputs, entry.outputs, built=built)
    pixels = np.random.default_rng(0).standard_normal(entry.inputs[0].shape).astype(np.float32)
    want = engine({CAPTIONER_VISION.pixel_values: pixels})
    x = engine.allocate(CAPTIONER_VISION.pixel_values, pixels.shape)
    x.write(pixels)
    bound = engine.allocate(CAPTIONER_VISION.image_embeds, want[CAPTIONER_VISION.image_embeds].shape)
    before = engine.io.snapshot()
    out = engine.run_bound({CAPTIONER_VISION.pixel_values: x}, {CAPTIONER_VISION.image_embeds: bound})
    assert engine.io.snapshot() == before                     # nothing crossed
    assert out[CAPTIONER_VISION.image_embeds] is bound and bound.device == "cuda:0"
    hidden = out[CAPTIONER_VISION.vision_hidden_states]      # the engine's own buffer, shared by pointer
    assert hidden.data_ptr() == engine.device_buffers[CAPTIONER_VISION.vision_hidden_states]
    for name in engine.output_names:
        np.testing.assert_allclose(out[name].to_numpy(), want[name], atol=1e-5)
    again = engine({CAPTIONER_VISION.pixel_values: pixels})  # __call__ binds its own buffers again
    np.testing.assert_allclose(again[CAPTIONER_VISION.image_embeds], want[CAPTIONER_VISION.image_embeds], atol=1e-5)
    engine.close()
