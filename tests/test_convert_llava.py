"""export/convert_llava.py: a tiny LLaVA-Phi in the original repository's layout (a Phi LM whose lm_head has a
non-zero bias, the image placeholder as index -200, a CLIP tower folder named by mm_vision_tower, fp16 shards)
converts, builds and captions; the ONNX Runtime decoder's logits are the original model's, composed here by hand
from transformers' PhiForCausalLM, CLIPVisionModel and the projector; a tensor the model would drop is refused."""
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import runtime
from conftest import ROOT, tiny_preset
from engines.contract import CAPTIONER_DECODER, CAPTIONER_EMBED, CAPTIONER_VISION, Preprocess
from export.build_engines import build, parse_args
from export.convert_llava import LlavaConversionError, convert_llava
from llmformer.captioner import (EOS_TOKEN, LLAVA_PHI_PROMPT, CaptionerCheckpointError, CaptionerDecoder,
                                 CaptionerVision, load_captioner, tiny_phi_config)
from llmformer.data.frames import demo_frame
from llmformer.presets import CLIP_MEAN, CLIP_STD
from runtime.frames import to_pixels

# The tower of tiny_preset(), so the converted captioner's tower is the one the build's segmenter expects.
TOWER = dict(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=64)
IMAGE_TOKEN_INDEX = -200   # haotian-liu/LLaVA llava/constants.py: the placeholder, outside the vocabulary
MAX_NEW = 12


# ------------------------------------------------------------------------------ the published layout, tiny

def write_clip_tower(folder: Path) -> Path:
    """A CLIP folder laid out as openai/clip-vit-large-patch14-336: a whole CLIPModel (text and vision towers)
    and the old-style preprocessor_config.json (int size and crop_size, resample 3 = bicubic)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(1)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=TOWER, projection_dim=8)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 56, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
        "resample": 3, "size": 56}))
    return folder


def original_tokenizer():
    """Phi-2's kind of tokenizer (byte-level BPE, <|endoftext|> as eos/bos/unk) with no <image> token: the
    original code never puts one in the text, it splices index -200 between tokenized chunks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([LLAVA_PHI_PROMPT["system"], "USER: ASSISTANT: Describe the image.",
                             "A red ball next to a blue box on a wooden table."] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN)


@dataclass
class Original:
    """An original checkpoint folder and the parts it was written from (fp32 holding the fp16-stored values)."""

    folder: Path
    lm: nn.Module            # PhiForCausalLM, lm_head with its bias
    projector: nn.Module     # mlp2x_gelu: Sequential(Linear, GELU, Linear); linear: Linear
    tower: nn.Module         # CLIPVisionModel, as the converted model holds it
    tokenizer: object
    select_layer: int
    select_feature: str


