"""The captioner: a tiny random LLaVA-Phi (the demo preset's tower on 112 px + a tiny Phi), exported to ONNX, decoded
greedily over Engines; every caption must be token-for-token transformers' generate()."""
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from engines.base import Engine
from engines.onnxruntime_engine import OnnxRuntimeEngine
from engines.torch_engine import TorchEngine
from engines.trt_supported_ops import check_graph
from export.captioner import CAPTIONER_DECODER, attention_precision_problems, export_captioner
from export.onnx_utils import check_onnx
from llmformer.captioner import (LLAVA_PHI_PROMPT, CaptionerCheckpointError, CaptionerDecoder, CaptionerEmbed,
                              CaptionerVision, build_tiny_captioner, load_captioner)
from llmformer.presets import demo
from llmformer.vision_tower import VisionTower, build_vision_model
from runtime.decode import CaptionDecoder, CaptionError, PromptFormat

# The demo's tiny tower at 112 px (8 x 8 tokens): these tests hold the decode loop to transformers on a random
# captioner, which needs no more; at the demo's 168 px (12 x 12) a random LM's greedy captions of two of the three
# frames below coincide, and the check that they differ would say nothing.
TOWER = dataclasses.replace(demo().vision_tower, image_size=112)
QUESTIONS = [None, "What is on the table?", "Where is the dog?"]
MAX_NEW = 24


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return build_tiny_captioner(tmp_path_factory.mktemp("llava_phi_tiny"), TOWER, seed=0)


@pytest.fixture(scope="module")
def exported(captioner, tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifacts")
    return folder, export_captioner(captioner, folder, TOWER.feature_layers)


def _ort(folder, graph):
    return OnnxRuntimeEngine(graph.names.component, folder / graph.file, graph.inputs, graph.outputs,
                             providers=["CPUExecutionProvider"])


def _decoder(exported, engines, **kwargs):
    folder, ex = exported
    return CaptionDecoder.from_files(folder / ex.tokenizer_file, folder / ex.prompt_file, engines["embed"],
                                     engines["decoder"], vision=engines["vision"], **kwargs)


@pytest.fixture(scope="module")
def ort_engines(exported):
    folder, ex = exported
    return {"vision": _ort(folder, ex.vision), "embed": _ort(folder, ex.embed), "decoder": _ort(folder, ex.decoder)}


@pytest.fixture(scope="module")
def torch_engines(captioner, exported):
    _, ex = exported
    m = captioner.model
    return {"vision": TorchEngine("v", CaptionerVision(m, TOWER.feature_layers), ex.vision.inputs, ex.vision.outputs, "cpu"),
            "embed": TorchEngine("e", CaptionerEmbed(m), ex.embed.inputs, ex.embed.outputs, "cpu"),
            "decoder": TorchEngine("d", CaptionerDecoder(m), ex.decoder.inputs, ex.decoder.outputs, "cpu")}


def _frame(seed):
    return torch.randn(1, 3, TOWER.image_size, TOWER.image_size, generator=torch.Generator().manual_seed(seed))


def _generate(captioner, pixels, question, max_new_tokens=MAX_NEW, eos=None, **kwargs):
    """transformers' greedy generate() on the same prompt; the generated ids without the stop token."""
    prompt = PromptFormat.from_json(captioner.prompt)
    n_image = captioner.config.image_seq_length
    text = prompt.render(question or prompt.default_question).replace(prompt.image_token, prompt.image_token * n_image)
    ids = captioner.tokenizer(text, return_tensors="pt")["input_ids"]
    eos = eos or captioner.stop_token_ids
    with torch.no_grad():
        out = captioner.model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, **kwargs)
    new = out[0, ids.shape[1]:].tolist()
    return new[:-1] if new and new[-1] in eos else new, ids[0].numpy()


# ------------------------------------------------------------------------------------------ the model

