import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny_preset(name: str = "demo", **segmenter_overrides):
    """A preset with the named preset's structure (layer counts, queries, mask stride, switches) but tiny
    widths, a 64 px frame and a 2-block random ViT, so its forward pass takes milliseconds."""
    from models.presets import TextEncoderConfig, VisionTowerConfig, get_preset

    p = get_preset(name)
    tower = VisionTowerConfig(image_size=56, patch_size=14, hidden_size=32, num_layers=2, num_heads=2,
                              intermediate_size=64, feature_layers=(1, 2))
    text = TextEncoderConfig(source=None, max_length=8, embed_dim=16, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32)
    if p.text_encoder.kind == "clip":
        text = dataclasses.replace(text, kind="clip")
    seg = dataclasses.replace(p.segmenter, frame_size=64, dim=32, stem_channels=8, vit_dim=32, vit_grid=4,
                              vit_has_cls=True, vit_layers=2, text_dim=16, heads=4, points=2, adapter_ffn=32,
                              encoder_ffn=32, decoder_ffn=32, **segmenter_overrides)
    # The tiny tower fits no shipped checkpoint: a tiny random captioner, a random segmenter.
    return dataclasses.replace(p, vision_tower=tower, text_encoder=text, segmenter=seg, segmenter_weights=None,
                               captioner="tiny" if p.captioner else None)


@pytest.fixture
def tiny():
    return tiny_preset


class MSDAWrapper(torch.nn.Module):
    """An MSDeformAttn with its level shapes bound, so the module traces with three tensor inputs."""

    def __init__(self, attn, shapes):
        super().__init__()
        self.attn, self.shapes = attn, shapes

    def forward(self, query, reference, value):
        return self.attn(query, reference, value, self.shapes)
