"""The captioner: LLaVA-Phi2 (a CLIP/SigLIP tower, a 2-layer GELU MLP projector, Phi-2) in transformers'
native `LlavaForConditionalGeneration` format, and the three graphs the runtime runs it as.

    load_captioner(folder)               a local checkpoint folder -> Captioner (model, tokenizer, prompt,
                                         image preprocessing); every tensor in it used, or an error naming it
    build_tiny_captioner(folder, tower)  a tiny random LLaVA-Phi of the same architecture, saved to `folder`
                                         and reloaded through the same `load_captioner` path

    CaptionerVision    pixels -> image embeddings for the LLM + the tower's hidden states for the segmenter
    CaptionerEmbed     token ids -> token embeddings
    CaptionerDecoder   one Phi call over a fixed-size KV cache: embeddings in, last logits and the new
                       tokens' keys/values out (serves prefill and decode; see its docstring)

The graph modules take positional tensors in the order of their ONNX inputs and return a tuple in the
order of their outputs, so `engines.torch_engine.TorchEngine` runs them as they are exported.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.errors import LLMFormerError

from llmformer.presets import VisionTowerConfig

TOKENIZER_FILE = "tokenizer.json"
PROMPT_FORMAT_FILE = "prompt_format.json"

# The LLaVA-Phi conversation format (llava-phi's `conv_phi_v0`): a system line, one user turn with the image
# placeholder in front of the question, the answer after "ASSISTANT:", ended by <|endoftext|>. The runtime
# reads it back with `runtime.decode.PromptFormat`, which checks every key.
LLAVA_PHI_PROMPT: dict[str, Any] = {
    "system": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.",
    "template": "{system} USER: {image}\n{question} ASSISTANT:",
    "image_token": "<image>",
    "stop_tokens": ["<|endoftext|>"],
    "default_question": "Describe the image.",
}
EOS_TOKEN = "<|endoftext|>"

# What the native LLaVA format cannot say about an original LLaVA-Phi checkpoint, recorded as extra config.json
# keys (transformers keeps unknown config keys, so they survive save_pretrained; export/convert_llava.py writes
# them). A folder without them is plain transformers LLaVA: an unbiased lm_head and the two-layer projector.
LM_HEAD_BIAS_KEY = "lm_head_bias"            # true: lm_head has a bias (Phi-2's does; LlavaForConditionalGeneration's not)
PROJECTOR_TYPE_KEY = "mm_projector_type"     # LLaVA's own key and values: "mlp2x_gelu" (native) or "linear"
PREPROCESS_KEY = "image_preprocess"          # how a frame becomes pixel_values (see Captioner.preprocess)
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")


class CaptionerCheckpointError(LLMFormerError, ValueError):
    """A captioner checkpoint folder is missing a file or holds a model this exporter does not handle."""


@dataclass
class Captioner:
    """A loaded LLaVA-Phi checkpoint: the model, its tokenizer and prompt format, and where it came from."""

    model: nn.Module                 # a transformers.LlavaForConditionalGeneration, eval, fp32, eager attention
    tokenizer: Any                   # transformers.PreTrainedTokenizerFast (tokenizer.json in `folder`)
    prompt: dict[str, Any]           # the prompt format (LLAVA_PHI_PROMPT's keys)
    folder: Path

    @property
    def config(self):
        return self.model.config

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def stop_token_ids(self) -> list[int]:
        return [int(self.tokenizer.convert_tokens_to_ids(t)) for t in self.prompt["stop_tokens"]]

    @property
    def max_context(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """How the checkpoint was trained to see an image, when its folder records it (a converted original
        checkpoint does; None otherwise):

            image_aspect_ratio     "pad": first pad the frame to a square with `pad_color`, centered (LLaVA's
                                   expand2square); "square": no padding
            pad_color              [r, g, b] uint8: int(mean * 255), truncated as LLaVA computes it
            resize_shortest_edge   then resize (bicubic, `resample`) so the shorter side is this many pixels
            resample               "bicubic" / "bilinear" / "nearest"
            center_crop            then crop [height, width] from the center (null: no crop)
            rescale_factor         then multiply by this (1/255)
            mean, std              then (x - mean) / std per RGB channel
        """
        value = getattr(self.model.config, PREPROCESS_KEY, None)
        return dict(value) if value else None


# ----------------------------------------------------------------------------------------------- loading

def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CaptionerCheckpointError(f"{what} {path} cannot be read as JSON: {exc}") from exc


def check_checkpoint_folder(folder: str | Path) -> dict[str, Any]:
    """Check a checkpoint folder before loading any weights; return its config.json. Each problem is an
    error that says what the folder needs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptionerCheckpointError(f"captioner checkpoint {folder} is not a folder: pass a local folder "
                                       f"written by LlavaForConditionalGeneration.save_pretrained()")
    if not (folder / "config.json").is_file():
        raise CaptionerCheckpointError(f"captioner checkpoint {folder} has no config.json: save the model with "
                                       f"LlavaForConditionalGeneration.save_pretrained({str(folder)!r})")
    config = _read_json(folder / "config.json", "captioner config")
    if config.get("model_type") != "llava":
        original = any(k.startswith("mm_") for k in config) or "vision_config" in config
        raise CaptionerCheckpointError(
            f"captioner checkpoint {folder} is a '{config.get('model_type')}' model; it must be LLaVA in "
            f"transformers' native format (model_type 'llava')"
            + (". It is in the original LLaVA layout: convert it with `python export/convert_llava.py --src "
               f"{folder} --out DIR` and pass --captioner DIR" if original else ""))
    text_type = (config.get("text_config") or {}).get("model_type")
    if text_type != "phi":
        raise CaptionerCheckpointError(
            f"captioner checkpoint {folder} has a '{text_type}' text model; this captioner exports LLaVA with a "
            f"Phi language model (text_config.model_type 'phi', e.g. Phi-2)")
    vision_type = (config.get("vision_config") or {}).get("model_type")
    if vision_type not in ("clip_vision_model", "siglip_vision_model"):
        raise CaptionerCheckpointError(f"captioner checkpoint {folder} has a '{vision_type}' vision tower; "
                                       f"a CLIP or SigLIP vision tower is needed")
    if not (folder / TOKENIZER_FILE).is_file():
        raise CaptionerCheckpointError(
            f"captioner checkpoint {folder} has no {TOKENIZER_FILE}: save the Phi tokenizer into it with "
            f"tokenizer.save_pretrained({str(folder)!r}) (the runtime reads {TOKENIZER_FILE} with `tokenizers`)")
    return config