def test_tiny_captioner_is_llava_phi_with_the_demo_tower(captioner):
    cfg = captioner.config
    tower = build_vision_model(TOWER).config
    assert cfg.text_config.model_type == "phi" and cfg.vision_config.model_type == "clip_vision_model"
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
                "patch_size"):
        assert getattr(cfg.vision_config, key) == getattr(tower, key), key
    assert cfg.vision_feature_layer == -2 and cfg.vision_feature_select_strategy == "default"  # CLIP drops CLS
    assert cfg.image_seq_length == TOWER.grid ** 2
    assert (captioner.folder / "tokenizer.json").is_file() and (captioner.folder / "prompt_format.json").is_file()


def test_vision_graph_gives_llava_image_features_and_the_segmenter_layers(captioner, ort_engines):
    pixels = _frame(0)
    out = ort_engines["vision"]({"pixel_values": pixels.numpy()})
    with torch.no_grad():
        image = captioner.model.model.get_image_features(pixel_values=pixels).pooler_output[0]
        layers = VisionTower(captioner.model.model.vision_tower, TOWER.feature_layers)(pixels)
    assert out["image_embeds"].shape == (1, TOWER.grid ** 2, captioner.config.text_config.hidden_size)
    assert out["vision_hidden_states"].shape == (3, 1, TOWER.grid ** 2 + 1, TOWER.hidden_size)  # CLS kept
    np.testing.assert_allclose(out["image_embeds"][0], image.numpy(), atol=1e-5)
    np.testing.assert_allclose(out["vision_hidden_states"], layers.numpy(), atol=1e-5)


def test_siglip_tower_keeps_every_token_for_the_projector():
    from llmformer.captioner import (
        build_random_llava,
        build_tiny_tokenizer,
        tiny_phi_config,
    )
    from llmformer.presets import VisionTowerConfig

    tower = VisionTowerConfig(kind="siglip", image_size=56, patch_size=14, hidden_size=32, num_layers=2,
                              num_heads=2, intermediate_size=64, feature_layers=(1, 2))
    tokenizer = build_tiny_tokenizer()
    model = build_random_llava(tower, tiny_phi_config(len(tokenizer.get_vocab())), tokenizer)
    assert model.config.vision_feature_select_strategy == "full"
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image, layers = CaptionerVision(model, tower.feature_layers)(pixels)
        ref = model.model.get_image_features(pixel_values=pixels).pooler_output[0]
    assert image.shape == (1, 16, 64) and layers.shape == (2, 1, 16, 32)  # no CLS to drop
    torch.testing.assert_close(image[0], ref)


def _hf_cache(captioner, embeds):
    """transformers' Phi over `embeds` (1, P, E): its DynamicCache."""
    with torch.no_grad():
        out = captioner.model(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                              use_cache=True)
    return out.cache


@pytest.mark.parametrize("past", [1, 37, 255])  # 255 = the most a 256-token context leaves for the past
def test_decoder_graph_matches_transformers_for_a_cache_of_several_lengths(captioner, ort_engines, past):
    g = torch.Generator().manual_seed(past)
    E = captioner.config.text_config.hidden_size
    embeds = torch.randn(1, past + 1, E, generator=g)
    cache = _hf_cache(captioner, embeds[:, :past])
    with torch.no_grad():
        ref = captioner.model(inputs_embeds=embeds[:, past:], cache=cache,
                              attention_mask=torch.ones(1, past + 1, dtype=torch.long),
                              position_ids=torch.tensor([[past]]), use_cache=True)
    d = CAPTIONER_DECODER
    layers = captioner.config.text_config.num_hidden_layers
    feeds = {d.inputs_embeds: embeds[:, past:].numpy(), d.attention_mask: np.ones((1, past + 1), np.int64),
             d.position_ids: np.array([[past]], np.int64)}
    for i in range(layers):  # the cache before this step: the first `past` slots of transformers' cache
        feeds[f"past_key_values.{i}.key"] = ref.cache.layers[i].keys[:, :, :past].numpy()
        feeds[f"past_key_values.{i}.value"] = ref.cache.layers[i].values[:, :, :past].numpy()
    out = ort_engines["decoder"](feeds)
    np.testing.assert_allclose(out[d.logits][0, -1], ref.logits[0, -1].numpy(), atol=1e-4)
    for i in range(layers):  # present = the fed token's key/value only
        np.testing.assert_allclose(out[f"present.{i}.key"], ref.cache.layers[i].keys[:, :, past:].numpy(), atol=1e-5)
        np.testing.assert_allclose(out[f"present.{i}.value"], ref.cache.layers[i].values[:, :, past:].numpy(), atol=1e-5)


