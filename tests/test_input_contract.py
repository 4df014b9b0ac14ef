"""The public API's input contract (issue 16, item 1; README "Input contract"): every bad argument of
runtime.load(), the Runtime calls, CaptionPolicy, visualize() and to_rgb() is refused where it is passed,
before any expensive work, by an error that inherits LLMFormerError and the builtin a caller would catch
(ValueError for a bad value, TypeError for a wrong type or an unknown keyword), with a message naming the
argument. Each case asserts the exception type and the key words of its message, or checks the result."""
import inspect
import itertools
import math

import numpy as np
import pytest

import runtime
from engines.base import BACKENDS, ENGINE_OPTIONS, create_engine
from engines.errors import EngineError, LLMFormerError, ManifestError, OptionError
from llmformer.data.frames import demo_frame
from runtime.captioning import CaptionPolicy, CaptionPolicyError
from runtime.decode import CaptionError
from runtime.frames import FrameError, to_rgb
from runtime.pipeline import (MAX_NAME_CHARS, ImageFeatures, InputTypeError, PriorEmbeddings, RuntimeInputError,
                              Segmentation)
from runtime.priors import Priors
from runtime.visualize import visualize

VOCAB = ["ball", "box", "table", "wall"]


@pytest.fixture(scope="module")
def rt(tiny_artifacts):
    with runtime.load(tiny_artifacts, warmup=False) as r:
        yield r


@pytest.fixture(scope="module")
def frame():
    return demo_frame(0, (64, 64))


def _raises(exc_type, words, call, *builtins):
    """Run `call`, expect `exc_type` (an LLMFormerError, and each of `builtins`) with every word of `words`."""
    with pytest.raises(exc_type) as info:
        call()
    err = info.value
    assert isinstance(err, LLMFormerError), type(err).__mro__
    for base in builtins:
        assert isinstance(err, base), (type(err).__mro__, base)
    for word in words:
        assert word in str(err), (word, str(err))
    return err


# -- the error classes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,builtin", [
    (OptionError, TypeError), (InputTypeError, TypeError), (InputTypeError, ValueError),
    (RuntimeInputError, ValueError), (CaptionPolicyError, ValueError), (CaptionError, ValueError),
    (FrameError, ValueError), (EngineError, RuntimeError), (ManifestError, RuntimeError),
])
def test_every_contract_error_is_an_llmformer_error_and_a_builtin(cls, builtin):
    assert issubclass(cls, LLMFormerError) and issubclass(cls, builtin)