def load_prompt_format(folder: str | Path) -> dict[str, Any]:
    """The folder's prompt_format.json, or the LLaVA-Phi format when it has none."""
    path = Path(folder) / PROMPT_FORMAT_FILE
    if not path.is_file():
        return dict(LLAVA_PHI_PROMPT)
    prompt = _read_json(path, "prompt format")
    missing = sorted(set(LLAVA_PHI_PROMPT) - set(prompt))
    if missing:
        raise CaptionerCheckpointError(f"prompt format {path} lacks {missing}; see llmformer/captioner.py "
                                       f"LLAVA_PHI_PROMPT for the keys")
    return prompt


class LinearProjector(nn.Module):
    """LLaVA's `linear` projector: image features (1, N, C) -> (1, N, E) through one Linear, no activation.

    transformers' LlavaMultiModalProjector always has two layers (linear_1, act, linear_2), so it cannot hold a
    `linear` checkpoint: this module takes its place, its one layer named `linear_1` as the native format names
    the first. (haotian-liu/LLaVA llava/model/multimodal_projector/builder.py: `linear` is one nn.Linear.)"""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(image_features)


@functools.cache
def llava_phi_class():
    """transformers' LlavaForConditionalGeneration with what an original LLaVA-Phi checkpoint has and the
    native class lacks, chosen by config.json (LM_HEAD_BIAS_KEY, PROJECTOR_TYPE_KEY): a bias on lm_head
    (Phi-2's PhiForCausalLM and zhuyiche/llava-phi's LlavaPhiForCausalLM have one; the native LLaVA head has
    none, and transformers drops a checkpoint's bias with a log line), and the one-layer `linear` projector.
    Built before the weights load, so transformers loads every tensor into place and reports any it did not use.
    Defined on first use: this module imports transformers only inside functions."""
    from transformers import LlavaForConditionalGeneration

    class LlavaPhiForConditionalGeneration(LlavaForConditionalGeneration):
        def __init__(self, config):
            super().__init__(config)
            text, vision = config.text_config, config.vision_config
            if getattr(config, LM_HEAD_BIAS_KEY, False):
                self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=True)
            projector = getattr(config, PROJECTOR_TYPE_KEY, "mlp2x_gelu")
            if projector not in PROJECTOR_TYPES:
                raise CaptionerCheckpointError(f"config.json {PROJECTOR_TYPE_KEY} is {projector!r}; this captioner "
                                               f"takes {list(PROJECTOR_TYPES)}")
            if projector == "linear":
                layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
                self.model.multi_modal_projector = LinearProjector(vision.hidden_size * layers, text.hidden_size)

        @classmethod
        def is_custom_code(cls) -> bool:
            # transformers 5 renames a checkpoint's tensors (the layout save_pretrained writes) only for classes
            # it owns; this one loads and saves exactly as LlavaForConditionalGeneration does.
            return False

    return LlavaPhiForConditionalGeneration


