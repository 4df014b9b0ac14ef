"""Every command's expected failures (issue 16, item 2): exit status 2 for a wrong command line, 1 for a run that
failed, one `error:` line on stderr that names the problem, never a traceback; `--debug` / LLMFORMER_DEBUG=1 let
the error through with its traceback (runtime/commands.py)."""
import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from conftest import ROOT
from engines.errors import ManifestError
from llmformer.data.frames import demo_frame
from runtime.commands import (CommandError, UsageError, bounded, debug_requested, error_line, output_file,
                              run_command)

COMMANDS = {
    "camera": "runtime.camera", "profile": "runtime.profile", "demo": "runtime.demo", "evaluate": "runtime.evaluate",
    "trt": "engines.tensorrt_builder", "llava": "export.convert_llava", "msda": "export.msda_plugin",
    "scenes": "llmformer.data.scene_folder", "train": "llmformer.train.__main__",
}


@pytest.fixture(scope="module")
def places(tiny_artifacts, tmp_path_factory):
    """The paths the cases name: a build, a folder that is no build, a file, a build with a corrupt manifest, a
    small video, a scene folder and a few bad inputs. `{art}`, `{tmp}`, ... in a case's argv are these."""
    tmp = tmp_path_factory.mktemp("commands")
    (tmp / "file.txt").write_text("not a folder\n")
    (tmp / "empty").mkdir()
    (tmp / "garbage.onnx").write_bytes(b"this is not protobuf \xff\xfe")
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "manifest.json").write_text("{ not json")
    (tmp / "badjson").mkdir()
    (tmp / "badjson" / "scenes.json").write_text("{ not json")
    (tmp / "unknown_keys.json").write_text(json.dumps({"task": "segmenter", "stpes": 3}))
    video = tmp / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (80, 64))
    for i in range(3):
        writer.write(cv2.cvtColor(demo_frame(i, (64, 80)), cv2.COLOR_RGB2BGR))
    writer.release()
    from llmformer.data.scene_folder import write_scene_folder

    write_scene_folder(tmp / "scenes", "val", 1, size=64)
    return {"art": str(tiny_artifacts), "tmp": str(tmp), "video": str(video), "scenes": str(tmp / "scenes")}


def fill(argv, places):
    return [a.format(**places) for a in argv]


def run_main(name, argv):
    return importlib.import_module(COMMANDS[name]).main(argv)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- a wrong command line: status 2, before any work -------------------------------------------------------
