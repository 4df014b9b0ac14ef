"""The main job end to end: build_engines.py -> artifact folder -> runtime.load(...).segment(frame)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import runtime
from conftest import ROOT, run_without_torch, tiny_preset
from engines.errors import EngineError
from engines.contract import MANIFEST_NAME, read_manifest
from engines.errors import ManifestError
from export.build_engines import BuildError, build, parse_args
from export.precision import PrecisionError
from llmformer.data.frames import demo_frame
from runtime.frames import FrameError
from runtime.pipeline import RuntimeInputError

CAPTION = "a red ball next to a blue box on a wooden table"
VOCAB = ["ball", "box", "table", "wall"]


@pytest.fixture(scope="module")
def demo_artifacts(tmp_path_factory):
    """The demo preset built by the real command line, once for this module."""
    out = tmp_path_factory.mktemp("artifacts") / "demo"
    subprocess.run([sys.executable, str(ROOT / "export" / "build_engines.py"), "--preset", "demo", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True, text=True)
    return out


@pytest.fixture
def tiny_copy(tiny_artifacts, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_artifacts, dst)
    return dst


def test_build_writes_manifest_with_hashes_specs_and_versions(demo_artifacts):
    m = json.loads((demo_artifacts / MANIFEST_NAME).read_text())
    assert m["preset"]["name"] == "demo" and m["precision"] == "fp32"
    # The demo has a (tiny) captioner, whose vision graph is the one tower pass the segmenter shares, and the
    # frame graphs (preprocessing and semantic inference on the engines' device).
    assert set(m["components"]) == {"captioner_vision", "captioner_embed", "captioner_decoder", "text_encoder",
                                    "segmenter", "frame_preprocess", "semantic_map"}
    for comp in m["components"].values():
        assert len(comp["onnx"]["sha256"]) == 64 and comp["onnx"]["size"] > 0
        assert comp.get("max_abs_diff_vs_torch", 0.0) < 1e-4
        assert all({"name", "dtype", "shape"} <= spec.keys() for spec in comp["inputs"] + comp["outputs"])
    assert m["components"]["captioner_decoder"]["greedy_tokens_match_torch"] is True
    assert m["captioner"]["max_context"] > m["captioner"]["image_tokens"]
    priors = [s for s in m["components"]["segmenter"]["inputs"] if s["name"] == "object_embeddings"][0]
    assert priors["shape"][1] == "priors" and priors["min_shape"][1] == 1
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= m["versions"].keys()
    # The demo preset builds from its shipped trained weights (llmformer/weights/demo).
    assert not any(c["random_weights"] for c in m["components"].values())
    assert m["preset"]["segmenter_weights"].endswith("segmenter.safetensors")
    assert not list(demo_artifacts.parent.glob(".*staging*")), "the staging folder must be cleaned up"


def test_onnxruntime_and_torch_agree_on_the_demo_preset(demo_artifacts):
    ort_rt = runtime.load(demo_artifacts, backend="onnxruntime")
    torch_rt = runtime.load(demo_artifacts, backend="torch")
    for i in range(3):
        frame = demo_frame(i, (200 + 40 * i, 300))
        a = ort_rt.segment(frame, vocabulary=VOCAB, caption=CAPTION)
        b = torch_rt.segment(frame, vocabulary=VOCAB, caption=CAPTION)
        assert a.labels.shape == frame.shape[:2] and a.labels.dtype == np.int32
        assert a.classes == b.classes == VOCAB
        # float32 through two runtimes: mask logits reach -40, where 1e-4 is a few ulps of accumulated rounding
        np.testing.assert_allclose(a.mask_logits, b.mask_logits, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(a.class_logits, b.class_logits, rtol=1e-5, atol=1e-4)
        assert np.array_equal(a.labels, b.labels)
        assert set(a.timings) >= {"preprocess", "vision", "parse", "text", "segment", "postprocess", "total"}


def test_caption_alone_gives_an_open_vocabulary(tiny_artifacts):
    rt = runtime.load(tiny_artifacts)
    seg = rt.segment(demo_frame(0), caption=CAPTION)
    assert seg.priors is not None and {"ball", "box", "table"} <= set(seg.classes)
    assert seg.labels.max() < len(seg.classes)


def test_text_cache_makes_repeated_frames_free(tiny_artifacts):
    rt = runtime.load(tiny_artifacts)
    rt.segment(demo_frame(0), vocabulary=VOCAB, caption=CAPTION)
    seg = rt.segment(demo_frame(1), vocabulary=VOCAB, caption=CAPTION)
    assert seg.timings["text_cache_hit_rate"] == 1.0


@pytest.mark.parametrize("frame,match", [
    (np.zeros((32, 32, 3), np.int16), "dtype must be uint8"),
    (np.zeros((32, 32, 4), np.uint8), "3 channels.*RGBA"),
    (np.zeros((32, 32), np.uint8), "2-D"),
    (np.zeros((0, 32, 3), np.uint8), "empty"),
    (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    (np.full((8, 8, 3), 7.0, np.float32), r"\[0, 1\]"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_frames_are_clear_errors(tiny_artifacts, frame, match):
    rt = runtime.load(tiny_artifacts)
    with pytest.raises(FrameError, match=match):
        rt.segment(frame, vocabulary=VOCAB)


def test_float_frames_in_unit_range_are_accepted(tiny_artifacts):
    rt = runtime.load(tiny_artifacts)
    frame = demo_frame(2, (64, 64))
    a = rt.segment(frame, vocabulary=VOCAB)
    b = rt.segment(frame.astype(np.float32) / 255.0, vocabulary=VOCAB)
    assert np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("kwargs,match", [
    ({"vocabulary": []}, "vocabulary is empty"),
    ({"vocabulary": "dog"}, "list of class names"),
    ({"vocabulary": ["dog", ""]}, "non-empty strings"),
    ({"caption": "   "}, "names no objects"),
])
def test_bad_vocabulary_and_caption_are_clear_errors(tiny_artifacts, kwargs, match):
    rt = runtime.load(tiny_artifacts)
    with pytest.raises(RuntimeInputError, match=match):
        rt.segment(demo_frame(0, (64, 64)), **kwargs)


def test_altered_file_is_named(tiny_copy):
    with open(tiny_copy / read_manifest(tiny_copy).components["segmenter"].onnx.file, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="segmenter.onnx .*altered"):
        runtime.load(tiny_copy)


def test_missing_file_is_named(tiny_copy):
    (tiny_copy / read_manifest(tiny_copy).tokenizer.file).unlink()
    with pytest.raises(ManifestError, match="tokenizer.json .*missing"):
        runtime.load(tiny_copy)


def test_newer_manifest_format_is_refused(tiny_copy):
    path = tiny_copy / MANIFEST_NAME
    m = json.loads(path.read_text())
    m["format_version"] += 1
    path.write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="newer than this runtime"):
        runtime.load(tiny_copy)


def test_missing_manifest_and_unknown_backend(tiny_copy, tmp_path):
    with pytest.raises(EngineError, match="unknown backend 'tensorflow'"):
        runtime.load(tiny_copy, backend="tensorflow")
    (tiny_copy / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="no finished build"):
        runtime.load(tiny_copy)
    with pytest.raises(ManifestError, match="does not exist"):
        runtime.load(tmp_path / "nowhere")


def test_failed_rebuild_keeps_the_previous_build_valid(tiny_copy, monkeypatch):
    import export.build_engines as be

    before = (tiny_copy / MANIFEST_NAME).read_text()

    def crash(*a, **k):
        raise KeyboardInterrupt("killed half-way")

    monkeypatch.setattr(be, "validate", crash)
    with pytest.raises(KeyboardInterrupt):
        build(parse_args(["--out", str(tiny_copy), "--seed", "3"]), preset=tiny_preset())
    assert (tiny_copy / MANIFEST_NAME).read_text() == before
    runtime.load(tiny_copy)  # still loads: hashes match the files
    assert not list(tiny_copy.parent.glob(".*staging*"))


def test_runtime_runs_without_torch(tiny_artifacts):
    """`import runtime` and a full segment() on ONNX Runtime with torch and transformers unimportable."""
    run_without_torch(f"""
        import numpy as np, runtime
        rt = runtime.load({str(tiny_artifacts)!r})
        frame = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
        seg = rt.segment(frame, vocabulary=['ball', 'box'], caption='a red ball on a box')
        assert seg.labels.shape == (64, 80), seg.labels.shape
        assert rt.backend == 'onnxruntime'
    """)


def test_torch_backend_cannot_be_asked_for_tensorrt_here(tiny_artifacts):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(EngineError, match="not installed"):
        runtime.load(tiny_artifacts, backend="tensorrt")


def test_build_from_local_folders_and_a_checkpoint(tmp_path):
    """Real weights come from local folders: the tower and text encoder decide their own sizes, and a
    segmenter checkpoint that does not fit them is refused with the mismatch named."""
    import dataclasses

    import torch

    from llmformer.checkpoint import save_segmenter
    from llmformer.segmenter import LLMFormerSegmenter
    from llmformer.text_encoder import build_text_encoder, tokenizer_file
    from llmformer.vision_tower import build_vision_model

    p = tiny_preset()
    wider = dataclasses.replace(p.vision_tower, hidden_size=48, num_heads=4)
    build_vision_model(wider).save_pretrained(tmp_path / "tower")
    text = build_text_encoder(p.text_encoder)
    text.model.save_pretrained(tmp_path / "text")
    shutil.copy(tokenizer_file(p.text_encoder), tmp_path / "text" / "tokenizer.json")

    with pytest.raises(BuildError, match="both bring a vision tower"):
        build(parse_args(["--out", str(tmp_path / "x"), "--vision-tower", str(tmp_path / "tower")]), preset=p)
    out = build(parse_args(["--out", str(tmp_path / "a"), "--vision-tower", str(tmp_path / "tower"),
                            "--text-encoder", str(tmp_path / "text"), "--no-captioner"]), preset=p)
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["preset"]["segmenter"]["vit_dim"] == 48
    assert m["components"]["vision_tower"]["random_weights"] is False
    assert m["components"]["text_encoder"]["random_weights"] is False
    runtime.load(out).segment(demo_frame(0, (64, 64)), vocabulary=VOCAB)

    torch.manual_seed(0)
    ckpt = save_segmenter(LLMFormerSegmenter(p.segmenter), tmp_path / "seg.safetensors")  # made for width 32
    with pytest.raises(BuildError, match="vit_dim 32 \\(towers give 48\\)"):
        build(parse_args(["--out", str(tmp_path / "b"), "--vision-tower", str(tmp_path / "tower"),
                          "--segmenter", str(ckpt), "--no-captioner"]), preset=p)
    out = build(parse_args(["--out", str(tmp_path / "c"), "--segmenter", str(ckpt)]), preset=p)
    assert json.loads((out / MANIFEST_NAME).read_text())["components"]["segmenter"]["random_weights"] is False


def test_caption_objects_map_onto_the_vocabulary(tiny_artifacts):
    """A caption's synonym is keyed by the class it maps to; an exact name maps to itself."""
    rt = runtime.load(tiny_artifacts, map_threshold=0.5)
    priors = rt.parse_caption("a red ball next to a crate")
    emb = rt.embed(priors, ["ball", "box"])
    assert emb.prior_classes[0] == 0
    m = json.loads((tiny_artifacts / MANIFEST_NAME).read_text())
    assert m["priors"]["parser"].startswith("en_core_web_sm")