def test_decoder_graph_ignores_masked_cache_slots_and_prefills_with_one_masked_slot(captioner, ort_engines):
    d = CAPTIONER_DECODER
    layers = captioner.config.text_config.num_hidden_layers
    text = captioner.config.text_config
    H, D = text.num_attention_heads, text.hidden_size // text.num_attention_heads
    g = np.random.default_rng(0)
    prompt = torch.from_numpy(g.standard_normal((1, 9, captioner.config.text_config.hidden_size), np.float32))
    with torch.no_grad():
        ref = captioner.model(inputs_embeds=prompt, attention_mask=torch.ones(1, 9, dtype=torch.long), use_cache=True)
    garbage = {n: g.standard_normal((1, H, 1, D)).astype(np.float32) for n in d.past(layers)}
    out = ort_engines["decoder"]({d.inputs_embeds: prompt.numpy(), d.attention_mask: np.array([[0] + [1] * 9]),
                                  d.position_ids: np.arange(9)[None], **garbage})
    np.testing.assert_allclose(out[d.logits][0, -1], ref.logits[0, -1].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["present.1.value"], ref.cache.layers[1].values.numpy(), atol=1e-5)


def test_exported_graphs_pass_the_checker_and_keep_attention_in_fp32(exported):
    folder, ex = exported
    for graph in ex.graphs.values():
        check_onnx(folder / graph.file)
        assert check_graph(folder / graph.file) == [], graph.file  # TensorRT 10.3's ONNX parser takes it
    decoder = onnx.load(str(folder / ex.decoder.file))
    assert attention_precision_problems(decoder) == []
    ops = {n.op_type for n in decoder.graph.node}
    assert not ops & {"If", "Loop", "Scan"}, "TensorRT cannot build merged (If) decoders"
    assert {s.name: s.min_shape[2] for s in ex.decoder.inputs if s.name.startswith("past_")} == \
        {n: 1 for n in CAPTIONER_DECODER.past(2)}, "TensorRT profiles need a past length of at least 1"
    prefill, decode = ex.decoder.profiles
    assert prefill["past_key_values.0.key"][2][2] == 1 and decode["inputs_embeds"][2][1] == 1


