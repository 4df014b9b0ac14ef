"""Builds never lose a user's files or a working build (export/build_engines.py, issue 16): folders that are not
ours are refused, publishing is one atomic switch of manifest.json (a build killed at any step leaves the old or
the new build, complete), the next build removes what killed builds left, and every bad input of the command is
one clear error before any export work, with exit status 2 (usage) or 1 (runtime failure)."""
import inspect
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import runtime
from calibration.data import CalibrationError
from conftest import ROOT, tiny_preset
from engines.contract import MANIFEST_NAME, read_manifest, write_manifest
from engines.errors import EngineError, ManifestError, OptionError
from export import build_engines as be
from export.build_engines import (BUILD_ID, BUILDS_DIR, KILL_ENV, LOCK_FILE, PUBLISH_STEPS, BuildCheckError,
                                  BuildError, OutFolder, build, exit_status, main, parse_args, relocate)
from llmformer.data.frames import demo_frame


def publish_from(src, out, created, force=False):
    """Publish the build in `src` again into `out`, as a new build, through OutFolder: what build() does once
    the export is done. Self-contained, so the kill test runs this same source in a process it kills."""
    import shutil
    from pathlib import Path, PurePosixPath

    from engines.contract import read_manifest
    from export.build_engines import OutFolder, relocate

    manifest = read_manifest(src, verify="off")
    build_dir = PurePosixPath(manifest.tokenizer.file).parent          # builds/<build-id>
    target = OutFolder.check(out, force=force)
    staging = target.open()
    try:
        shutil.copytree(Path(src) / build_dir, staging, dirs_exist_ok=True)
        relocate(manifest, lambda f: PurePosixPath(f).relative_to(build_dir).as_posix())
        manifest.created = created
        return target.publish(manifest)
    finally:
        target.close()


def contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): to show nothing was touched."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def builds_in(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / BUILDS_DIR).iterdir())


def loads(folder: Path) -> str:
    """The folder loads and segments; returns its manifest's `created` (which build it is)."""
    manifest = read_manifest(folder, verify="full")                        # every byte against its sha256
    with runtime.load(folder) as rt:
        assert rt.segment(demo_frame(0, (48, 48)), vocabulary=["ball", "box"]).labels.shape == (48, 48)
    return manifest.created


@pytest.fixture
def copy(tiny_artifacts, tmp_path):
    dst = tmp_path / "out"
    shutil.copytree(tiny_artifacts, dst)
    return dst


def run_build(out, *extra):
    """The command's build (tiny preset) into `out`."""
    return build(parse_args(["--out", str(out), *map(str, extra)]), preset=tiny_preset())


# ------------------------------------------------------------------------------------------------ layout
def test_a_build_lives_in_one_builds_folder_that_the_manifest_points_into(tiny_artifacts):
    assert sorted(os.listdir(tiny_artifacts)) == [BUILDS_DIR, MANIFEST_NAME]     # no lock, no temp file left
    (build_id,) = builds_in(tiny_artifacts)
    assert BUILD_ID.fullmatch(build_id)
    manifest = read_manifest(tiny_artifacts)
    paths = [e.file for e in manifest.files()] + [c.torch.captioner for c in manifest.components.values() if c.torch]
    assert paths and all(p.startswith(f"{BUILDS_DIR}/{build_id}/") for p in paths)
    assert not list(tiny_artifacts.parent.glob(".*staging*"))


def test_relocate_moves_every_path_once(tiny_artifacts):
    manifest = relocate(read_manifest(tiny_artifacts, verify="off"), lambda f: f"x/{f}")
    assert all(e.file.startswith(f"x/{BUILDS_DIR}/") and not e.file.startswith("x/x/") for e in manifest.files())
    assert manifest.components["captioner_decoder"].torch.captioner.startswith(f"x/{BUILDS_DIR}/")


