"""python -m runtime.serve ARTIFACTS: many cameras on one node through Triton Inference Server (PyTriton).

Models:
  llmformer_segment  in:  frame UINT8 (H, W, 3); optional vocabulary BYTES (V), caption BYTES (1), stream_id BYTES (1)
                     out: labels INT32 (H, W), classes BYTES (V), scores FP32 (V), caption BYTES (1),
                          timings BYTES (1) (JSON: ms per stage, the batch it ran in, its queue wait)
  llmformer_caption  in:  frame UINT8 (H, W, 3)       out: caption BYTES (1)

Batching across requests is the server's own (runtime.serving.Batcher), not Triton's dynamic batcher: PyTriton
fails every request of one Triton batch when any of them fails, so each request is its own Triton execution
(`--max-batch` model instances per Runtime keep that many in flight) and is checked alone; checked requests
then meet in batches of up to --max-batch, waiting at most --max-queue-delay-ms, on one worker per Runtime
(--instances). Triton still does what it is for: HTTP/gRPC, health and readiness (/v2/health/ready),
Prometheus metrics (--metrics-port, /metrics), per-model statistics. Per-stage timings come back with every
response (`timings`) and are logged every --stats-every-s seconds.

Shutdown: SIGINT or SIGTERM stop Triton (which ends its Python-backend stubs), finish the queued requests,
stop the caption worker and close the engines; Triton's server process also gets SIGTERM if this process dies
(PyTriton sets the parent-death signal), so nothing is left running.

PyTriton is imported here only, lazily: `import runtime` never needs it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.commands import CommandError, CommandParser, UsageError, artifact_folder, bounded, run_command
from runtime.serving import (CAPTION_MODEL, SEGMENT_MODEL, Batcher, RequestError, StreamCaptions, Tensors, check_request, segmentation_outputs)

log = logging.getLogger("llmformer_edge.serve")
START_ATTEMPTS = 3


def _check_serving_stack() -> None:
    """PyTriton importable, with the NumPy its Python-backend stub can read."""
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise CommandError("serving needs PyTriton and the Triton client: pip install 'llmformer-edge[serve]'") \
            from None
    if int(np.__version__.split(".")[0]) >= 2:
        # Measured: PyTriton 0.7's bundled stub (pybind11 older than NumPy 2) reads NumPy 2 arrays as empty.
        raise CommandError(f"PyTriton's Triton Python-backend stub cannot exchange tensors with NumPy "
                           f"{np.__version__} (every output comes back empty): serve from an environment with "
                           f"numpy<2, e.g. pip install 'llmformer-edge[serve]' in a virtual environment of its own")


def stub_library_path() -> str:
    """LD_LIBRARY_PATH for Triton's Python-backend stub: the running interpreter's libpython first.

    The stub for 3.11 links libpython3.11.so; found in the system's folder it is another build of 3.11 than
    this interpreter (a pyenv or conda one), and models fail to load (`'_thread.RLock' object has no
    attribute '_recursion_count'`). PyTriton copies os.environ when it starts the server, so setting it
    here, before Triton starts, reaches the stub; no re-exec is needed."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    return os.pathsep.join([libdir] + [p for p in current if p != libdir]) if libdir else os.pathsep.join(current)