def load_captioner(folder: str | Path) -> Captioner:
    """Load a LLaVA-Phi checkpoint saved in transformers' native format (config, weights, tokenizer.json,
    optional prompt_format.json) from a local folder; fp32, eager attention, eval mode. Every tensor of the
    checkpoint must land in the model and every weight of the model must come from it: a tensor left over (an
    lm_head bias the config does not declare, say) or one missing is a CaptionerCheckpointError naming it."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    check_checkpoint_folder(folder)
    prompt = load_prompt_format(folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would be a log line; the problems become errors below
    try:
        model, info = llava_phi_class().from_pretrained(
            folder, local_files_only=True, attn_implementation="eager", dtype=torch.float32, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.eval()
    _check_loading_info(folder, info)

    vocab = tokenizer.get_vocab()
    image_id = vocab.get(prompt["image_token"])
    if image_id is None or image_id != model.config.image_token_id:
        raise CaptionerCheckpointError(
            f"captioner checkpoint {folder}: the image token '{prompt['image_token']}' is id {image_id} in "
            f"{TOKENIZER_FILE} but config.json says image_token_index={model.config.image_token_id}; they must agree")
    unknown = [t for t in prompt["stop_tokens"] if t not in vocab]
    if unknown:
        raise CaptionerCheckpointError(f"captioner checkpoint {folder}: stop tokens {unknown} are not in "
                                       f"{TOKENIZER_FILE}")
    if len(vocab) > model.config.text_config.vocab_size:
        raise CaptionerCheckpointError(
            f"captioner checkpoint {folder}: {TOKENIZER_FILE} has {len(vocab)} tokens but the model's "
            f"embedding has {model.config.text_config.vocab_size} rows")
    return Captioner(model, tokenizer, prompt, folder)


def _check_loading_info(folder: Path, info: dict[str, Any]) -> None:
    """from_pretrained's loading info -> an error naming the first tensors it dropped, left random or reshaped."""
    def names(key: str) -> list[str]:
        return sorted(str(k) for k in info.get(key) or ())

    unexpected, missing, mismatched = names("unexpected_keys"), names("missing_keys"), names("mismatched_keys")
    if unexpected:
        hint = (f": the model's lm_head has no bias; if the checkpoint's lm_head was trained with one (Phi-2's is), "
                f"set \"{LM_HEAD_BIAS_KEY}\": true in config.json, or convert the original checkpoint with "
                f"export/convert_llava.py" if "lm_head.bias" in unexpected else "")
        raise CaptionerCheckpointError(f"captioner checkpoint {folder}: the model does not use checkpoint tensor(s) "
                                       f"{_first(unexpected)}; refusing to drop them{hint}")
    if missing:
        raise CaptionerCheckpointError(f"captioner checkpoint {folder}: the model's {_first(missing)} are not in the "
                                       f"checkpoint (they would stay random)")
    if mismatched or info.get("error_msgs"):
        raise CaptionerCheckpointError(f"captioner checkpoint {folder}: tensors of the wrong shape "
                                       f"{_first(mismatched)} {info.get('error_msgs') or ''}".rstrip())


