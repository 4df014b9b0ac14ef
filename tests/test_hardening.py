"""What a camera loop can meet (issue 8, item 4): frames of changing size, grayscale and RGBA frames, a
captioner that raises or times out, a caption with no usable nouns, a vocabulary change between frames,
segment() from two threads, and the latest-frame policy. Deterministic: fake caption functions gated by
threading.Event and fake clocks; no sleeps."""
import logging
import threading

import numpy as np
import pytest

import runtime
from conftest import Clock
from runtime.camera import run_loop
from runtime.captioning import AsyncCaptioner, CaptionPolicy, CaptionTimeout
from llmformer.data.frames import demo_frame
from runtime.frames import FrameError, to_rgb

VOCAB = ["ball", "box", "table", "wall"]
WAIT = 10.0


@pytest.fixture(scope="module")
def rt(tiny_artifacts):
    with runtime.load(tiny_artifacts) as rt:
        yield rt


@pytest.fixture
def fresh(rt):
    """The shared Runtime, with asynchronous captioning and profiling off after each test."""
    yield rt
    rt.stop_captioning()
    rt.profiler = None


class Scripted:
    """A caption function returning scripted captions in order (the last one repeats); `gate` blocks it
    while clear. Records the frames it was given and the most captions that ever ran at once."""

    def __init__(self, *captions: str, blocked: bool = False):
        self.captions, self.calls, self.frames = list(captions), 0, []
        self.gate, self.started = threading.Event(), threading.Event()
        if not blocked:
            self.gate.set()
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, payload):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.frames.append(payload)
            caption = self.captions[min(self.calls, len(self.captions) - 1)]
            self.calls += 1
        self.started.set()
        try:
            assert self.gate.wait(WAIT)
            if isinstance(caption, BaseException):
                raise caption
            return caption
        finally:
            with self._lock:
                self.active -= 1


# -- frames -------------------------------------------------------------------------------------------
def test_frames_of_changing_size_get_labels_at_their_own_size(fresh):
    fresh.start_captioning(CaptionPolicy(every_frames=2, scene_change=0.1),
                           caption_fn=Scripted("a red ball on a wooden table"))
    for i, size in enumerate([(64, 64), (48, 80), (120, 90), (33, 47), (200, 20), (64, 64)]):
        frame = demo_frame(i, size)
        if i == 3:
            frame = frame.astype(np.float32) / 255.0          # float frames may come between uint8 ones
        seg = fresh.segment(frame)
        assert seg.labels.shape == size and seg.caption == "a red ball on a wooden table"
        assert runtime.visualize(frame, seg).shape == (*size, 3)


@pytest.mark.parametrize("shape,match", [((32, 40), "to_rgb"), ((32, 40, 1), "to_rgb"),
                                         ((32, 40, 4), "to_rgb.*'rgba'"), ((32, 40, 2), "3 channels")])
def test_grayscale_and_rgba_frames_are_refused_with_the_fix(fresh, shape, match):
    with pytest.raises(FrameError, match=match):
        fresh.segment(np.zeros(shape, np.uint8), vocabulary=VOCAB)


def test_to_rgb_converts_gray_bgr_rgba_and_bgra(fresh):
    rgb = demo_frame(4, (32, 40))
    gray = rgb[..., 1].copy()
    assert np.array_equal(to_rgb(gray), np.repeat(gray[..., None], 3, -1))
    assert np.array_equal(to_rgb(gray[..., None]), to_rgb(gray))
    alpha = np.full((32, 40, 1), 9, np.uint8)
    assert np.array_equal(to_rgb(np.concatenate([rgb, alpha], -1), "rgba"), rgb)
    assert np.array_equal(to_rgb(np.concatenate([rgb[..., ::-1], alpha], -1), "bgra"), rgb)
    assert np.array_equal(to_rgb(rgb[..., ::-1], "bgr"), rgb)
    assert to_rgb(rgb) is rgb
    with pytest.raises(FrameError, match="order"):
        to_rgb(rgb, "yuv")
    with pytest.raises(FrameError, match="uint8"):
        to_rgb(rgb.astype(np.float32))
    a = fresh.segment(to_rgb(gray), vocabulary=VOCAB)
    b = fresh.segment(np.repeat(gray[..., None], 3, -1), vocabulary=VOCAB)
    assert np.array_equal(a.labels, b.labels)


# -- the captioner ------------------------------------------------------------------------------------
def test_a_raising_captioner_does_not_stop_the_loop(fresh, caplog):
    fn = Scripted("a red ball on a wooden table", RuntimeError("CUDA out of memory"))
    fresh.start_captioning(CaptionPolicy(every_frames=1, scene_change=None), caption_fn=fn)

    first = []

    def waited(i, frame, seg, image):   # let each frame's caption attempt finish: no timing in the test
        fresh.captioning.worker.wait_idle(WAIT)
        first.append(first[0] if first else seg.frame)
        assert seg.caption == "a red ball on a wooden table" and seg.caption_frame == first[0]

    with caplog.at_level(logging.WARNING, logger="llmformer_edge"):
        stats = run_loop(fresh, (demo_frame(i, (48, 64)) for i in range(5)), on_result=waited)
    assert stats.frames == 5 and stats.stopped_by == "end of stream" and stats.skipped == 0
    assert stats.caption_errors == 4 and "CUDA out of memory" in caplog.text


