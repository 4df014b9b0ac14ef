"""Asynchronous captioning (runtime.captioning): latest-frame worker, refresh policy, first-frame rule,
failures, shutdown, and segment() in async mode on the tiny artifacts. Deterministic: fake caption
functions gated by threading.Event, a fake clock, no sleeps for timing."""
import logging
import threading

import numpy as np
import pytest

import runtime
from conftest import Clock
from runtime.captioning import (AsyncCaptioner, CaptionPolicy, CaptionScheduler, CaptionWorker, cosine_distance,
                                pooled_signature)
from llmformer.data.frames import demo_frame
from runtime.pipeline import RuntimeInputError

VOCAB = ["ball", "box", "table", "wall"]
WAIT = 10.0  # generous upper bound for Event waits; never reached when the code is right


class Gated:
    """A caption function that records its payloads and blocks while `gate` is clear."""

    def __init__(self, blocked: bool = False, fail_on=()):
        self.gate = threading.Event()
        if not blocked:
            self.gate.set()
        self.started = threading.Event()
        self.seen, self.threads, self.fail_on = [], [], set(fail_on)

    def __call__(self, payload):
        self.seen.append(payload)
        self.threads.append(threading.current_thread().name)
        self.started.set()
        assert self.gate.wait(WAIT)
        if payload in self.fail_on:
            raise RuntimeError(f"captioner broke on {payload}")
        return f"a ball on a table ({payload})"


# -- the worker ----------------------------------------------------------------------------------------
def test_latest_frame_policy_captions_only_the_newest_pending_request():
    fn = Gated(blocked=True)
    with CaptionWorker(fn) as w:
        w.submit("f0", 0)
        assert fn.started.wait(WAIT)            # the worker is now blocked inside f0
        replaced = [w.submit(f"f{i}", i) for i in range(1, 6)]
        assert replaced == [False, True, True, True, True]
        assert w.latest() is None and not w.idle
        fn.gate.set()
        assert w.wait_idle(WAIT)
        assert fn.seen == ["f0", "f5"]          # no backlog: f1..f4 were replaced
        latest = w.latest()
        assert latest.seq == 2 and latest.frame == 5 and latest.text == "a ball on a table (f5)"
        assert w.completed == 2 and w.replaced == 4 and w.errors == 0


def test_a_raising_captioner_is_logged_and_the_last_caption_stays(caplog):
    fn = Gated(fail_on={"f1"})
    with CaptionWorker(fn) as w:
        w.submit("f0", 0)
        assert w.wait_for(1, WAIT).frame == 0
        with caplog.at_level(logging.WARNING, logger="llmformer_edge"):
            w.submit("f1", 1)
            assert w.wait_idle(WAIT)
        assert w.errors == 1 and isinstance(w.last_error, RuntimeError)
        assert w.latest().frame == 0 and w.latest().seq == 1
        assert "captioning frame 1 failed" in caplog.text
        w.submit("f2", 2)                       # the worker survives the failure
        assert w.wait_for(2, WAIT).frame == 2


def test_stop_joins_the_thread_and_drops_pending_requests():
    before = threading.active_count()
    fn = Gated(blocked=True)
    w = CaptionWorker(fn).start()
    assert threading.active_count() == before + 1
    w.submit("f0", 0)
    assert fn.started.wait(WAIT)
    w.submit("f1", 1)
    assert w.stop(timeout=0.01) is False        # f0 is still running: reported, not hung
    fn.gate.set()
    w._thread.join(WAIT)
    assert not w.alive and fn.seen == ["f0"]    # f1 was dropped, not captioned
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="stopped"):
        w.submit("f2", 2)


# -- the policy ----------------------------------------------------------------------------------------
def test_policy_validation():
    with pytest.raises(ValueError, match="first_frame"):
        CaptionPolicy(first_frame="maybe")
    with pytest.raises(ValueError, match="every_frames"):
        CaptionPolicy(every_frames=0)
    with pytest.raises(ValueError, match="scene_change"):
        CaptionPolicy(scene_change=3.0)