# ------------------------------------------------------------------------------------------------ kills
@pytest.mark.parametrize("step", PUBLISH_STEPS)
def test_a_build_killed_at_any_step_of_publishing_leaves_a_complete_build(tiny_artifacts, copy, step):
    old = read_manifest(copy).created
    code = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + inspect.getsource(publish_from)
            + f"\npublish_from({str(tiny_artifacts)!r}, {str(copy)!r}, 'new')\n")
    res = subprocess.run([sys.executable, "-c", code], env={**os.environ, KILL_ENV: step}, capture_output=True,
                         text=True, cwd=ROOT)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    switched = PUBLISH_STEPS.index(step) >= PUBLISH_STEPS.index("switched")
    assert loads(copy) == ("new" if switched else old)                     # the old build or the new, whole
    assert (copy / LOCK_FILE).is_file()                                      # the dead build's lock is left
    assert len(builds_in(copy)) == (1 if step in ("cleaning", "cleaned") else 2)

    publish_from(tiny_artifacts, copy, "next")                               # the next build cleans up
    assert loads(copy) == "next"
    assert sorted(os.listdir(copy)) == [BUILDS_DIR, MANIFEST_NAME] and len(builds_in(copy)) == 1


def test_the_next_build_removes_what_killed_builds_left_and_keeps_the_users_files(copy):
    old_build = builds_in(copy)[0]
    killed = copy / BUILDS_DIR / "20240101T000000Z-abcdef"
    killed.mkdir()
    (killed / "segmenter.onnx").write_bytes(b"\0" * 1000)                   # a killed build's partial files
    (copy / f".{MANIFEST_NAME}.k2j3h4.tmp").write_text("{")                  # a killed manifest write
    (copy / LOCK_FILE).write_text("999999\n")                                # a dead build's lock
    legacy = copy.parent / ".out.staging-x1y2z3ab"                           # what versions before builds/ left
    legacy.mkdir()
    (legacy / "segmenter.onnx").write_bytes(b"\0" * 1000)
    (copy / "notes.txt").write_text("mine")
    (copy / BUILDS_DIR / "README").write_text("mine too")                    # not a build folder: not ours to remove
    run_build(copy, "--skip-validation", "--seed", 1)
    assert sorted(os.listdir(copy)) == [BUILDS_DIR, MANIFEST_NAME, "notes.txt"]
    assert (copy / "notes.txt").read_text() == "mine" and (copy / BUILDS_DIR / "README").read_text() == "mine too"
    (new_build,) = [b for b in builds_in(copy) if b != "README"]
    assert new_build != old_build and not legacy.exists()
    loads(copy)


def test_a_build_being_written_is_never_cleaned_nor_joined(copy):
    before = read_manifest(copy).created
    first = OutFolder.check(copy)
    staging = first.open()
    (staging / "part.onnx").write_bytes(b"1234")
    with pytest.raises(BuildError, match=rf"another build \(pid {os.getpid()}\) is writing --out"):
        OutFolder.check(copy).open()
    assert (staging / "part.onnx").read_bytes() == b"1234"
    first.close()                                                            # given up: its staging goes
    assert not staging.exists() and not (copy / LOCK_FILE).exists()
    assert loads(copy) == before


def test_a_failed_build_leaves_no_folder_it_created(tmp_path, monkeypatch):
    def crash(*a, **k):
        raise KeyboardInterrupt("killed half-way")

    monkeypatch.setattr(be, "sync_with_loaded_models", crash)   # the first step after the folder is opened
    with pytest.raises(KeyboardInterrupt):
        run_build(tmp_path / "new", "--skip-validation", "--no-captioner")
    assert os.listdir(tmp_path) == []