def _first(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# ------------------------------------------------------------------------------------- tiny random model

# Text the tiny tokenizer learns its merges from: the prompt, questions, and caption-like sentences, so
# that prompts tokenize to a realistic handful of tokens per word.
_TINY_CORPUS = [
    LLAVA_PHI_PROMPT["system"],
    "USER: ASSISTANT:",
    "Describe the image. What is in the picture? What objects are on the table? Where is the dog?",
    "What color is the car? How many people are there? Describe the scene in detail.",
    "A brown dog is lying on a gray couch in a living room.",
    "A small wooden table with a white cup on it, next to a window.",
    "Two people are walking on a street next to a red car and a tree.",
    "A cat sits on the floor near a green plant and a blue chair.",
    "The kitchen has a white refrigerator, a stove, and a wooden cabinet.",
    "A man is riding a bicycle on the road under a cloudy sky.",
    "There is a large building behind the trees and a parked bus in front of it.",
    "A person holds an umbrella while standing on the sidewalk in the rain.",
]


def build_tiny_tokenizer(vocab_size: int = 512, corpus: Sequence[str] | None = None):
    """A byte-level BPE tokenizer (Phi-2's kind) trained offline on a few sentences (`corpus`, default a
    built-in handful; the prompt's system line and question are always in), with <|endoftext|> (id 0: eos, bos, unk and
    pad, as in Phi-2) and <image> (id 1) as special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN, LLAVA_PHI_PROMPT["image_token"]],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # With a corpus, the prompt's lines count as often as one in eight of its sentences, so that their words merge
    # into whole tokens as the corpus's words do: the prompt is in every sequence the captioner sees, and at one
    # token per byte its system line alone was ~140 tokens, more than the image's 64 and the answer together.
    text = _TINY_CORPUS * 4 if corpus is None else [*_TINY_CORPUS[:3]] * max(1, len(corpus) // 8) + [*corpus]
    tok.train_from_iterator(text, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN, clean_up_tokenization_spaces=False)


def tiny_phi_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """Phi-2's architecture (parallel attention/MLP block, partial rotary, GELU) at toy width. The weights
    are drawn wider than Phi's 0.02 so that a random model's top logits are well apart: greedy decoding on
    two backends then agrees because the graphs agree, not by luck at near-ties."""
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=256, partial_rotary_factor=0.5,
               hidden_act="gelu_new", initializer_range=0.1)
    cfg.update(overrides)
    return cfg


def phi2_config(vocab_size: int = 51200, **overrides: Any) -> dict[str, Any]:
    """microsoft/phi-2's text config (2.7B parameters), for random-weight benchmarks."""
    cfg = dict(vocab_size=vocab_size, hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
               num_attention_heads=32, max_position_embeddings=2048, partial_rotary_factor=0.4,
               hidden_act="gelu_new", layer_norm_eps=1e-5, rope_theta=10000.0)
    cfg.update(overrides)
    return cfg


# The tower layer LLaVA's projector reads (hidden_states[-2]: the output of the second-to-last block, as LLaVA-1.5
# and LLaVA-Phi select); llmformer.train.tower trains the demo tower's tokens at this layer.
LLAVA_FEATURE_LAYER = -2


def build_random_llava(tower: VisionTowerConfig, text: dict[str, Any], tokenizer, seed: int = 0) -> nn.Module:
    """A LlavaForConditionalGeneration with random weights: the tower exactly as `build_vision_model(tower)`
    configures it, a Phi text model from `text` (PhiConfig keyword arguments), the LLaVA projector."""
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, PhiConfig

    from llmformer.vision_tower import build_vision_model

    if tower.source:
        raise ValueError("build_random_llava builds a random tower; the tower config has a source folder")
    vision_config = build_vision_model(tower).config  # the same config the segmenter's tower gets
    vocab = tokenizer.get_vocab()
    image_token = LLAVA_PHI_PROMPT["image_token"]
    config = LlavaConfig(
        vision_config=vision_config.to_dict(), text_config=PhiConfig(**text).to_dict(),
        image_token_index=vocab[image_token], image_seq_length=tower.grid ** 2,
        vision_feature_layer=LLAVA_FEATURE_LAYER,
        # CLIP towers drop the CLS token ("default"); SigLIP towers have none ("full").
        vision_feature_select_strategy="default" if tower.has_cls else "full",
        projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    eos = vocab[EOS_TOKEN]
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    return model


def save_captioner(model: nn.Module, tokenizer, folder: str | Path, prompt: dict[str, Any] | None = None) -> Path:
    """Write model, tokenizer and prompt format into one folder, the layout `load_captioner` reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / PROMPT_FORMAT_FILE).write_text(json.dumps(prompt or LLAVA_PHI_PROMPT, indent=2) + "\n")
    return folder


def build_tiny_captioner(folder: str | Path, tower: VisionTowerConfig, seed: int = 0,
                         **text_overrides: Any) -> Captioner:
    """A tiny random LLaVA-Phi (tiny CLIP tower from `tower` + tiny Phi), saved to `folder` and reloaded
    through `load_captioner`, so tests exercise the path real checkpoints take."""
    tokenizer = build_tiny_tokenizer()
    model = build_random_llava(tower, tiny_phi_config(len(tokenizer.get_vocab()), **text_overrides), tokenizer, seed)
    save_captioner(model, tokenizer, folder)
    return load_captioner(folder)


# ------------------------------------------------------------------------------------ deployable graphs

class CaptionerVision(nn.Module):
    """pixels (B, 3, S, S) -> image_embeds (B, N, E_text), vision_hidden_states (n_layers, B, T, C).

    One tower pass feeds both: LLaVA's feature layer through the projector for the LLM, and the hidden
    states at `segmenter_layers` stacked for the segmenter (as `llmformer.vision_tower.VisionTower` stacks them,
    CLS included where the tower has one)."""

    def __init__(self, llava: nn.Module, segmenter_layers: Sequence[int]):
        super().__init__()
        self.tower = llava.model.vision_tower
        self.projector = llava.model.multi_modal_projector
        self.feature_layer = llava.config.vision_feature_layer
        self.drop_cls = llava.config.vision_feature_select_strategy == "default"
        self.segmenter_layers = tuple(int(i) for i in segmenter_layers)
        n = llava.config.vision_config.num_hidden_layers
        bad = [i for i in self.segmenter_layers if not 0 <= i <= n]
        if bad:
            raise ValueError(f"segmenter layers {bad} are outside the tower's hidden states 0..{n}")

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states  # n+1 x (B, T, C)
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else list(self.feature_layer)
        features = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in layers]
        image_embeds = self.projector(torch.cat(features, dim=-1))                     # (B, N, E_text)
        vision_hidden_states = torch.stack([hidden[i] for i in self.segmenter_layers], 0)  # (L, B, T, C)
        return image_embeds, vision_hidden_states


class CaptionerEmbed(nn.Module):
    """input_ids (1, S) int64 -> inputs_embeds (1, S, E)."""

    def __init__(self, llava: nn.Module):
        super().__init__()
        self.embed_tokens = llava.model.language_model.embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class CaptionerDecoder(nn.Module):
    """One Phi decoder call over a fixed-size KV cache.

    inputs_embeds (1, S, E), attention_mask (1, P + S) int64, position_ids (1, S) int64,
    past key, value (1, Hkv, P, D) per layer
      -> logits (1, 1, V) of the last position, present key, value (1, Hkv, S, D) per layer.

    `past` is the runtime's cache buffer, allocated once per caption: slots whose attention_mask is 0
    are unused (their content is ignored). `present` holds only the S tokens fed in this call; the runtime
    writes them into their slots, so no step copies or grows the cache. Prefill feeds the prompt (S tokens)
    with one masked past slot (P = 1, TensorRT profiles need P >= 1); decode feeds one token (S = 1).
    Attention scores and softmax are computed in float32 with explicit casts, whatever the weights' dtype:
    Phi-2's scores overflow float16.

    The batch is 1, so the layers work on (S, E) rows: every Linear then exports as one Gemm on the
    weight as stored, with no transposed copy of it in the graph (2.7B parameters are 11 GB in fp32)."""

    def __init__(self, llava: nn.Module):
        super().__init__()
        lm = llava.model.language_model
        cfg = lm.config
        self.layers = lm.layers
        self.rotary_emb = lm.rotary_emb
        self.final_layernorm = lm.final_layernorm
        self.lm_head = llava.lm_head
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.rotary_ndims = self.layers[0].self_attn.rotary_ndims
        self.scaling = self.head_dim ** -0.5

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past_key_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        S = inputs_embeds.shape[1]
        P = past_key_values[0].shape[2]
        cos, sin = self.rotary_emb(inputs_embeds, position_ids)              # (1, S, rotary_ndims)

        # Which keys each new token sees: valid cache slots, and the new tokens up to itself.
        valid = attention_mask[0].bool()                                     # (P + S,)
        i = torch.arange(S, device=inputs_embeds.device)
        causal = i[None, :] <= i[:, None]                                    # (S, S)
        allowed = torch.cat([valid[None, :P].expand(S, -1), valid[None, P:] & causal], dim=-1)  # (S, P + S)

        hidden = inputs_embeds[0]                                            # (S, E)
        presents: list[torch.Tensor] = []
        for n, layer in enumerate(self.layers):
            x = layer.input_layernorm(hidden)
            attn, key, value = self._attention(layer.self_attn, x, cos[0], sin[0], past_key_values[2 * n][0],
                                               past_key_values[2 * n + 1][0], allowed, P)
            hidden = attn + layer.mlp(x) + hidden                            # Phi's parallel block
            presents += [key[None], value[None]]                             # (1, Hkv, S, D)
        logits = self.lm_head(self.final_layernorm(hidden[-1])[None])       # (1, V)
        return (logits[None], *presents)

    def _attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   past_key: torch.Tensor, past_value: torch.Tensor, allowed: torch.Tensor, P) -> tuple:
        S = x.shape[0]
        q = attn.q_proj(x).view(S, -1, self.head_dim).transpose(0, 1)       # (H, S, D)
        k = attn.k_proj(x).view(S, -1, self.head_dim).transpose(0, 1)       # (Hkv, S, D)
        v = attn.v_proj(x).view(S, -1, self.head_dim).transpose(0, 1)       # (Hkv, S, D)
        if attn.qk_layernorm:
            q, k = attn.q_layernorm(q), attn.k_layernorm(k)
        r = self.rotary_ndims                                                # Phi rotates part of each head
        q = torch.cat((q[..., :r] * cos + _rotate_half(q[..., :r]) * sin, q[..., r:]), dim=-1)
        k = torch.cat((k[..., :r] * cos + _rotate_half(k[..., :r]) * sin, k[..., r:]), dim=-1)
        k = k.view(self.num_kv_heads, S, self.head_dim)                     # keeps D static in the graph

        # Scores against the cache and against the new tokens separately: the cache is never concatenated.
        q32 = q.to(torch.float32)
        scores = torch.cat([
            torch.matmul(q32, self._repeat(past_key).to(torch.float32).transpose(1, 2)),   # (H, S, P)
            torch.matmul(q32, self._repeat(k).to(torch.float32).transpose(1, 2)),          # (H, S, S)
        ], dim=-1) * self.scaling
        scores = torch.where(allowed, scores, torch.finfo(torch.float32).min)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)             # (H, S, P + S)
        out = (torch.matmul(probs[..., :P], self._repeat(past_value))
               + torch.matmul(probs[..., P:], self._repeat(v)))                            # (H, S, D)
        out = attn.dense(out.transpose(0, 1).reshape(S, -1))                               # (S, E)
        return out, k, v

    def _repeat(self, kv: torch.Tensor) -> torch.Tensor:
        """Grouped-query attention: each key/value head serves num_heads / num_kv_heads query heads."""
        groups = self.num_heads // self.num_kv_heads
        return kv if groups == 1 else torch.repeat_interleave(kv, groups, dim=0)


@functools.lru_cache(maxsize=4)
def _cached_captioner(folder: str) -> Captioner:
    return load_captioner(folder)


def captioner_part(folder: str | Path, part: str, segmenter_layers: Sequence[int] = ()) -> nn.Module:
    """One deployable graph's module ('vision', 'embed' or 'decoder') of the checkpoint in `folder`; the
    three parts of one folder share one loaded model (what the PyTorch engine uses)."""
    llava = _cached_captioner(str(Path(folder).resolve())).model
    if part == "vision":
        return CaptionerVision(llava, segmenter_layers).eval()
    if part == "embed":
        return CaptionerEmbed(llava).eval()
    if part == "decoder":
        return CaptionerDecoder(llava).eval()
    raise ValueError(f"captioner part must be 'vision', 'embed' or 'decoder', got {part!r}")