def test_refresh_every_n_frames():
    clock = Clock()
    ac = AsyncCaptioner(Gated(), CaptionPolicy(every_frames=3, scene_change=None), clock=clock).start()
    try:
        reasons = []
        for i in range(10):
            ac.worker.wait_idle(WAIT)
            reasons.append(ac.step(i, f"f{i}")[1])
        assert [i for i, r in enumerate(reasons) if r] == [0, 3, 6, 9]
        assert reasons[0] == "first" and reasons[3] == "frames"
    finally:
        ac.stop()


def test_refresh_every_t_seconds_with_a_fake_clock():
    clock = Clock()
    ac = AsyncCaptioner(Gated(), CaptionPolicy(every_frames=None, every_seconds=2.0, scene_change=None),
                        clock=clock).start()
    try:
        submitted = []
        for i in range(8):
            clock.t = 0.75 * i
            ac.worker.wait_idle(WAIT)
            if ac.step(i, f"f{i}")[1]:
                submitted.append(i)
        assert submitted == [0, 3, 6]           # t = 0, 2.25, 4.5
    finally:
        ac.stop()


def test_scene_change_triggers_on_the_pooled_vision_features():
    s = CaptionScheduler(CaptionPolicy(every_frames=None, scene_change=0.15))
    rng = np.random.default_rng(0)
    scene_a = rng.normal(size=(2, 1, 17, 32)).astype(np.float32)
    scene_b = rng.normal(size=(2, 1, 17, 32)).astype(np.float32)
    sig_a, sig_b = pooled_signature(scene_a), pooled_signature(scene_b)
    assert sig_a.shape == (64,)
    assert s.decide(0, 0.0, sig_a) == "first"
    s.submitted(0, 0.0, sig_a)
    noisy = pooled_signature(scene_a + 0.01 * rng.normal(size=scene_a.shape).astype(np.float32))
    assert s.decide(1, 0.1, noisy) is None and s.last_distance < 0.15
    assert s.decide(2, 0.2, sig_b) == "scene" and s.last_distance >= 0.15
    s.submitted(2, 0.2, sig_b)
    assert s.decide(3, 0.3, sig_b) is None      # the new scene is now the reference
    assert cosine_distance(sig_a, sig_a) == pytest.approx(0.0, abs=1e-6)
    assert cosine_distance(sig_a, -sig_a) == pytest.approx(2.0)


def test_first_frame_wait_blocks_for_the_first_caption_then_never_again():
    fn = Gated()
    ac = AsyncCaptioner(fn, CaptionPolicy(every_frames=2, scene_change=None, first_frame="wait")).start()
    try:
        published, reason = ac.step(0, "f0")
        assert reason == "first" and published.frame == 0
        fn.gate.clear()                         # the captioner is now slow: frames must not wait
        fn.started.clear()
        published, reason = ac.step(2, "f2")
        assert reason == "frames" and published.frame == 0
        assert fn.started.wait(WAIT)
        assert ac.step(3, "f3") == (published, None)
        fn.gate.set()
        assert ac.worker.wait_idle(WAIT) and ac.step(4, "f4")[0].frame == 2
    finally:
        fn.gate.set()
        ac.stop()


def test_first_frame_vocabulary_does_not_wait():
    fn = Gated(blocked=True)
    ac = AsyncCaptioner(fn, CaptionPolicy(first_frame="vocabulary")).start()
    try:
        assert ac.step(0, "f0") == (None, "first")
        assert fn.started.wait(WAIT)
        assert ac.step(1, "f1") == (None, None)  # still nothing, still no wait
    finally:
        fn.gate.set()
        ac.stop()


def test_a_stalled_captioner_is_logged_once(caplog):
    clock = Clock()
    fn = Gated(blocked=True)
    ac = AsyncCaptioner(fn, CaptionPolicy(first_frame="vocabulary", timeout_s=5.0), clock=clock).start()
    try:
        ac.step(0, "f0")
        assert fn.started.wait(WAIT)
        clock.t = 6.0
        with caplog.at_level(logging.WARNING, logger="llmformer_edge"):
            ac.step(1, "f1")
            ac.step(2, "f2")
        assert caplog.text.count("the captioner has run") == 1
    finally:
        fn.gate.set()
        ac.stop()


