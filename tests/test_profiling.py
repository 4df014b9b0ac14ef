"""Profiling (runtime.profiling, python -m runtime.profile): spans per stage and thread, percentiles, the
Chrome trace, NVTX ranges, memory probes, and the CLI on the tiny artifacts."""
import json
import os
import sys
import threading

import numpy as np
import pytest

import runtime
import runtime.profiling as profiling
from conftest import run_without_torch
from runtime.captioning import CaptionPolicy
from llmformer.data.frames import demo_frame
from runtime.profiling import Profiler

VOCAB = ["ball", "box", "table", "wall"]
CAPTION = "a red ball next to a blue box on a wooden table"
SEGMENT_STAGES = {"preprocess", "vision", "parse", "text", "segment", "postprocess", "total"}


def test_summary_percentiles_match_numpy():
    prof = Profiler(nvtx=False)
    durations = np.arange(1, 101, dtype=np.float64)  # 1..100 ms
    for i, d in enumerate(durations):
        prof.record("vision", start=float(i), duration=d / 1e3)
    prof.record("segment", start=0.0, duration=0.5)
    s = prof.summary()
    assert list(s) == ["vision", "segment"]
    v = s["vision"]
    assert v.count == 100 and v.threads == ("MainThread",)
    np.testing.assert_allclose([v.p50_ms, v.p95_ms, v.p99_ms, v.max_ms, v.mean_ms],
                               [*np.percentile(durations, [50, 95, 99]), 100.0, 50.5])
    assert s["segment"].p99_ms == pytest.approx(500.0)
    assert "vision" in prof.table() and "p99" in prof.table()