# -- runtime.load(): checked before the folder is read ---------------------------------------------------------
LOAD_CASES = [
    ({"path": 42}, InputTypeError, ["path must be", "int"]),
    ({"path": ""}, RuntimeInputError, ["path is empty"]),
    ({"backend": 3}, InputTypeError, ["backend must be one of", "int"]),
    ({"backend": "tensorflow"}, EngineError, ["unknown backend 'tensorflow'"]),
    ({"threads": 0}, RuntimeInputError, ["threads must be >= 1", "got 0"]),
    ({"threads": -2}, RuntimeInputError, ["threads must be >= 1", "got -2"]),
    ({"threads": 2.5}, InputTypeError, ["threads must be an int", "float 2.5"]),
    ({"threads": "2"}, InputTypeError, ["threads must be an int", "str '2'"]),
    ({"threads": True}, InputTypeError, ["threads must be an int", "bool"]),
    ({"cache_size": -1}, RuntimeInputError, ["cache_size must be >= 0", "-1"]),
    ({"cache_size": 1.5}, InputTypeError, ["cache_size must be an int"]),
    ({"cache_size": "big"}, InputTypeError, ["cache_size must be an int", "str"]),
    ({"map_threshold": 1.5}, RuntimeInputError, ["map_threshold", "[-1, 1]", "1.5"]),
    ({"map_threshold": -2}, RuntimeInputError, ["map_threshold", "[-1, 1]"]),
    ({"map_threshold": math.nan}, RuntimeInputError, ["map_threshold", "nan"]),
    ({"map_threshold": "0.5"}, InputTypeError, ["map_threshold must be a number"]),
    ({"parser_model": 42}, InputTypeError, ["parser_model must be a spaCy pipeline"]),
    ({"parser_model": "  "}, RuntimeInputError, ["parser_model is empty"]),
    ({"warmup": "yes"}, InputTypeError, ["warmup must be True or False"]),
    ({"warmup": 1}, InputTypeError, ["warmup must be True or False", "int"]),
    ({"captioning": {"every_frames": 30}}, InputTypeError, ["captioning must be a runtime.CaptionPolicy", "dict"]),
    ({"captioning": True}, InputTypeError, ["captioning must be a runtime.CaptionPolicy", "bool"]),
    ({"verify": "quick"}, RuntimeInputError, ["verify must be one of", "'fast'", "quick"]),
    ({"verify": None}, RuntimeInputError, ["verify must be one of"]),
    ({"thread": 2}, OptionError, ["runtime.load() got an unexpected option 'thread' (did you mean 'threads'?)"]),
    ({"cach_size": 10}, OptionError, ["unexpected option 'cach_size' (did you mean 'cache_size'?)"]),
    ({"foo": 1, "bar": 2}, OptionError, ["unexpected options 'bar', 'foo'", "it takes:"]),
    ({"providers": "CPUExecutionProvider"}, OptionError, ["providers must be a list"]),
    ({"providers": ["NopeExecutionProvider"]}, EngineError, ["NopeExecutionProvider", "not in this onnxruntime"]),
    ({"providers": []}, EngineError, ["providers is empty"]),
    ({"spin": "yes"}, OptionError, ["spin must be True or False"]),
    ({"backend": "onnxruntime", "device": "cuda"}, OptionError,
     ["unexpected option 'device' for the onnxruntime backend", "the torch backend takes it"]),
    ({"backend": "onnxruntime", "cuda_graph": True}, OptionError, ["'cuda_graph'", "the tensorrt backend takes it"]),
    ({"backend": "torch", "providers": ["CPUExecutionProvider"]}, OptionError,
     ["'providers' for the torch backend", "onnxruntime backend takes it"]),
    ({"backend": "tensorrt", "plugins": 5}, OptionError, ["plugins must be the path"]),
    ({"backend": "torch", "device": 1.5}, OptionError, ["device must be a torch device"]),
]


@pytest.mark.parametrize("kwargs,exc,words", LOAD_CASES, ids=[",".join(c[0]) + f"-{i}" for i, c in
                                                              enumerate(LOAD_CASES)])
def test_load_refuses_bad_arguments_before_reading_the_folder(tmp_path, kwargs, exc, words):
    # The folder does not exist: an argument error must come first, before the folder (or a hash) is read.
    kwargs = {"path": tmp_path / "nowhere", **kwargs}
    err = _raises(exc, words, lambda: runtime.load(**kwargs))
    assert not isinstance(err, ManifestError)
    if isinstance(err, InputTypeError) or type(err) is OptionError:
        assert isinstance(err, TypeError)


def test_load_option_of_another_backend_is_refused_once_the_backend_is_chosen(tiny_artifacts):
    # backend=None: 'device' is some backend's option, so it passes the first check; the folder's backend
    # (ONNX Runtime here) does not take it, and it must not vanish.
    _raises(OptionError, ["'device' for the onnxruntime backend", "pass backend="],
            lambda: runtime.load(tiny_artifacts, warmup=False, device="cpu"), TypeError)


def test_load_accepts_every_documented_form(tiny_artifacts):
    with runtime.load(str(tiny_artifacts), backend="onnxruntime", threads=np.int64(1), cache_size=0,
                      map_threshold=-1, parser_model=None, warmup=False, captioning=None, verify="off",
                      providers=("CPUExecutionProvider",), spin=False) as r:
        assert r.backend == "onnxruntime" and r.text_cache.size == 0 and r.map_threshold == -1.0
        assert r.engines["segmenter"].providers == ["CPUExecutionProvider"]