def test_puppy_helps_the_class_dog_with_the_real_text_encoder(demo_artifacts):
    rt = runtime.load(demo_artifacts)
    emb = rt.embed(rt.parse_caption("a puppy sleeping on a sofa"), ["dog", "car", "couch"])
    assert emb.prior_classes == [0, 2]
    dog = rt.encode_text(["dog"])[0]
    np.testing.assert_allclose(emb.objects[0], dog, atol=1e-6)  # keyed by the class it maps to


def test_segment_without_caption_asks_the_captioner_on_both_backends(demo_artifacts):
    """One tower pass feeds the captioner and the segmenter; ORT and PyTorch give the same caption."""
    a = runtime.load(demo_artifacts, backend="onnxruntime")
    b = runtime.load(demo_artifacts, backend="torch")
    frame = demo_frame(5)
    seg = a.segment(frame, vocabulary=VOCAB)
    assert seg.caption == a.caption(frame).text == b.segment(frame, vocabulary=VOCAB).caption
    assert "caption" in seg.timings and seg.timings["caption"] > 0
    assert a.caption(frame, "What is on the table?", max_new_tokens=5).token_ids.__len__() <= 5


def test_a_caption_with_no_objects_leaves_the_frame_unlabeled_instead_of_failing(tiny_artifacts, monkeypatch):
    from runtime.decode import Caption

    rt = runtime.load(tiny_artifacts)
    monkeypatch.setattr(rt, "caption", lambda image, *a, **k: Caption("!!! ???", [], "", "stop_token", None))
    seg = rt.segment(demo_frame(0, (40, 50)))
    assert seg.classes == [] and seg.labels.shape == (40, 50) and (seg.labels == -1).all()
    from runtime.visualize import visualize

    frame = demo_frame(0, (40, 50))
    assert np.array_equal(visualize(frame, seg, legend=False), frame)  # nothing painted


