"""The batch axis: vision and segmenter graphs that take 1..B frames (build_engines.py --max-batch B), and
Runtime.segment_batch running them, equal to segment() per frame."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import runtime
from conftest import run_without_torch, tiny_preset
from engines.contract import BATCH_AXIS, CAPTIONER_VISION, SEGMENTER, VISION_TOWER, read_manifest
from export.build_engines import BuildError, build, check_inputs, parse_args

# Mixed on purpose: frame sizes, vocabulary lengths (one shared, one None: the caption's objects), captions given,
# None (the demo's captioner runs), and with more or fewer objects (the priors are padded to the largest).
SIZES = [(48, 64), (256, 256), (240, 320), (80, 56), (128, 96)]
VOCABULARIES = [["ball", "box"], ["sky", "grass", "tree", "road", "car", "person", "sign", "dog", "cat"], None,
                ["ball", "box"], ["table", "cup"]]
CAPTIONS = ["a red ball on a box", None, "a cat on a mat next to a dog and a small wooden chair", "a ball", None]


def frames_for(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*SIZES[i % len(SIZES)], 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def demo_artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "demo"
    build(parse_args(["--preset", "demo", "--out", str(out), "--skip-validation"]))
    return out


def tiny_build(tmp_path_factory, max_batch: int):
    out = tmp_path_factory.mktemp("batch") / f"tiny_b{max_batch}"
    build(parse_args(["--out", str(out), "--max-batch", str(max_batch), "--skip-validation", "--no-captioner"]),
          preset=tiny_preset())
    return out


@pytest.fixture(scope="module")
def tiny_b3(tmp_path_factory):
    return tiny_build(tmp_path_factory, 3)


@pytest.fixture(scope="module")
def tiny_unbatched(tmp_path_factory):
    """A build without a batch axis: the graphs of builds from before it."""
    return tiny_build(tmp_path_factory, 1)


def segmenter_calls(rt) -> list[int]:
    """Record the batch size of every segmenter call `rt` makes from now on."""
    engine, calls = rt.engines[SEGMENTER.component], []
    run = engine.run_bound

    def recorded(inputs, outputs=None):
        calls.append(inputs[SEGMENTER.frame].shape[0])
        return run(inputs, outputs)

    engine.run_bound = recorded
    return calls


def assert_same(batch, single):
    assert len(batch) == len(single)
    for b, s in zip(batch, single):
        assert b.classes == s.classes and b.caption == s.caption and b.frame is not None
        assert np.array_equal(b.labels, s.labels)
        np.testing.assert_allclose(b.scores, s.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.class_logits, s.class_logits, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(b.mask_logits, s.mask_logits, rtol=1e-4, atol=1e-4)


# -- the graphs ------------------------------------------------------------------------------------------------
def test_manifest_records_the_batch_range_and_tensorrt_profiles_take_it(tiny_b3, tiny_unbatched):
    from engines.tensorrt_builder import profiles_for

    m = read_manifest(tiny_b3)
    assert m.max_batch == 3
    tower = m.components[VISION_TOWER.component]
    pixels, hidden = tower.input(VISION_TOWER.pixel_values), tower.output(VISION_TOWER.vision_hidden_states)
    assert pixels.shape[0] == BATCH_AXIS and (pixels.min_shape[0], pixels.max_shape[0]) == (1, 3)
    assert hidden.shape[1] == BATCH_AXIS
    seg = m.components[SEGMENTER.component]
    for name in (SEGMENTER.frame, SEGMENTER.object_embeddings, SEGMENTER.prior_valid, SEGMENTER.relation_graph):
        assert seg.input(name).shape[0] == BATCH_AXIS and seg.input(name).max_shape[0] == 3
    assert seg.input(SEGMENTER.vocab_embeddings).shape[0] == "vocab", "the vocabulary is shared, not batched"
    # Every other axis stays static: the frame graphs read the mask size from here.
    assert all(isinstance(d, int) for d in seg.output(SEGMENTER.mask_logits).shape[1:])
    (profile,) = profiles_for(seg)
    lo, opt, hi = profile[SEGMENTER.frame]
    assert (lo[0], opt[0], hi[0]) == (1, 1, 3)
    old = read_manifest(tiny_unbatched)
    assert old.max_batch == 1 and old.components[VISION_TOWER.component].input(VISION_TOWER.pixel_values).shape[0] == 1


def test_batched_vision_and_segmenter_graphs_equal_their_batch_1_runs(demo_artifacts):
    m = read_manifest(demo_artifacts)
    rng = np.random.default_rng(0)
    vision = ort.InferenceSession(str(demo_artifacts / m.components[CAPTIONER_VISION.component].onnx.file))
    size = m.preprocess[VISION_TOWER.component].size
    pixels = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    embeds, hidden = vision.run([CAPTIONER_VISION.image_embeds, CAPTIONER_VISION.vision_hidden_states],
                                {CAPTIONER_VISION.pixel_values: pixels})
    for i in range(3):
        e, h = vision.run(None, {CAPTIONER_VISION.pixel_values: pixels[i:i + 1]})
        assert np.abs(embeds[i:i + 1] - e).max() < 1e-4 and np.abs(hidden[:, i:i + 1] - h).max() < 1e-4

    seg = m.components[SEGMENTER.component]
    session = ort.InferenceSession(str(demo_artifacts / seg.onnx.file))
    dim, frame = seg.input(SEGMENTER.vocab_embeddings).shape[1], m.preprocess[SEGMENTER.component].size
    counts, vocab = [1, 4, 2], rng.standard_normal((5, dim)).astype(np.float32)
    singles = []
    for i, k in enumerate(counts):
        relation = np.eye(k, dtype=np.float32)[None]
        relation[0, 0, -1] = 1.0
        singles.append({SEGMENTER.frame: rng.standard_normal((1, 3, frame, frame)).astype(np.float32),
                        SEGMENTER.vision_hidden_states: hidden[:, i:i + 1],
                        SEGMENTER.object_embeddings: rng.standard_normal((1, k, dim)).astype(np.float32),
                        SEGMENTER.attribute_embeddings: rng.standard_normal((1, k, dim)).astype(np.float32),
                        SEGMENTER.prior_valid: np.ones((1, k), np.float32), SEGMENTER.relation_graph: relation,
                        SEGMENTER.vocab_embeddings: vocab})
    # The batch pads each frame's priors to the largest count, the padding masked out by prior_valid = 0.
    K = max(counts)
    batch = {n: np.concatenate([f[n] for f in singles], 1 if n == SEGMENTER.vision_hidden_states else 0)
             for n in (SEGMENTER.frame, SEGMENTER.vision_hidden_states)}
    for name, shape in ((SEGMENTER.object_embeddings, (K, dim)), (SEGMENTER.attribute_embeddings, (K, dim)),
                        (SEGMENTER.prior_valid, (K,)), (SEGMENTER.relation_graph, (K, K))):
        padded = np.zeros((3, *shape), np.float32)
        for i, f in enumerate(singles):
            padded[(i, *[slice(0, d) for d in f[name].shape[1:]])] = f[name][0]
        batch[name] = padded
    batch[SEGMENTER.vocab_embeddings] = vocab
    masks, classes = session.run([SEGMENTER.mask_logits, SEGMENTER.class_logits], batch)
    for i, f in enumerate(singles):
        m1, c1 = session.run([SEGMENTER.mask_logits, SEGMENTER.class_logits], f)
        assert np.abs(masks[i:i + 1] - m1).max() < 1e-4 and np.abs(classes[i:i + 1] - c1).max() < 1e-4


# -- segment_batch ---------------------------------------------------------------------------------------------
def test_segment_batch_equals_segment_with_mixed_sizes_vocabularies_and_captions(demo_artifacts):
    frames = frames_for(5)
    with runtime.load(demo_artifacts) as rt:
        assert rt.max_batch == 8 and rt.batch_graphs is False, "on the CPU segment_batch loops by default"
        rt.batch_graphs = True
        calls = segmenter_calls(rt)
        batch = rt.segment_batch(frames, VOCABULARIES, CAPTIONS)
        assert calls == [5], "one segmenter call for the five frames"
        assert [b.frame for b in batch] == [0, 1, 2, 3, 4]
        single = [rt.segment(f, v, c) for f, v, c in zip(frames, VOCABULARIES, CAPTIONS)]
    assert [b.labels.shape for b in batch] == SIZES
    assert batch[2].classes == single[2].classes and "cat" in batch[2].classes   # the caption's objects
    assert_same(batch, single)


def test_vocabularies_beyond_the_build_range_together_go_to_separate_segmenter_calls(tiny_artifacts):
    frames = frames_for(3, seed=1)
    vocabularies = [[f"w{i}" for i in range(200)], [f"v{i}" for i in range(100)], ["w1", "v1"]]
    with runtime.load(tiny_artifacts) as rt:
        assert rt.max_vocab == 256
        rt.batch_graphs = True
        calls = segmenter_calls(rt)
        batch = rt.segment_batch(frames, vocabularies, ["a dog"] * 3)
        assert calls == [1, 2], "200 + 100 names exceed the range of 256: the first frame goes alone"
        single = [rt.segment(f, v, "a dog") for f, v in zip(frames, vocabularies)]
    assert_same(batch, single)


def test_a_batch_larger_than_the_build_takes_is_split(tiny_b3):
    frames = frames_for(7, seed=2)
    vocabularies = [VOCABULARIES[i % 2] for i in range(7)]
    with runtime.load(tiny_b3) as rt:
        rt.batch_graphs = True
        calls = segmenter_calls(rt)
        batch = rt.segment_batch(frames, vocabularies, ["a ball on a box"] * 7)
        assert calls == [3, 3, 1]
        single = [rt.segment(f, v, "a ball on a box") for f, v in zip(frames, vocabularies)]
    assert_same(batch, single)


def test_a_build_without_a_batch_axis_runs_segment_batch_frame_by_frame(tiny_unbatched):
    frames = frames_for(3, seed=3)
    with runtime.load(tiny_unbatched) as rt:
        rt.batch_graphs = True    # asked for, but the graphs take one frame
        calls = segmenter_calls(rt)
        batch = rt.segment_batch(frames, VOCABULARIES[:3], ["a ball"] * 3)
        assert calls == [1, 1, 1]
        single = [rt.segment(f, v, "a ball") for f, v in zip(frames, VOCABULARIES[:3])]
    assert_same(batch, single)


def test_segment_batch_runs_batched_without_torch(tiny_b3):
    run_without_torch(f"""
        import numpy as np, runtime
        rt = runtime.load({str(tiny_b3)!r}, backend="onnxruntime")
        rt.batch_graphs = True
        frames = [np.full((40 + 8 * i, 64, 3), 30 * i, np.uint8) for i in range(3)]
        out = rt.segment_batch(frames, [["ball"], ["box", "sky"], None], ["a ball", None, "a red box"])
        assert [o.labels.shape for o in out] == [f.shape[:2] for f in frames]
    """)


def test_max_batch_out_of_range_is_a_clear_build_error():
    for bad in ("0", "-2", "1000"):
        with pytest.raises(BuildError, match=f"--max-batch {bad}: give the most frames one call takes"):
            check_inputs(parse_args(["--max-batch", bad]))