def write_original(folder: Path, tower_dir: Path, *, layout: str = "haotian", projector: str = "mlp2x_gelu",
                   select_layer: int = -2, select_feature: str = "patch", tower_in_checkpoint: bool = True,
                   im_patch_token: bool = False, extra: dict | None = None, seed: int = 0) -> Original:
    """A tiny LLaVA-Phi saved as its training code saves it. layout "haotian": haotian-liu/LLaVA's config keys
    (mm_vision_tower names the CLIP folder; DeepSpeed also saved the frozen tower as
    model.vision_tower.vision_tower.vision_model.*). layout "zhuyiche": zhuyiche/llava-phi's nested vision_config,
    the tower's weights in the checkpoint as model.vision_tower.vision_model.*, the image processor beside them.
    im_patch_token: mm_use_im_patch_token's <im_patch> added to the tokenizer and the embeddings resized to it
    (llava_arch.py initialize_vision_tokenizer), so no row is free."""
    from transformers import CLIPVisionModel, PhiConfig, PhiForCausalLM

    folder.mkdir(parents=True)
    tokenizer = original_tokenizer()
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    if im_patch_token:
        tokenizer.add_tokens(["<im_patch>"], special_tokens=True)
    # Spare rows, as Phi-2 has 51200 for 50295 tokens, unless resized to the tokenizer.
    phi = tiny_phi_config(len(tokenizer) + (0 if im_patch_token else 16))
    torch.manual_seed(seed)
    lm = PhiForCausalLM(PhiConfig(**phi)).eval()
    assert lm.lm_head.bias is not None
    with torch.no_grad():
        lm.lm_head.bias.normal_(0.0, 0.5)          # Phi-2's head has a bias: large enough to change tokens
    E, C = phi["hidden_size"], TOWER["hidden_size"]
    proj = nn.Sequential(nn.Linear(C, E), nn.GELU(), nn.Linear(E, E)) if projector == "mlp2x_gelu" else nn.Linear(C, E)
    tower = _quietly(CLIPVisionModel.from_pretrained, tower_dir).eval()  # the folder's text tower goes unused
    for m in (lm, proj) + ((tower,) if layout == "zhuyiche" else ()):
        m.half().float()                            # published weights are fp16; keep the values they hold

    weights = dict(lm.state_dict())                 # transformers' phi names: model.layers.N.self_attn.dense, ...
    assert {"model.layers.0.self_attn.dense.weight", "model.final_layernorm.weight", "lm_head.bias"} <= set(weights)
    weights.update({f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()})  # 0.*, 2.* / weight, bias
    prefix = "model.vision_tower.vision_tower.vision_model." if layout == "haotian" else "model.vision_tower.vision_model."
    if tower_in_checkpoint:   # CLIPVisionModel names as transformers 4.x saved them: vision_model.*
        weights.update({prefix + k.removeprefix("vision_model."): v for k, v in tower.state_dict().items()})
    weights.update(extra or {})
    weights = {k: v.detach().half().contiguous() for k, v in weights.items()}
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))

    config = {"_name_or_path": "microsoft/phi-2", "architectures": ["LlavaPhiForCausalLM"], "model_type": "llava_phi",
              "torch_dtype": "float16", "transformers_version": "4.37.2", "rope_theta": 10000.0, "rope_scaling": None,
              "qk_layernorm": False, "resid_pdrop": 0.1, "embd_pdrop": 0.0, "attention_dropout": 0.0,
              "layer_norm_eps": 1e-5, "use_cache": True, "tie_word_embeddings": False, "num_key_value_heads": None,
              "bos_token_id": eos, "eos_token_id": eos, **phi, "image_aspect_ratio": "pad",
              "mm_use_im_start_end": False, "mm_use_im_patch_token": im_patch_token, "tune_mm_mlp_adapter": False,
              "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right"}
    if layout == "haotian":
        config.update(mm_vision_tower=str(tower_dir), mm_projector_type=projector, mm_hidden_size=C,
                      mm_vision_select_layer=select_layer, mm_vision_select_feature=select_feature,
                      mm_patch_merge_type="flat", use_mm_proj=True, freeze_mm_mlp_adapter=False)
    else:
        vision = json.loads((tower_dir / "config.json").read_text())["vision_config"]
        config["vision_config"] = {
            "vision_tower": {**vision, "model_type": "llava_phi_clip_vision_model",
                             "mm_vision_select_layer": select_layer, "mm_vision_select_feature": select_feature},
            "mm_projector": {"model_type": "llava_phi_projector", "mm_projector_type": projector,
                             "mm_hidden_size": C, "hidden_size": E}}
        shutil.copy(tower_dir / "preprocessor_config.json", folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(folder)
    return Original(folder, lm, proj, tower, tokenizer, select_layer, select_feature)


def _quietly(fn, *args, **kwargs):
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return fn(*args, **kwargs)
    finally:
        logging.set_verbosity(level)


class HandComposed:
    """The original LLaVA-Phi forward from transformers' parts: the tower's hidden_states[select_layer] (`patch`
    drops CLS), the projector, spliced at the -200 placeholder into PhiForCausalLM's token embeddings
    (llava_arch.py prepare_inputs_labels_for_multimodal; prompt tokenized in chunks around "<image>",
    mm_utils.py tokenizer_image_token; conv_phi_v0's "{system} USER: <image>\\n{question} ASSISTANT:")."""

    def __init__(self, original: Original, lm_bias: bool = True):
        self.o = original
        self.lm = original.lm
        if not lm_bias:
            self.lm = type(original.lm)(original.lm.config).eval()
            self.lm.load_state_dict(original.lm.state_dict())
            with torch.no_grad():
                self.lm.lm_head.bias.zero_()

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.o.tower(pixels, output_hidden_states=True).hidden_states[self.o.select_layer]
        return self.o.projector(hidden[:, 1:] if self.o.select_feature == "patch" else hidden)

    def prompt_ids(self, question: str = "Describe the image.") -> list[int]:
        text = f"{LLAVA_PHI_PROMPT['system']} USER: <image>\n{question} ASSISTANT:"
        before, after = (self.o.tokenizer(chunk).input_ids for chunk in text.split("<image>"))
        return [*before, IMAGE_TOKEN_INDEX, *after]

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor, generated: list[int]) -> torch.Tensor:
        """(T, V) logits at every position of the prompt followed by `generated`."""
        ids = torch.tensor(self.prompt_ids() + list(generated))
        at = int((ids == IMAGE_TOKEN_INDEX).nonzero())
        embed = self.lm.model.embed_tokens
        inputs = torch.cat([embed(ids[:at]), self.image_features(pixels)[0], embed(ids[at + 1:])])[None]
        return self.lm(inputs_embeds=inputs).logits[0]

    def greedy(self, pixels: torch.Tensor, max_new: int) -> list[int]:
        eos, out = self.o.tokenizer.convert_tokens_to_ids(EOS_TOKEN), []
        while len(out) < max_new:
            token = int(self.logits(pixels, out)[-1].argmax())
            if token == eos:
                break
            out.append(token)
        return out


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory):
    return write_clip_tower(tmp_path_factory.mktemp("towers") / "clip-vit-tiny-patch14-56")


