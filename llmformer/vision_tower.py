"""The vision tower: a CLIP/SigLIP ViT from `transformers`, read at a few layers.

One tower pass per frame feeds both the captioner (LLaVA's projector) and the segmenter's adapter, so
the tower is its own component and nothing is injected back into it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from llmformer.presets import VisionTowerConfig


def build_vision_model(cfg: VisionTowerConfig) -> nn.Module:
    """The `transformers` vision model: loaded from `cfg.source` (a local folder) or random from `cfg`."""
    from llmformer.checkpoint import hf_classes

    if cfg.kind not in ("clip", "siglip"):
        raise ValueError(f"vision tower kind must be 'clip' or 'siglip', got '{cfg.kind}'")
    config_cls, model_cls = hf_classes(f"{cfg.kind}_vision")
    if cfg.source:
        folder = Path(cfg.source)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"vision tower folder {folder} has no config.json: pass a local folder "
                                    f"saved with save_pretrained()")
        return model_cls.from_pretrained(folder, local_files_only=True, attn_implementation="eager").eval()
    config = config_cls(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                        image_size=cfg.image_size, patch_size=cfg.patch_size)
    config._attn_implementation = "eager"  # exports to plain MatMul/Softmax on every opset
    return model_cls(config).eval()


class VisionTower(nn.Module):
    """pixels (B, 3, S, S) -> hidden states at `layers`, stacked: (n_layers, B, T, C)."""

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        super().__init__()
        self.model = model
        self.layers = tuple(int(i) for i in layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return torch.stack([out.hidden_states[i] for i in self.layers], 0)