def test_a_folder_from_before_builds_is_replaced_and_only_its_listed_files_go(tiny_artifacts, tmp_path):
    out = tmp_path / "out"
    manifest = read_manifest(tiny_artifacts)
    build_dir = Path(manifest.tokenizer.file).parent
    shutil.copytree(tiny_artifacts / build_dir, out)                        # the old layout: files at the top
    write_manifest(out, relocate(manifest, lambda f: Path(f).relative_to(build_dir).as_posix()))
    assert (out / "segmenter.onnx").is_file() and loads(out)
    (out / "samples" / "mine.png").write_bytes(b"user")
    (out / "notes.txt").write_text("mine")
    publish_from(tiny_artifacts, out, "new")
    assert loads(out) == "new"
    assert sorted(os.listdir(out)) == [BUILDS_DIR, MANIFEST_NAME, "notes.txt", "samples"]
    assert os.listdir(out / "samples") == ["mine.png"]                       # ours removed, theirs kept


# ------------------------------------------------------------------------------------------------ refusals
def test_a_folder_that_is_not_ours_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "captioner").mkdir(parents=True)
    (out / "captioner" / "config.json").write_text("{}")
    (out / "tokenizer.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    before = contents(out)
    with pytest.raises(BuildError, match=r"not empty and holds no llmformer-edge build \(it has captioner/, "
                                         r"notes\.txt, tokenizer\.json\).*--force"):
        run_build(out)
    assert main(["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and "Traceback" not in err[0]
    assert contents(out) == before


def test_force_builds_beside_the_users_files_and_never_touches_them(tiny_artifacts, tmp_path):
    out = tmp_path / "mine"
    (out / "captioner").mkdir(parents=True)
    (out / "captioner" / "config.json").write_text("{}")
    (out / "tokenizer.json").write_text("{}")
    before = contents(out)
    publish_from(tiny_artifacts, out, "first", force=True)
    assert loads(out) == "first"
    publish_from(tiny_artifacts, out, "second")                               # now ours: no --force needed
    assert loads(out) == "second" and len(builds_in(out)) == 1
    after = contents(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == sorted(k for k in after if k.startswith(BUILDS_DIR) or k == MANIFEST_NAME)


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("manifest", ['{"format": "someone-else", "models": []}', "not json at all"])
def test_a_manifest_json_we_did_not_write_is_never_overwritten(tmp_path, manifest, force):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(manifest)
    with pytest.raises(BuildError, match=r"manifest\.json that llmformer-edge did not write.*never overwritten"):
        run_build(out, *(["--force"] if force else []))
    assert (out / MANIFEST_NAME).read_text() == manifest


def test_our_manifest_that_this_version_cannot_read_needs_force(copy):
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["format_version"] = 99
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BuildError, match=r"holds an llmformer-edge build this version cannot read \(.*format "
                                         r"version 99.*pass --force"):
        run_build(copy)
    OutFolder.check(copy, force=True)


@pytest.mark.parametrize("force", [False, True])
def test_a_builds_file_that_is_not_ours_is_refused(tmp_path, force):
    out = tmp_path / "out"
    out.mkdir()
    (out / BUILDS_DIR).write_text("mine")
    with pytest.raises(BuildError, match=r"builds is not a folder of ours.*never overwritten"):
        OutFolder.check(out, force=force)


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError, match=r"--out .*file is a file, not a folder"):
        run_build(tmp_path / "file")
    with pytest.raises(BuildError, match=r"cannot be created: .*file is a file"):
        run_build(tmp_path / "file" / "sub" / "out")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_that_is_not_writable_is_refused(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    with pytest.raises(BuildError, match="not writable"):
        run_build(locked / "out")


@pytest.mark.parametrize("setup", ["missing", "empty", "leftovers"])
def test_missing_empty_or_leftover_only_folders_are_ours(tmp_path, setup):
    out = tmp_path / "out"
    if setup != "missing":
        out.mkdir()
    if setup == "leftovers":
        (out / BUILDS_DIR / "20240101T000000Z-abcdef").mkdir(parents=True)
        (out / LOCK_FILE).write_text("1\n")
        (out / f".{MANIFEST_NAME}.abc.tmp").write_text("{")
    assert OutFolder.check(out).inspect() is None
    assert out.exists() == (setup != "missing")                              # checking writes nothing


# ------------------------------------------------------------------------------------------------ bad inputs
def _pickle(path: Path) -> Path:
    class Payload:                          # unpickling it would create the marker file
        def __reduce__(self):
            return open, (str(path.parent / "unpickled"), "w")

    path.write_bytes(pickle.dumps(Payload()))
    return path


def _torch_save(path: Path) -> Path:
    torch.save({"w": torch.zeros(2)}, path)
    return path


def _checkpoint(path: Path, metadata=None, truncate=None) -> Path:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, str(path), metadata=metadata)
    if truncate:
        path.write_bytes(path.read_bytes()[:truncate])
    return path


def _file(path: Path, data: bytes = b"x") -> Path:
    path.write_bytes(data)
    return path


def _model_folder(path: Path, *files: str) -> Path:
    path.mkdir()
    for name in files:
        (path / name).write_text("{}")
    return path


def _calib(folder: Path, *bad: str) -> Path:
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"frame_{i}.png"), demo_frame(i, (32, 32)))
    for name in bad:
        (folder / name).write_bytes(b"not an image" if name.endswith(".jpg") else b"")
    return folder