def _adopt_orphans() -> None:
    """Make this process the subreaper of its descendants (Linux): a Python-backend stub whose Triton server
    exited is then re-parented here, not to init, and `_end_children` can end it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        PR_SET_CHILD_SUBREAPER = 36  # noqa: N806
        ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _children() -> list[int]:
    pids = []
    me = str(os.getpid())
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def _end_children(grace_s: float = 3.0) -> int:
    """After Triton stopped: end whatever it left (measured: a stub can outlive its server), SIGTERM then
    SIGKILL, and reap them. Returns how many were left."""
    if not sys.platform.startswith("linux"):
        return 0
    left = _children()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _children():
            _reap()
            time.sleep(0.05)
        if not _children():
            break
    _reap()
    return len(left)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _strings_out(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_)


class Server:
    """The runtimes, the batcher and the caption state behind the Triton models."""

    def __init__(self, runtimes, max_batch: int, max_delay_s: float, caption_every: int):
        self.runtimes = runtimes
        rt = runtimes[0]
        self.max_vocab = rt.max_vocab
        self.streams = None
        if rt.captioner is not None:
            # Captions run on the first Runtime's captioner (its own lock): one caption at a time per node.
            self.streams = StreamCaptions(lambda frame: rt.caption(frame).text, caption_every=caption_every)
        self.batcher = Batcher(runtimes, max_batch=max_batch, max_delay_s=max_delay_s, streams=self.streams)

    def infer_segment(self, requests):
        """PyTriton's callable: a list of requests (one per Triton execution here) -> a list of outputs."""
        out = []
        for request in requests:
            job = check_request(dict(request.items()), self.max_vocab, self.runtimes[0].captioner is not None)
            self.batcher.submit(job)
            out.append(segmentation_outputs(job))
        return out

    def infer_caption(self, requests):
        out = []
        for request in requests:
            frame = dict(request.items()).get(Tensors.FRAME)
            if frame is None:
                raise RequestError(f"the request has no '{Tensors.FRAME}' input (UINT8, H x W x 3 RGB)")
            out.append({Tensors.CAPTION: _strings_out([self.runtimes[0].caption(frame).text])})
        return out

    def stats_line(self) -> str:
        b = self.batcher
        mean = b.frames / b.batches if b.batches else 0.0
        streams = self.streams.streams() if self.streams else 0
        captions = self.streams.completed if self.streams else 0
        return f"frames {b.frames}, batches {b.batches} (mean size {mean:.2f}), streams {streams}, captions {captions}"

    def close(self) -> None:
        self.batcher.close()
        if self.streams is not None:
            self.streams.stop()
        for rt in self.runtimes:
            rt.close()


def bind_models(triton, server: Server, max_batch: int, instances: int) -> None:
    from pytriton.model_config import ModelConfig, Tensor

    frame = Tensor(name=Tensors.FRAME, dtype=np.uint8, shape=(-1, -1, 3))
    # batching=False: every request is one Triton execution, checked and failed alone (see the module doc).
    triton.bind(
        model_name=SEGMENT_MODEL,
        infer_func=[server.infer_segment] * (max_batch * instances),
        inputs=[frame,
                Tensor(name=Tensors.VOCABULARY, dtype=bytes, shape=(-1,), optional=True),
                Tensor(name=Tensors.CAPTION, dtype=bytes, shape=(1,), optional=True),
                Tensor(name=Tensors.STREAM_ID, dtype=bytes, shape=(1,), optional=True)],
        outputs=[Tensor(name=Tensors.LABELS, dtype=np.int32, shape=(-1, -1)),
                 Tensor(name=Tensors.CLASSES, dtype=bytes, shape=(-1,)),
                 Tensor(name=Tensors.SCORES, dtype=np.float32, shape=(-1,)),
                 Tensor(name=Tensors.CAPTION, dtype=bytes, shape=(1,)),
                 Tensor(name=Tensors.TIMINGS, dtype=bytes, shape=(1,))],
        config=ModelConfig(batching=False), strict=False)
    if server.runtimes[0].captioner is not None:   # a build without a captioner serves no caption model
        triton.bind(
            model_name=CAPTION_MODEL, infer_func=server.infer_caption, inputs=[frame],
            outputs=[Tensor(name=Tensors.CAPTION, dtype=bytes, shape=(1,))],
            config=ModelConfig(batching=False), strict=False)


# Requests in flight on one node: each is a PyTriton model instance, i.e. one Python stub process.
MAX_IN_FLIGHT = 64


