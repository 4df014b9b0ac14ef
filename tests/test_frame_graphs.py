"""The frame graphs (issue 17): preprocessing and semantic inference on the engines' device, against the host path
(runtime/frames.py), and the bytes a frame moves when they run."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from engines.contract import FRAME_PREPROCESS, MANIFEST_NAME, SEMANTIC_MAP, Manifest, Preprocess
from engines.errors import EngineError, ManifestError
from engines.trt_supported_ops import check_graph
from export.frame_graphs import preprocess_graph, semantic_graph
from runtime.frames import semantic_map, to_tensor

IMAGENET = Preprocess(96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TOWER = Preprocess(56, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# landscape, portrait, square, smaller than both inputs, one side smaller (bilinear on a shrinking axis), odd sizes
SIZES = [(480, 640), (640, 360), (96, 96), (40, 70), (60, 300), (123, 457), (721, 1283)]


def _session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _smooth(rng, shape, sigma):
    noise = rng.standard_normal(shape).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), sigma) if noise.ndim == 2 or shape[-1] <= 4 else np.stack(
        [cv2.GaussianBlur(noise[..., i], (0, 0), sigma) for i in range(shape[-1])], -1)


@pytest.mark.parametrize("size", SIZES)
def test_preprocess_graph_is_opencvs_resize_within_one_grey_level(size):
    rng = np.random.default_rng(size[0])
    frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(frame, (0, 0), 1.5)        # camera-like: noise alone is the worst case for area
    pixels, seg_in = _session(preprocess_graph(TOWER, IMAGENET)).run(None, {FRAME_PREPROCESS.image: frame[None]})
    for got, pre in ((pixels, TOWER), (seg_in, IMAGENET)):
        want = to_tensor(frame, pre.size, pre.mean, pre.std)
        assert got.shape == want.shape == (1, 3, pre.size, pre.size)
        grey = np.abs(got - want) * np.asarray(pre.std, np.float32)[:, None, None] * 255
        assert grey.max() <= 1.0 + 1e-3            # OpenCV rounds its fixed-point bilinear weights
        assert (grey > 0.5).mean() < 0.15          # ... and most pixels are the same grey level


@pytest.mark.parametrize("vocab", [1, 2, 5, 20, 129, 256])
@pytest.mark.parametrize("size", [(480, 640), (360, 480), (100, 70), (33, 900)])
def test_semantic_graph_labels_and_scores_match_the_host_path(vocab, size):
    rng = np.random.default_rng(vocab * 7 + size[0])
    q, h, w = 16, 24, 24
    masks = np.ascontiguousarray((_smooth(rng, (h, w, q), 2) * 60).transpose(2, 0, 1))[None]
    classes = (rng.standard_normal((1, q, vocab + 1)) * 3).astype(np.float32)
    image = np.zeros((1, *size, 3), np.uint8)
    labels, scores = _session(semantic_graph((q, h, w), 256)).run(
        None, {SEMANTIC_MAP.mask_logits: masks, SEMANTIC_MAP.class_logits: classes, SEMANTIC_MAP.image: image})
    want_labels, want_scores = semantic_map(masks[0], classes[0], size)
    assert labels.dtype == np.uint8 and labels.shape == (1, *size) and scores.shape == (vocab,)
    agree = (labels[0] == want_labels).mean()
    assert agree >= 0.995, f"{1 - agree:.3%} of labels differ"
    # A class that wins only a few boundary pixels on one path may win none on the other (score 0): compare the
    # classes that hold a region (>= 0.5% of the frame) on both.
    counts = np.bincount(labels.ravel(), minlength=vocab), np.bincount(want_labels.ravel(), minlength=vocab)
    held = (np.minimum(*counts) >= 0.005 * labels.size)
    np.testing.assert_allclose(scores[held], want_scores[held], atol=0.01)


def test_semantic_graph_labels_are_int32_past_256_classes():
    model = semantic_graph((4, 8, 8), 300)
    assert model.graph.output[0].type.tensor_type.elem_type == 6   # INT32


def test_frame_graphs_use_only_what_tensorrt_parses():
    assert check_graph(preprocess_graph(TOWER, IMAGENET)) == []
    assert check_graph(semantic_graph((16, 64, 64), 256)) == []


def test_device_frame_path_moves_only_the_frame_labels_and_scores(tiny_artifacts):
    import runtime
    from engines.base import total_io
    from llmformer.data.frames import demo_frame

    vocabulary = ["ball", "box", "table", "wall"]
    with runtime.load(tiny_artifacts, frame_path="device") as rt, runtime.load(tiny_artifacts, frame_path="host") as host:
        for size in ((120, 160), (90, 200)):
            frame = demo_frame(0, size)
            rt.segment(frame, vocabulary=vocabulary, caption="a ball on a box")   # the embeddings go up once
            before = total_io(rt.engines.values())
            seg = rt.segment(frame, vocabulary=vocabulary, caption="a ball on a box")
            moved = total_io(rt.engines.values()) - before
            assert moved.host_to_device == frame.nbytes                             # the uint8 frame
            assert moved.device_to_host == size[0] * size[1] + 4 * len(vocabulary)  # uint8 labels, float scores
            assert seg.labels.dtype == np.int32 and seg.labels.shape == size
            ref = host.segment(frame, vocabulary=vocabulary, caption="a ball on a box")
            assert (seg.labels == ref.labels).mean() > 0.98
            np.testing.assert_allclose(seg.scores, ref.scores, atol=0.02)



def test_alternating_vocabularies_rewrite_the_resident_embeddings(tiny_artifacts):
    """Streams with different vocabularies of one size, interleaved (the server's batches): the embeddings kept on
    the device are rewritten in place, and every frame is labelled with its own vocabulary."""
    import runtime
    from llmformer.data.frames import demo_frame

    frame, caption = demo_frame(1, (96, 128)), "a ball on a box"
    vocabularies = [["ball", "box", "table", "wall"], ["dog", "cat", "sofa", "floor"]]
    with runtime.load(tiny_artifacts, frame_path="device") as rt, runtime.load(tiny_artifacts, frame_path="host") as host:
        refs = [host.segment(frame, vocabulary=v, caption=caption) for v in vocabularies]
        for v, ref in [(v, r) for _ in range(2) for v, r in zip(vocabularies, refs)]:
            seg = rt.segment(frame, vocabulary=v, caption=caption)
            assert seg.classes == v and (seg.labels == ref.labels).mean() > 0.98
            np.testing.assert_allclose(seg.scores, ref.scores, atol=0.02)

def test_frame_graphs_are_optional_in_the_manifest_and_come_as_a_pair(tiny_artifacts):
    import runtime

    data = json.loads((tiny_artifacts / MANIFEST_NAME).read_text())
    assert Manifest.from_json(data).frame_graphs
    older = json.loads(json.dumps(data))
    for name in (FRAME_PREPROCESS.component, SEMANTIC_MAP.component):
        del older["components"][name]
    assert not Manifest.from_json(older).frame_graphs         # a folder from before issue 17 still loads
    half = json.loads(json.dumps(data))
    del half["components"][SEMANTIC_MAP.component]
    with pytest.raises(ManifestError, match="semantic_map is missing"):
        Manifest.from_json(half)
    with pytest.raises(runtime.RuntimeInputError, match="frame_path"):
        runtime.load(tiny_artifacts, frame_path="gpu")


def test_frame_graphs_get_tensorrt_profiles_tuned_for_720p_and_record_their_host_check(tiny_artifacts):
    from engines.contract import read_manifest
    from engines.tensorrt_builder import profiles_for

    manifest = read_manifest(tiny_artifacts)
    (pre,) = profiles_for(manifest.components[FRAME_PREPROCESS.component])
    assert pre[FRAME_PREPROCESS.image] == ((1, 1, 1, 3), (1, 720, 1280, 3), (1, 2160, 3840, 3))
    (sem,) = profiles_for(manifest.components[SEMANTIC_MAP.component])
    assert sem[SEMANTIC_MAP.image] == pre[FRAME_PREPROCESS.image]
    q = manifest.components[SEMANTIC_MAP.component].input(SEMANTIC_MAP.class_logits).shape[1]
    assert sem[SEMANTIC_MAP.class_logits] == ((1, q, 2), (1, q, 33), (1, q, 257))   # V + 1 for V in 1..256
    # The build's check against the host path is in the manifest (and the build summary shows it).
    assert manifest.components[FRAME_PREPROCESS.component].max_diff_vs_host["max_grey_levels"] <= 1.0 + 1e-3
    assert manifest.components[SEMANTIC_MAP.component].max_diff_vs_host["label_mismatch"] <= 0.01


def test_tensorrt_builtin_plugins_are_registered_once_and_a_failure_is_an_error(monkeypatch):
    # The ONNX parser imports ScatterElements(reduction="add") (semantic_map's scores) as TensorRT's own
    # ScatterElements plugin: the registry must hold it before any parse or deserialization, with or without MSDA.
    import engines.tensorrt_builder as builder

    calls = []

    class FakeTensorRT:
        ok = True

        @classmethod
        def init_libnvinfer_plugins(cls, logger, namespace):
            calls.append(namespace)
            return cls.ok

    monkeypatch.setattr(builder, "_builtin_plugins", False)
    builder.init_builtin_plugins(FakeTensorRT, None)
    builder.init_builtin_plugins(FakeTensorRT, None)
    assert calls == [""]
    monkeypatch.setattr(builder, "_builtin_plugins", False)
    FakeTensorRT.ok = False
    with pytest.raises(EngineError, match="built-in plugins"):
        builder.init_builtin_plugins(FakeTensorRT, None)