USAGE = [
    ("camera", ["{tmp}/nope", "--headless"], ["artifact folder", "does not exist", "build_engines.py"]),
    ("camera", ["{tmp}/file.txt", "--headless"], ["is a file", "not an artifact folder"]),
    ("camera", ["{tmp}/empty", "--headless"], ["not an artifact folder", "manifest.json"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--fps", "-5"], ["--fps", "> 0", "-5"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--fps", "nan"], ["--fps", "> 0"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--max-frames", "0"], ["--max-frames", ">= 1"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--caption-every", "-1"], ["--caption-every", ">= 0"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--caption-every", "x"], ["--caption-every", "integer"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--scene-change", "3"], ["--scene-change", "<= 2"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--caption-timeout", "0"], ["--caption-timeout", "> 0"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--threads", "0"], ["--threads", ">= 1"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--vocabulary", " , "], ["--vocabulary", "no class"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--caption", "  "], ["--caption", "empty"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--caption", "42 !"], ["--caption", "no words"]),
    ("camera", ["{art}", "--source", "{video}", "--headless", "--caption-every", "0"],
     ["--caption-every 0", "--vocabulary"]),
    ("camera", ["{art}", "--source", "{tmp}/nope.avi", "--headless"], ["--source", "does not exist"]),
    ("camera", ["{art}", "--source", " ", "--headless"], ["--source", "empty"]),
    ("camera", ["{art}", "--source", "{video}", "--out-video", "{tmp}/out.gif"], ["--out-video", ".avi"]),
    ("camera", ["{art}", "--source", "{video}", "--out-video", "{tmp}/empty"], ["--out-video", "is a folder"]),
    ("camera", ["{art}", "--source", "{video}", "--out-video", "{tmp}/file.txt/x.avi"], ["file.txt", "not a folder"]),
    ("camera", ["{art}", "--source", "{video}", "--out-dir", "{tmp}/file.txt"], ["--out-dir", "is a file"]),
    ("camera", ["{art}", "--source", "{video}", "--display", "--headless"], ["exclude each other"]),
    ("camera", ["{art}", "--backend", "tensorflow"], ["--backend", "invalid choice"]),
    ("camera", ["{art}", "--bogus"], ["unrecognized arguments", "--bogus"]),
    ("profile", ["{tmp}/nope"], ["artifact folder", "does not exist"]),
    ("profile", ["{art}", "--json", "{tmp}"], ["--json", "is a folder"]),
    ("profile", ["{art}", "--trace", "{tmp}/empty"], ["--trace", "is a folder"]),
    ("profile", ["{art}", "--json", "{tmp}/r.json", "--trace", "{tmp}/r.json"], ["--json", "--trace", "same file"]),
    ("profile", ["{art}", "--frames", "0"], ["--frames", ">= 1"]),
    ("profile", ["{art}", "--warmup", "-1"], ["--warmup", ">= 0"]),
    ("profile", ["{art}", "--size", "4x4"], ["--size", "8x8"]),
    ("profile", ["{art}", "--size", "big"], ["--size", "HxW"]),
    ("profile", ["{art}", "--camera", "-1"], ["--camera", ">= 0"]),
    ("profile", ["{art}", "--video", "{tmp}/nope.mp4"], ["--video", "does not exist"]),
    ("profile", ["{art}", "--video", "{video}", "--camera", "0"], ["--camera", "not allowed with"]),
    ("profile", ["{art}", "--caption-every", "0", "--scene-change", "-0.5"], ["--scene-change", ">= 0"]),
    ("demo", ["{tmp}/nope"], ["artifact folder", "does not exist", "build_engines.py"]),
    ("demo", ["{art}", "--frames", "0"], ["--frames", ">= 1"]),
    ("demo", ["{art}", "--out", "{tmp}/file.txt"], ["--out", "is a file"]),
    ("demo", ["{art}", "--backend", "trt"], ["--backend", "invalid choice"]),
    ("evaluate", ["{art}"], ["--data", "required"]),
    ("evaluate", ["{art}", "--data", "{tmp}/nope"], ["--data", "does not exist"]),
    ("evaluate", ["{art}", "--data", "{tmp}/empty"], ["scenes.json", "is missing", "scene_folder"]),
    ("evaluate", ["{art}", "--data", "{tmp}/badjson"], ["scenes.json", "not valid JSON"]),
    ("evaluate", ["{art}", "--data", "{scenes}", "--scenes", "0"], ["--scenes", ">= 1"]),
    ("evaluate", ["{art}", "--data", "{scenes}", "--json", "{tmp}"], ["--json", "is a folder"]),
    ("evaluate", ["{tmp}/nope", "--data", "{scenes}"], ["artifact folder", "does not exist"]),
    ("trt", ["{tmp}/empty"], ["not an artifact folder", "build_engines.py"]),
    ("trt", ["{art}", "--workspace-gb", "0"], ["--workspace-gb", "> 0"]),
    ("trt", ["{art}", "--workspace-gb", "nan"], ["--workspace-gb", "> 0"]),
    ("trt", ["{art}", "--plugins", "{tmp}/libnope.so"], ["--plugins", "not a file"]),
    ("trt", ["{art}", "--timing-cache", "{tmp}"], ["--timing-cache", "is a folder"]),
    ("trt", ["{art}", "--components"], ["--components", "expected at least one"]),
    ("msda", [], ["required", "command"]),
    ("msda", ["rewrite", "{tmp}/nope.onnx", "{tmp}/out.onnx"], ["nope.onnx", "does not exist"]),
    ("msda", ["rewrite", "{tmp}/garbage.onnx", "{tmp}/out.onnx"], ["garbage.onnx", "not an ONNX model"]),
    ("msda", ["rewrite", "{tmp}/garbage.onnx", "{tmp}/empty"], ["target", "is a folder"]),
    ("scenes", ["{tmp}/s", "--scenes", "0"], ["--scenes", ">= 1"]),
    ("scenes", ["{tmp}/s", "--size", "32"], ["--size", ">= 64"]),
    ("scenes", ["{tmp}/s", "--seed", "-1"], ["--seed", ">= 0"]),
    ("scenes", ["{tmp}/s", "--split", "test"], ["--split", "invalid choice"]),
    ("scenes", ["{tmp}/file.txt"], ["file.txt", "is a file"]),
    ("scenes", ["{scenes}", "--scenes", "1"], ["scenes.json exists", "empty folder"]),
    ("train", ["{tmp}/nope.json"], ["cannot read the training config", "nope.json"]),
    ("train", ["{tmp}/unknown_keys.json"], ["unknown keys", "stpes"]),
    ("train", ["{tmp}/unknown_keys.json", "--steps", "0"], ["--steps", ">= 1"]),
    ("llava", ["--src", "{tmp}/nope", "--out", "{tmp}/llava"], ["--src", "does not exist"]),
    ("llava", ["--src", "{tmp}/file.txt", "--out", "{tmp}/llava"], ["--src", "is a file"]),
    ("llava", ["--src", "{tmp}/empty", "--out", "{tmp}/llava"], ["config.json"]),
    ("llava", ["--src", "{tmp}/empty", "--out", "{tmp}/file.txt"], ["--out", "is a file"]),
    ("llava", ["--src", "{tmp}/empty"], ["--out", "required"]),
]


@pytest.mark.parametrize("name, argv, words", USAGE, ids=[f"{c[0]}-{i}" for i, c in enumerate(USAGE)])
def test_a_wrong_command_line_is_one_error_line_and_status_2(name, argv, words, places, capsys, monkeypatch):
    import runtime

    def never(*args, **kwargs):
        raise AssertionError("the runtime was loaded before the command line was checked")

    monkeypatch.setattr(runtime, "load", never)  # every usage error is found before any work
    assert run_main(name, fill(argv, places)) == 2
    line = one_error_line(capsys.readouterr().err)
    for word in words:
        assert word in line, (word, line)


# -- a right command line whose run fails: status 1 -------------------------------------------------------
RUNTIME = [
    ("camera", ["{art}", "--source", "{video}", "--headless", "--vocabulary", "ball", "--backend", "tensorrt"],
     ["tensorrt", "not installed"]),
    ("camera", ["{tmp}/corrupt", "--source", "{video}", "--headless", "--vocabulary", "ball"],
     ["manifest.json", "not valid JSON"]),
    ("camera", ["{art}", "--source", "{tmp}/file.txt", "--headless", "--vocabulary", "ball"],
     ["cannot open file source", "file.txt"]),
    ("profile", ["{art}", "--frames", "1", "--backend", "tensorrt"], ["tensorrt", "not installed"]),
    ("profile", ["{tmp}/corrupt", "--frames", "1"], ["manifest.json", "not valid JSON"]),
    ("demo", ["{art}", "--backend", "tensorrt", "--out", "{tmp}/demo"], ["tensorrt", "not installed"]),
    ("demo", ["{tmp}/corrupt", "--out", "{tmp}/demo"], ["manifest.json", "not valid JSON"]),
    ("evaluate", ["{art}", "--data", "{scenes}", "--backend", "tensorrt"], ["tensorrt", "not installed"]),
    ("evaluate", ["{tmp}/corrupt", "--data", "{scenes}"], ["manifest.json", "not valid JSON"]),
]


@pytest.mark.parametrize("name, argv, words", RUNTIME, ids=[f"{c[0]}-{i}" for i, c in enumerate(RUNTIME)])
def test_a_failed_run_is_one_error_line_and_status_1(name, argv, words, places, capsys):
    assert run_main(name, fill(argv, places)) == 1
    line = one_error_line(capsys.readouterr().err)
    for word in words:
        assert word in line, (word, line)


def test_building_engines_without_tensorrt_is_status_1(places, capsys):
    from engines.base import backend_importable

    if backend_importable("tensorrt"):
        pytest.skip("TensorRT is installed here: the command would build")
    assert run_main("trt", [places["art"]]) == 1
    assert "TensorRT is not installed" in one_error_line(capsys.readouterr().err)


# -- --debug and LLMFORMER_DEBUG show the traceback -------------------------------------------------------
def test_debug_lets_the_error_through(places, capsys):
    with pytest.raises(ManifestError, match="not valid JSON"):
        run_main("camera", [f"{places['tmp']}/corrupt", "--source", places["video"], "--headless", "--vocabulary",
                            "ball", "--debug"])
    with pytest.raises(UsageError, match="--fps"):
        run_main("camera", [places["art"], "--fps", "0", "--debug"])


def test_the_environment_variable_lets_the_error_through(places, monkeypatch):
    monkeypatch.setenv("LLMFORMER_DEBUG", "1")
    with pytest.raises(ManifestError):
        run_main("profile", [f"{places['tmp']}/corrupt"])
    monkeypatch.setenv("LLMFORMER_DEBUG", "0")
    assert run_main("profile", [f"{places['tmp']}/corrupt"]) == 1


@pytest.mark.parametrize("argv, status, words", [
    (["-m", "runtime.profile", "{tmp}/corrupt", "--frames", "1"], 1, ["not valid JSON"]),
    (["-m", "runtime.demo", "{tmp}/nope"], 2, ["does not exist"]),
    (["-m", "runtime.evaluate", "{art}", "--data", "{tmp}/empty"], 2, ["scenes.json"]),
    (["-m", "engines.tensorrt_builder", "{tmp}/nope"], 2, ["not an artifact folder"]),
    (["-m", "export.msda_plugin", "rewrite", "{tmp}/garbage.onnx", "{tmp}/o.onnx"], 2, ["not an ONNX model"]),
    (["-m", "llmformer.data.scene_folder", "{tmp}/s", "--size", "8"], 2, ["--size"]),
    (["-m", "llmformer.train", "{tmp}/nope.json"], 2, ["training config"]),
    ([str(ROOT / "export" / "convert_llava.py"), "--src", "{tmp}/empty", "--out", "{tmp}/llava"], 2, ["config.json"]),
])
def test_as_a_process_the_status_and_one_line_and_with_debug_the_traceback(argv, status, words, places):
    argv = [sys.executable, *fill(argv, places)]
    env = {k: v for k, v in os.environ.items() if k != "LLMFORMER_DEBUG"}
    res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    assert res.returncode == status, res.stderr[-2000:]
    line = one_error_line(res.stderr)
    assert all(w in line for w in words), line
    if status == 1:  # a usage error's traceback says nothing more than its line; a failed run's does
        res = subprocess.run(argv + ["--debug"], capture_output=True, text=True, cwd=ROOT, env=env)
        assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
        res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env={**env, "LLMFORMER_DEBUG": "1"})
        assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr


# -- the options do what they say -------------------------------------------------------------------------
def test_caption_every_0_runs_no_captioner_with_a_vocabulary(places, tmp_path, capsys, monkeypatch):
    """The build has a captioner; --caption-every 0 with a vocabulary never asks it (it used to caption every
    frame synchronously)."""
    import runtime
    from runtime.pipeline import Runtime

    calls, real_caption, real_load = [], Runtime.caption, runtime.load

    def caption(self, *args, **kwargs):
        calls.append(1)
        return real_caption(self, *args, **kwargs)

    def load(*args, **kwargs):
        rt = real_load(*args, **kwargs)
        calls.clear()  # load()'s warm-up runs every engine once, the captioner's included
        return rt

    def never(self, *args, **kwargs):
        raise AssertionError("--caption-every 0 started the caption worker")

    monkeypatch.setattr(Runtime, "caption", caption)
    monkeypatch.setattr(Runtime, "start_captioning", never)
    monkeypatch.setattr(runtime, "load", load)
    assert run_main("camera", [places["art"], "--source", places["video"], "--headless", "--vocabulary",
                               "ball,box", "--caption-every", "0", "--out-dir", str(tmp_path)]) == 0
    assert "stopped: end of stream; 3 frames" in capsys.readouterr().out
    assert len(list(tmp_path.glob("frame_*.png"))) == 3 and calls == []


def test_start_runtime_refuses_an_impossible_combination_with_a_usage_error(places):
    from runtime.camera import start_runtime

    args = argparse.Namespace(artifacts=Path(places["art"]), backend=None, threads=None, vocabulary=None,
                              caption=None, caption_every=0, scene_change=0.15, caption_timeout=30.0)
    with pytest.raises(UsageError, match="--caption-every 0 runs no captioner"):
        start_runtime(args)


def test_ctrl_c_while_loading_is_status_130(places, capsys, monkeypatch):
    import runtime

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "load", interrupted)
    assert run_main("camera", [places["art"], "--source", places["video"], "--headless", "--vocabulary", "a"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# -- the helper ------------------------------------------------------------------------------------------
def test_run_command_lets_a_bug_through_and_maps_expected_errors(capsys):
    def bug(argv):
        return 1 // 0

    with pytest.raises(ZeroDivisionError):
        run_command(bug, [])

    def fails(exc):
        def main(argv):
            raise exc
        return main

    assert run_command(fails(CommandError("backend\n  said\nthis")), []) == 1
    assert capsys.readouterr().err == "error: backend said this\n"
    assert run_command(fails(PermissionError(13, "Permission denied", "/x")), []) == 1
    assert run_command(fails(FileExistsError("taken")), [], usage=(FileExistsError,)) == 2
    assert run_command(fails(UsageError("bad")), []) == 2
    assert error_line(ValueError()) == "error: ValueError"


def test_debug_is_read_from_the_options_before_a_bare_double_dash(monkeypatch):
    monkeypatch.delenv("LLMFORMER_DEBUG", raising=False)
    assert debug_requested(["x", "--debug"]) and not debug_requested(["--", "--debug"])
    monkeypatch.setenv("LLMFORMER_DEBUG", "yes")
    assert debug_requested([])


def test_argparse_types_name_the_rule_and_the_value(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number > 0 and <= 2, got 'inf'"):
        bounded(float, 0, 2, low_open=True)("inf")
    assert bounded(int, 1)("3") == 3
    assert output_file(str(tmp_path / "new" / "deeper" / "r.json")) == tmp_path / "new" / "deeper" / "r.json"
    assert not (tmp_path / "new").exists()  # checking a path creates nothing
