"""The camera loop (runtime.camera): sources, the latest-frame reader, outputs, the command line headless on
a video file, and a clean stop on Ctrl-C and at the end of the stream."""
import threading

import cv2
import numpy as np
import pytest

import runtime
from runtime.camera import (FrameSource, PngSink, SourceError, VideoSink, gstreamer_available, main, open_capture,
                            parse_source, run_loop)
from runtime.captioning import CaptionPolicy
from llmformer.data.frames import demo_frame

VOCAB = ["ball", "box", "table", "wall"]
JETSON_CSI = ("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1 ! "
              "nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! appsink")
WAIT = 10.0


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """8 frames of 64 x 80 as MJPG in .avi (what opencv-python-headless writes and reads back)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 64))
    assert writer.isOpened()
    for i in range(8):
        writer.write(cv2.cvtColor(demo_frame(i // 4, (64, 80)), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_frames(path) -> tuple[int, tuple[int, ...] | None]:
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape
    cap.release()
    return n, shape


class FakeCapture:
    """A VideoCapture stand-in: serves `frames` (BGR), then blocks on `end_gate` before reporting the end."""

    def __init__(self, frames, gated_end: bool = False):
        self.frames, self.served = list(frames), 0
        self.end_gate = threading.Event()
        if not gated_end:
            self.end_gate.set()
        self.at_end = threading.Event()
        self.released = False

    def read(self):
        if self.served < len(self.frames):
            self.served += 1
            return True, self.frames[self.served - 1]
        self.at_end.set()
        assert self.end_gate.wait(WAIT)
        return False, None

    def get(self, prop):
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released = True


# -- sources ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source,kind", [
    (0, "camera"), ("1", "camera"), ("rtsp://10.0.0.2:8554/cam", "stream"), ("http://host/live.mjpg", "stream"),
    (JETSON_CSI, "gstreamer"), ("clips/street.mp4", "file"),
])
def test_sources_are_told_apart(source, kind):
    assert parse_source(source)[0] == kind


def test_unopenable_sources_are_clear_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_capture(tmp_path / "missing.avi")
    with pytest.raises(SourceError, match="empty"):
        parse_source("  ")
    if not gstreamer_available():
        with pytest.raises(SourceError, match="without GStreamer"):
            open_capture(JETSON_CSI)


def test_frames_in_order_are_converted_from_bgr_gray_and_bgra():
    rgb = demo_frame(0, (6, 8))
    bgr = rgb[..., ::-1].copy()
    gray = np.full((6, 8), 77, np.uint8)
    bgra = np.dstack([bgr, np.full((6, 8), 255, np.uint8)])
    cap = FakeCapture([bgr, gray, bgra])
    with FrameSource(cap, latest=False) as source:
        frames = list(source)
    assert cap.released and len(frames) == 3 and source.dropped == 0
    assert np.array_equal(frames[0], rgb) and np.array_equal(frames[2], rgb)
    assert frames[1].shape == (6, 8, 3) and (frames[1] == 77).all()
    assert source.fps == 25.0


def test_live_sources_hand_over_the_newest_frame_and_count_the_dropped():
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(5)]
    cap = FakeCapture(frames, gated_end=True)
    source = FrameSource(cap, latest=True)
    try:
        assert cap.at_end.wait(WAIT)         # the reader has stored frame 4 and is waiting in read()
        newest = source.read(WAIT)
        assert (newest == 4).all() and source.dropped == 4 and source.read_frames == 5
        cap.end_gate.set()
        assert source.read(WAIT) is None     # end of stream
    finally:
        cap.end_gate.set()
        source.close()
    assert cap.released and not source._thread.is_alive()


def test_video_sink_keeps_the_first_size_and_png_sink_each_frame_size(tmp_path):
    sink = VideoSink(tmp_path / "out.avi", fps=5)
    sink.write(demo_frame(0, (64, 80)), 0)
    sink.write(demo_frame(1, (40, 50)), 1)   # resized to 64 x 80
    sink.close()
    assert count_frames(tmp_path / "out.avi") == (2, (64, 80, 3))
    pngs = PngSink(tmp_path / "png")
    pngs.write(demo_frame(0, (64, 80)), 0)
    pngs.write(demo_frame(1, (40, 50)), 1)
    assert cv2.imread(str(tmp_path / "png" / "frame_000001.png")).shape == (40, 50, 3)
    with pytest.raises(SourceError, match=".avi"):
        VideoSink(tmp_path / "out.gif")


# -- the command line ---------------------------------------------------------------------------------
def test_camera_cli_headless_on_a_video_writes_pngs_and_a_video(tiny_artifacts, video, tmp_path, capsys):
    out_dir, out_video = tmp_path / "png", tmp_path / "overlay.avi"
    code = main([str(tiny_artifacts), "--source", str(video), "--headless", "--vocabulary", ",".join(VOCAB),
                 "--caption-every", "3", "--out-dir", str(out_dir), "--out-video", str(out_video)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "stopped: end of stream; 8 frames" in printed
    pngs = sorted(out_dir.glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:06d}.png" for i in range(8)]
    assert cv2.imread(str(pngs[0])).shape == (64, 80, 3)
    assert count_frames(out_video) == (8, (64, 80, 3))


def test_camera_cli_max_frames_and_a_fixed_caption(tiny_artifacts, video, tmp_path, capsys):
    assert main([str(tiny_artifacts), "--source", str(video), "--headless", "--caption", "a red ball on a box",
                 "--max-frames", "3", "--out-dir", str(tmp_path)]) == 0
    assert "stopped: max frames; 3 frames" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_camera_cli_refuses_what_it_cannot_do(tiny_artifacts, video, tmp_path, capsys):
    assert main([str(tiny_artifacts), "--source", str(video), "--display", "--headless"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert main([str(tiny_artifacts), "--source", str(tmp_path / "nope.avi"), "--headless"]) == 2
    assert "does not exist" in capsys.readouterr().err
    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        return                               # this OpenCV has a GUI: a window would open
    except cv2.error:
        pass
    # No output named and not headless means a window; without GUI support that is refused up front.
    assert main([str(tiny_artifacts), "--source", str(video)]) == 2
    assert "--headless" in capsys.readouterr().err


# -- stopping -----------------------------------------------------------------------------------------
def test_ctrl_c_stops_the_loop_cleanly(tiny_artifacts, tmp_path):
    before = threading.active_count()

    def frames():
        for i in range(100):
            if i == 3:
                raise KeyboardInterrupt
            yield demo_frame(i, (64, 80))

    sink = VideoSink(tmp_path / "a.avi", fps=5)
    with runtime.load(tiny_artifacts) as rt:
        rt.start_captioning(CaptionPolicy(every_frames=1, scene_change=None, first_frame="vocabulary"),
                            caption_fn=lambda image: "a red ball on a box")
        stats = run_loop(rt, frames(), VOCAB, sinks=[sink])
        assert stats.stopped_by == "interrupted" and stats.frames == 3
        # Ctrl-C while a frame is being handled: the frame in hand is finished, nothing else runs.
        seen = []

        def on_result(i, frame, seg, image):
            seen.append(i)
            if i == 1:
                raise KeyboardInterrupt

        stats = run_loop(rt, (demo_frame(i, (64, 80)) for i in range(10)), VOCAB, sinks=[PngSink(tmp_path / "b")],
                         on_result=on_result)
        assert stats.stopped_by == "interrupted" and seen == [0, 1]
    assert count_frames(tmp_path / "a.avi") == (3, (64, 80, 3))   # the video was finalized
    assert rt.captioning is None and threading.active_count() == before   # worker joined on close


def test_the_loop_never_waits_for_a_slow_captioner(tiny_artifacts):
    """The mechanism behind the throughput figure: after the first caption, frames flow while a caption
    is in progress (here one that cannot finish until the loop is over)."""
    gate, started, calls = threading.Event(), threading.Event(), []

    def slow(image):
        calls.append(image)
        if len(calls) > 1:
            started.set()
            assert gate.wait(WAIT)
        return "a red ball on a wooden table"

    with runtime.load(tiny_artifacts) as rt:
        rt.start_captioning(CaptionPolicy(every_frames=2, scene_change=None), caption_fn=slow)
        try:
            def picked_up(i, frame, seg, image):     # frame 2's caption has started before frame 4
                if i == 3:
                    assert started.wait(WAIT)

            stats = run_loop(rt, (demo_frame(i, (48, 64)) for i in range(12)), VOCAB, on_result=picked_up)
            assert stats.frames == 12 and len(calls) == 2
            running = rt.captioning.worker.running_for()
            assert running is not None and running[0] == 2   # frame 2's caption is still running
            assert rt.captioning.worker.pending_frame == 10    # and only the newest request waits
        finally:
            gate.set()
