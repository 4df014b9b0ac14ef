"""python -m runtime.client URL --source 0|FILE|RTSP --stream-id cam0: a camera on a remote `runtime.serve`.

`RemoteRuntime(url)` has the camera loop's side of `Runtime`: `segment(frame, vocabulary, caption)` returns a
`runtime.Segmentation` (labels, classes, scores, caption, timings; no priors, no raw logits), so
`runtime.camera.run_loop` and `runtime.visualize` draw the same overlays as with a local Runtime. With a
stream id the server keeps this stream's captions (refreshed asynchronously, latest frame first).

URL: `http://host:8000` (or `host:8000`) for HTTP, `grpc://host:8001` for gRPC. tritonclient is imported
here only, lazily.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

import numpy as np

from engines.errors import LLMFormerError
from runtime.commands import CommandError, CommandParser, bounded, output_folder, run_command
from runtime.serving import CAPTION_MODEL, SEGMENT_MODEL, Tensors

log = logging.getLogger("llmformer_edge.client")


class ServerError(LLMFormerError, RuntimeError):
    """The server refused a request or could not be reached; the message is the server's own reason."""


def _reason(exc: BaseException) -> str:
    """The server's reason from a tritonclient error: PyTriton sends the whole traceback; its last line is
    the error itself ("RuntimeInputError: vocabulary has 300 names; ...")."""
    text = str(getattr(exc, "message", lambda: None)() or exc)
    lines = [line.strip() for line in text.replace("\\n", "\n").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("At:", "/", "File ", "^", "~"))]
    reason = (lines[-1] if lines else type(exc).__name__).strip("'\"")
    head, sep, rest = reason.partition(": ")
    # "runtime.serving.RequestError: ..." -> "RequestError: ..."
    return f"{head.rsplit('.', 1)[-1]}{sep}{rest}" if sep and " " not in head else reason


