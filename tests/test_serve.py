"""Serving many streams: Runtime.segment_batch, the server's batching and per-stream captions (no Triton), then
`python -m runtime.serve` itself on loopback ports, driven by tritonclient.

The server runs from LLMFORMER_SERVE_PYTHON (default: this interpreter): PyTriton 0.7 requires numpy<2, so
`.ci/run` makes a serving environment with `.ci/serve_env` and points the variable at it. Where no interpreter
can serve, the server tests skip and say why; the rest run everywhere."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.common import free_ports
from conftest import ROOT

SERVE_PYTHON = os.environ.get("LLMFORMER_SERVE_PYTHON") or sys.executable
VOCABULARIES = [["ball", "box"], ["sky", "grass", "tree"], ["cat"], ["road", "car", "person", "sign"]]
CAPTIONS = ["a red ball on a box", None, "a cat on a mat", "a car on the road"]


def frames_for(n: int, seed: int = 0) -> list[np.ndarray]:
    """Frames of several sizes (the server and segment_batch take any size per frame)."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 64), (64, 64), (40, 72), (80, 56)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


# -- Runtime.segment_batch ---------------------------------------------------------------------------------
def test_segment_batch_equals_segment_per_frame_with_mixed_sizes_and_vocabularies(tiny_artifacts):
    import runtime

    frames = frames_for(4)
    vocabularies = VOCABULARIES
    with runtime.load(tiny_artifacts) as rt:
        batch = rt.segment_batch(frames, vocabularies, CAPTIONS)
        single = [rt.segment(f, v, c) for f, v, c in zip(frames, vocabularies, CAPTIONS)]
    assert len(batch) == 4
    for b, s, f in zip(batch, single, frames):
        assert b.labels.shape == f.shape[:2]
        assert np.array_equal(b.labels, s.labels) and b.classes == s.classes and b.caption == s.caption
        np.testing.assert_allclose(b.scores, s.scores, rtol=1e-5, atol=1e-6)


def test_segment_batch_checks_every_frame_before_running_any(tiny_artifacts):
    import runtime

    frames = frames_for(3)
    with runtime.load(tiny_artifacts) as rt:
        with pytest.raises(runtime.RuntimeInputError, match="frame 2 of the batch.*too many|frame 2 of the batch"):
            rt.segment_batch(frames, [["a"], ["b"], [f"n{i}" for i in range(rt.max_vocab + 1)]])
        with pytest.raises(runtime.FrameError, match="frame 1 of the batch"):
            rt.segment_batch([frames[0], np.zeros((0, 0, 3), np.uint8)], [["a"], ["b"]])
        with pytest.raises(runtime.RuntimeInputError, match="2 entries for 3 frames"):
            rt.segment_batch(frames, [["a"], ["b"]])
        with pytest.raises(TypeError):
            rt.segment_batch(frames[0], [["a"]])
        assert rt.frames == 0, "a refused batch runs no frame"


# -- the server's parts, without Triton -------------------------------------------------------------------
class FakeRuntime:
    """segment_batch records its batches and waits for `release`; a vocabulary with 'boom' fails the batch."""

    max_vocab, captioner, captioning = 4, None, None

    def __init__(self):
        self.batches = []
        self.entered, self.release = threading.Event(), threading.Event()

    def segment_batch(self, frames, vocabularies, captions):
        self.entered.set()
        self.release.wait(10)
        self.batches.append(len(frames))
        if any(v and "boom" in v for v in vocabularies):
            raise ValueError("boom")
        return [("seg", f.shape, tuple(v or ()), c) for f, v, c in zip(frames, vocabularies, captions)]

    def segment(self, frame, vocabulary, caption):
        if vocabulary and "boom" in vocabulary:
            raise ValueError("boom alone")
        return ("seg", frame.shape, tuple(vocabulary or ()), caption)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_batcher_gathers_concurrent_requests_and_a_failing_one_fails_alone():
    from runtime.serving import Batcher, Job

    rt = FakeRuntime()
    batcher = Batcher([rt], max_batch=4, max_delay_s=0.05)
    jobs = [Job(np.zeros((4 + i, 5, 3), np.uint8), ["boom"] if i == 2 else [f"c{i}"], None, None) for i in range(4)]
    results = {}

    def submit(job):
        try:
            results[id(job)] = batcher.submit(job, timeout=20).result
        except ValueError as exc:
            results[id(job)] = exc

    threads = [threading.Thread(target=submit, args=(j,)) for j in jobs]
    threads[0].start()
    wait_for(rt.entered.is_set)                 # job 0 runs alone and holds the worker
    for t in threads[1:]:
        t.start()
    wait_for(lambda: batcher._queue.qsize() == 3)   # the other three wait in the queue
    rt.release.set()
    for t in threads:
        t.join(20)
    batcher.close()
    assert rt.batches == [1, 3], "the three queued requests ran as one batch"
    assert isinstance(results[id(jobs[2])], ValueError) and str(results[id(jobs[2])]) == "boom alone"
    for i in (0, 1, 3):
        assert results[id(jobs[i])] == ("seg", (4 + i, 5, 3), (f"c{i}",), None)