def test_a_caption_past_the_timeout_is_dropped_and_never_overlaps_the_next():
    clock, fn = Clock(), Scripted("a ball on a table")
    ac = AsyncCaptioner(fn, CaptionPolicy(every_frames=1, scene_change=None, timeout_s=5.0), clock=clock).start()
    try:
        first, _ = ac.step(0, "f0")                                  # waits for the first caption
        assert first.frame == 0
        fn.gate.clear()
        fn.started.clear()
        assert ac.step(1, "f1")[0] is first
        assert fn.started.wait(WAIT)                                 # f1 is running, blocked
        clock.t = 6.0                                                # ... past the 5 s timeout
        for i in range(2, 6):                                        # frames keep coming meanwhile
            assert ac.step(i, f"f{i}")[0] is first                   # the last caption stays in use
        fn.gate.set()
        assert ac.worker.wait_idle(WAIT)
        assert fn.frames == ["f0", "f1", "f5"]                       # f1 dropped late; f2..f4 replaced
        assert fn.max_active == 1                                    # never two captions at once
        assert ac.worker.timeouts == 1 and isinstance(ac.worker.last_error, CaptionTimeout)
        assert ac.worker.latest().frame == 5 and ac.worker.latest().seq == 2
    finally:
        fn.gate.set()
        ac.stop()


def test_a_timed_out_caption_keeps_the_last_priors_in_segment(fresh):
    fn = Scripted("a red ball on a wooden table", "a blue box")
    fresh.start_captioning(CaptionPolicy(every_frames=1, scene_change=None, timeout_s=5.0), caption_fn=fn)
    clock = Clock(100.0)
    fresh.captioning.clock = fresh.captioning.worker.clock = clock
    first = fresh.segment(demo_frame(0, (48, 64)), vocabulary=VOCAB)
    fn.gate.clear()
    fn.started.clear()
    fresh.segment(demo_frame(1, (48, 64)), vocabulary=VOCAB)        # hands frame 1 to the captioner
    assert fn.started.wait(WAIT)
    clock.t = 110.0
    seg = fresh.segment(demo_frame(2, (48, 64)), vocabulary=VOCAB)
    assert seg.caption == first.caption and seg.priors is first.priors and seg.caption_age_s == pytest.approx(10.0)
    fn.gate.set()
    assert fresh.captioning.worker.wait_idle(WAIT) and fresh.captioning.worker.timeouts == 1


def test_without_a_vocabulary_a_caption_with_no_nouns_keeps_the_last_usable_priors(fresh):
    fn = Scripted("a red ball on a wooden table", "It is very nice.", "!!! ???")
    fresh.start_captioning(CaptionPolicy(every_frames=1, scene_change=None), caption_fn=fn)
    first = fresh.segment(demo_frame(0, (48, 64)))                  # no vocabulary: the caption's objects
    assert {"ball", "table"} <= set(first.classes)
    for i in range(1, 4):
        fresh.captioning.worker.wait_idle(WAIT)
        seg = fresh.segment(demo_frame(i, (48, 64)))
        assert seg.caption == first.caption and seg.caption_frame == first.frame and seg.classes == first.classes
        assert seg.labels.min() >= 0                                  # labeled, not blanked out
    assert fn.calls >= 3
    # With a vocabulary there is always something to label with: the newest caption, no priors from it.
    seg = fresh.segment(demo_frame(4, (48, 64)), vocabulary=VOCAB)
    assert seg.caption == "!!! ???" and seg.classes == VOCAB and not seg.priors.objects


def test_a_first_caption_with_no_nouns_falls_back_to_the_vocabulary_or_unlabeled(fresh):
    fresh.start_captioning(CaptionPolicy(every_frames=10, scene_change=None), caption_fn=Scripted("It is nice."))
    seg = fresh.segment(demo_frame(0, (48, 64)), vocabulary=VOCAB)
    assert seg.classes == VOCAB and seg.labels.max() < len(VOCAB) and seg.caption == "It is nice."
    seg = fresh.segment(demo_frame(1, (48, 64)))                     # nothing to label with: -1, no error
    assert seg.classes == [] and (seg.labels == -1).all()