def _bytes(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class RemoteRuntime:
    """A `runtime.serve` server behind the calls a camera loop makes on a Runtime."""

    def __init__(self, url: str, stream_id: str | None = None, timeout_s: float = 60.0):
        self.url, self.stream_id, self.timeout_s = url, stream_id, timeout_s
        self.grpc = url.startswith("grpc://")
        address = url.split("://", 1)[-1].rstrip("/")
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:   # checked before tritonclient sees it
            raise ServerError(f"{url!r} is not a server address: pass http://host:8000 or grpc://host:8001")
        try:
            if self.grpc:
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
        except ImportError:
            raise CommandError("the client needs tritonclient: pip install 'llmformer-edge[serve]'") from None
        self._tc = tc
        kwargs = {} if self.grpc else {"connection_timeout": timeout_s, "network_timeout": timeout_s}
        # gRPC takes its deadline per call (client_timeout); HTTP per connection, above.
        self._call = {"client_timeout": timeout_s} if self.grpc else {}
        self._client = tc.InferenceServerClient(address, **kwargs)
        self.captioning = None     # captions are the server's (per stream)
        self.profiler = None
        self.frames = 0

    def _input(self, name: str, array: np.ndarray, datatype: str):
        tensor = self._tc.InferInput(name, list(array.shape), datatype)
        if self.grpc:
            tensor.set_data_from_numpy(array)
        else:
            tensor.set_data_from_numpy(array, binary_data=True)
        return tensor

    def _infer(self, model: str, inputs: list, outputs: Sequence[str]):
        requested = [self._tc.InferRequestedOutput(name) if self.grpc
                     else self._tc.InferRequestedOutput(name, binary_data=True) for name in outputs]
        try:
            return self._client.infer(model, inputs, outputs=requested, **self._call)
        except self._tc.InferenceServerException as exc:
            raise ServerError(f"{model} at {self.url}: {_reason(exc)}") from None
        except OSError as exc:   # refused, reset, timed out
            raise ServerError(f"{model} at {self.url}: {type(exc).__name__}: {exc}") from None

    def ready(self) -> bool:
        try:
            return (bool(self._client.is_server_ready(**self._call))
                    and bool(self._client.is_model_ready(SEGMENT_MODEL, **self._call)))
        except Exception:
            return False

    def segment(self, frame: np.ndarray, vocabulary: Sequence[str] | None = None, caption: str | None = None,
                stream_id: str | None = None):
        """Segment one H x W x 3 uint8 RGB frame on the server; a `runtime.Segmentation`."""
        from runtime.pipeline import Segmentation

        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ServerError(f"frame must be H x W x 3 uint8 RGB, got {frame.dtype} {frame.shape} "
                              f"(runtime.to_rgb converts gray and 4-channel frames)")
        inputs = [self._input(Tensors.FRAME, frame, "UINT8")]
        if vocabulary is not None:
            inputs.append(self._input(Tensors.VOCABULARY, _bytes(list(vocabulary)), "BYTES"))
        if caption is not None:
            inputs.append(self._input(Tensors.CAPTION, _bytes([caption]), "BYTES"))
        stream_id = stream_id or self.stream_id
        if stream_id is not None:
            inputs.append(self._input(Tensors.STREAM_ID, _bytes([stream_id]), "BYTES"))
        res = self._infer(SEGMENT_MODEL, inputs, (Tensors.LABELS, Tensors.CLASSES, Tensors.SCORES,
                                                  Tensors.CAPTION, Tensors.TIMINGS))
        classes = [c.decode("utf-8") for c in res.as_numpy(Tensors.CLASSES).reshape(-1)]
        text = res.as_numpy(Tensors.CAPTION).reshape(-1)[0].decode("utf-8") or None
        timings = json.loads(res.as_numpy(Tensors.TIMINGS).reshape(-1)[0].decode("utf-8"))
        self.frames += 1
        return Segmentation(res.as_numpy(Tensors.LABELS), classes, res.as_numpy(Tensors.SCORES), text, None,
                            timings)

    def caption(self, frame: np.ndarray) -> str:
        res = self._infer(CAPTION_MODEL, [self._input(Tensors.FRAME, np.ascontiguousarray(frame), "UINT8")],
                          (Tensors.CAPTION,))
        return res.as_numpy(Tensors.CAPTION).reshape(-1)[0].decode("utf-8")

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # a client whose server already left
            pass

    def __enter__(self) -> "RemoteRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteRuntime({self.url!r}, stream_id={self.stream_id!r})"


def _main(argv=None) -> int:
    from runtime.camera import (DisplaySink, FrameSource, PngSink, SourceError, UsageError, VideoSink,
                                caption_option, check_source, parse_vocabulary, run_loop, video_file,
                                vocabulary_option)

    ap = CommandParser(prog="python -m runtime.client", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the server: http://host:8000 or grpc://host:8001")
    ap.add_argument("--source", default="0", help="camera index, video file, stream URL or GStreamer pipeline")
    ap.add_argument("--stream-id", default=None, help="this stream's name on the server (its captions are kept "
                                                      "per stream id); default: the source")
    ap.add_argument("--vocabulary", type=vocabulary_option, default=None, help="comma-separated class names")
    ap.add_argument("--caption", type=caption_option, default=None, help="a fixed description of the scene")
    ap.add_argument("--max-frames", type=bounded(int, 1), default=None)
    ap.add_argument("--headless", action="store_true", help="never open a window")
    ap.add_argument("--out-video", type=video_file, default=None)
    ap.add_argument("--out-dir", type=output_folder, default=None)
    ap.add_argument("--timeout", type=bounded(float, 0, low_open=True), default=60.0, help="seconds per request")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    check_source(args.source)
    stream_id = args.stream_id or args.source
    remote = RemoteRuntime(args.url, stream_id, args.timeout)
    if not remote.ready():
        raise CommandError(f"no ready {SEGMENT_MODEL} at {args.url} (start one: python -m runtime.serve ARTIFACTS)")
    display = not (args.headless or args.out_video or args.out_dir)
    sinks: list[Any] = []
    source = FrameSource.open(args.source)
    try:
        with source, remote:
            if display:
                try:
                    sinks.append(DisplaySink())
                except SourceError as exc:
                    raise UsageError(str(exc)) from exc
            if args.out_video is not None:
                sinks.append(VideoSink(args.out_video, source.fps or 30.0))
            if args.out_dir is not None:
                sinks.append(PngSink(args.out_dir))
            stats = run_loop(remote, source, parse_vocabulary(args.vocabulary), args.caption, sinks, args.max_frames)
    finally:
        for sink in sinks:
            sink.close()
    print(f"stopped: {stats.stopped_by}; {stats.frames} frames in {stats.seconds:.1f} s ({stats.fps():.2f} FPS), "
          f"{stats.skipped} skipped; stream {stream_id!r} on {args.url}")
    return 0


def main(argv=None) -> int:
    return run_command(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