def test_check_request_refuses_malformed_inputs_with_the_tensor_named():
    from runtime.frames import FrameError
    from runtime.pipeline import RuntimeInputError
    from runtime.serving import RequestError, check_request

    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(RequestError, match="no 'frame' input"):
        check_request({}, 256)
    with pytest.raises(RequestError, match="UINT8"):
        check_request({"frame": frame.astype(np.float32)}, 256)
    with pytest.raises(FrameError, match="empty"):
        check_request({"frame": np.zeros((0, 0, 3), np.uint8)}, 256)
    with pytest.raises(RequestError, match="10000 names; this build takes at most 256"):
        check_request({"frame": frame, "vocabulary": np.array([b"x"] * 10000, dtype=object)}, 256)
    with pytest.raises(RequestError, match="not UTF-8"):
        check_request({"frame": frame, "vocabulary": np.array([b"\xff\xfe"], dtype=object)}, 256)
    with pytest.raises(RuntimeInputError):
        check_request({"frame": frame, "vocabulary": np.array([b"ok", b" "], dtype=object)}, 256)
    with pytest.raises(RequestError, match="stream_id"):
        check_request({"frame": frame, "stream_id": np.array([b"x" * 300], dtype=object)}, 256)
    job = check_request({"frame": frame, "vocabulary": np.array([b"dog", "caf\u00e9".encode()], dtype=object),
                         "caption": np.array([b"a dog"], dtype=object),
                         "stream_id": np.array([b" cam0 "], dtype=object)}, 256)
    assert (job.vocabulary, job.caption, job.stream_id) == (["dog", "caf\u00e9"], "a dog", "cam0")


def test_stream_captions_keep_the_newest_frame_per_stream_and_caption_each_stream_apart():
    from runtime.serving import StreamCaptions

    gate, seen = threading.Event(), []

    def caption_fn(frame):
        gate.wait(10)
        seen.append(int(frame[0, 0, 0]))
        return f"caption of {int(frame[0, 0, 0])}"

    def frame(v):
        return np.full((2, 2, 3), v, np.uint8)

    def pending_taken():
        wait_for(lambda: captions._streams["cam0"].pending is None)

    captions = StreamCaptions(caption_fn, caption_every=2)
    # With a vocabulary the stream's first frame is not waited for; its caption is made in the background,
    # and no second one is asked for while it is on its way.
    assert captions.caption_for("cam0", frame(1), has_vocabulary=True) is None
    pending_taken()
    for v in (2, 3):
        assert captions.caption_for("cam0", frame(v), has_vocabulary=True) is None
    assert captions._streams["cam0"].pending is None
    gate.set()
    wait_for(lambda: captions.completed == 1)
    gate.clear()
    assert captions.caption_for("cam0", frame(4), has_vocabulary=True) == "caption of 1"   # due: 3 frames since
    pending_taken()                                           # the worker holds frame 4 at the gate
    for v in (5, 6, 7, 8):                                    # 6 and 8 are due; 8 replaces 6 (newest frame)
        assert captions.caption_for("cam0", frame(v), has_vocabulary=True) == "caption of 1"
    gate.set()
    wait_for(lambda: captions.completed == 3)
    assert seen == [1, 4, 8]
    assert captions.caption_for("cam0", frame(9), has_vocabulary=True) == "caption of 8"
    # Without a vocabulary a new stream's first frame is captioned now, and its caption is its own.
    assert captions.caption_for("cam1", frame(20), has_vocabulary=False) == "caption of 20"
    assert captions.caption_for("cam0", frame(10), has_vocabulary=False) == "caption of 8"
    captions.stop()