def test_captioner_rejects_bad_questions(tiny_artifacts):
    from runtime.decode import CaptionError

    rt = runtime.load(tiny_artifacts)
    with pytest.raises(CaptionError, match="empty"):
        rt.caption(demo_frame(0, (64, 64)), "   ")
    with pytest.raises(CaptionError, match="context|long"):
        rt.caption(demo_frame(0, (64, 64)), "why " * 2000)


def test_build_without_captioner_uses_a_plain_vision_tower(tmp_path):
    out = build(parse_args(["--out", str(tmp_path / "nc"), "--no-captioner"]), preset=tiny_preset())
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert "vision_tower" in m["components"] and "captioner_vision" not in m["components"]
    assert m["captioner"] is None
    rt = runtime.load(out)
    with pytest.raises(RuntimeInputError, match="no captioner"):
        rt.caption(demo_frame(0, (64, 64)))
    with pytest.raises(RuntimeInputError, match="pass vocabulary"):
        rt.segment(demo_frame(0, (64, 64)))


def test_build_with_a_captioner_checkpoint_folder(tmp_path):
    """A LLaVA-Phi folder (here a tiny one saved by the same code) brings the tower the segmenter reads."""
    from llmformer.captioner import build_tiny_captioner

    p = tiny_preset()
    build_tiny_captioner(tmp_path / "llava", p.vision_tower, seed=1)
    out = build(parse_args(["--out", str(tmp_path / "a"), "--captioner", str(tmp_path / "llava")]), preset=p)
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["components"]["captioner_decoder"]["random_weights"] is False
    assert m["components"]["captioner_decoder"]["greedy_tokens_match_torch"] is True
    seg = runtime.load(out).segment(demo_frame(0, (64, 64)), vocabulary=VOCAB)
    assert isinstance(seg.caption, str)
    (tmp_path / "llava" / "tokenizer.json").unlink()
    with pytest.raises(Exception, match="tokenizer"):
        build(parse_args(["--out", str(tmp_path / "b"), "--captioner", str(tmp_path / "llava")]), preset=p)