def test_create_engine_refuses_an_unknown_option_by_name(tiny_artifacts):
    from engines.contract import read_manifest

    comp = read_manifest(tiny_artifacts, verify="off").components["segmenter"]
    _raises(OptionError, ["create_engine() got an unexpected option 'thread' (did you mean 'threads'?)"],
            lambda: create_engine("onnxruntime", "segmenter", tiny_artifacts, comp, thread=2), TypeError)
    _raises(EngineError, ["threads must be >= 1"],
            lambda: create_engine("onnxruntime", "segmenter", tiny_artifacts, comp, threads=0))


def _from_component(backend):
    if backend == "onnxruntime":
        from engines.onnxruntime_engine import OnnxRuntimeEngine as cls
    elif backend == "torch":
        from engines.torch_engine import TorchEngine as cls
    else:
        from engines.tensorrt_engine import TensorRTEngine as cls
    return cls.from_component


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_engine_takes_exactly_its_documented_options(backend):
    params = inspect.signature(_from_component(backend)).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), "an engine must not swallow **options"
    assert set(params) - {"name", "folder", "component"} == set(ENGINE_OPTIONS[backend])


# -- segment(): vocabulary ---------------------------------------------------------------------------------------
def _infinite_names():
    return (f"name{i}" for i in itertools.count())


BAD_VOCABULARIES = [
    (42, InputTypeError, ["vocabulary must be a list of class names", "int 42", "vocabulary=['dog', 'couch']"]),
    (3.5, InputTypeError, ["vocabulary must be a list of class names", "float"]),
    ("dog", InputTypeError, ["list of class names", "pass ['dog']"]),
    (b"dog", InputTypeError, ["list of class names", "b'dog'"]),
    ({"dog": 1}, InputTypeError, ["vocabulary must be a list of class names", "dict"]),
    (np.array(5), InputTypeError, ["vocabulary must be a list of class names", "ndarray"]),
    ([], RuntimeInputError, ["vocabulary is empty", "vocabulary=None"]),
    ((), RuntimeInputError, ["vocabulary is empty"]),
    (iter([]), RuntimeInputError, ["vocabulary is empty"]),
    (["dog", ""], RuntimeInputError, ["vocabulary[1] is empty", "non-empty strings"]),
    (["dog", "   "], RuntimeInputError, ["vocabulary[1] is empty or blank"]),
    (["dog", 3], InputTypeError, ["vocabulary[1] must be a str", "int 3"]),
    (["dog", None], InputTypeError, ["vocabulary[1] must be a str", "NoneType"]),
    ([["dog"]], InputTypeError, ["vocabulary[0] must be a str", "list"]),
    (["do\ud800g"], RuntimeInputError, ["vocabulary[0]", "lone surrogate", "index 2"]),
    (["dog", "cat\udcff"], RuntimeInputError, ["vocabulary[1]", "lone surrogate"]),
    (["dog\ncat"], RuntimeInputError, ["vocabulary[0]", "control character", "'\\n'"]),
    (["dog\x00"], RuntimeInputError, ["vocabulary[0]", "control character"]),
    (["x" * (MAX_NAME_CHARS + 1)], RuntimeInputError, ["vocabulary[0]", f"{MAX_NAME_CHARS + 1} characters",
                                                       f"at most {MAX_NAME_CHARS}"]),
    ("too-many", RuntimeInputError, ["names; this build takes at most"]),
    ("infinite", RuntimeInputError, ["vocabulary has over", "this build takes at most"]),
]


@pytest.mark.parametrize("vocabulary,exc,words", BAD_VOCABULARIES,
                         ids=[f"vocab{i}" for i in range(len(BAD_VOCABULARIES))])
def test_segment_refuses_bad_vocabularies_before_the_tower_pass(rt, vocabulary, exc, words):
    if vocabulary == "too-many":
        vocabulary = [f"name{i}" for i in range(rt.max_vocab + 1)]
    elif vocabulary == "infinite":
        vocabulary = _infinite_names()   # read only up to the build's limit + 1, never to the end
    # The frame is bad too: the vocabulary is checked first, before any frame work.
    _raises(exc, words, lambda: rt.segment(None, vocabulary=vocabulary))


