"""Convert a LLaVA-Phi(-2) checkpoint in the original LLaVA repository's layout into the folder
`build_engines.py --captioner` reads (transformers' native LLaVA, as `llmformer.captioner.load_captioner` loads it).

    python export/convert_llava.py --src LLAVA_PHI_DIR --out DIR [--vision-tower CLIP_DIR] [--conv-mode NAME]

Every tensor of the checkpoint lands in the converted model, or the conversion stops with an error naming it
(never a log line); nothing is approximated: Phi-2's lm_head bias is kept, a `linear` projector stays one layer.

The layouts it reads, and where each fact comes from:

- Two config layouts, both a PhiConfig subclass (model_type `llava_phi`, or `phi` where a fork kept PhiConfig's):
  * haotian-liu/LLaVA's (llava/model/llava_arch.py `initialize_vision_modules`, llava/train/train.py; forks such
    as PKU-YuanGroup/MoE-LLaVA's llava_phi): top-level `mm_vision_tower` (a CLIP folder or hub name; its
    weights are loaded from there, llava/model/multimodal_encoder/clip_encoder.py), `mm_projector_type`
    (default `linear`), `mm_hidden_size`, `mm_vision_select_layer`, `mm_vision_select_feature` (default
    `patch`), `image_aspect_ratio`, `mm_use_im_start_end`, `mm_patch_merge_type`, `unfreeze_mm_vision_tower`.
  * zhuyiche/llava-phi's (llava_phi/model/language_model/configuration_llava_phi.py): a nested `vision_config`
    = {"vision_tower": CLIP vision config + mm_vision_select_feature/layer, "mm_projector": {mm_projector_type,
    mm_hidden_size, hidden_size}}; the tower's weights are inside the checkpoint; `image_aspect_ratio` top-level.
- Weights: the Phi LM under transformers' `phi` names, `model.embed_tokens`, `model.layers.N.self_attn.{q,k,v}_proj`
  and `.dense`, `model.layers.N.mlp.fc1/fc2`, `model.layers.N.input_layernorm`, `model.final_layernorm`, `lm_head`
  (both repositories build the LM from transformers' PhiModel; zhuyiche/llava-phi's LlavaPhiForCausalLM gives
  lm_head a bias, as PhiForCausalLM does, while several haotian-style forks declare it without one: a checkpoint
  holds `lm_head.bias` exactly when its model had one). The older phi-msft names (`transformer.h.N.mixer.Wqkv`,
  `lm_head.linear/ln`) are refused with what to do. Projector `model.mm_projector.0/.2` (`mlp2x_gelu`: Linear, GELU,
  Linear) or `model.mm_projector` (`linear`: one Linear) (llava/model/multimodal_projector/builder.py). The tower:
  `model.vision_tower.vision_tower.vision_model.*` in haotian-style checkpoints saved by DeepSpeed (the original
  code ignores them and loads mm_vision_tower, haotian-liu/LLaVA issue #672), `model.vision_tower.vision_model.*`
  in zhuyiche/llava-phi's.
- The image placeholder is token index -200, outside the vocabulary (llava/constants.py IMAGE_TOKEN_INDEX); prompts
  are tokenized in chunks around "<image>" (llava/mm_utils.py tokenizer_image_token). The converted tokenizer has
  a real placeholder token instead, on an embedding row the model already has (see `placeholder_token`), so the
  logits keep their size and values. transformers' own convert_llava_weights_to_hf.py resizes the embeddings and
  samples new lm_head rows instead, which changes the logits.
- The vision feature: hidden_states[mm_vision_select_layer], `patch` drops the CLS token, `cls_patch` keeps it
  (clip_encoder.py feature_select) = transformers' vision_feature_layer and vision_feature_select_strategy
  `default` / `full` (transformers models/llava/modeling_llava.py get_image_features).
- Image preprocessing: the tower folder's CLIPImageProcessor (zhuyiche/llava-phi: the checkpoint folder's);
  `image_aspect_ratio: pad` first pads to a square with the color int(mean * 255) (llava/mm_utils.py
  process_images, expand2square), anything else feeds the processor the image as it is.
- The conversation: LLaVA-Phi's `conv_phi_v0` (zhuyiche/llava-phi llava_phi/conversation.py, conv modes
  `phi-2_v0`, `v0`, `default`; MoE-LLaVA's `phi` is the same): "{system} USER: <image>\\n{question} ASSISTANT:",
  ended by <|endoftext|>. No published config records the conv mode; a `conv_mode` key is read if present.

Output folder: config.json (LlavaConfig + `lm_head_bias`, `mm_projector_type`, `image_preprocess`: see
llmformer/captioner.py), model.safetensors (native names, the checkpoint's dtypes, written one tensor at a time),
tokenizer.json (+ tokenizer_config.json), prompt_format.json, generation_config.json and conversion.json (where
everything came from).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.errors import LLMFormerError
from llmformer.captioner import (EOS_TOKEN, LLAVA_PHI_PROMPT, LM_HEAD_BIAS_KEY, PREPROCESS_KEY, PROMPT_FORMAT_FILE,
                                 PROJECTOR_TYPE_KEY, llava_phi_class)

ORIGINAL_IMAGE_TOKEN_INDEX = -200     # haotian-liu/LLaVA llava/constants.py IMAGE_TOKEN_INDEX
IMAGE_TOKEN = LLAVA_PHI_PROMPT["image_token"]
PATCH_TOKEN = "<im_patch>"            # llava/constants.py DEFAULT_IMAGE_PATCH_TOKEN
CONVERSION_FILE = "conversion.json"

# Conv modes whose template is LLaVA-Phi's (llmformer.captioner.LLAVA_PHI_PROMPT): zhuyiche/llava-phi
# llava_phi/conversation.py conv_templates {"default", "v0", "phi-2_v0"} -> conv_phi_v0; PKU-YuanGroup/MoE-LLaVA
# docs/CUSTOM.md conv_phi ("phi"). SeparatorStyle.TWO with sep " ", sep2 "<|endoftext|>" renders
# "{system} USER: <image>\n{question} ASSISTANT:" and stops at sep2.
CONV_MODES = {"phi-2_v0": LLAVA_PHI_PROMPT, "v0": LLAVA_PHI_PROMPT, "default": LLAVA_PHI_PROMPT,
              "phi": LLAVA_PHI_PROMPT}

# PhiConfig keys an original config carries (transformers 4.37+ names; rope_theta and partial_rotary_factor are
# the flat keys transformers 5 folds into rope_parameters). The mm_* keys are read separately; bookkeeping
# keys (architectures, torch_dtype, transformers_version, ...) are not carried.
PHI_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_act",
            "max_position_embeddings", "initializer_range", "layer_norm_eps", "use_cache", "tie_word_embeddings",
            "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor", "qk_layernorm",
            "bos_token_id", "eos_token_id", "pad_token_id")
RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}   # PIL's codes, as preprocessor_config.json stores them


class LlavaConversionError(LLMFormerError, ValueError):
    """An original LLaVA-Phi checkpoint that cannot be converted as it is; the message says why and what to do."""


# ------------------------------------------------------------------------------------------ the source

class CheckpointTensors:
    """The tensors of a checkpoint folder (safetensors or PyTorch .bin; one file or shards with an index),
    read one at a time: `names`, `meta(name)` -> (shape, dtype) without reading, `get(name)`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.where: dict[str, Path] = {}
        files = self._files(folder)
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        for path in files:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    names = list(f.keys())
            else:
                try:  # mmap: a tensor's bytes are read when it is used
                    self._bins[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception as exc:  # torch raises pickle/zip errors of many kinds
                    raise LlavaConversionError(f"cannot read checkpoint file {path}: {exc}") from exc
                names = list(self._bins[path])
            for name in names:
                if name in self.where:
                    raise LlavaConversionError(f"tensor {name} is in both {self.where[name].name} and {path.name}")
                self.where[name] = path

    @staticmethod
    def _files(folder: Path) -> list[Path]:
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (folder / index).is_file():
                try:
                    weight_map = json.loads((folder / index).read_text())["weight_map"]
                except (OSError, ValueError, KeyError) as exc:
                    raise LlavaConversionError(f"cannot read {folder / index}: {exc}") from exc
                return sorted({folder / f for f in weight_map.values()})
        files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
        if not files:
            raise LlavaConversionError(
                f"{folder} holds no model weights (model*.safetensors or pytorch_model*.bin)"
                + (": it holds only mm_projector.bin, a pretraining-stage projector; convert the finetuned "
                   "checkpoint" if (folder / "mm_projector.bin").is_file() else ""))
        return files

    @property
    def names(self) -> list[str]:
        return sorted(self.where)

    def meta(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        path = self.where[name]
        if path in self._bins:
            t = self._bins[path][name]
            return tuple(t.shape), t.dtype
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            s = f.get_slice(name)
            return tuple(s.get_shape()), _SAFETENSORS_DTYPES[s.get_dtype()]

    def get(self, name: str) -> torch.Tensor:
        path = self.where[name]
        if path in self._bins:
            return self._bins[path][name]
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


@dataclass
class Source:
    """What an original checkpoint folder says, read and checked before any weight is converted."""

    folder: Path
    layout: str                      # "haotian-liu/LLaVA" (mm_* keys) or "zhuyiche/llava-phi" (nested vision_config)
    config: dict[str, Any]
    text: dict[str, Any]             # PhiConfig keyword arguments
    vision: dict[str, Any]           # CLIPVisionConfig as a dict
    tower_folder: Path | None        # where the tower's weights come from (None: from the checkpoint)
    tower_prefix: str                # the tower's tensors inside the checkpoint
    select_layer: int
    select_feature: str              # "patch" or "cls_patch"
    projector: str                   # "mlp2x_gelu" or "linear"
    image_aspect_ratio: str          # "pad" or "square"
    processor: dict[str, Any]        # the CLIPImageProcessor's preprocessor_config.json
    processor_file: Path
    tower_trained: bool              # unfreeze_mm_vision_tower: the checkpoint's tower tensors are the tower
    notes: list[str] = field(default_factory=list)


def read_source(src: Path, vision_tower: Path | None = None) -> Source:
    """Read and check an original checkpoint folder's config, tower and image processor (no weights)."""
    if not src.is_dir():
        raise LlavaConversionError(f"--src {src} is not a folder")
    config = _read_json(src / "config.json", "the checkpoint's config")
    model_type = config.get("model_type")
    if model_type == "llava":
        raise LlavaConversionError(f"{src} is already in transformers' native LLaVA format: pass it to "
                                   f"build_engines.py --captioner as it is")
    if model_type in ("phi-msft", "mixformer-sequential") or "n_embd" in config:
        raise LlavaConversionError(_PHI_MSFT_HELP.format(what=f"{src}/config.json is a '{model_type}' config"))
    if model_type not in ("llava_phi", "phi"):
        raise LlavaConversionError(f"{src} is a '{model_type}' model; this converter reads LLaVA-Phi checkpoints "
                                   f"(model_type 'llava_phi' or 'phi')")
    nested = config.get("vision_config")
    if "mm_vision_tower" in config:
        return _read_haotian(src, config, vision_tower)
    if isinstance(nested, dict) and isinstance(nested.get("vision_tower"), dict):
        return _read_zhuyiche(src, config, nested, vision_tower)
    raise LlavaConversionError(f"{src}/config.json has no vision tower (neither mm_vision_tower nor "
                               f"vision_config.vision_tower): a text-only Phi checkpoint, not LLaVA-Phi")


_PHI_MSFT_HELP = ("{what}: the phi-msft layout (transformer.h.N.mixer.Wqkv, lm_head.linear/ln) of microsoft/phi-2's "
                  "first release. Published LLaVA-Phi checkpoints build their LM from transformers' PhiModel; convert "
                  "the LM to those names first (transformers' models/phi/convert_phi_weights_to_hf.py maps them)")


def _read_haotian(src: Path, config: dict, vision_tower: Path | None) -> Source:
    notes = []
    named = str(config["mm_vision_tower"])
    if vision_tower is None:
        # clip_encoder.py builds the tower from this name with from_pretrained: a local folder or a hub name.
        candidates = [Path(named), src / named]
        vision_tower = next((p for p in candidates if (p / "config.json").is_file()), None)
        if vision_tower is None:
            raise LlavaConversionError(
                f"mm_vision_tower is {named!r}, not a local folder with a config.json: download that CLIP tower "
                f"and pass its folder with --vision-tower DIR")
    elif not (vision_tower / "config.json").is_file():
        raise LlavaConversionError(f"--vision-tower {vision_tower} is not a model folder (no config.json)")
    else:
        notes.append(f"vision tower from --vision-tower {vision_tower} (the checkpoint names {named!r})")
    if config.get("s2"):
        raise LlavaConversionError("mm_vision_tower with s2 (multi-scale) features is not supported")
    vision = _clip_vision_config(_read_json(vision_tower / "config.json", "the vision tower's config"), vision_tower)
    processor_file = vision_tower / "preprocessor_config.json"
    return _common(src, config, "haotian-liu/LLaVA", vision, vision_tower, "model.vision_tower.vision_tower.",
                   select_layer=config.get("mm_vision_select_layer"),
                   select_feature=config.get("mm_vision_select_feature", "patch"),
                   projector=config.get("mm_projector_type", "linear"), mm_hidden=config.get("mm_hidden_size"),
                   processor_file=processor_file, tower_trained=bool(config.get("unfreeze_mm_vision_tower")),
                   notes=notes)


def _read_zhuyiche(src: Path, config: dict, nested: dict, vision_tower: Path | None) -> Source:
    tower = nested["vision_tower"]
    projector = nested.get("mm_projector") or {}
    # The tower config is a CLIPVisionConfig with the two selection keys added (LlavaPhiVisionConfig).
    vision = _clip_vision_config({k: v for k, v in tower.items() if not k.startswith("mm_")}, src)
    if projector.get("hidden_size") not in (None, config.get("hidden_size")):
        raise LlavaConversionError(f"vision_config.mm_projector.hidden_size {projector.get('hidden_size')} is not "
                                   f"the LM's hidden_size {config.get('hidden_size')}")
    # llava_phi/model/builder.py: CLIPImageProcessor.from_pretrained(model_path).
    processor_file = src / "preprocessor_config.json"
    if not processor_file.is_file() and vision_tower is not None:
        processor_file = vision_tower / "preprocessor_config.json"
    return _common(src, config, "zhuyiche/llava-phi", vision, None, "model.vision_tower.",
                   select_layer=tower.get("mm_vision_select_layer", -2),
                   select_feature=tower.get("mm_vision_select_feature", "patch"),
                   projector=projector.get("mm_projector_type", "linear"), mm_hidden=projector.get("mm_hidden_size"),
                   processor_file=processor_file, tower_trained=True, notes=[])


def _common(src: Path, config: dict, layout: str, vision: dict, tower_folder: Path | None, tower_prefix: str, *,
            select_layer, select_feature, projector, mm_hidden, processor_file: Path, tower_trained: bool,
            notes: list[str]) -> Source:
    n_layers = int(vision["num_hidden_layers"])
    if not isinstance(select_layer, int) or not -(n_layers + 1) <= select_layer <= n_layers:
        raise LlavaConversionError(f"mm_vision_select_layer {select_layer!r} is not a hidden state of the "
                                   f"{n_layers}-layer tower (-{n_layers + 1}..{n_layers})")
    if select_feature not in ("patch", "cls_patch"):
        raise LlavaConversionError(f"mm_vision_select_feature {select_feature!r}: LLaVA takes 'patch' or 'cls_patch'")
    if projector not in ("mlp2x_gelu", "linear"):
        raise LlavaConversionError(
            f"mm_projector_type {projector!r}: transformers' LLaVA holds a 'linear' or 'mlp2x_gelu' projector; "
            f"other depths and 'identity' are not converted")
    if mm_hidden is not None and int(mm_hidden) != int(vision["hidden_size"]):
        raise LlavaConversionError(f"mm_hidden_size {mm_hidden} is not the vision tower's hidden_size "
                                   f"{vision['hidden_size']}: pass the tower the checkpoint was trained with")
    if config.get("mm_use_im_start_end"):
        raise LlavaConversionError("mm_use_im_start_end is true: prompts wrap the image in <im_start>/<im_end> "
                                   "tokens, which this captioner's prompt format does not hold")
    merge = config.get("mm_patch_merge_type", "flat")
    aspect = config.get("image_aspect_ratio") or "square"
    if merge != "flat" or aspect == "anyres":
        raise LlavaConversionError(f"image_aspect_ratio {aspect!r} / mm_patch_merge_type {merge!r}: LLaVA-1.6 "
                                   f"any-resolution tiling is not supported (one {vision['image_size']} px image)")
    if aspect not in ("pad", "square"):
        # llava/mm_utils.py process_images: anything but 'pad' (and 'anyres') takes the processor as it is.
        notes.append(f"image_aspect_ratio {aspect!r} preprocesses as 'square' (the processor alone)")
        aspect = "square"
    if not processor_file.is_file():
        raise LlavaConversionError(f"no image processor: {processor_file} is missing (the original code loads "
                                   f"CLIPImageProcessor from that folder)")
    text = {k: config[k] for k in PHI_KEYS if k in config}
    for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if k not in text:
            raise LlavaConversionError(f"{src}/config.json lacks the Phi key {k!r}")
    return Source(src, layout, config, text, vision, tower_folder, tower_prefix, select_layer, select_feature,
                  projector, aspect, _read_json(processor_file, "the image processor config"), processor_file,
                  tower_trained, notes)


def _clip_vision_config(d: dict, where: Path) -> dict:
    """A CLIP (or CLIP vision) config dict -> CLIPVisionConfig's dict; other towers are refused."""
    from transformers import CLIPVisionConfig

    if d.get("model_type") == "clip":
        d = d.get("vision_config") or {}
    kind = d.get("model_type", "clip_vision_model")
    if kind not in ("clip_vision_model", "llava_phi_clip_vision_model"):
        raise LlavaConversionError(f"the vision tower in {where} is a '{kind}' model; LLaVA-Phi's tower is CLIP "
                                   f"(llava/model/multimodal_encoder/builder.py builds CLIPVisionTower only)")
    keys = set(CLIPVisionConfig().to_dict()) - {"model_type", "architectures", "transformers_version", "dtype",
                                                 "torch_dtype", "_name_or_path"}
    return CLIPVisionConfig(**{k: v for k, v in d.items() if k in keys}).to_dict()


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LlavaConversionError(f"cannot read {what} {path}: {exc}") from exc


# ------------------------------------------------------------------------------------------ conversion

def image_preprocess(source: Source) -> dict[str, Any]:
    """The preprocessing the checkpoint was trained with (llmformer.captioner.Captioner.preprocess's keys)."""
    p, image_size = source.processor, int(source.vision["image_size"])
    mean, std = [float(x) for x in p.get("image_mean", ())], [float(x) for x in p.get("image_std", ())]
    if len(mean) != 3 or len(std) != 3:
        raise LlavaConversionError(f"{source.processor_file}: image_mean/image_std must hold 3 numbers")
    size = p.get("size", image_size)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    crop = p.get("crop_size", image_size)
    crop = [crop["height"], crop["width"]] if isinstance(crop, dict) else [crop, crop]
    if not isinstance(shortest, int) or not p.get("do_resize", True):
        raise LlavaConversionError(f"{source.processor_file}: size {size!r}; a CLIP processor resizing the shortest "
                                   f"edge is expected")
    if not p.get("do_center_crop", True):
        crop = None
        if shortest != image_size:
            raise LlavaConversionError(f"{source.processor_file}: no center crop and shortest edge {shortest}: images "
                                       f"would not be the tower's {image_size} px square")
    elif crop != [image_size, image_size]:
        raise LlavaConversionError(f"{source.processor_file}: crop_size {crop} is not the tower's {image_size} px")
    resample = p.get("resample", 3)
    if resample not in RESAMPLE:
        raise LlavaConversionError(f"{source.processor_file}: resample {resample} (PIL code) is not supported")
    return {
        "image_aspect_ratio": source.image_aspect_ratio,
        # llava/mm_utils.py process_images: expand2square(image, tuple(int(x * 255) for x in image_mean))
        "pad_color": [int(x * 255) for x in mean],
        "resize_shortest_edge": shortest,
        "resample": RESAMPLE[resample],
        "center_crop": crop,
        "rescale_factor": float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0,
        "mean": mean if p.get("do_normalize", True) else [0.0, 0.0, 0.0],
        "std": std if p.get("do_normalize", True) else [1.0, 1.0, 1.0],
    }


def prompt_format(source: Source, conv_mode: str | None) -> tuple[str, dict[str, Any]]:
    mode = conv_mode or source.config.get("conv_mode") or "phi-2_v0"
    if mode not in CONV_MODES:
        raise LlavaConversionError(f"conv mode {mode!r} is not one this converter knows ({sorted(CONV_MODES)}); "
                                   f"write prompt_format.json by hand (llmformer/captioner.py LLAVA_PHI_PROMPT's keys)")
    return mode, dict(CONV_MODES[mode])


def load_tokenizer(src: Path):
    """The checkpoint's tokenizer as a fast tokenizer (tokenizer.json, or converted from vocab.json/merges.txt)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        if (src / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(src, local_files_only=True)
        return AutoTokenizer.from_pretrained(src, local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise LlavaConversionError(f"cannot load the tokenizer in {src}: {exc}") from exc


def placeholder_token(tokenizer, rows: int) -> tuple[str, int]:
    """The token that stands for the image in the converted tokenizer, on an embedding row the model has, so
    its logits keep their size and values (the row's content never matters: image features replace it):
    `<image>`, added on the first row no token uses (Phi-2: 50295 of 51200 rows; zhuyiche/llava-phi
    llava_phi/model/builder.py notes the tokenizer's 50295 against lm_head's 51200). When the tokenizer fills every
    row, LLaVA's `<im_patch>` if it has one: mm_use_im_patch_token adds it and resizes the embeddings to the
    tokenizer (llava_arch.py initialize_vision_tokenizer), and no prompt holds it unless mm_use_im_start_end
    (refused above)."""
    from transformers import AddedToken

    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN in vocab and vocab[IMAGE_TOKEN] < rows:
        return IMAGE_TOKEN, vocab[IMAGE_TOKEN]
    free = max(vocab.values()) + 1
    if IMAGE_TOKEN not in vocab and free < rows:
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != free:
            raise LlavaConversionError(f"{IMAGE_TOKEN} was added as id {tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}, "
                                       f"expected {free}")
        return IMAGE_TOKEN, free
    if PATCH_TOKEN in vocab and vocab[PATCH_TOKEN] < rows:
        return PATCH_TOKEN, vocab[PATCH_TOKEN]
    raise LlavaConversionError(
        f"the tokenizer's {len(vocab)} tokens fill the model's {rows} embedding rows and none is free for the image "
        f"placeholder (growing the table would add a logit the model never had)")


@dataclass
class _Tensor:
    """One tensor of the converted checkpoint: where it comes from and how to read it."""

    origin: str                              # the name in the original checkpoint (or the tower folder)
    shape: tuple[int, ...]
    dtype: torch.dtype
    read: Callable[[], torch.Tensor]


def convert_llava(src: str | Path, out: str | Path, vision_tower: str | Path | None = None,
                  conv_mode: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Convert the original-layout LLaVA-Phi checkpoint in `src` into `out` (which must not exist or be empty),
    the folder `build_engines.py --captioner` reads. `vision_tower` overrides the checkpoint's mm_vision_tower;
    `conv_mode` its conversation template. Raises LlavaConversionError naming what cannot be converted."""
    from transformers import GenerationConfig, LlavaConfig, PhiConfig
    from transformers.utils import logging as hf_logging

    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LlavaConversionError(f"--out {out} exists and is not an empty folder; refusing to overwrite it")
    source = read_source(src, Path(vision_tower) if vision_tower else None)
    mode, prompt = prompt_format(source, conv_mode)
    preprocess = image_preprocess(source)
    tensors = CheckpointTensors(src)
    _refuse_phi_msft(tensors.names)

    tokenizer = load_tokenizer(src)
    vocab = tokenizer.get_vocab()
    if EOS_TOKEN not in vocab:
        raise LlavaConversionError(f"the tokenizer in {src} has no {EOS_TOKEN}, LLaVA-Phi's stop token")
    text = PhiConfig(**source.text)
    image_token, image_id = placeholder_token(tokenizer, text.vocab_size)
    prompt["image_token"] = image_token

    grid = int(source.vision["image_size"]) // int(source.vision["patch_size"])
    has_bias = "lm_head.bias" in tensors.where
    config = LlavaConfig(
        vision_config=source.vision, text_config=text.to_dict(), image_token_index=image_id,
        image_seq_length=grid * grid + (source.select_feature == "cls_patch"),
        vision_feature_layer=source.select_layer,
        vision_feature_select_strategy="default" if source.select_feature == "patch" else "full",
        projector_hidden_act="gelu",           # mlp2x_gelu's nn.GELU() (exact erf), as transformers' "gelu"
        multimodal_projector_bias=True, tie_word_embeddings=bool(text.tie_word_embeddings),
        **{LM_HEAD_BIAS_KEY: has_bias, PROJECTOR_TYPE_KEY: source.projector, PREPROCESS_KEY: preprocess})
    config.architectures = ["LlavaForConditionalGeneration"]
    with torch.device("meta"):  # names and shapes of every weight, without the memory
        expected = {k: tuple(v.shape) for k, v in llava_phi_class()(config).state_dict().items()}

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the tower folder's CLIP text weights are reported unused; they are not ours
    try:
        plan = _plan(source, tensors, expected, text)
    finally:
        hf_logging.set_verbosity(verbosity)

    log(f"converting {src} ({source.layout} layout, {len(tensors.names)} tensors) -> {out}")
    log(f"  projector {source.projector}, vision feature layer {source.select_layer} ({source.select_feature}), "
        f"lm_head bias {'kept' if has_bias else 'none in the checkpoint'}, {image_token} = token {image_id} "
        f"(was {ORIGINAL_IMAGE_TOKEN_INDEX}), conv mode {mode}, image_aspect_ratio {preprocess['image_aspect_ratio']}")
    for note in source.notes:
        log(f"  note: {note}")

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.converting-"))
    try:
        config.save_pretrained(staging)
        write_safetensors(staging / "model.safetensors", {k: plan[k] for k in sorted(plan)})
        tokenizer.save_pretrained(staging)
        eos = int(vocab[EOS_TOKEN])
        GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos).save_pretrained(staging)
        (staging / PROMPT_FORMAT_FILE).write_text(json.dumps(prompt, indent=2) + "\n")
        (staging / CONVERSION_FILE).write_text(json.dumps({
            "source": str(src.resolve()), "layout": source.layout, "conv_mode": mode,
            "vision_tower": str(source.tower_folder.resolve()) if source.tower_folder else "inside the checkpoint",
            "image_processor": str(source.processor_file.resolve()),
            "image_token": {"original_index": ORIGINAL_IMAGE_TOKEN_INDEX, "token": image_token, "id": image_id},
            "tensors": {k: t.origin for k, t in sorted(plan.items())}}, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"  wrote {out} ({sum(math.prod(t.shape) for t in plan.values()) / 1e6:.1f} M parameters)")
    return out


def _refuse_phi_msft(names: list[str]) -> None:
    msft = [n for n in names if re.search(r"(^|\.)(h\.\d+\.mixer\.|embd\.wte\.)|^lm_head\.(linear|ln)\.", n)]
    if msft:
        raise LlavaConversionError(_PHI_MSFT_HELP.format(what=f"checkpoint tensor {msft[0]} is in"))


def _plan(source: Source, tensors: CheckpointTensors, expected: dict[str, tuple[int, ...]],
          text) -> dict[str, _Tensor]:
    """Every weight of the converted model -> where it comes from. Any checkpoint tensor without a place is an
    error naming it; so is any weight without a tensor, and any shape that differs."""
    plan: dict[str, _Tensor] = {}
    folder_tower = _tower_folder_tensors(source, expected) if source.tower_folder else {}
    plan.update(folder_tower)
    tower_targets = {}
    for name in tensors.names:
        if _derived_buffer(name, tensors, text, source):
            continue
        target = _target(name, source, expected)
        if target is None:
            raise LlavaConversionError(_unplaced(name, source))
        shape, dtype = tensors.meta(name)
        if target in folder_tower and not source.tower_trained:
            tower_targets[name] = target  # the original code loads the tower folder instead: must be the same
            continue
        plan[target] = _Tensor(name, shape, dtype, lambda n=name: tensors.get(n))
    for name, target in tower_targets.items():
        mine, theirs = tensors.get(name), plan[target].read()
        if mine.shape != theirs.shape or not torch.equal(mine, theirs.to(mine.dtype)):
            diff = ((mine.float() - theirs.float()).abs().max().item() if mine.shape == theirs.shape
                    else f"shape {tuple(mine.shape)} vs {tuple(theirs.shape)}")
            raise LlavaConversionError(
                f"checkpoint tensor {name} differs from the vision tower folder's ({source.tower_folder}; max |diff| "
                f"{diff}). The original code loads the tower from mm_vision_tower and would drop it: pass the tower "
                f"the checkpoint was trained with (--vision-tower), or set unfreeze_mm_vision_tower if the "
                f"checkpoint's tower is the trained one")
    missing = sorted(set(expected) - set(plan))
    if missing:
        raise LlavaConversionError(f"the checkpoint has no tensor for the model's {', '.join(missing[:5])}"
                                   + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for target, t in plan.items():
        if t.shape != expected[target]:
            raise LlavaConversionError(f"checkpoint tensor {t.origin} has shape {list(t.shape)}; the model's "
                                       f"{target} is {list(expected[target])} (config.json does not match the weights)")
    return plan


def _target(name: str, source: Source, expected: dict) -> str | None:
    """An original tensor name -> the converted model's name (None: it has no place)."""
    if name in ("lm_head.weight", "lm_head.bias"):
        target = name
    elif name.startswith("model.mm_projector."):
        rest = name[len("model.mm_projector."):]
        if source.projector == "linear":
            target = f"model.multi_modal_projector.linear_1.{rest}" if rest in ("weight", "bias") else None
        else:
            index, _, leaf = rest.partition(".")
            layer = {"0": "linear_1", "2": "linear_2"}.get(index)
            target = f"model.multi_modal_projector.{layer}.{leaf}" if layer else None
    elif name.startswith(source.tower_prefix):
        target = _tower_target(name[len(source.tower_prefix):], expected)
    elif name.startswith("model.") and name.split(".")[1] in ("embed_tokens", "layers", "final_layernorm"):
        target = "model.language_model." + name[len("model."):]
    else:
        target = None
    return target if target in expected else None


def _tower_target(rest: str, expected: dict) -> str | None:
    """A CLIPVisionModel tensor name of any transformers version (4.x: vision_model.X; 5.x: X) -> ours."""
    for candidate in (rest, rest.removeprefix("vision_model.")):
        if f"model.vision_tower.{candidate}" in expected:
            return f"model.vision_tower.{candidate}"
    return None


def _unplaced(name: str, source: Source) -> str:
    why = ""
    if name == "model.image_newline":
        why = " (LLaVA-1.6 any-resolution tiling, which this captioner does not run)"
    elif name.startswith("model.mm_projector."):
        why = f" (the config says mm_projector_type {source.projector!r})"
    elif name.startswith("model.vision_tower.") and source.tower_folder is not None:
        why = " (not a weight of the vision tower folder's CLIP model)"
    return (f"checkpoint tensor {name} has no place in the converted model{why}; refusing to drop it. Check "
            f"that config.json describes these weights")


def _derived_buffer(name: str, tensors: CheckpointTensors, text, source: Source) -> bool:
    """Buffers older transformers saved that the model recomputes (rotary inv_freq, CLIP position_ids): skipped
    when they hold what the model computes, an error otherwise (the checkpoint would not be this model)."""
    if name.endswith("rotary_emb.inv_freq"):
        head_dim = text.hidden_size // text.num_attention_heads
        rope = getattr(text, "rope_parameters", None) or {}
        factor = rope.get("partial_rotary_factor", getattr(text, "partial_rotary_factor", 1.0))
        theta = rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))
        dim = int(head_dim * factor)
        want = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    elif name.endswith("embeddings.position_ids") and name.startswith(source.tower_prefix):
        grid = int(source.vision["image_size"]) // int(source.vision["patch_size"])
        want = torch.arange(grid * grid + 1)[None]
    else:
        return False
    got = tensors.get(name)
    if got.shape != want.shape or not torch.allclose(got.double(), want.to(got.dtype).double()):
        raise LlavaConversionError(f"checkpoint buffer {name} is not what this model computes from config.json "
                                   f"(rotary/position settings differ); refusing to drop it")
    return True


def _tower_folder_tensors(source: Source, expected: dict) -> dict[str, _Tensor]:
    """The vision tower folder's CLIP vision weights, under the converted model's names."""
    from transformers import CLIPVisionModel

    try:
        tower, info = CLIPVisionModel.from_pretrained(source.tower_folder, local_files_only=True, dtype="auto",
                                                      output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise LlavaConversionError(f"cannot load the vision tower {source.tower_folder}: {exc}") from exc
    if info["missing_keys"] or info["mismatched_keys"]:
        raise LlavaConversionError(f"the vision tower {source.tower_folder} lacks weights "
                                   f"{sorted(map(str, info['missing_keys'] or info['mismatched_keys']))[:5]}")
    out = {}
    for name, t in tower.state_dict().items():
        target = _tower_target(name, expected)
        if target is None:
            raise LlavaConversionError(f"vision tower weight {name} ({source.tower_folder}) has no place in LLaVA's tower")
        out[target] = _Tensor(f"{source.tower_folder.name}:{name}", tuple(t.shape), t.dtype, lambda t=t: t)
    return out


# ------------------------------------------------------------------------------------------ writing

_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: Path, tensors: dict[str, _Tensor]) -> None:
    """Write a .safetensors file one tensor at a time (peak memory: one tensor, not the model): the header
    from shapes and dtypes, then each tensor's bytes as read."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        size = math.prod(t.shape) * torch.empty((), dtype=t.dtype).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, t in tensors.items():
            value = t.read()
            if tuple(value.shape) != t.shape or value.dtype != t.dtype:
                raise LlavaConversionError(f"tensor {t.origin} changed while converting")
            f.write(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


# ------------------------------------------------------------------------------------------ command

def parse_args(argv=None) -> argparse.Namespace:
    from runtime.commands import CommandParser, existing_folder, output_folder

    ap = CommandParser(prog="python export/convert_llava.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=existing_folder, required=True, help="the original LLaVA-Phi checkpoint folder")
    ap.add_argument("--out", type=output_folder, required=True,
                    help="the converted folder (must not exist, or be empty)")
    ap.add_argument("--vision-tower", type=existing_folder, default=None,
                    help="local CLIP folder for the checkpoint's mm_vision_tower (default: mm_vision_tower itself)")
    ap.add_argument("--conv-mode", default=None, choices=sorted(CONV_MODES),
                    help="the conversation template (default: the checkpoint's conv_mode, else phi-2_v0)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    """The command: one `error: ...` line on stderr; exit status 2 for a wrong command line or a checkpoint
    that cannot be converted (what the user can fix), 1 for a failed run (a full disk); --debug shows the
    traceback (runtime/commands.py)."""
    from runtime.commands import run_command

    return run_command(_main, argv, usage=(LlavaConversionError,))


def _main(argv) -> int:
    args = parse_args(argv)
    convert_llava(args.src, args.out, args.vision_tower, args.conv_mode)
    print(f"next: python export/build_engines.py --captioner {args.out} --out DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
