"""Serving many streams on one node (issue 18): `python -m runtime.serve` on loopback against the camera loop.

    .venv-serve/bin/python benchmarks/bench_serve.py --artifacts DIR [--requests 48] [--streams 1,2,4,8]
        [--out /tmp/issue18/README_section.md]

Run it from the serving environment (`bash .ci/serve_env` prints its interpreter; PyTriton needs numpy<2); the
server is started from the same interpreter, on free loopback ports, once per mode, and stopped with SIGTERM.

Every condition segments the build's sample frames (256 x 256 for the demo) with their vocabularies and a fixed
caption (so the captioner's cost is not in the figures: this measures the frame path), for a fixed number of
requests (--requests, split over the streams) after --warmup requests per stream, and stops early after
--max-seconds:

  loop         the single-process camera loop (runtime.camera.run_loop, no overlays), one Runtime
  batch off    the server with --max-batch 1 (one request at a time, no batching across requests)
  batch on     the server with --max-batch 8 --max-queue-delay-ms 5
  batch on x2  as batch on with --instances 2 --threads 1 (two Runtimes, one thread each)
  batch off x2 as batch off with --instances 2 --threads 1 (one request per Runtime at a time, one per core)

N streams = N client threads, each with its own connection and stream id, each sending its next frame when
the last answer came (closed loop). Reported: aggregate frames/s, per-request latency p50/p95 (client side),
the mean batch the server ran. The clients share the machine with the server (loopback), as stated.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import runtime  # noqa: E402
from benchmarks.common import free_ports, machine, pct  # noqa: E402
from runtime.camera import run_loop  # noqa: E402

CAPTION = "a scene with objects"
MODES = {
    "batch off": ["--max-batch", "1", "--max-queue-delay-ms", "0"],
    "batch on": ["--max-batch", "8", "--max-queue-delay-ms", "5"],
    "batch on x2": ["--max-batch", "8", "--max-queue-delay-ms", "5", "--instances", "2", "--threads", "1"],
    "batch off x2": ["--max-batch", "1", "--max-queue-delay-ms", "0", "--instances", "2", "--threads", "1"],
}


def samples(folder: Path):
    import cv2

    rt_manifest = runtime.load(folder, warmup=False)
    out = []
    for s in rt_manifest.manifest.samples:
        frame = cv2.cvtColor(cv2.imread(str(folder / s.frame.file), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        out.append((frame, list(s.vocabulary)))
    rt_manifest.close()
    return out


def start_server(folder: Path, extra: list[str]):
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", str(folder), "--address", "127.0.0.1",
                             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                             "--stats-every-s", "0", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("serving "):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, f"127.0.0.1:{http}"
    raise RuntimeError(f"the server did not start (exit {proc.wait()}):\n" + "".join(lines[-20:]))


def stop_server(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_streams(url: str, data, streams: int, requests: int, warmup: int, max_seconds: float) -> dict:
    from runtime.client import RemoteRuntime

    per_stream = max(1, requests // streams)
    latencies: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(streams + 1)

    def stream(k: int) -> None:
        with RemoteRuntime(f"http://{url}", stream_id=f"cam{k}") as remote:
            for i in range(warmup):
                frame, vocabulary = data[(k + i) % len(data)]
                remote.segment(frame, vocabulary, CAPTION)
            start_gate.wait()
            deadline = time.perf_counter() + max_seconds
            for i in range(per_stream):
                if time.perf_counter() > deadline:
                    break
                frame, vocabulary = data[(k + i) % len(data)]
                t0 = time.perf_counter()
                seg = remote.segment(frame, vocabulary, CAPTION)
                dt = (time.perf_counter() - t0) * 1000.0
                with lock:
                    latencies.append(dt)
                    batches.append(int(seg.timings.get("batch_size", 1)))

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    return {"frames": len(latencies), "seconds": seconds, "fps": len(latencies) / seconds,
            "p50": pct(latencies, 50), "p95": pct(latencies, 95), "mean_batch": float(np.mean(batches))}


def run_loop_baseline(folder: Path, data, requests: int, warmup: int) -> dict:
    frames = [data[i % len(data)][0] for i in range(requests)]
    vocabulary = data[0][1]
    latencies = []
    with runtime.load(folder, warmup=True) as rt:
        run_loop(rt, frames[:warmup], vocabulary, CAPTION, render=False)
        t_prev = [time.perf_counter()]

        def on_result(i, frame, seg, overlay):
            now = time.perf_counter()
            latencies.append((now - t_prev[0]) * 1000.0)
            t_prev[0] = now

        t0 = time.perf_counter()
        t_prev[0] = t0
        run_loop(rt, frames, vocabulary, CAPTION, render=False, on_result=on_result)
        seconds = time.perf_counter() - t0
    return {"frames": len(latencies), "seconds": seconds, "fps": len(latencies) / seconds,
            "p50": pct(latencies, 50), "p95": pct(latencies, 95), "mean_batch": 1.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", type=Path, default=Path("/tmp/issue18/demo"))
    ap.add_argument("--requests", type=int, default=48, help="measured requests per condition (all streams)")
    ap.add_argument("--warmup", type=int, default=2, help="requests per stream before measuring")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--max-seconds", type=float, default=30.0, help="cap on one condition's measured time")
    ap.add_argument("--out", type=Path, default=Path("/tmp/issue18/README_section.md"))
    args = ap.parse_args(argv)
    streams = [int(s) for s in args.streams.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    host = machine()
    data = samples(args.artifacts)
    rows = []
    base = run_loop_baseline(args.artifacts, data, args.requests, args.warmup * 2)
    rows.append(("loop", 1, base))
    print(f"loop      1 stream : {base['fps']:6.2f} frames/s  p50 {base['p50']:6.1f} ms  p95 {base['p95']:6.1f} ms",
          flush=True)
    for mode in modes:
        proc, url = start_server(args.artifacts, MODES[mode])
        try:
            for n in streams:
                r = run_streams(url, data, n, args.requests, args.warmup, args.max_seconds)
                rows.append((mode, n, r))
                print(f"{mode:<11} {n} streams: {r['fps']:6.2f} frames/s  p50 {r['p50']:6.1f} ms  p95 "
                      f"{r['p95']:6.1f} ms  mean batch {r['mean_batch']:.2f}  ({r['frames']} frames)", flush=True)
        finally:
            stop_server(proc)
    load_end = os.getloadavg()[0]
    command = "python benchmarks/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## Serving many streams (issue 18): `runtime.serve` on loopback vs the camera loop",
        "",
        f"Machine: {host}; load average {load_end:.2f} at the end.",
        f"Command: `{command}` from the serving environment (`bash .ci/serve_env`: numpy "
        f"{np.__version__}, PyTriton). Build: {args.artifacts} (demo preset, ONNX Runtime, CPU, fp32), its "
        f"{len(data)} sample frames ({data[0][0].shape[1]}x{data[0][0].shape[0]}), their vocabularies, a fixed "
        f"caption (no captioner work). {args.requests} measured requests per row (closed loop: each stream "
        f"sends its next frame when its answer came), after {args.warmup} per stream; clients, server and "
        f"Triton share the 2 cores.",
        "",
        "| mode | streams | frames/s | x loop | p50 ms | p95 ms | mean batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, n, r in rows:
        lines.append(f"| {mode} | {n} | {r['fps']:.2f} | {r['fps'] / base['fps']:.2f} | {r['p50']:.1f} | "
                     f"{r['p95']:.1f} | {r['mean_batch']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    print(json.dumps([{"mode": m, "streams": n, **r} for m, n, r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
