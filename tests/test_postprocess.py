"""Postprocessing for every vocabulary size up to the build's maximum (issue 16, item 5), and the frame messages.

`runtime.frames.semantic_map` resized all class maps in one cv2.resize; OpenCV 5 takes at most 128 channels,
so 129-256 names failed with `m->dims <= 2`. It now resizes in chunks and merges the reductions exactly."""
import cv2
import numpy as np
import pytest

import runtime
import runtime.frames as frames
from benchmarks.bench_postprocess import semantic_map_before
from runtime.frames import FrameError, check_frame, semantic_map, to_rgb

VOCABULARIES = (1, 2, 20, 127, 128, 129, 200, 256)


def logits(queries: int, mask: int, vocabulary: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Segmenter outputs as a trained model gives them: mask logits far from 0, class logits a few units apart."""
    rng = np.random.default_rng(seed)
    classes = rng.standard_normal((queries, vocabulary + 1)) * 2
    if vocabulary:       # each query prefers a class, spread over the vocabulary; every 5th the last class
        q = np.arange(queries)
        preferred = vocabulary - 1 - q * vocabulary // queries
        preferred[::5] = vocabulary - 1
        classes[q, preferred] += 10
    return (rng.standard_normal((queries, mask, mask)) * 8).astype(np.float32), classes.astype(np.float32)


def bilinear(x: np.ndarray, H: int, W: int) -> np.ndarray:
    """(V, h, w) -> (V, H, W), OpenCV's INTER_LINEAR (half-pixel centers, edges clamped) in float64 numpy:
    no channel limit, and no OpenCV."""
    def taps(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), pos - i0

    (y0, y1, wy), (x0, x1, wx) = taps(x.shape[1], H), taps(x.shape[2], W)
    rows = x[:, y0] * (1 - wy)[:, None] + x[:, y1] * wy[:, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def reference(masks: np.ndarray, classes: np.ndarray, size: tuple[int, int]):
    """Mask2Former semantic inference in float64: the (V, H, W) score maps, their argmax and top-2 margin."""
    c = classes.astype(np.float64)
    e = np.exp(c - c.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True))[:, :-1]
    sig = 1.0 / (1.0 + np.exp(-np.clip(masks.astype(np.float64), -60, 60)))
    up = bilinear(np.einsum("qv,qhw->vhw", probs, sig), *size)
    top2 = np.sort(up, 0)[-2:] if len(up) > 1 else np.concatenate([np.full_like(up, -np.inf), up])
    return up, up.argmax(0), top2[1] - top2[0]


def per_class(up: np.ndarray, labels: np.ndarray) -> np.ndarray:
    share = (up.max(0) / up.sum(0)).ravel()
    counts = np.bincount(labels.ravel(), minlength=len(up))
    return np.where(counts > 0, np.bincount(labels.ravel(), share, minlength=len(up)) / np.maximum(counts, 1), 0)


# -- every vocabulary size -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(16, 64, (72, 96)), (50, 24, (37, 61)), (16, 64, (30, 45))],
                         ids=["demo-masks", "edge-queries", "frame-smaller-than-masks"])
@pytest.mark.parametrize("vocabulary", VOCABULARIES)
def test_labels_and_scores_match_a_reference_without_a_channel_limit(vocabulary, shape):
    queries, mask, size = shape
    masks, classes = logits(queries, mask, vocabulary, seed=vocabulary)
    labels, scores = semantic_map(masks, classes, size)
    up, ref_labels, margin = reference(masks, classes, size)
    assert labels.shape == size and labels.dtype == np.int32 and scores.shape == (vocabulary,)
    # float32 against float64: a label may differ only where the two best classes tie to rounding.
    assert np.array_equal(labels[margin > 1e-5], ref_labels[margin > 1e-5])
    assert (labels != ref_labels).mean() <= 1e-3
    np.testing.assert_allclose(scores, per_class(up, labels), rtol=1e-5, atol=1e-7)
    assert ((scores >= 0) & (scores <= 1)).all()
    if vocabulary > 128:                       # the classes past OpenCV 5's 128 channels do win pixels
        assert (labels >= 128).any()


@pytest.mark.parametrize("vocabulary", (1, 2, 3, 4, 5, 20, 127, 128))
def test_up_to_128_classes_results_are_bitwise_those_of_the_previous_implementation(vocabulary):
    masks, classes = logits(16, 64, vocabulary, seed=vocabulary)
    for size in ((360, 480), (37, 61)):
        new, old = semantic_map(masks, classes, size), semantic_map_before(masks, classes, size)
        assert np.array_equal(new[0], old[0]) and np.array_equal(new[1], old[1])


@pytest.mark.parametrize("vocabulary", (129, 256))
def test_above_128_classes_the_previous_implementation_failed_on_opencv_5_and_agrees_bitwise_on_4(vocabulary):
    masks, classes = logits(50, 24, vocabulary, seed=vocabulary)
    new = semantic_map(masks, classes, (90, 130))
    try:
        old = semantic_map_before(masks, classes, (90, 130))
    except cv2.error as exc:                   # the bug: one resize of more channels than this OpenCV takes
        assert int(cv2.__version__.split(".")[0]) >= 5 and "dims" in str(exc)
        return
    assert np.array_equal(new[0], old[0]) and np.array_equal(new[1], old[1])


@pytest.mark.parametrize("vocabulary,floats", [(20, 10 * 90 * 130), (45, 12 * 90 * 130), (256, 10 * 90 * 130)])
def test_results_do_not_depend_on_the_chunking(monkeypatch, vocabulary, floats):
    masks, classes = logits(16, 64, vocabulary, seed=3)
    whole = semantic_map(masks, classes, (90, 130))
    monkeypatch.setattr(frames, "_CHUNK_FLOATS", floats)       # 10-12 channels a chunk
    assert len(frames._channel_chunks(vocabulary, 90 * 130)) > 1
    chunked = semantic_map(masks, classes, (90, 130))
    assert np.array_equal(whole[0], chunked[0]) and np.array_equal(whole[1], chunked[1])


def test_a_tie_across_chunks_goes_to_the_earlier_class():
    masks, classes = logits(16, 32, 128, seed=5)
    doubled = np.concatenate([classes[:, :-1], classes[:, :-1], classes[:, -1:]], 1)   # class k + 128 == class k
    labels, scores = semantic_map(masks, doubled, (90, 130))
    assert frames._channel_chunks(256, 90 * 130) == [(0, 128), (128, 256)]
    assert labels.max() < 128 and (scores[128:] == 0).all()


@pytest.mark.parametrize("pixels", [64 * 64, 480 * 640, 1920 * 1080, 7680 * 4320])
def test_chunks_cover_every_class_in_pieces_opencv_resizes_alike(pixels):
    for channels in range(1, 600):
        chunks = frames._channel_chunks(channels, pixels)
        assert chunks[0][0] == 0 and chunks[-1][1] == channels
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        sizes = [hi - lo for lo, hi in chunks]
        assert max(sizes) <= 128
        # OpenCV's 1-, 3- and 4-channel kernels round differently: only a whole vocabulary of that size uses them.
        assert len(sizes) == 1 or min(sizes) >= 5


def test_no_classes_is_a_clear_error():
    masks, classes = logits(16, 16, 0)
    with pytest.raises(ValueError, match="at least one class"):
        semantic_map(masks, classes, (32, 32))


@pytest.mark.parametrize("names", (129, 256))
def test_segment_takes_the_builds_largest_vocabulary(tiny_artifacts, names):
    rt = runtime.load(tiny_artifacts)
    assert rt.max_vocab == 256
    vocabulary = [f"thing number {i}" for i in range(names)]
    seg = rt.segment(np.full((48, 64, 3), 90, np.uint8), vocabulary=vocabulary)
    assert seg.labels.shape == (48, 64) and 0 <= seg.labels.min() and seg.labels.max() < names
    assert len(seg.scores) == names


# -- frame messages ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,fix", [
    ((3, 320, 240), r"frame\.transpose\(1, 2, 0\)"),
    ((4, 32, 40), r"to_rgb\(frame\.transpose\(1, 2, 0\), 'rgba'\)"),
    ((1, 32, 40), r"to_rgb\(frame\[0\]\)"),
])
def test_a_channels_first_frame_is_named_with_the_fix(shape, fix):
    with pytest.raises(FrameError, match="channels-first") as info:
        check_frame(np.zeros(shape, np.uint8))
    assert info.match(fix) and info.match(str(shape).replace("(", r"\(").replace(")", r"\)"))
    with pytest.raises(FrameError, match="channels-first"):     # to_rgb says the same
        to_rgb(np.zeros(shape, np.uint8))


def test_the_suggested_transpose_gives_a_frame_that_is_accepted():
    chw = np.arange(3 * 8 * 10, dtype=np.uint8).reshape(3, 8, 10)
    assert check_frame(chw.transpose(1, 2, 0)).shape == (8, 10, 3)


@pytest.mark.parametrize("shape,match", [
    ((1, 32, 40, 3), r"batch of 1\? pass frame\[0\]"),
    ((1, 3, 32, 40), r"batch of 1, channels-first\? pass frame\[0\]\.transpose\(1, 2, 0\)"),
    ((2, 32, 40, 3), r"batch of 2\? pass one frame at a time"),
    ((), "a scalar"),
    ((30,), r"reshape it: frame\.reshape\(H, W, 3\)"),
])
def test_frames_of_the_wrong_rank_say_what_they_look_like(shape, match):
    with pytest.raises(FrameError, match=match):
        check_frame(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("frame,match", [
    (np.zeros((8, 8, 3), bool), r"boolean mask.*astype\(np\.uint8\) \* 255"),
    (np.full((8, 8, 3), 4000, np.uint16), r"16-bit.*\[4000, 4000\].*\(frame >> 8\)\.astype\(np\.uint8\)"),
    (np.full((8, 8, 3), 200, np.int16), r"values are in \[200, 200\], so pass frame\.astype\(np\.uint8\)"),
    (np.full((8, 8, 3), -5, np.int16), r"\[-5, -5\] would wrap in uint8"),
    (np.full((8, 8, 3), 7, np.int64), r"frame\.astype\(np\.uint8\)"),
    (np.zeros((8, 8, 3), np.float16), r"frame\.astype\(np\.float32\)"),
    (np.zeros((8, 8, 3), np.complex64), "not pixel data"),
])
def test_unsupported_dtypes_are_refused_with_the_conversion(frame, match):
    with pytest.raises(FrameError, match="dtype must be uint8") as info:
        check_frame(frame)
    assert info.match(match)


def test_a_frame_over_8k_is_refused_with_a_downscale():
    huge = np.broadcast_to(np.zeros(1, np.uint8), (8000, 8000, 3))      # no memory behind it
    with pytest.raises(FrameError, match=r"64\.0 Mpx.*8K UHD.*cv2\.resize\(frame, None, fx=0\.72"):
        check_frame(huge)
    assert check_frame(np.broadcast_to(np.zeros(1, np.uint8), (4320, 7680, 3))).shape == (4320, 7680, 3)


@pytest.mark.parametrize("view", [lambda f: f[..., ::-1], lambda f: f[:, ::-1], np.asfortranarray,
                                  lambda f: f[1:-1:2, 3:]], ids=["bgr-view", "mirrored", "fortran", "strided-crop"])
def test_strided_frames_are_accepted_as_one_contiguous_copy(view):
    frame = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    got = check_frame(view(frame))
    assert got.flags.c_contiguous and np.array_equal(got, view(frame))
    cv2.rectangle(got, (0, 0), (4, 4), (255, 0, 0))          # OpenCV can draw on it (not on the views)
    assert check_frame(frame) is frame                        # a contiguous frame is not copied


@pytest.mark.parametrize("frame,match", [
    (np.zeros((8, 8, 3), np.float32), r"\(frame \* 255 \+ 0\.5\)\.astype\(np\.uint8\)"),
    (np.full((8, 8), 60000, np.uint16), r"\(frame >> 8\)\.astype\(np\.uint8\)"),
    (np.zeros((8, 8, 0), np.uint8), "empty"),
])
def test_to_rgb_says_how_to_convert(frame, match):
    with pytest.raises(FrameError, match="uint8 frames" if frame.size else "empty") as info:
        to_rgb(frame)
    assert info.match(match)