OURS = {"format": "llmformer-edge/checkpoint", "format_version": "1", "config": "{}"}
BAD_INPUTS = {
    "segmenter missing": (lambda t: ["--segmenter", t / "nope.safetensors"], BuildError, r"does not exist.*save_segmenter"),
    "segmenter folder": (lambda t: ["--segmenter", t], BuildError, r"is a folder: pass the checkpoint file"),
    "segmenter pickle": (lambda t: ["--segmenter", _pickle(t / "seg.pt")], BuildError,
                         r"is a Python pickle .*not safetensors.*never does"),
    "segmenter torch.save": (lambda t: ["--segmenter", _torch_save(t / "s.pt")], BuildError,
                             r"zip archive \(torch\.save's format.*never does"),
    "segmenter text": (lambda t: ["--segmenter", _file(t / "s.txt", b"weights")], BuildError,
                       r"is not a safetensors file \(7 bytes"),
    "segmenter empty": (lambda t: ["--segmenter", _file(t / "e", b"")], BuildError, r"not a safetensors file \(0 bytes"),
    "segmenter truncated": (lambda t: ["--segmenter", _checkpoint(t / "s.safetensors", OURS, truncate=40)],
                            BuildError, r"not a safetensors file .*truncated"),
    "segmenter foreign": (lambda t: ["--segmenter", _checkpoint(t / "s.safetensors")], BuildError,
                          r"llmformer-edge did not write \(no 'llmformer-edge/checkpoint' metadata"),
    "segmenter other kind": (lambda t: ["--segmenter", _checkpoint(t / "s.safetensors", {**OURS, "kind": "text_encoder"})],
                             BuildError, r"holds a 'text_encoder' checkpoint, not a segmenter"),
    "text encoder missing": (lambda t: ["--text-encoder", t / "nope"], BuildError, r"--text-encoder .*does not exist"),
    "text encoder file": (lambda t: ["--text-encoder", _file(t / "te.bin")], BuildError,
                          r"--text-encoder .*is a file, not a folder"),
    "text encoder no config": (lambda t: ["--text-encoder", _model_folder(t / "te", "tokenizer.json")], BuildError,
                               r"has no config\.json:.*save_pretrained"),
    "text encoder no tokenizer": (lambda t: ["--text-encoder", _model_folder(t / "te", "config.json")], BuildError,
                                  r"has no tokenizer\.json:.*fast tokenizer"),
    "vision tower missing": (lambda t: ["--no-captioner", "--vision-tower", t / "nope"], BuildError,
                             r"--vision-tower .*does not exist"),
    "vision tower file": (lambda t: ["--no-captioner", "--vision-tower", _file(t / "vt.bin")], BuildError,
                          r"--vision-tower .*is a file"),
    "vision tower no config": (lambda t: ["--no-captioner", "--vision-tower", _model_folder(t / "vt")], BuildError,
                               r"--vision-tower .*has no config\.json"),
    "captioner missing": (lambda t: ["--captioner", t / "nope"], BuildError, r"--captioner .*does not exist.*convert_llava"),
    "captioner file": (lambda t: ["--captioner", _file(t / "cap.bin")], BuildError, r"--captioner .*is a file"),
    "captioner no config": (lambda t: ["--captioner", _model_folder(t / "cap", "tokenizer.json")], BuildError,
                            r"--captioner .*has no config\.json"),
    "captioner and no captioner": (lambda t: ["--captioner", _model_folder(t / "cap", "config.json"), "--no-captioner"],
                                   BuildError, r"contradict each other"),
    "calib undecodable": (lambda t: ["--precision", "int8", "--calib", _calib(t / "c", "broken.jpg")], BuildError,
                          r"--calib .*1 of 3 images cannot be decoded: broken\.jpg; remove or re-encode"),
    "calib empty file": (lambda t: ["--precision", "int8", "--calib", _calib(t / "c", "a.png", "b.jpg")], BuildError,
                         r"2 of 4 images cannot be decoded: a\.png, b\.jpg"),
    "calib missing": (lambda t: ["--precision", "int8", "--calib", t / "nope"], CalibrationError, r"does not exist"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_input_is_one_clear_error_before_any_work(tmp_path, monkeypatch, case):
    make, kind, words = BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = make(inputs)

    def no_export(*a, **k):
        raise AssertionError("the export started before the inputs were checked")

    monkeypatch.setattr("export.onnx_utils.export_onnx", no_export)
    with pytest.raises(kind, match=words):
        run_build(tmp_path / "out", *args)
    assert not (tmp_path / "out").exists() and not (inputs / "unpickled").exists()


# ------------------------------------------------------------------------------------------------ the command
@pytest.mark.parametrize("exc,status", [
    (BuildError("x"), 2), (CalibrationError("x"), 2), (ManifestError("x"), 2), (OptionError("x"), 2),
    (EngineError("x"), 1), (BuildCheckError("x"), 1), (OSError(28, "No space left on device"), 1),
    (RuntimeError("x"), 1),
])
def test_exit_status_is_2_for_usage_and_1_for_runtime_failures(exc, status):
    assert exit_status(exc) == status


def fail_with(monkeypatch, exc):
    def build(*a, **k):
        raise exc

    monkeypatch.setattr(be, "build", build)


def test_a_runtime_failure_exits_1_with_one_line_and_how_to_see_more(monkeypatch, capsys):
    fail_with(monkeypatch, OSError(28, "No space left on device"))
    assert main([]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the build failed: OSError: [Errno 28] No space left on device (run with --debug or "
                   "LLMFORMER_DEBUG=1 for the traceback)"]


@pytest.mark.parametrize("how", ["--debug", "LLMFORMER_DEBUG=1"])
def test_debug_shows_the_traceback(monkeypatch, capsys, how):
    fail_with(monkeypatch, EngineError("TensorRT could not build segmenter.onnx"))
    if how.startswith("--"):
        assert main([how]) == 1
    else:
        monkeypatch.setenv(*how.split("="))
        assert main([]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == "error: TensorRT could not build segmenter.onnx"


def test_usage_errors_exit_2_without_a_traceback(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "out"), "--segmenter", str(_pickle(tmp_path / "seg.pt"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --segmenter") and "pickle" in err[0]
    assert not (tmp_path / "unpickled").exists()


def test_an_interrupted_build_exits_130(monkeypatch, capsys):
    fail_with(monkeypatch, KeyboardInterrupt())
    assert main([]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: interrupted; the artifact folder keeps its previous build"]


def test_sample_frames_are_found_through_the_manifest(tiny_artifacts):
    """The frames the build ships are read through the manifest, wherever the build folder is."""
    manifest = read_manifest(tiny_artifacts)
    frame = cv2.imread(str(tiny_artifacts / manifest.samples[0].frame.file))
    assert frame is not None and frame.ndim == 3 and np.asarray(frame).size > 0