# -- python -m runtime.serve -------------------------------------------------------------------------------
def _serve_python_problem() -> str | None:
    try:
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "tritonclient is not installed here (pip install -e '.[test]')"
    probe = ("import numpy, pytriton, sys; "
             "sys.exit(0 if int(numpy.__version__.split('.')[0]) < 2 else 'numpy ' + numpy.__version__)")
    res = subprocess.run([SERVE_PYTHON, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["?"])[-1]
        return (f"{SERVE_PYTHON} cannot run PyTriton ({why}): PyTriton 0.7 needs numpy<2; make a serving "
                f"environment with `bash .ci/serve_env` and set LLMFORMER_SERVE_PYTHON to the path it prints")
    return None


def descendants(pid: int) -> set[int]:
    """Every live process under `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ServerProcess:
    def __init__(self, artifacts: Path, *extra: str):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.url = f"127.0.0.1:{self.http}"
        cmd = [SERVE_PYTHON, "-m", "runtime.serve", str(artifacts), "--address", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               "--stats-every-s", "0", *extra]
        # LD_LIBRARY_PATH left as it is: the command sets what Triton's stub needs itself.
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(120) or self.proc.poll() is not None:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.lines[-40:]))
        self.tree = descendants(self.proc.pid) | {self.proc.pid}

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("serving "):
                self.ready.set()

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


@pytest.fixture(scope="module")
def server(tiny_artifacts):
    problem = _serve_python_problem()
    if problem:
        pytest.skip(problem)
    srv = ServerProcess(tiny_artifacts, "--max-batch", "4", "--max-queue-delay-ms", "5", "--caption-every", "3")
    yield srv
    srv.stop()
    for pid in srv.tree:   # whatever a failed test left (the last test checks that nothing is left)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def client(srv):
    from tritonclient.http import InferenceServerClient

    return InferenceServerClient(srv.url, network_timeout=60, connection_timeout=60)


def infer(c, frame, vocabulary=None, caption=None, stream_id=None, datatype="UINT8", inputs=None):
    from tritonclient.http import InferInput, InferRequestedOutput

    if inputs is None:
        inputs = []
        if frame is not None:
            tensor = InferInput("frame", list(frame.shape), datatype)
            tensor.set_data_from_numpy(frame, binary_data=True)
            inputs.append(tensor)
        for name, value in (("vocabulary", vocabulary), ("caption", None if caption is None else [caption]),
                            ("stream_id", None if stream_id is None else [stream_id])):
            if value is not None:
                tensor = InferInput(name, [len(value)], "BYTES")
                tensor.set_data_from_numpy(np.array([v.encode() for v in value], dtype=object), binary_data=True)
                inputs.append(tensor)
    outputs = [InferRequestedOutput(n, binary_data=True) for n in ("labels", "classes", "scores", "caption",
                                                                    "timings")]
    return c.infer("llmformer_segment", inputs, outputs=outputs)


REFERENCE = """
import json, sys, numpy as np, runtime
args = json.loads(sys.argv[1])
frames = [np.load(p) for p in args["frames"]]
with runtime.load(args["artifacts"]) as rt:
    out = {str(i): rt.segment(f, v, c).labels for i, (f, v, c) in enumerate(zip(frames, args["vocabularies"],
                                                                              args["captions"]))}
np.savez(args["out"], **out)
"""


def reference_labels(tmp_path, artifacts, frames, vocabularies, captions) -> list[np.ndarray]:
    """Runtime.segment's labels, computed by the server's interpreter (its OpenCV may differ from this one's)."""
    paths = []
    for i, f in enumerate(frames):
        paths.append(str(tmp_path / f"frame{i}.npy"))
        np.save(paths[-1], f)
    args = {"frames": paths, "artifacts": str(artifacts), "vocabularies": vocabularies, "captions": captions,
            "out": str(tmp_path / "ref.npz")}
    res = subprocess.run([SERVE_PYTHON, "-c", REFERENCE, json.dumps(args)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = np.load(tmp_path / "ref.npz")
    return [ref[str(i)] for i in range(len(frames))]


def test_eight_concurrent_clients_get_the_labels_runtime_segment_gives(server, tiny_artifacts, tmp_path):
    frames = frames_for(16, seed=1)
    vocabularies = [VOCABULARIES[i % 4] for i in range(16)]
    captions = [CAPTIONS[i % 4] or "a tree under the sky" for i in range(16)]
    expected = reference_labels(tmp_path, tiny_artifacts, frames, vocabularies, captions)
    got, errors, batch_sizes = {}, [], []

    def stream(k):
        c = client(server)
        try:
            for i in (k, k + 8):            # two frames per client, of different sizes
                res = infer(c, frames[i], vocabularies[i], captions[i], stream_id=f"cam{k}")
                got[i] = res.as_numpy("labels")
                assert [s.decode() for s in res.as_numpy("classes")] == vocabularies[i]
                assert res.as_numpy("caption")[0].decode() == captions[i]
                batch_sizes.append(json.loads(res.as_numpy("timings")[0])["batch_size"])
        except Exception as exc:  # reported below, with the server's log
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, f"{errors[0]!r}\n" + "".join(server.lines[-20:])
    for i in range(16):
        assert got[i].dtype == np.int32 and got[i].shape == frames[i].shape[:2]
        assert np.array_equal(got[i], expected[i]), f"frame {i}"
    assert all(1 <= b <= 4 for b in batch_sizes)


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server):
    from tritonclient.http import InferInput
    from tritonclient.utils import InferenceServerException

    c = client(server)
    frame = frames_for(1)[0]
    vocabulary = ["ball", "box"]
    bad = {
        "wrong dtype": dict(frame=frame.astype(np.float32), datatype="FP32", vocabulary=vocabulary),
        "wrong rank": dict(frame=frame[..., 0], vocabulary=vocabulary),
        "4 channels": dict(frame=np.zeros((8, 8, 4), np.uint8), vocabulary=vocabulary),
        "0x0 frame": dict(frame=np.zeros((0, 0, 3), np.uint8), vocabulary=vocabulary),
        "10,000 names": dict(frame=frame, vocabulary=[f"name{i}" for i in range(10000)]),
        "blank name": dict(frame=frame, vocabulary=["ball", "  "]),
        "no frame": dict(frame=None, vocabulary=vocabulary),
    }
    messages = {}
    for what, kwargs in bad.items():
        with pytest.raises(InferenceServerException) as err:
            infer(c, **kwargs)
        messages[what] = str(err.value)
    assert "10000 names; this build takes at most" in messages["10,000 names"]
    assert "frame" in messages["no frame"]
    assert "empty or blank" in messages["blank name"]
    # A BYTES frame of the right shape is refused by Triton against the model's config.
    tensor = InferInput("frame", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"x"], dtype=object))
    with pytest.raises(InferenceServerException):
        infer(c, None, inputs=[tensor])
    res = infer(c, frame, vocabulary, "a red ball on a box")
    assert res.as_numpy("labels").shape == frame.shape[:2]
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("llmformer_segment")
    c.close()


def test_a_client_that_disconnects_mid_request_does_not_disturb_others(server):
    frame = frames_for(1)[0]
    body = b"x" * 1000
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.http)) as s:   # headers, half a body, gone
            s.sendall(b"POST /v2/models/llmformer_segment/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n" + body)
    results = []

    def one():
        c = client(server)
        results.append(infer(c, frame, ["ball", "box"], "a red ball").as_numpy("labels").shape)
        c.close()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    # and one that leaves while its request is being served
    with socket.create_connection(("127.0.0.1", server.http)) as s:
        payload = json.dumps({"inputs": [{"name": "frame", "shape": [16, 16, 3], "datatype": "UINT8",
                                          "data": [0] * (16 * 16 * 3)},
                                         {"name": "vocabulary", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
        s.sendall(f"POST /v2/models/llmformer_segment/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                  f"\r\nContent-Length: {len(payload)}\r\n\r\n{payload}".encode())
    for t in threads:
        t.join(60)
    assert results == [frame.shape[:2]] * 4


def test_streams_keep_their_own_captions_and_the_caption_model_answers(server):
    from tritonclient.http import InferInput

    c = client(server)
    frame = frames_for(1, seed=3)[0]
    # With a vocabulary, a stream's first frame does not wait for a caption; the later frames use the
    # stream's caption once the worker has made it. Without stream id and caption: captioned synchronously.
    first = infer(c, frame, ["ball", "box"], stream_id="camA")
    assert first.as_numpy("labels").shape == frame.shape[:2]
    sync = infer(c, frame, ["ball", "box"])
    tensor = InferInput("frame", list(frame.shape), "UINT8")
    tensor.set_data_from_numpy(frame, binary_data=True)
    caption = c.infer("llmformer_caption", [tensor]).as_numpy("caption")[0].decode()
    assert sync.as_numpy("caption")[0].decode() == caption
    c.close()


def test_client_command_and_remote_runtime_use_the_server(server, tmp_path):
    from runtime.client import RemoteRuntime, ServerError

    frame = frames_for(1)[0]
    with RemoteRuntime(f"http://{server.url}", stream_id="camR") as remote:
        assert remote.ready()
        seg = remote.segment(frame, ["ball", "box"], "a red ball on a box")
        assert seg.labels.shape == frame.shape[:2] and seg.classes == ["ball", "box"]
        assert seg.timings["batch_size"] >= 1 and "segment" in seg.timings
        with pytest.raises(ServerError, match="RequestError: 'vocabulary' has 300 names"):
            remote.segment(frame, [f"n{i}" for i in range(300)])
    if importlib.util.find_spec("tritonclient.grpc") is not None and importlib.util.find_spec("grpc") is not None:
        with RemoteRuntime(f"grpc://127.0.0.1:{server.grpc}", stream_id="camG") as remote:
            assert np.array_equal(remote.segment(frame, ["ball", "box"], "a red ball on a box").labels, seg.labels)
    import cv2

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for f in frames_for(3):
        writer.write(cv2.resize(f, (64, 48)))
    writer.release()
    res = subprocess.run([sys.executable, "-m", "runtime.client", f"http://{server.url}", "--source", str(video),
                          "--stream-id", "cam0", "--vocabulary", "ball,box", "--headless", "--out-dir",
                          str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 frames" in res.stdout and len(list((tmp_path / "out").glob("*.png"))) == 3
    res = subprocess.run([sys.executable, "-m", "runtime.camera", "--server", f"http://{server.url}", "--source",
                          str(video), "--stream-id", "cam1", "--vocabulary", "ball,box", "--headless", "--out-dir",
                          str(tmp_path / "camera")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "3 frames" in res.stdout and len(list((tmp_path / "camera").glob("*.png"))) == 3
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "manifest.json").write_text("{}")
    for argv, needle in (([], "an artifact folder or --server"),
                         (["--server", "http://x", str(tmp_path / "build")], "not both"),
                         (["--server", "http://x", "--threads", "2"], "the server's own options")):
        res = subprocess.run([sys.executable, "-m", "runtime.camera", *argv, "--headless"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and needle in res.stderr, res.stderr


def test_metrics_endpoint_counts_the_requests(server):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).read().decode()
    assert 'nv_inference_request_success{model="llmformer_segment"' in text


def test_sigterm_stops_the_server_and_leaves_no_process_behind(server):
    tree = descendants(server.proc.pid) | {server.proc.pid}
    assert len(tree) >= 3, "the server, Triton and its stubs"
    assert server.stop(signal.SIGTERM) == 0, "".join(server.lines[-20:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in tree):
        time.sleep(0.1)
    assert [p for p in tree if alive(p)] == []
    assert any(line.startswith("serving ") for line in server.lines)


def test_serve_command_line_errors_are_one_line(tmp_path):
    folder = tmp_path / "build"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    for args, needle in (([str(tmp_path / "nope")], "does not exist"),
                         ([str(folder), "--http-port", "0"], "must be a port"),
                         ([str(folder), "--max-batch", "0"], "--max-batch"),
                         ([str(folder), "--http-port", "9000", "--grpc-port", "9000"], "the ports must differ")):
        res = subprocess.run([sys.executable, "-m", "runtime.serve", *args], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: ") and needle in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif(int(np.__version__.split(".")[0]) < 2, reason="checks the refusal under NumPy 2")
def test_serve_under_numpy_2_says_how_to_get_a_serving_environment(tiny_artifacts):
    res = subprocess.run([sys.executable, "-m", "runtime.serve", str(tiny_artifacts)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: ") and "llmformer-edge[serve]" in res.stderr