@pytest.mark.parametrize("vocabulary,classes", [
    ((n for n in VOCAB), VOCAB),                               # a generator is read once, not called empty
    (tuple(VOCAB), VOCAB),
    (np.array(VOCAB), VOCAB),                                  # np.str_ names
    ([" ball ", "ball", "box", "box"], ["ball", "box"]),       # stripped, duplicates dropped, order kept
    (["café", "狗", "living room"], ["café", "狗", "living room"]),
    (["x" * MAX_NAME_CHARS], ["x" * MAX_NAME_CHARS]),
])
def test_segment_takes_every_documented_vocabulary_form(rt, frame, vocabulary, classes):
    seg = rt.segment(frame, vocabulary=vocabulary)
    assert seg.classes == classes
    assert seg.labels.shape == frame.shape[:2] and seg.labels.max() < len(classes)


# -- segment(): caption --------------------------------------------------------------------------------------------
class _CaptionLike:
    text = "a ball on a table"


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"caption": 42}, InputTypeError, ["caption must be a str or None", "int"]),
    ({"caption": b"a ball"}, InputTypeError, ["caption must be a str or None", "bytes"]),
    ({"caption": _CaptionLike()}, InputTypeError, ["caption must be a str", "pass its .text"]),
    ({"caption": ["a ball"]}, InputTypeError, ["caption must be a str", "list"]),
    ({"caption": "a ball \ud800 on a table"}, RuntimeInputError, ["caption", "lone surrogate", "index 7"]),
    ({"caption": "a ball \ud800", "vocabulary": VOCAB}, RuntimeInputError, ["caption", "lone surrogate"]),
    ({"caption": "   "}, RuntimeInputError, ["names no objects", "vocabulary="]),
    ({"caption": "!!! 123"}, RuntimeInputError, ["names no objects"]),
])
def test_segment_refuses_bad_captions_before_the_tower_pass(rt, kwargs, exc, words):
    _raises(exc, words, lambda: rt.segment(None, **kwargs))


@pytest.mark.parametrize("caption", ["", "   ", "a ball\x00 on\ta table\r\n", "a ball \U0001F600 on a box"])
def test_segment_takes_empty_and_control_character_captions_with_a_vocabulary(rt, frame, caption):
    seg = rt.segment(frame, vocabulary=VOCAB, caption=caption)
    assert seg.classes == VOCAB and seg.caption == caption


def test_unknown_segment_keyword_is_a_type_error_naming_it(rt, frame):
    with pytest.raises(TypeError, match="vocab"):
        rt.segment(frame, vocab=VOCAB)


# -- the stage calls --------------------------------------------------------------------------------------------
def test_parse_caption_checks_its_text(rt):
    _raises(InputTypeError, ["caption must be a str", "int"], lambda: rt.parse_caption(42), TypeError)
    _raises(RuntimeInputError, ["caption", "lone surrogate"], lambda: rt.parse_caption("a dog\ud800"))
    assert rt.parse_caption("a ball on a table").names == ["ball", "table"]


@pytest.mark.parametrize("args,exc,words", [
    (("a ball", VOCAB), InputTypeError, ["priors must be the runtime.Priors", "str"]),
    ((None, None), RuntimeInputError, ["embed() needs priors, a vocabulary or both"]),
    ((None, 42), InputTypeError, ["vocabulary must be a list of class names"]),
    ((None, ["ball", ""]), RuntimeInputError, ["vocabulary[1] is empty"]),
])
def test_embed_checks_its_arguments(rt, args, exc, words):
    _raises(exc, words, lambda: rt.embed(*args))


def test_embed_reads_a_generator_vocabulary_once(rt):
    emb = rt.embed(Priors("nothing"), (n for n in VOCAB))
    assert emb.classes == VOCAB and emb.vocabulary.shape[0] == len(VOCAB)