# -- segment() in async mode ---------------------------------------------------------------------------
def test_segment_is_synchronous_by_default(tiny_artifacts):
    rt = runtime.load(tiny_artifacts)
    assert rt.captioning is None
    seg = rt.segment(demo_frame(0, (64, 64)), vocabulary=VOCAB)
    assert seg.caption_frame == seg.frame and seg.caption_age_s == 0.0
    seg = rt.segment(demo_frame(0, (64, 64)), vocabulary=VOCAB, caption="a ball")
    assert seg.caption_frame is None and seg.caption_age_s is None


def test_segment_never_calls_the_captioner_synchronously_after_the_first_frame(tiny_artifacts, monkeypatch):
    before = threading.active_count()
    rt = runtime.load(tiny_artifacts, captioning=CaptionPolicy(every_frames=2, scene_change=None))
    assert threading.active_count() == before + 1
    original, threads, gate = rt.caption, [], threading.Event()
    gate.set()

    def counted(image, *a, **k):
        threads.append(threading.current_thread().name)
        assert image.segmenter_input is None and image.image_embeds is not None  # embeddings, not frames
        assert gate.wait(WAIT)
        return original(image, *a, **k)

    monkeypatch.setattr(rt, "caption", counted)
    main = threading.current_thread().name
    with rt:
        first = rt.segment(demo_frame(0, (64, 64)), vocabulary=VOCAB)  # waits for the first caption
        assert first.caption_frame == first.frame and isinstance(first.caption, str)
        gate.clear()                                                   # the captioner becomes very slow
        try:
            for i in range(1, 6):
                seg = rt.segment(demo_frame(i, (64, 64)), vocabulary=VOCAB)
                assert seg.caption_frame == first.frame and seg.caption == first.caption
                assert seg.caption_age_s >= 0 and seg.labels.shape == (64, 64)
        finally:
            gate.set()
        assert rt.captioning.worker.wait_idle(WAIT)
        seg = rt.segment(demo_frame(6, (64, 64)), vocabulary=VOCAB)
        assert seg.caption_frame == first.frame + 4                   # the newest submitted, no backlog
    assert main not in threads and threads
    assert rt.captioning is None and threading.active_count() == before


def test_captioner_errors_keep_the_last_priors_in_segment(tiny_artifacts):
    calls = []

    def flaky(image):
        calls.append(image)
        if len(calls) > 1:
            raise RuntimeError("out of memory")
        return "a red ball on a table"

    rt = runtime.load(tiny_artifacts)
    rt.start_captioning(CaptionPolicy(every_frames=1, scene_change=None), caption_fn=flaky)
    try:
        a = rt.segment(demo_frame(0, (64, 64)))
        for i in range(1, 4):
            rt.captioning.worker.wait_idle(WAIT)
            seg = rt.segment(demo_frame(i, (64, 64)))
            assert seg.caption == "a red ball on a table" and seg.caption_frame == a.frame
            assert seg.priors is a.priors                               # parsed once, reused
        assert rt.captioning.worker.errors >= 2
    finally:
        rt.close()


def test_first_frame_modes_in_segment(tiny_artifacts):
    fn = Gated(blocked=True)
    rt = runtime.load(tiny_artifacts)
    try:
        rt.start_captioning(CaptionPolicy(first_frame="vocabulary"), caption_fn=fn)
        with pytest.raises(RuntimeInputError, match="no caption is ready"):
            rt.segment(demo_frame(0, (64, 64)))
        seg = rt.segment(demo_frame(1, (64, 64)), vocabulary=VOCAB)
        assert seg.caption is None and seg.caption_frame is None and seg.classes == VOCAB
        fn.gate.set()
        rt.captioning.worker.wait_idle(WAIT)
        # first_frame="wait" where the first caption fails: vocabulary alone, or a clear error without one.
        def broken(image):
            raise RuntimeError("no GPU memory")

        rt.start_captioning(CaptionPolicy(first_frame="wait"), caption_fn=broken)
        seg = rt.segment(demo_frame(2, (64, 64)), vocabulary=VOCAB)
        assert seg.caption is None and seg.classes == VOCAB
        with pytest.raises(RuntimeInputError, match="no GPU memory"):
            rt.segment(demo_frame(3, (64, 64)))                         # retried, failed again, said why
    finally:
        fn.gate.set()
        rt.close()
