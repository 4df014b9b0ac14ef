"""Checkpoints: one safetensors file of weights with the model's JSON config in its metadata.

Loading never unpickles anything, and the state dict must match the model exactly: a missing, extra or
mis-shaped key is an error that names it."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engines.errors import LLMFormerError

FORMAT = "llmformer-edge/checkpoint"
FORMAT_VERSION = 1


class CheckpointError(LLMFormerError, ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model."""


def save_checkpoint(model: nn.Module, path: str | os.PathLike, config: Any, kind: str) -> Path:
    """Write `model`'s state dict and `config` (a dataclass or JSON-able dict) to `path`, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind, "config": json.dumps(cfg)}
    # safetensors refuses shared or non-contiguous storage; BatchNorm counters are kept (they are state).
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state dict, config dict, kind) from a checkpoint file; a clear CheckpointError otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for a bad header or truncation
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({exc}); "
                              f"it may be truncated or corrupt: re-save or re-download it") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by llmformer-edge (no '{FORMAT}' metadata)")
    if int(metadata.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {metadata['format_version']}, newer than "
                              f"this code's {FORMAT_VERSION}: upgrade llmformer-edge")
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has no valid JSON config in its metadata") from exc
    return tensors, config, metadata.get("kind", "")


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`model.load_state_dict(state)`, with every mismatch reported by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if extra:
        problems.append(f"unexpected keys {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    if shapes:
        problems.append(f"mis-shaped keys {shapes[:10]}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def save_segmenter(model, path: str | os.PathLike) -> Path:
    return save_checkpoint(model, path, model.cfg, kind="segmenter")


def load_segmenter(path: str | os.PathLike):
    """Build the segmenter from the checkpoint's own config and load its weights."""
    state, config, kind = read_checkpoint(path)
    if kind != "segmenter":
        raise CheckpointError(f"checkpoint {path} holds a '{kind}', not a segmenter")
    return _segmenter_from(state, config, path)


def _segmenter_from(state: dict[str, torch.Tensor], config: dict[str, Any], path) -> nn.Module:
    from llmformer.presets import SegmenterConfig
    from llmformer.segmenter import LLMFormerSegmenter

    try:
        cfg = SegmenterConfig(**config)
    except TypeError as exc:
        raise CheckpointError(f"checkpoint {path} has a config this code does not know: {exc}") from exc
    model = LLMFormerSegmenter(cfg)
    load_state_strict(model, state, f"checkpoint {path}")
    return model.eval()


def hf_classes(family: str):
    """(config class, model class) of a transformers family: clip_vision, siglip_vision, bert, clip (text)."""
    from transformers import (BertConfig, BertModel, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel)

    return {"clip_vision": (CLIPVisionConfig, CLIPVisionModel), "siglip_vision": (SiglipVisionConfig, SiglipVisionModel),
            "bert": (BertConfig, BertModel), "clip": (CLIPTextConfig, CLIPTextModelWithProjection)}[family]


def save_component(module: nn.Module, path: str | os.PathLike) -> Path:
    """Save any of the three deployable components with what it takes to rebuild it offline: the
    segmenter's own config, or the `transformers` config of a vision tower or text encoder."""
    from llmformer.segmenter import LLMFormerSegmenter
    from llmformer.text_encoder import SentenceEncoder
    from llmformer.vision_tower import VisionTower

    if isinstance(module, LLMFormerSegmenter):
        return save_segmenter(module, path)
    if isinstance(module, VisionTower):
        hf = module.model
        family = "siglip_vision" if "siglip" in type(hf).__name__.lower() else "clip_vision"
        cfg = {"family": family, "layers": list(module.layers), "hf_config": hf.config.to_dict()}
        return save_checkpoint(module, path, cfg, kind="vision_tower")
    if isinstance(module, SentenceEncoder):
        cfg = {"family": module.kind, "hf_config": module.model.config.to_dict()}
        return save_checkpoint(module, path, cfg, kind="text_encoder")
    raise TypeError(f"cannot save a {type(module).__name__} as a component")


def load_component(path: str | os.PathLike) -> nn.Module:
    """Rebuild whichever component `path` holds, offline, and load its weights strictly."""
    from llmformer.text_encoder import SentenceEncoder
    from llmformer.vision_tower import VisionTower

    state, cfg, kind = read_checkpoint(path)
    if kind == "segmenter":
        return _segmenter_from(state, cfg, path)  # already read: no second pass over the file
    if kind not in ("vision_tower", "text_encoder"):
        raise CheckpointError(f"checkpoint {path} holds an unknown component kind '{kind}'")
    config_cls, model_cls = hf_classes(cfg["family"])
    hf_config = config_cls.from_dict(cfg["hf_config"])
    hf_config._attn_implementation = "eager"
    hf = model_cls(hf_config)
    module = VisionTower(hf, cfg["layers"]) if kind == "vision_tower" else SentenceEncoder(hf, cfg["family"])
    load_state_strict(module, state, f"checkpoint {path}")
    return module.eval()