def test_decode_checks_its_arguments(rt, frame):
    image = rt.encode_image(frame)
    emb = rt.embed(None, VOCAB)
    _raises(InputTypeError, ["image must be the ImageFeatures of encode_image"], lambda: rt.decode(frame, emb))
    _raises(InputTypeError, ["emb must be the PriorEmbeddings of embed"], lambda: rt.decode(image, VOCAB))
    _raises(InputTypeError, ["caption must be a str"], lambda: rt.decode(image, emb, caption=3))
    _raises(InputTypeError, ["priors must be a runtime.Priors"], lambda: rt.decode(image, emb, priors="x"))
    worker_copy = ImageFeatures(image.frame_size, None, None, image.image_embeds)
    _raises(RuntimeInputError, ["no segmenter input"], lambda: rt.decode(worker_copy, emb))
    assert rt.decode(image, emb).classes == VOCAB
    assert isinstance(emb, PriorEmbeddings)


def test_encode_image_refuses_a_non_frame(rt):
    _raises(FrameError, ["frame must be a numpy array"], lambda: rt.encode_image([[1, 2, 3]]), ValueError)


# -- caption() and start_captioning(): options and the question ------------------------------------------------
CAPTION_CASES = [
    ({"max_tokens": 5}, OptionError,
     ["Runtime.caption() got an unexpected option 'max_tokens' (did you mean 'max_new_tokens'?)"]),
    ({"temperature": 0.7}, OptionError, ["unexpected option 'temperature'", "max_new_tokens, repetition_penalty"]),
    ({"max_new_tokens": 0}, CaptionError, ["max_new_tokens must be an int >= 1", "0"]),
    ({"max_new_tokens": 2.5}, CaptionError, ["max_new_tokens must be an int >= 1", "float"]),
    ({"max_new_tokens": True}, CaptionError, ["max_new_tokens must be an int >= 1", "bool"]),
    ({"max_new_tokens": "8"}, CaptionError, ["max_new_tokens", "str"]),
    ({"repetition_penalty": 0}, CaptionError, ["repetition_penalty must be a finite number > 0"]),
    ({"repetition_penalty": -1.0}, CaptionError, ["repetition_penalty"]),
    ({"repetition_penalty": math.nan}, CaptionError, ["repetition_penalty", "nan"]),
    ({"repetition_penalty": "high"}, CaptionError, ["repetition_penalty", "str"]),
    ({"question": 42}, InputTypeError, ["question must be a str or None", "int"]),
    ({"question": "what is \ud800?"}, RuntimeInputError, ["question", "lone surrogate"]),
    ({"question": "   "}, CaptionError, ["question is empty: pass None"]),
    ({"question": "what is <image>?"}, CaptionError, ["image token"]),
]


@pytest.mark.parametrize("kwargs,exc,words", CAPTION_CASES, ids=[f"caption{i}" for i in range(len(CAPTION_CASES))])
def test_caption_refuses_bad_options_and_questions_before_the_tower_pass(rt, kwargs, exc, words):
    _raises(exc, words, lambda: rt.caption(None, **kwargs))   # the frame (None) is never reached


@pytest.mark.parametrize("question", [None, "What is here?", "What\tis here?\n", "Qu'y a-t-il ici ? 🙂"])
def test_caption_takes_documented_options_and_questions(rt, frame, question):
    cap = rt.caption(frame, question, max_new_tokens=np.int64(3), repetition_penalty=1)
    assert len(cap.token_ids) <= 3 and isinstance(cap.text, str)
    assert cap.question == (question if question is not None else rt.captioner.prompt.default_question)


def test_load_refuses_a_caption_policy_for_a_build_without_captioner(tiny_artifacts, monkeypatch):
    import dataclasses

    import runtime.pipeline as pipeline

    read = pipeline.read_manifest
    monkeypatch.setattr(pipeline, "read_manifest", lambda *a, **k: dataclasses.replace(read(*a, **k), captioner=None))
    _raises(RuntimeInputError, ["needs a captioner", "has none", "captioning=None"],
            lambda: runtime.load(tiny_artifacts, warmup=False, captioning=CaptionPolicy()))