def test_precision_flags_through_the_build_command(tmp_path):
    with pytest.raises(PrecisionError, match="--calib"):
        build(parse_args(["--out", str(tmp_path / "i8"), "--precision", "int8"]), preset=tiny_preset())
    assert not (tmp_path / "i8").exists()  # refused before any work
    out = build(parse_args(["--out", str(tmp_path / "f16"), "--precision", "fp16"]), preset=tiny_preset())
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["components"]["segmenter"]["precision"] == "fp16"
    assert m["components"]["segmenter"]["onnx"]["file"].endswith(".fp16.onnx")
    seg = runtime.load(out).segment(demo_frame(0, (64, 64)), vocabulary=VOCAB, caption=CAPTION)
    assert seg.labels.shape == (64, 64)


def test_a_build_killed_before_the_switch_keeps_the_previous_build(tiny_copy, monkeypatch):
    """Until manifest.json is replaced (one os.replace) the folder loads as the previous build, never as a mix
    of two builds (tests/test_build_safety.py SIGKILLs a publish at every step)."""
    import export.build_engines as be

    before = (tiny_copy / MANIFEST_NAME).read_text()

    def killed(step):
        if step == "manifest-written":
            raise KeyboardInterrupt("killed before the switch")

    monkeypatch.setattr(be, "_fault", killed)
    with pytest.raises(KeyboardInterrupt):
        build(parse_args(["--out", str(tiny_copy), "--seed", "4"]), preset=tiny_preset())
    assert (tiny_copy / MANIFEST_NAME).read_text() == before
    runtime.load(tiny_copy, warmup=False).close()


def test_closed_runtime_says_so(tiny_artifacts):
    rt = runtime.load(tiny_artifacts)
    rt.close()
    with pytest.raises(EngineError, match="closed"):
        rt.segment(demo_frame(0, (64, 64)), vocabulary=VOCAB)


@pytest.mark.parametrize("caption", ["", "!!! 😀 \x00\x07", "Ceci n'est pas une pipe.", "it is very nice", "a " * 5000])
def test_garbage_captions_fall_back_to_the_vocabulary(tiny_artifacts, caption):
    """A caption with no usable objects gives empty or partial priors, and the segmenter still runs on
    the vocabulary alone."""
    rt = runtime.load(tiny_artifacts)
    seg = rt.segment(demo_frame(3, (48, 64)), vocabulary=VOCAB, caption=caption)
    assert seg.classes == VOCAB and seg.labels.shape == (48, 64)
    assert seg.labels.min() >= 0 and seg.labels.max() < len(VOCAB)