# -- vocabulary ---------------------------------------------------------------------------------------
def test_a_vocabulary_change_between_frames_labels_with_the_new_one(fresh, tiny_artifacts):
    fresh.start_captioning(CaptionPolicy(every_frames=1, scene_change=None),
                           caption_fn=Scripted("a dog on a couch in a room"))
    frame = demo_frame(5, (48, 64))
    vocabularies = [VOCAB, ["dog", "couch"], ["car", "tree", "street", "sky", "road"], None, VOCAB[:1]]
    results = []
    for vocabulary in vocabularies:
        seg = fresh.segment(frame, vocabulary=vocabulary)
        expect = vocabulary or ["dog", "couch", "room"]
        assert seg.classes == expect and seg.scores.shape == (len(expect),)
        assert 0 <= seg.labels.min() and seg.labels.max() < len(expect)
        results.append(seg)
    # Nothing carries over: the same frame, vocabulary and caption on a fresh Runtime give the same labels.
    with runtime.load(tiny_artifacts) as other:
        again = other.segment(frame, vocabulary=vocabularies[2], caption="a dog on a couch in a room")
    np.testing.assert_allclose(again.class_logits, results[2].class_logits, atol=1e-5)
    assert np.array_equal(again.labels, results[2].labels)


# -- threads ------------------------------------------------------------------------------------------
class CountingEngine:
    """Wraps an engine; records how many threads are inside it at once. The first call waits (up to 1 s)
    for a call from another thread, so that an unserialized segment() would be caught overlapping."""

    def __init__(self, engine, other_thread_entered: threading.Event):
        self.engine, self.other = engine, other_thread_entered
        self.active = self.max_active = self.calls = 0
        self.lock = threading.Lock()
        self.first_thread = None

    def __call__(self, feeds):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls += 1
            first = self.calls == 1
            if first:
                self.first_thread = threading.current_thread()
            elif threading.current_thread() is not self.first_thread:
                self.other.set()
        try:
            if first:
                self.other.wait(1.0)   # with the lock in segment() the other thread cannot get here
            return self.engine(feeds)
        finally:
            with self.lock:
                self.active -= 1

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run_bound(self, inputs, outputs=None):
        """The pipeline's device-side call, counted the same way (host-staged through __call__)."""
        from engines.base import DeviceTensor

        feeds = {n: v.to_numpy() if isinstance(v, DeviceTensor) else v for n, v in inputs.items()}
        return {n: DeviceTensor.from_array(a) for n, a in self(feeds).items()}


def test_segment_from_two_threads_is_serialized_and_correct(tiny_artifacts):
    jobs = {"a": (VOCAB, (48, 64)), "b": (["dog", "couch", "room"], (70, 50))}
    with runtime.load(tiny_artifacts) as reference:
        expected = {name: [reference.segment(demo_frame(i, size), vocabulary=vocab, caption="a dog on a ball").labels
                           for i in range(3)] for name, (vocab, size) in jobs.items()}
    with runtime.load(tiny_artifacts) as rt:
        entered = threading.Event()
        rt.engines["segmenter"] = counting = CountingEngine(rt.engines["segmenter"], entered)
        results, errors = {}, []
        barrier = threading.Barrier(2)

        def work(name):
            vocab, size = jobs[name]
            try:
                barrier.wait(WAIT)
                results[name] = [rt.segment(demo_frame(i, size), vocabulary=vocab, caption="a dog on a ball")
                                 for i in range(3)]
            except Exception as exc:  # reported below, with the thread's name
                errors.append((name, exc))

        threads = [threading.Thread(target=work, args=(n,), name=f"segment-{n}") for n in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert counting.max_active == 1 and counting.calls == 6
    assert sorted(seg.frame for segs in results.values() for seg in segs) == list(range(6))
    for name, (vocab, size) in jobs.items():
        for seg, labels in zip(results[name], expected[name]):
            assert seg.classes == vocab and np.array_equal(seg.labels, labels)


# -- the latest-frame policy ----------------------------------------------------------------------------
def test_the_captioner_lags_by_at_most_one_frame_request(fresh):
    fn = Scripted("a red ball on a wooden table")
    fresh.start_captioning(CaptionPolicy(every_frames=1, scene_change=None), caption_fn=fn)
    worker = fresh.captioning.worker
    base = fresh.segment(demo_frame(0, (48, 64)), vocabulary=VOCAB).frame   # captioned (first-frame wait)
    fn.gate.clear()
    fn.started.clear()
    fresh.segment(demo_frame(1, (48, 64)), vocabulary=VOCAB)          # frame 1: the captioner is busy with it
    assert fn.started.wait(WAIT)
    for i in range(2, 10):                                            # 8 more requests while it is busy
        seg = fresh.segment(demo_frame(i, (48, 64)), vocabulary=VOCAB)
        assert seg.caption_frame == base
        assert worker.pending_frame == base + i                       # one waiting request: the newest
    assert worker.replaced == 7
    fn.gate.set()
    assert worker.wait_idle(WAIT)
    assert [f.frame_size for f in fn.frames] == [(48, 64)] * 3
    assert worker.latest().frame == base + 9 and worker.completed == 3  # frames 0, 1, 9: no backlog
    assert fresh.segment(demo_frame(10, (48, 64)), vocabulary=VOCAB).caption_frame == base + 9