def _parser() -> CommandParser:
    p = CommandParser(prog="python -m runtime.serve", description=__doc__.split("\n")[0])
    p.add_argument("artifacts", type=artifact_folder, help="artifact folder (export/build_engines.py --out)")
    p.add_argument("--address", default="0.0.0.0", help="address the HTTP, gRPC and metrics endpoints bind to")
    port = bounded(int, 1, 65535, what="a port")
    p.add_argument("--http-port", type=port, default=8000)
    p.add_argument("--grpc-port", type=port, default=8001)
    p.add_argument("--metrics-port", type=port, default=8002)
    p.add_argument("--max-batch", type=bounded(int, 1, 64), default=8,
                   help="most requests one engine run takes (also: requests in flight per instance)")
    p.add_argument("--max-queue-delay-ms", type=bounded(float, 0, 1000), default=2.0,
                   help="how long the first request of a batch waits for others (0: no batching across requests)")
    p.add_argument("--instances", type=bounded(int, 1, 16), default=1,
                   help="Runtimes (engine copies) on this node, each with its batch worker")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None)
    p.add_argument("--threads", type=bounded(int, 1), default=None, help="threads per Runtime (CPU backends)")
    p.add_argument("--caption-every", type=bounded(int, 1), default=30,
                   help="frames of one stream between its caption refreshes")
    p.add_argument("--stats-every-s", type=bounded(float, 0), default=30.0, help="0: no periodic stats line")
    p.add_argument("--verbose", action="store_true", help="Triton's own log on stdout")
    return p


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port, "--metrics-port": args.metrics_port}
    if len(set(ports.values())) != len(ports):
        raise UsageError(f"the ports must differ: {', '.join(f'{k} {v}' for k, v in ports.items())}")
    if args.max_batch * args.instances > MAX_IN_FLIGHT:
        raise UsageError(f"--max-batch {args.max_batch} x --instances {args.instances} = "
                         f"{args.max_batch * args.instances} requests in flight, each a Triton stub process: at most "
                         f"{MAX_IN_FLIGHT}; lower one of them")
    _check_serving_stack()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for name in ("pytriton", "tritonclient"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    import runtime

    _adopt_orphans()
    options = {"threads": args.threads} if args.threads else {}
    runtimes = [runtime.load(args.artifacts, backend=args.backend, warmup=True, **options)
                for _ in range(args.instances)]
    server = Server(runtimes, args.max_batch, args.max_queue_delay_ms / 1000.0, args.caption_every)
    triton = None
    try:
        from pytriton.triton import Triton, TritonConfig

        os.environ["LD_LIBRARY_PATH"] = stub_library_path()
        config = TritonConfig(http_address=args.address, http_port=args.http_port, grpc_address=args.address,
                              grpc_port=args.grpc_port, metrics_address=args.address,
                              metrics_port=args.metrics_port, exit_timeout_secs=3,
                              log_verbose=1 if args.verbose else 0,
                              # Triton's own log (a table per start, CUDA notes on a CPU node) stays off stdout
                              # unless asked for.
                              log_file=None if args.verbose else Path(tempfile.gettempdir()) /
                              f"llmformer-serve-{os.getpid()}-triton.log")
        if stop.is_set():
            return 130
        for attempt in range(1, START_ATTEMPTS + 1):
            triton = Triton(config=config)
            try:
                bind_models(triton, server, args.max_batch, args.instances)
                triton.run()
                break
            except Exception as exc:
                # PyTriton's stubs fetch their configuration from instance 0's stub over a UNIX socket with
                # 1 s timeouts: on a loaded machine a model can fail to load (measured here under load 3.3 on
                # 2 cores: ConnectionRefusedError in one of 8 stubs). A fresh start usually succeeds.
                triton.stop()
                triton = None
                _end_children()
                if attempt == START_ATTEMPTS or stop.is_set():
                    raise CommandError(f"Triton did not start after {attempt} attempts ({type(exc).__name__}: "
                                       f"{exc}); its log: {config.log_file or 'above (--verbose)'}") from exc
                log.warning("Triton did not start (%s: %s); starting again (%d/%d)", type(exc).__name__, exc,
                            attempt + 1, START_ATTEMPTS)
        host = "127.0.0.1" if args.address == "0.0.0.0" else args.address
        models = SEGMENT_MODEL + (f" and {CAPTION_MODEL}" if server.runtimes[0].captioner is not None else "")
        print(f"serving {models} from {args.artifacts}: http://{host}:{args.http_port} "
              f"grpc {host}:{args.grpc_port} metrics http://{host}:{args.metrics_port}/metrics "
              f"(instances {args.instances}, max batch {args.max_batch}, queue delay {args.max_queue_delay_ms:g} ms)",
              flush=True)
        next_stats = time.monotonic() + args.stats_every_s
        while not stop.wait(0.2):
            if not triton.is_alive():
                raise CommandError("the Triton server stopped on its own (run with --verbose to see its log)")
            if args.stats_every_s and time.monotonic() >= next_stats:
                log.info(server.stats_line())
                next_stats = time.monotonic() + args.stats_every_s
    finally:
        if triton is not None:
            triton.stop()
        left = _end_children()
        if left:
            log.warning("ended %d process(es) Triton left behind", left)
        server.close()
        log.info("stopped: %s", server.stats_line())
    return 0


def main(argv=None) -> int:
    return run_command(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