@pytest.fixture(scope="module")
def converted(tower_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava_phi")
    original = write_original(root / "llava-phi-tiny", tower_dir)
    return original, convert_llava(original.folder, root / "converted", log=lambda msg: None)


@pytest.fixture(scope="module")
def artifacts(converted, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "llava_phi"
    build(parse_args(["--out", str(out), "--captioner", str(converted[1])]), preset=tiny_preset())
    return out


class PixelRecorder:
    """An engine that keeps the pixel_values of every run, whichever run method the runtime calls, and passes
    everything through to `engine`."""

    def __init__(self, engine):
        self.engine, self.pixels = engine, []

    def _record(self, feeds) -> None:
        if isinstance(feeds, dict) and CAPTIONER_VISION.pixel_values in feeds:
            x = feeds[CAPTIONER_VISION.pixel_values]
            self.pixels.append(np.array(x.to_numpy() if hasattr(x, "to_numpy") else x))

    def __call__(self, feeds, *args, **kwargs):
        self._record(feeds)
        return self.engine(feeds, *args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(self.engine, name)
        if not callable(attr):
            return attr

        def run(*args, **kwargs):
            if args:
                self._record(args[0])
            return attr(*args, **kwargs)
        return run


def _ort_last_logits(rt, ids: list[int], image_embeds: np.ndarray, image_id: int) -> np.ndarray:
    """The exported embed + decoder graphs on ONNX Runtime over `ids` (prefill: one masked past slot), image
    embeddings in place of the image tokens: the logits of the last position, (V,)."""
    embed, decoder = rt.engines[CAPTIONER_EMBED.component], rt.engines[CAPTIONER_DECODER.component]
    ids = np.asarray(ids, np.int64)
    is_image = ids == image_id
    embeds = embed({CAPTIONER_EMBED.input_ids: np.where(is_image, 0, ids)[None]})[CAPTIONER_EMBED.inputs_embeds]
    embeds[0, is_image] = image_embeds[0]
    past = [s for s in decoder.inputs if s.name.startswith("past_key_values.")]
    S = len(ids)
    out = decoder({CAPTIONER_DECODER.inputs_embeds: embeds,
                   CAPTIONER_DECODER.attention_mask: np.array([[0] + [1] * S], np.int64),
                   CAPTIONER_DECODER.position_ids: np.arange(S, dtype=np.int64)[None],
                   **{s.name: np.zeros((1, s.shape[1], 1, s.shape[3]), np.float32) for s in past}})
    return out[CAPTIONER_DECODER.logits][0, -1]


# ------------------------------------------------------------------------------------------------ tests

def test_original_llava_phi_converts_builds_and_captions_with_the_original_logits(converted, artifacts):
    original, _ = converted
    hand = HandComposed(original)
    rt = runtime.load(artifacts, backend="onnxruntime")
    vision = rt.engines[rt.vision_name]
    rt.engines[rt.vision_name] = recording = PixelRecorder(vision)
    try:
        caption = rt.caption(demo_frame(0), max_new_tokens=MAX_NEW)
    finally:
        rt.engines[rt.vision_name] = vision
    pixels = torch.from_numpy(recording.pixels[-1])           # what the runtime fed the vision graph
    # ... the checkpoint's own preprocessing (pad to square with the mean color), not the segmenter's stretch.
    pre = rt.manifest.preprocess[CAPTIONER_VISION.component]
    assert pre.mode == "pad" and pre.pad_color == (122, 116, 104)
    np.testing.assert_array_equal(recording.pixels[-1], to_pixels(demo_frame(0), pre))
    image_embeds = vision({CAPTIONER_VISION.pixel_values: recording.pixels[-1]})[CAPTIONER_VISION.image_embeds]

    # The vision graph is CLIP's hidden_states[-2] without CLS through the mlp2x_gelu projector.
    np.testing.assert_allclose(image_embeds, hand.image_features(pixels).numpy(), atol=1e-4)
    # The same greedy tokens as the original model.
    assert caption.token_ids == hand.greedy(pixels, MAX_NEW) and caption.token_ids
    # The runtime's prompt is the original's, -200 expanded to one <image> token per image embedding.
    image_id = rt.captioner.image_token_id
    ids = [int(i) for i in rt.captioner.prompt_ids(None, image_embeds.shape[1])]
    want = [t for i in hand.prompt_ids() for t in ([image_id] * image_embeds.shape[1] if i == IMAGE_TOKEN_INDEX else [i])]
    assert ids == want
    # The decoder's logits at every step, lm_head bias included, are the original's.
    ref = hand.logits(pixels, caption.token_ids).numpy()
    no_bias = HandComposed(original, lm_bias=False).logits(pixels, caption.token_ids).numpy()
    worst, without = 0.0, 0.0
    for k in range(len(caption.token_ids) + 1):
        got = _ort_last_logits(rt, ids + caption.token_ids[:k], image_embeds, image_id)
        worst = max(worst, float(np.abs(got - ref[len(ids) + k - 1]).max()))
        without = max(without, float(np.abs(got - no_bias[len(ids) + k - 1]).max()))
    assert worst < 1e-3, f"ORT decoder logits differ from PhiForCausalLM + CLIP + projector by {worst}"
    # A decoder that dropped the bias would fail both checks: its logits and its tokens differ.
    assert without > 0.5 and HandComposed(original, lm_bias=False).greedy(pixels, MAX_NEW) != caption.token_ids


def test_converted_folder_holds_the_checkpoints_bias_image_token_prompt_and_preprocessing(converted):
    original, folder = converted
    captioner = load_captioner(folder)
    assert torch.equal(captioner.model.lm_head.bias, original.lm.lm_head.bias)
    # <image> takes the first row no token uses (the logits keep their size), not -200.
    assert captioner.image_token_id == len(original.tokenizer) < captioner.config.text_config.vocab_size
    assert captioner.tokenizer.convert_ids_to_tokens(captioner.image_token_id) == "<image>"
    assert captioner.config.vision_feature_layer == -2
    assert captioner.config.vision_feature_select_strategy == "default" and captioner.config.image_seq_length == 16
    assert captioner.prompt == LLAVA_PHI_PROMPT
    assert captioner.preprocess == {
        "image_aspect_ratio": "pad", "pad_color": [122, 116, 104],  # int(CLIP mean * 255), as LLaVA truncates it
        "resize_shortest_edge": 56, "resample": "bicubic", "center_crop": [56, 56], "rescale_factor": 1 / 255,
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}


def test_a_bias_the_model_would_drop_is_refused(converted, tmp_path):
    """transformers' native LLaVA head has no bias: a folder whose config does not declare it is refused."""
    folder = shutil.copytree(converted[1], tmp_path / "native")
    config = json.loads((folder / "config.json").read_text())
    config["lm_head_bias"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionerCheckpointError, match=r"does not use checkpoint tensor\(s\) lm_head\.bias"):
        load_captioner(folder)


def test_a_checkpoint_tensor_without_a_place_is_refused_by_the_command(tower_dir, tmp_path):
    original = write_original(tmp_path / "llava-1.6-ish", tower_dir, extra={"model.image_newline": torch.ones(64)})
    res = subprocess.run([sys.executable, str(ROOT / "export" / "convert_llava.py"), "--src", str(original.folder),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.image_newline" in errors[0] and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_saved_tower_that_differs_from_mm_vision_tower_is_refused(tower_dir, tmp_path):
    name = "model.vision_tower.vision_tower.vision_model.post_layernorm.weight"
    original = write_original(tmp_path / "ckpt", tower_dir, extra={name: torch.full((32,), 2.0)})
    with pytest.raises(LlavaConversionError, match=f"{name} differs from the vision tower folder"):
        convert_llava(original.folder, tmp_path / "out", log=lambda msg: None)


def test_an_out_folder_with_files_is_never_overwritten(converted, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(LlavaConversionError, match="not an empty folder; refusing to overwrite"):
        convert_llava(converted[0].folder, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_llava_phi_repository_layout_with_a_linear_projector_cls_patch_and_a_full_vocabulary(tower_dir, tmp_path):
    """zhuyiche/llava-phi's layout: nested vision_config, the tower inside the checkpoint, a `linear` projector
    (one Linear: kept as one layer, never padded with an identity), `cls_patch` features (CLS kept), and
    embeddings resized to a tokenizer holding <im_patch>, which then stands for the image."""
    original = write_original(tmp_path / "llava-phi", tower_dir, layout="zhuyiche", projector="linear",
                              select_layer=-1, select_feature="cls_patch", im_patch_token=True)
    captioner = load_captioner(convert_llava(original.folder, tmp_path / "out", log=lambda msg: None))
    assert captioner.config.vision_feature_select_strategy == "full" and captioner.config.image_seq_length == 17
    assert captioner.prompt["image_token"] == "<im_patch>"
    assert captioner.image_token_id == len(original.tokenizer) - 1 == captioner.config.text_config.vocab_size - 1
    assert list(captioner.model.model.multi_modal_projector.state_dict()) == ["linear_1.weight", "linear_1.bias"]
    hand = HandComposed(original)
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_embeds = CaptionerVision(captioner.model, (1, 2))(pixels)[0]
        torch.testing.assert_close(image_embeds, hand.image_features(pixels), atol=1e-5, rtol=0)
        decoder = CaptionerDecoder(captioner.model)
        ids = torch.tensor([captioner.image_token_id if i == IMAGE_TOKEN_INDEX else i for i in hand.prompt_ids()])
        at = int((ids == captioner.image_token_id).nonzero())
        embed = captioner.model.model.language_model.embed_tokens
        embeds = torch.cat([embed(ids[:at]), image_embeds[0], embed(ids[at + 1:])])[None]
        S, heads, dim = embeds.shape[1], decoder.num_kv_heads, decoder.head_dim
        past = [torch.zeros(1, heads, 1, dim) for _ in range(2 * len(decoder.layers))]
        logits = decoder(embeds, torch.tensor([[0] + [1] * S]), torch.arange(S)[None], *past)[0]
    torch.testing.assert_close(logits[0, 0], hand.logits(pixels, [])[-1], atol=1e-3, rtol=0)


def test_pad_and_crop_preprocessing_are_llavas():
    """pad: expand2square (centered, mean color) then CLIP's shorter-side resize and center crop; crop: CLIP's alone."""
    pre = Preprocess(4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), mode="pad", resize=4, pad_color=(10, 20, 30))
    frame = np.full((2, 4, 3), 200, np.uint8)
    rows = np.round(to_pixels(frame, pre)[0].transpose(1, 2, 0) * 255)
    assert (rows[0] == [10, 20, 30]).all() and (rows[3] == [10, 20, 30]).all() and (rows[1:3] == 200).all()
    crop = Preprocess(4, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), mode="crop", resize=4)
    wide = np.zeros((4, 8, 3), np.uint8)
    wide[:, 2:6] = 255                                        # the centre 4 columns survive the crop
    assert (np.round(to_pixels(wide, crop) * 255) == 255).all()