def test_chrome_trace_shows_each_thread_with_complete_events():
    prof = Profiler(nvtx=False)
    with prof.span("frame", index=0):
        pass

    def worker():
        with prof.span("caption"):
            pass

    t = threading.Thread(target=worker, name="caption-worker")
    t.start()
    t.join()
    trace = json.loads(json.dumps(prof.chrome_trace()))      # plain JSON
    events = trace["traceEvents"]
    names = {e["args"]["name"]: e["tid"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(names) == {"MainThread", "caption-worker"} and len(set(names.values())) == 2
    spans = {e["name"]: e for e in events if e["ph"] == "X"}
    assert spans["frame"]["tid"] == names["MainThread"] and spans["caption"]["tid"] == names["caption-worker"]
    assert spans["frame"]["args"] == {"index": 0}
    recorded = {s.name: s for s in prof.spans()}
    for name, e in spans.items():
        assert e["pid"] == os.getpid() and e["ts"] >= 0
        assert e["dur"] == pytest.approx(recorded[name].duration * 1e6, abs=1e-3)       # microseconds
        assert e["ts"] == pytest.approx((recorded[name].start - prof.origin) * 1e6, abs=1e-3)


def test_nvtx_ranges_wrap_every_span_when_nvtx_is_importable(monkeypatch):
    calls = []
    fake = type(sys)("nvtx")
    fake.push_range = lambda name: calls.append(("push", name))
    fake.pop_range = lambda: calls.append(("pop",))
    monkeypatch.setitem(sys.modules, "nvtx", fake)
    monkeypatch.setattr(profiling, "_nvtx_checked", False)
    monkeypatch.setattr(profiling, "_nvtx_api", None)
    prof = Profiler()
    assert prof.nvtx
    with prof.span("vision"):
        with profiling.nvtx_range("caption_decode"):
            pass
    assert calls == [("push", "vision"), ("push", "caption_decode"), ("pop",), ("pop",)]
    assert [s.name for s in prof.spans()] == ["vision"]


def test_nvtx_is_a_no_op_without_a_gpu_api(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvtx", None)         # import nvtx raises ImportError
    monkeypatch.setitem(sys.modules, "torch", None)        # and no torch to fall back on
    monkeypatch.setattr(profiling, "_nvtx_checked", False)
    monkeypatch.setattr(profiling, "_nvtx_api", None)
    assert not Profiler().nvtx
    with pytest.raises(RuntimeError, match="pip install nvtx"):
        Profiler(nvtx=True)
    with profiling.nvtx_range("x"):
        pass


def test_memory_thread_and_fd_probes():
    mem = profiling.host_memory()
    assert mem["rss_mib"] > 1 and mem["peak_rss_mib"] >= mem["rss_mib"] - 1.0
    before = profiling.open_fds()
    with open(__file__) as _:
        assert profiling.open_fds() == before + 1
    assert profiling.os_threads() >= threading.active_count()


def test_segment_records_each_stage_only_with_a_profiler(tiny_artifacts):
    rt = runtime.load(tiny_artifacts)
    rt.segment(demo_frame(0, (64, 64)), vocabulary=VOCAB, caption=CAPTION)     # profiling off: no spans anywhere
    prof = Profiler(nvtx=False)
    rt.profiler = prof
    rt.segment(demo_frame(1, (64, 64)), vocabulary=VOCAB, caption=CAPTION)
    spans = {s.name: s for s in prof.spans()}
    assert set(spans) == SEGMENT_STAGES
    total = spans["total"]
    for s in spans.values():  # every stage lies inside the call
        assert total.start <= s.start and s.start + s.duration <= total.start + total.duration + 1e-6
    rt.segment(demo_frame(2, (64, 64)), vocabulary=VOCAB)                      # the synchronous captioner
    names = [s.name for s in prof.spans()]
    assert {"caption", "caption_prefill", "caption_decode"} <= set(names)
    rt.close()


def test_caption_worker_spans_are_on_their_own_thread(tiny_artifacts):
    prof = Profiler(nvtx=False)
    with runtime.load(tiny_artifacts) as rt:
        rt.profiler = prof
        rt.start_captioning(CaptionPolicy(every_frames=2, scene_change=None))
        for i in range(4):
            rt.segment(demo_frame(i, (64, 64)), vocabulary=VOCAB)
        assert rt.captioning.worker.wait_idle(30)
    worker = [s for s in prof.spans() if s.thread_name == "caption-worker"]
    assert {s.name for s in worker} == {"caption", "caption_prefill", "caption_decode"}
    assert not {s.name for s in prof.spans() if s.thread_name != "caption-worker"} & {"caption", "caption_decode"}
    caption = [s for s in worker if s.name == "caption"][0]
    prefill = [s for s in worker if s.name == "caption_prefill"][0]
    decode = [s for s in worker if s.name == "caption_decode"][0]
    assert caption.start <= prefill.start and prefill.start + prefill.duration <= decode.start + 1e-9
    assert decode.start + decode.duration <= caption.start + caption.duration + 1e-6
    assert decode.args["tokens"] >= 0 and prefill.args["tokens"] > 0


def test_profile_cli_prints_a_table_and_writes_json_and_a_trace(tiny_artifacts, tmp_path, capsys):
    from runtime.profile import main

    out, trace = tmp_path / "report.json", tmp_path / "trace.json"
    assert main([str(tiny_artifacts), "--frames", "8", "--warmup", "1", "--size", "48x64", "--caption-every", "3",
                 "--json", str(out), "--trace", str(trace)]) == 0
    printed = capsys.readouterr().out
    assert "p99" in printed and "FPS" in printed and "/min)" in printed and "text cache hit rate" in printed
    report = json.loads(out.read_text())
    assert report["frames"] == 8 and report["fps"] > 0 and report["stopped_by"] == "max frames"
    stages = report["stages"]
    assert SEGMENT_STAGES - {"parse"} <= set(stages) and {"capture", "overlay", "caption_wait"} <= set(stages)
    for name in ("preprocess", "vision", "text", "segment", "postprocess", "total"):
        s = stages[name]
        assert s["count"] == 8 and 0 <= s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["threads"] == ["MainThread"]
    # How many captions finish inside 8 frames depends on the machine; the worker's spans are checked above.
    assert report["captions_per_min"] == pytest.approx(60 * report["captions"] / report["seconds"])
    assert all(stages[n]["threads"] == ["caption-worker"] for n in ("caption", "caption_decode") if n in stages)
    assert 0.0 <= report["text_cache_hit_rate"] <= 1.0
    assert report["host_memory_mib"]["peak_rss_mib"] > 0
    assert report["device_memory"] == "n/a" or "used_mib" in report["device_memory"]
    events = json.loads(trace.read_text())["traceEvents"]
    threads = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "MainThread" in threads
    assert sum(e["ph"] == "X" and e["name"] == "segment" for e in events) == 8


def test_profile_and_camera_run_without_torch(tiny_artifacts, tmp_path):
    """The new modules stay on the torch-free path: the profiler CLI runs with torch and transformers hidden."""
    run_without_torch(f"""
        import runtime.camera, runtime.profile
        assert runtime.profile.main([{str(tiny_artifacts)!r}, '--frames', '3', '--warmup', '0', '--size', '40x40',
                                     '--json', {str(tmp_path / 'r.json')!r}]) == 0
    """)
