"""Every component's tensor names, defined once: the exporters write them, the runtime feeds them.

Torch-free on purpose (the runtime imports this on machines without PyTorch).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ComponentNames:
    component: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


VISION_TOWER = ComponentNames(
    "vision_tower",
    inputs=("pixel_values",),                      # (1, 3, S, S) float32, the tower's normalization
    outputs=("vision_hidden_states",),             # (n_layers, 1, T, C)
)
TEXT_ENCODER = ComponentNames(
    "text_encoder",
    inputs=("input_ids", "attention_mask"),        # (B, L) int64 each
    outputs=("text_embeddings",),                  # (B, E), L2-normalized
)
SEGMENTER = ComponentNames(
    "segmenter",
    inputs=(
        "frame",                                   # (1, 3, H, W) float32, ImageNet normalization
        "vision_hidden_states",                    # (n_layers, 1, T, C)
        "object_embeddings",                       # (1, K, E)
        "attribute_embeddings",                    # (1, K, E)
        "prior_valid",                             # (1, K) float32: 1 prior, 0 padding
        "relation_graph",                          # (1, K, K) float32
        "vocab_embeddings",                        # (V, E)
    ),
    outputs=("mask_logits", "class_logits"),       # (1, Q, H/s, W/s), (1, Q, V+1)
)

COMPONENTS = {c.component: c for c in (VISION_TOWER, TEXT_ENCODER, SEGMENTER)}