def _name(features):
    return "a ball"


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"policy": "fast"}, InputTypeError, ["policy must be a runtime.CaptionPolicy", "str"]),
    ({"policy": {"every_frames": 5}}, InputTypeError, ["policy must be a runtime.CaptionPolicy", "dict"]),
    ({"caption_fn": 42}, InputTypeError, ["caption_fn must be a function"]),
    ({"caption_fn": _name, "question": "why?"}, RuntimeInputError, ["question goes to the build's captioner"]),
    ({"caption_fn": _name, "max_new_tokens": 3}, RuntimeInputError, ["max_new_tokens goes to the build's captioner"]),
    ({"max_tokens": 3}, OptionError, ["Runtime.start_captioning() got an unexpected option 'max_tokens'"]),
    ({"max_new_tokens": -1}, CaptionError, ["max_new_tokens must be an int >= 1"]),
    ({"question": ""}, CaptionError, ["question is empty"]),
    ({"question": 7}, InputTypeError, ["question must be a str"]),
])
def test_start_captioning_refuses_bad_arguments_and_starts_nothing(rt, kwargs, exc, words):
    _raises(exc, words, lambda: rt.start_captioning(**kwargs))
    assert rt.captioning is None


def test_start_captioning_takes_a_policy_and_options(rt):
    try:
        captioner = rt.start_captioning(CaptionPolicy(every_frames=np.int64(5)), question="What is here?",
                                        max_new_tokens=2)
        assert captioner.policy.every_frames == 5
    finally:
        rt.stop_captioning()
    assert rt.captioning is None


# -- CaptionPolicy --------------------------------------------------------------------------------------------
POLICY_CASES = [
    ({"every_frames": 0}, ["CaptionPolicy.every_frames", ">= 1", "got 0"]),
    ({"every_frames": -3}, ["CaptionPolicy.every_frames", "got -3"]),
    ({"every_frames": 1.5}, ["CaptionPolicy.every_frames must be an int", "float"]),
    ({"every_frames": "30"}, ["CaptionPolicy.every_frames must be an int", "str '30'"]),
    ({"every_frames": True}, ["CaptionPolicy.every_frames must be an int", "bool"]),
    ({"every_seconds": 0}, ["CaptionPolicy.every_seconds", "> 0", "never on time"]),
    ({"every_seconds": -1.0}, ["CaptionPolicy.every_seconds"]),
    ({"every_seconds": math.nan}, ["CaptionPolicy.every_seconds", "finite"]),
    ({"every_seconds": math.inf}, ["CaptionPolicy.every_seconds", "finite", "or None"]),
    ({"every_seconds": "1"}, ["CaptionPolicy.every_seconds", "str"]),
    ({"first_wait_s": 0}, ["CaptionPolicy.first_wait_s", "no limit"]),
    ({"timeout_s": -5}, ["CaptionPolicy.timeout_s", "no timeout"]),
    ({"timeout_s": math.nan}, ["CaptionPolicy.timeout_s"]),
    ({"timeout_s": False}, ["CaptionPolicy.timeout_s", "bool"]),
    ({"scene_change": 0}, ["CaptionPolicy.scene_change", "(0, 2]"]),
    ({"scene_change": 2.5}, ["CaptionPolicy.scene_change", "2.5"]),
    ({"scene_change": math.nan}, ["CaptionPolicy.scene_change", "nan"]),
    ({"scene_change": "0.1"}, ["CaptionPolicy.scene_change", "str"]),
    ({"first_frame": "maybe"}, ["CaptionPolicy.first_frame must be one of", "'wait'", "'maybe'"]),
    ({"first_frame": None}, ["CaptionPolicy.first_frame must be one of", "None"]),
]