def test_large_decoder_is_streamed_to_external_data_and_computes_the_same(captioner, exported, ort_engines,
                                                                          tmp_path, monkeypatch):
    import export.captioner as ec

    monkeypatch.setattr(ec, "EXTERNAL_DATA_BYTES", 0)  # take the >1 GiB path (Phi-2) with the tiny model
    graph = ec.export_decoder(captioner, tmp_path / "decoder.onnx")
    assert graph.files == ["decoder.onnx", "decoder.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == graph.files  # no temporary left behind
    model = onnx.load(str(tmp_path / "decoder.onnx"), load_external_data=False)
    assert [i.name for i in model.graph.input] == list(CAPTIONER_DECODER.for_layers(2).inputs)
    assert attention_precision_problems(model) == [] and check_graph(model) == []
    assert graph.inputs == exported[1].decoder.inputs and graph.outputs == exported[1].decoder.outputs
    g = np.random.default_rng(0)
    feeds = {s.name: g.standard_normal([d if isinstance(d, int) else 6 for d in s.shape]).astype(np.float32)
             for s in graph.inputs}
    feeds.update({s.name: g.standard_normal((1, 4, 4, 16)).astype(np.float32) for s in graph.inputs
                  if s.name.startswith("past_")})
    feeds.update({"inputs_embeds": feeds["inputs_embeds"][:, :2], "attention_mask": np.array([[1, 0, 1, 1, 1, 1]]),
                  "position_ids": np.array([[4, 5]])})
    big = _ort(tmp_path, graph)(feeds)
    small = ort_engines["decoder"](feeds)
    for name in (s.name for s in graph.outputs):
        np.testing.assert_allclose(big[name], small[name], atol=1e-5)


def test_attention_check_flags_a_graph_without_fp32_casts():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["xt"]),
                               helper.make_node("MatMul", ["x", "xt"], ["s"], name="scores"),
                               helper.make_node("Softmax", ["s"], ["y"], name="softmax")], "g", [x], [y])
    problems = attention_precision_problems(helper.make_model(graph))
    assert any("not Cast to float32" in p for p in problems) and any("without an explicit Cast" in p for p in problems)


# -------------------------------------------------------------------------------------- the decode loop

@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_greedy_captions_match_transformers_generate(captioner, exported, ort_engines, torch_engines, backend):
    decoder = _decoder(exported, torch_engines if backend == "torch" else ort_engines)
    captions = []
    for seed, question in enumerate(QUESTIONS):
        pixels = _frame(seed)
        want, prompt_ids = _generate(captioner, pixels, question)
        np.testing.assert_array_equal(decoder.prompt_ids(question, TOWER.grid ** 2), prompt_ids)
        got = decoder.caption(pixels.numpy(), question, max_new_tokens=MAX_NEW)
        assert got.token_ids == want
        assert got.text == captioner.tokenizer.decode(want, skip_special_tokens=True).strip()
        assert got.stop_reason == "max_new_tokens" and len(got.timings.decode_s) == MAX_NEW - 1
        captions.append(got.token_ids)
    assert len({tuple(c) for c in captions}) == len(captions), "frames and questions should give different captions"


def test_repetition_penalty_matches_transformers(captioner, exported, ort_engines):
    decoder = _decoder(exported, ort_engines)
    pixels = _frame(5)
    want, _ = _generate(captioner, pixels, "Where is the dog?", repetition_penalty=1.3)
    plain, _ = _generate(captioner, pixels, "Where is the dog?")
    got = decoder.caption(pixels.numpy(), "Where is the dog?", max_new_tokens=MAX_NEW, repetition_penalty=1.3)
    assert got.token_ids == want and want != plain


def test_caption_stops_at_a_stop_token_like_generate(captioner, exported, ort_engines):
    folder, ex = exported
    pixels = _frame(1)
    first = _decoder(exported, ort_engines).caption(pixels.numpy(), max_new_tokens=MAX_NEW).token_ids
    stop = first[6]  # make a token the caption reaches a stop token too
    word = captioner.tokenizer.convert_ids_to_tokens(stop)
    prompt = {**captioner.prompt, "stop_tokens": [*captioner.prompt["stop_tokens"], word]}
    tokenizer = Tokenizer.from_file(str(folder / ex.tokenizer_file))
    decoder = CaptionDecoder(ort_engines["embed"], ort_engines["decoder"], tokenizer, PromptFormat.from_json(prompt),
                             vision=ort_engines["vision"])
    got = decoder.caption(pixels.numpy(), max_new_tokens=MAX_NEW)
    want, _ = _generate(captioner, pixels, None, eos=[*captioner.stop_token_ids, stop])
    assert got.token_ids == want == first[:first.index(stop)]
    assert got.stop_reason == "stop_token"