@pytest.mark.parametrize("kwargs,words", POLICY_CASES, ids=[f"policy{i}" for i in range(len(POLICY_CASES))])
def test_caption_policy_names_the_bad_field(kwargs, words):
    _raises(CaptionPolicyError, words, lambda: CaptionPolicy(**kwargs), ValueError)


def test_caption_policy_takes_numpy_numbers_and_none():
    p = CaptionPolicy(every_frames=np.int32(5), every_seconds=np.float32(2), scene_change=2, first_wait_s=None,
                      timeout_s=None, first_frame="vocabulary")
    assert (p.every_frames, p.every_seconds, p.scene_change) == (5, 2.0, 2.0)
    assert type(p.every_frames) is int and type(p.every_seconds) is float
    q = CaptionPolicy(every_frames=None, every_seconds=None, scene_change=None)   # the first caption only
    assert q.every_frames is q.every_seconds is q.scene_change is None


# -- visualize() and to_rgb() ------------------------------------------------------------------------------------
def _segmentation(labels=None, classes=("ball", "box"), caption="a ball"):
    labels = np.zeros((8, 8), np.int32) if labels is None else labels
    return Segmentation(labels, list(classes), np.ones(len(classes), np.float32), caption, None, {})


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"alpha": 1.5}, RuntimeInputError, ["alpha must be in [0, 1]", "1.5"]),
    ({"alpha": -0.1}, RuntimeInputError, ["alpha must be in [0, 1]"]),
    ({"alpha": math.nan}, RuntimeInputError, ["alpha must be in [0, 1]", "nan"]),
    ({"alpha": "0.5"}, InputTypeError, ["alpha must be a number", "str"]),
    ({"alpha": True}, InputTypeError, ["alpha must be a number", "bool"]),
    ({"legend": "yes"}, InputTypeError, ["legend must be True or False"]),
    ({"segmentation": "labels"}, InputTypeError, ["segmentation must be the runtime.Segmentation", "str"]),
    ({"segmentation": _segmentation(np.full((8, 8), 2, np.int32))}, RuntimeInputError,
     ["labels holds values in [2, 2]", "2 classes"]),
    ({"segmentation": _segmentation(np.full((8, 8), -3, np.int32))}, RuntimeInputError, ["-1 (unlabeled)"]),
    ({"segmentation": _segmentation(np.zeros((8, 8), np.float32))}, RuntimeInputError, ["integer label map"]),
    ({"segmentation": _segmentation(np.zeros((4, 8), np.int32))}, FrameError, ["pass the frame that was segmented"]),
    ({"segmentation": _segmentation(caption="a \ud800 ball")}, RuntimeInputError,
     ["segmentation.caption", "lone surrogate"]),
    ({"frame": np.zeros((8, 8, 4), np.uint8)}, FrameError, ["3 channels", "to_rgb"]),
])
def test_visualize_checks_its_arguments(kwargs, exc, words):
    args = {"frame": np.zeros((8, 8, 3), np.uint8), "segmentation": _segmentation(), **kwargs}
    _raises(exc, words, lambda: visualize(**args))


def test_visualize_draws_a_valid_segmentation():
    out = visualize(np.zeros((8, 8, 3), np.uint8), _segmentation(np.full((8, 8), 1, np.int32)), alpha=1,
                    legend=False)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and out.any()


@pytest.mark.parametrize("args,words", [
    ((np.zeros((4, 4, 3), np.uint8), "xyz"), ["order must be one of"]),
    (([[1, 2, 3]],), ["frame must be a numpy array"]),
    ((np.zeros((4, 4, 3), np.float32),), ["uint8"]),
    ((np.zeros((0, 4, 3), np.uint8),), ["empty"]),
])
def test_to_rgb_refuses_what_it_cannot_convert(args, words):
    _raises(FrameError, words, lambda: to_rgb(*args), ValueError)


def test_to_rgb_converts_gray_and_bgra():
    assert to_rgb(np.full((4, 5), 7, np.uint8)).shape == (4, 5, 3)
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 0] = 255   # blue in OpenCV's order
    assert (to_rgb(bgra, "bgra")[..., 2] == 255).all()