def test_caption_stops_when_the_context_is_full(captioner, exported, ort_engines):
    pixels = _frame(2)
    L = len(_decoder(exported, ort_engines).prompt_ids(None, TOWER.grid ** 2))
    decoder = _decoder(exported, ort_engines, max_context=L + 5)
    got = decoder.caption(pixels.numpy(), max_new_tokens=MAX_NEW)
    want, _ = _generate(captioner, pixels, None, max_new_tokens=5)
    assert got.token_ids == want and got.stop_reason == "context"


class _Recorder(Engine):
    """Passes calls through, remembering which arrays were fed."""

    def __init__(self, inner):
        super().__init__(inner.name, inner.inputs, inner.outputs)
        self.inner, self.calls = inner, []

    def _run(self, feeds):
        # the cache buffers by reference (to see they are the same arrays), the rest as they were
        self.calls.append({k: v if k.startswith("past_") else v.copy() for k, v in feeds.items()})
        return self.inner._run(feeds)


def test_kv_cache_is_allocated_once_and_written_in_place(exported, ort_engines):
    recorder = _Recorder(ort_engines["decoder"])
    decoder = _decoder(exported, {**ort_engines, "decoder": recorder})
    got = decoder.caption(_frame(0).numpy(), max_new_tokens=10)
    prefill, steps = recorder.calls[0], recorder.calls[1:]
    L = got.timings.prompt_tokens
    name = "past_key_values.1.value"
    assert prefill[name].shape[2] == 1 and prefill["attention_mask"][0, 0] == 0   # one masked slot
    assert len(steps) == 9 and len({id(s[name]) for s in steps}) == 1            # the same buffer every step
    assert steps[0][name].shape[2] == L + 10 - 1
    assert steps[-1]["attention_mask"][0, :L + 8].all() and not steps[-1]["attention_mask"][0, L + 8:-1].any()


# -------------------------------------------------------------------------------------------- bad input

def test_question_longer_than_the_context_is_a_clear_error(exported, ort_engines):
    decoder = _decoder(exported, ort_engines)
    with pytest.raises(CaptionError, match="shorten the question"):
        decoder.caption(_frame(0).numpy(), "Describe the dog on the couch. " * 60)


@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question_is_a_clear_error(exported, ort_engines, question):
    decoder = _decoder(exported, ort_engines)
    with pytest.raises(CaptionError, match="question is empty: pass None"):
        decoder.caption(_frame(0).numpy(), question)


def test_none_question_asks_the_default_question(exported, ort_engines):
    caption = _decoder(exported, ort_engines).caption(_frame(0).numpy(), None, max_new_tokens=2)
    assert caption.question == LLAVA_PHI_PROMPT["default_question"]


def test_checkpoint_without_tokenizer_is_a_clear_error(captioner, tmp_path):
    folder = shutil.copytree(captioner.folder, tmp_path / "ckpt")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CaptionerCheckpointError, match="no tokenizer.json"):
        load_captioner(folder)


def test_checkpoint_with_a_non_phi_text_model_is_a_clear_error(captioner, tmp_path):
    folder = shutil.copytree(captioner.folder, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionerCheckpointError, match="'llama' text model.*Phi"):
        load_captioner(folder)


def test_prompt_format_is_checked():
    assert PromptFormat.from_json(LLAVA_PHI_PROMPT).render("Q?").endswith("USER: <image>\nQ? ASSISTANT:")
    with pytest.raises(CaptionError, match="missing keys \\['stop_tokens'\\]"):
        PromptFormat.from_json({k: v for k, v in LLAVA_PHI_PROMPT.items() if k != "stop_tokens"})
    with pytest.raises(CaptionError, match="\\{image\\} exactly once"):
        PromptFormat.from_json({**LLAVA_PHI_PROMPT, "template": "{system} USER: {question} ASSISTANT:"})


def test_decode_loop_imports_neither_torch_nor_transformers():
    code = "import sys, runtime.decode; sys.exit(bool({'torch', 'transformers'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=str(Path(__file__).parents[1]), check=False).returncode == 0
